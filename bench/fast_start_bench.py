"""Fast start: the costs of `make demo`'s first seconds, before and after, measured side by side in one run.

    nice -n 10 .venv/bin/python bench/fast_start_bench.py                 # the bundled 48,842 records
    nice -n 10 .venv/bin/python bench/fast_start_bench.py --records 500   # the smoke test's toy size

* landing zone: the identifiers of every record, per-record Faker calls (the generator before, kept here as the
  reference) versus ``ppml.landing_zone.synthetic_identifiers`` (vectorized over Faker's word lists), plus
  reading the bundled Adult files with the python parser (before) versus the C parser (after);
* the report's identifier check (``ppml.reporting._find_forbidden``, run by the compliance step on every
  report): one substring search per identifier value (before) versus searching only the values whose first six
  characters occur in the document (after); the values of at most 10,000 synthetic people against a
  report-sized JSON document;
* the identifier-leakage scan of the compliance step (``ppml.evaluation.leakage``), which searches every model
  file, parameter and tag for every identifier value: the phrases (names, addresses, phone numbers) with one
  ``bytes.count`` each (before) versus one Aho-Corasick pass (pyahocorasick, after), on a 1 MiB payload;
* CLI start: a fresh interpreter importing ``ppml.cli`` with the modules it used to import eagerly (before)
  versus ``ppml.cli`` alone (after: the anonymization engine, pandas and the workspace load when a command
  that needs them runs).

Each row is the best of ``--repeat`` runs; the ratio is before / after. Writes markdown to stdout and, with
``--out``, to a file, with the command, the date and the load average.
"""

from __future__ import annotations

import argparse
import gzip
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ppml.landing_zone import ADULT_COLUMNS, BUNDLED_ADULT_DIR, synthetic_identifiers  # noqa: E402
from ppml.reporting import _find_forbidden  # noqa: E402


def faker_identifiers(n: int, seed: int = 20260101) -> pd.DataFrame:
    """The generator before: one seeded Faker instance call per record (the reference being replaced)."""
    from faker import Faker

    fake = Faker("en_US")
    rows = []
    for index in range(n):
        fake.seed_instance(seed * 1_000_003 + index)
        first, last = fake.first_name(), fake.last_name()
        rows.append(
            {
                "name": f"{first} {last}",
                "ssn": fake.ssn(),
                "email": f"{first}.{last}{index % 97}@{fake.free_email_domain()}".lower(),
                "phone": fake.numerify("(###) ###-####"),
                "street_address": fake.street_address(),
                "zip": fake.zipcode(),
            }
        )
    return pd.DataFrame(rows)


def read_adult(engine: str) -> pd.DataFrame:
    frames = []
    for name in ("adult.data.gz", "adult.test.gz"):
        with gzip.open(BUNDLED_ADULT_DIR / name, "rt", encoding="utf-8") as handle:
            if engine == "python":
                frames.append(pd.read_csv(handle, sep=", ", engine="python", header=0, names=ADULT_COLUMNS, dtype=str))
            else:
                frames.append(pd.read_csv(handle, sep=",", skipinitialspace=True, header=0, names=ADULT_COLUMNS))
    return pd.concat(frames, ignore_index=True)


def naive_find_forbidden(document: str, forbidden: set[str]) -> bool:
    """The report's identifier check before: one substring search per value."""
    return any(value and len(value) >= 6 and value in document for value in forbidden)


def report_check_inputs(n: int) -> tuple[str, set[str]]:
    """A report-sized JSON document (aggregates) and the identifier values of ``n`` synthetic people."""
    import json

    ids = synthetic_identifiers(np.random.default_rng([20260101, 2]), n)
    values = {str(v) for column in ids.columns for v in ids[column] if len(str(v)) >= 6}
    rows = [{"feature": f"feature_{i}=value{i % 50}", "value": i * 0.123456} for i in range(6000)]
    return json.dumps({"rows": rows}, indent=2), values


def leakage_scan_inputs(n: int) -> tuple[object, bytes]:
    """The identifier index of ``n`` synthetic people and a model-file-sized payload (1 MiB, no identifier)."""
    from ppml.evaluation.leakage import _ValueIndex

    ids = synthetic_identifiers(np.random.default_rng([20260101, 3]), n)
    index = _ValueIndex({column: ids[column].tolist() for column in ids.columns}, 6)
    payload = np.random.default_rng(4).integers(0, 256, size=1 << 20, dtype=np.uint8).tobytes()
    return index, payload


def naive_phrase_search(index: object, payload: bytes) -> int:
    """The leakage scan's phrase search before: one ``bytes.count`` per phrase."""
    lowered = payload.lower()
    return sum(lowered.count(phrase) for phrase, _column in index.phrases)  # type: ignore[attr-defined]


def best_of(repeat: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


#: What `import ppml.cli` used to import eagerly (the anonymization engine and the workspace module, with pandas).
EAGER_BEFORE = "import ppml.cli, ppml.anonymization.cli, ppml.workspace"


def import_seconds(repeat: int, statement: str) -> float:
    """A fresh interpreter's time to run ``statement`` (the cost every `ppml` command pays before its work)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-c", statement]
    return best_of(repeat, lambda: subprocess.run(command, env=env, capture_output=True, check=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=48842, help="records whose identifiers are generated")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    n = args.records
    checked = report_check_inputs(min(n, 10000))
    scanned = leakage_scan_inputs(min(n, 10000))
    rows = [
        (
            f"identifiers of {n:,} records",
            best_of(args.repeat, lambda: faker_identifiers(n)),
            best_of(args.repeat, lambda: synthetic_identifiers(np.random.default_rng([20260101, 1]), n)),
        ),
        ("read the bundled Adult files", best_of(args.repeat, lambda: read_adult("python")), None),
        (
            f"report identifier check, {min(n, 10000):,} people's values",
            best_of(args.repeat, lambda: naive_find_forbidden(*checked)),
            best_of(args.repeat, lambda: _find_forbidden(*checked)),
        ),
        (
            f"leakage scan of a 1 MiB payload, {min(n, 10000):,} people's names and addresses",
            best_of(args.repeat, lambda: naive_phrase_search(*scanned)),
            best_of(args.repeat, lambda: scanned[0].search(scanned[1])),  # type: ignore[attr-defined]
        ),
        (
            "CLI start: `import ppml.cli` (before: with the eager imports)",
            import_seconds(args.repeat, EAGER_BEFORE),
            import_seconds(args.repeat, "import ppml.cli"),
        ),
    ]
    rows[1] = (rows[1][0], rows[1][1], best_of(args.repeat, lambda: read_adult("c")))
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "n/a"
    command = "python bench/fast_start_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load average {load}, command `{command.strip()}`",
        "",
        "| step | before (s) | after (s) | before / after |",
        "|---|---|---|---|",
    ]
    for name, before, after in rows:
        if after is None:
            lines.append(f"| {name} | {before:.3f} | | |")
        else:
            lines.append(f"| {name} | {before:.3f} | {after:.3f} | {before / after:.1f}x |")
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
