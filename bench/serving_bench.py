"""Serving benchmark: a bounded load test of ``ppml serve`` on loopback (the real server, uvicorn in a subprocess).

    .venv/bin/python bench/serving_bench.py                      # trains a small model, 1/8/64 clients
    .venv/bin/python bench/serving_bench.py --policy P           # the policy's production version (PPML_HOME)
    .venv/bin/python bench/serving_bench.py --requests 200 --clients 1 2   # a quick look

Each scenario is a closed loop: C concurrent clients (asyncio + aiohttp in this process, one API key each, so per-
client state is real) send requests back to back until the scenario's bounded total is reached; a warm-up of 2*C
requests is sent first and not timed. Single predictions send one record per request, batches 100 rows per
``/predict/batch``. Latency is the client's wall time per request (connection reuse, JSON bodies pre-serialized);
p50/p99 over the timed requests; throughput is timed requests (or rows) over the scenario's wall time. Server CPU
per row is the server process's user+system CPU time over the scenario (warm-up included) divided by the rows it
answered: what a row costs the server whatever else the machine runs (the server is one process, so its capacity
is about 1000 / (CPU ms per row) rows per second of one core). Afterwards the prediction log's rows are counted
against the rows answered (warm-up included): a lost entry is reported. The served policy is a copy of the given
one (same name, so the same registered model) with rate limit and query budget raised out of the way; everything
else (identifier screening, the serving spec's generalization, coarsening, the log) is the production path.

Without ``--policy`` the model is the serving tests' small real training (tests/serving/serving_support.py) on
two days of the bundled landing zone, in a temporary workspace. Writes the markdown table to stdout and
``--out`` (default bench/results/serving.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results" / "serving.md"
CLI = "import sys; from ppml.cli import app; sys.argv[0] = 'ppml'; app()"
BATCH_ROWS = 100


def bench_policy(policy: Path, folder: Path) -> Path:
    """The policy with the per-client limits out of the load test's way (everything else as given)."""
    document = yaml.safe_load(policy.read_text())
    document.setdefault("serving", {}).update(
        {"requests_per_minute": 10**9, "queries_per_client": 10**12, "max_batch_rows": BATCH_ROWS}
    )
    path = folder / "bench_policy.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def small_model(home: Path) -> tuple[Path, list[dict[str, Any]]]:
    """A registered production version from the serving tests' small real training; its raw records."""
    from ppml.landing_zone import ensure_bundled_landing_zone
    from tests.graph_support import write_policy
    from tests.serving.serving_support import raw_record, register_small_model
    from tests.support import TEST_FIRST_DAY, days

    landing = home / "landing"
    ensure_bundled_landing_zone(landing, only_days=days(TEST_FIRST_DAY, 2))
    policy = write_policy(home)
    policy.write_text(policy.read_text().replace("name: adult-income-gdpr", f"name: bench-{secrets.token_hex(4)}"))
    registered = register_small_model(landing, policy)
    return policy, [raw_record(registered, row) for row in registered.kept_raw_rows]


def policy_records(policy: Path, n: int = 500) -> list[dict[str, Any]]:
    """Request records for an existing policy: the bundled Adult data's first rows, the policy's request fields
    (public data; a bundled-data policy's columns)."""
    from ppml.landing_zone import read_bundled_adult
    from ppml.policy import load_policy
    from ppml.serving.app import request_columns

    frame = read_bundled_adult(include_test=False).head(n)
    columns = [c for c in request_columns(load_policy(policy).policy) if c in frame.columns]
    return [
        {c: (int(v) if isinstance(v, (int, np.integer)) else str(v)) for c, v in row.items()}
        for row in frame[columns].to_dict("records")
    ]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(policy: Path, env: dict[str, str], port: int) -> subprocess.Popen:
    import requests

    process = subprocess.Popen(
        [sys.executable, "-c", CLI, "serve", "--policy", str(policy), "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"ppml serve exited: {process.stdout.read() if process.stdout else ''}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return process
        except requests.ConnectionError:
            pass
        time.sleep(0.3)
    stop_server(process)
    raise SystemExit("ppml serve did not become ready in 180 s")


def stop_server(process: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout=wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


async def scenario(base: str, keys: list[str], clients: int, path: str, bodies: list[bytes], total: int) -> dict:
    """C clients in a closed loop until ``total`` timed requests are done (after 2*C untimed warm-up ones)."""
    import aiohttp

    latencies: list[float] = []
    failures = ok = 0
    issued = 0
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def send(key: str, body: bytes) -> float:
            nonlocal failures, ok
            started = time.perf_counter()
            headers = {"X-API-Key": key, "content-type": "application/json"}
            async with session.post(base + path, data=body, headers=headers) as response:
                await response.read()
                if response.status == 200:
                    ok += 1
                else:
                    failures += 1
            return time.perf_counter() - started

        async def worker(index: int, count: int, timed: bool) -> None:
            nonlocal issued
            while True:
                if issued >= count:
                    return
                issued += 1
                latency = await send(keys[index], bodies[issued % len(bodies)])
                if timed:
                    latencies.append(latency)

        await asyncio.gather(*(worker(i, 2 * clients, False) for i in range(clients)))
        issued = 0
        started = time.perf_counter()
        await asyncio.gather(*(worker(i, total, True) for i in range(clients)))
        wall = time.perf_counter() - started
    ms = np.asarray(latencies) * 1000
    return {
        "requests": len(latencies),
        "answered": ok,  # warm-up included: every answered request's rows must be in the log
        "failures": failures,
        "wall_s": wall,
        "requests_per_s": len(latencies) / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def server_cpu_seconds(pid: int) -> float:
    """User + system CPU time of the server process so far (/proc/PID/stat; Linux), 0.0 where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def run_load(
    base: str, keys: list[str], records: list[dict], clients: list[int], requests: int, pid: int
) -> list[dict]:
    singles = [json.dumps(record).encode() for record in records]
    batches = [
        json.dumps({"records": [records[(start + i) % len(records)] for i in range(BATCH_ROWS)]}).encode()
        for start in range(0, len(records), BATCH_ROWS)
    ]
    rows = []
    for count in clients:
        for mode, path, bodies, total, size in (
            ("single", "/predict", singles, requests, 1),
            ("batch", "/predict/batch", batches, max(requests // 10, 2 * count), BATCH_ROWS),
        ):
            cpu = server_cpu_seconds(pid)
            measured = asyncio.run(scenario(base, keys, count, path, bodies, total))
            cpu = server_cpu_seconds(pid) - cpu  # warm-up included, as in "answered"
            rows.append({"mode": mode, "clients": count, "rows_per_request": size, **measured})
            rows[-1]["server_cpu_ms_per_row"] = 1000 * cpu / max(measured["answered"] * size, 1)
    for row in rows:
        row["rows_per_s"] = row["requests_per_s"] * row["rows_per_request"]
    return rows


def table(rows: list[dict], logged: int, sent_rows: int, command: str, load: tuple[str, str]) -> str:
    lines = [
        "# Serving benchmark (bench/serving_bench.py)",
        "",
        f"Command: `{command}`; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {os.cpu_count()} CPUs; "
        f"load average before {load[0]}, after {load[1]} (the machine is shared: other jobs only slow a run down).",
        "",
        "| mode | clients | rows/request | requests | failures | requests/s | rows/s | p50 ms | p99 ms "
        "| server CPU ms/row |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['clients']} | {r['rows_per_request']} | {r['requests']} | {r['failures']} | "
            f"{r['requests_per_s']:.0f} | {r['rows_per_s']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
            f"{r['server_cpu_ms_per_row']:.3f} |"
        )
    verdict = "none lost" if logged == sent_rows else f"{sent_rows - logged} LOST"
    lines += ["", f"Prediction log: {logged} rows for {sent_rows} rows sent ({verdict})."]
    return "\n".join(lines) + "\n"


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "n/a"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", type=Path, help="serve this policy's production version (default: train one)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--requests", type=int, default=2000, help="timed single requests per scenario")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    command = " ".join(["python bench/serving_bench.py", *(argv if argv is not None else sys.argv[1:])])
    with tempfile.TemporaryDirectory(prefix="ppml-serving-bench-") as scratch:
        work = Path(scratch)
        env = dict(os.environ)
        if args.policy is None:
            import tests.support  # noqa: F401  # sets the test environment on import: first, then ours over it

            os.environ |= {
                "PPML_HOME": str(work),
                "PPML_HMAC_KEY": secrets.token_urlsafe(32),
                "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
            }
            policy, records = small_model(work)
            env = dict(os.environ)
        else:
            policy, records = args.policy, policy_records(args.policy)
        keys = [f"bench-{i}-{secrets.token_urlsafe(24)}" for i in range(max(args.clients))]
        log_url = f"sqlite:///{work / 'serving' / 'predictions.db'}"
        env |= {"PPML_SERVE_API_KEY": ",".join(keys), "PPML_SERVE_LOG_URL": log_url, "PYTHONPATH": str(REPO)}
        env.setdefault("PPML_HOME", str(work))
        port = free_port()
        server = start_server(bench_policy(policy, work), env, port)
        load_before = loadavg()
        try:
            rows = run_load(f"http://127.0.0.1:{port}", keys, records, args.clients, args.requests, server.pid)
        finally:
            stop_server(server)
        load_after = loadavg()
        from ppml.serving.prediction_log import PredictionLog

        log = PredictionLog(log_url)
        logged = log.count()
        log.close()
    sent_rows = sum(r["answered"] * r["rows_per_request"] for r in rows)
    text = table(rows, logged, sent_rows, command, (load_before, load_after))
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return {"rows": rows, "logged": logged, "sent_rows": sent_rows}


if __name__ == "__main__":
    main()
