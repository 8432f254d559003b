"""Flower's Deployment Engine as real processes on loopback: one SuperLink, one SuperNode per site.

Every process is started in its own session (``start_new_session``), on free ports chosen at run time, and
stopped by process group together with the processes Flower forks from it (SuperExec, ServerApp, ClientApp).
The run itself is submitted with ``flwr run`` against the SuperLink's Control API, exactly as an operator would;
the app is a tiny Flower App (FAB) whose components are ppml's ServerApp and ClientApp.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from ppml.errors import PPMLError
from ppml.federated.audit_open import AUDIT_DIR_ENV
from ppml.federated.node_auth import NodeKeyFiles
from ppml.federated.run_config import RunConfig
from ppml.federated.settings import FederationSettings
from ppml.private_files import private_dir

BIN = Path(sys.executable).parent
SERVER_SITE_DIR = Path(__file__).resolve().parent / "_server_site"
CONNECTION = "ppml"


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free loopback port never handed out before in this process: the processes bind theirs only after they
    start, so without the memory two of them could be given the same just-released port (a SuperNode then exits
    with 'Port ... is already in use')."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def _wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise PPMLError(f"{log}: field '(process)': exited with {process.returncode}; fix: read the log")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise PPMLError(f"{log}: field '(process)': port {port} not open after {timeout_s} s; fix: read the log")


def _descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (Flower detaches SuperExec into its own session)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _signal_tree(process: subprocess.Popen, sig: int) -> None:
    for pid in [process.pid, *_descendants(process.pid)]:
        for target in {pid, _pgid(pid)}:
            if target:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    (os.killpg if target != pid else os.kill)(target, sig)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


@dataclass(frozen=True)
class TlsFiles:
    """Resolved PEM files of :class:`ppml.federated.settings.TransportSecurity`."""

    ca_certificate: Path
    server_certificate: Path
    server_key: Path


def tls_files(fed: FederationSettings, resolve: Callable[[Path], Path], source: str) -> TlsFiles | None:
    """The policy's TLS files as paths, each refused in one line when it is not a readable file."""
    if fed.tls is None:
        return None
    files = {}
    for name in ("ca_certificate", "server_certificate", "server_key"):
        path = resolve(Path(getattr(fed.tls, name)))
        if not path.is_file() or not os.access(path, os.R_OK):
            raise PPMLError(
                f"{source}: field 'training.federation.tls.{name}': {path} is not a readable file; "
                "fix: point it at the PEM file (relative paths lie beside the policy)"
            )
        files[name] = path
    return TlsFiles(**files)


@dataclass
class Federation:
    """The processes of one federation; use as a context manager so they always stop."""

    work_dir: Path
    site_dirs: dict[str, Path]
    audit_server_opens: Path | None = None
    tls: TlsFiles | None = None
    node_keys: dict[str, NodeKeyFiles] | None = None
    superlink_port: int = 0
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def _env(self, role: str) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        env["FLWR_HOME"] = str(private_dir(self.work_dir / "flwr" / role))
        env.pop(AUDIT_DIR_ENV, None)
        if role == "server" and self.audit_server_opens is not None:
            env[AUDIT_DIR_ENV] = str(private_dir(self.audit_server_opens))
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SERVER_SITE_DIR), env.get("PYTHONPATH")]))
        return env

    def _start(self, name: str, command: list[str], role: str) -> subprocess.Popen:
        log = (private_dir(self.work_dir / "logs") / f"{name}.log").open("ab")
        process = subprocess.Popen(
            command,
            env=self._env(role),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=self.work_dir,
        )
        log.close()
        self.processes[name] = process
        return process

    def log_path(self, name: str) -> Path:
        return self.work_dir / "logs" / f"{name}.log"

    def start(self) -> Federation:
        private_dir(self.work_dir)
        self.superlink_port = free_port()
        superlink = self._start(
            "superlink",
            [
                str(BIN / "flower-superlink"),
                *self._server_security(),
                "--port",
                str(self.superlink_port),
                "--health-server-address",
                f"127.0.0.1:{free_port()}",
                "--disable-runtime-dependency-installation",
                *(["--enable-supernode-auth"] if self.node_keys is not None else []),
            ],
            "server",
        )
        _wait_for_port(self.superlink_port, superlink, self.log_path("superlink"))
        self._write_cli_config()
        if self.node_keys is not None:
            self._register_nodes(self.node_keys)
        for site, site_dir in self.site_dirs.items():
            self.start_site(site, site_dir)
        return self

    def start_site(self, site: str, site_dir: Path) -> subprocess.Popen:
        node_config = f"site='{site}' site-dir='{Path(site_dir).resolve()}'"
        return self._start(
            f"supernode-{site}",
            [
                str(BIN / "flower-supernode"),
                *(["--root-certificates", str(self.tls.ca_certificate)] if self.tls else ["--insecure"]),
                "--superlink",
                f"127.0.0.1:{self.superlink_port}",
                "--port",
                str(free_port()),
                "--health-server-address",
                f"127.0.0.1:{free_port()}",
                "--node-config",
                node_config,
                *self._node_key(site),
            ],
            f"site-{site}",
        )

    def _node_key(self, site: str) -> list[str]:
        """The site's signing key; with node authentication on, a site without one could not connect at all."""
        if self.node_keys is None or site not in self.node_keys:
            return []
        return ["--auth-supernode-private-key", str(self.node_keys[site].private_key)]

    def _register_nodes(self, node_keys: dict[str, NodeKeyFiles]) -> None:
        """Register each site's public key through the Control API, as the SuperLink's operator would with
        ``flwr supernode register``; the SuperLink then refuses every SuperNode that signs with another key."""
        env = self._env("server")
        env.pop(AUDIT_DIR_ENV, None)
        for site, keys in node_keys.items():
            command = [str(BIN / "flwr"), "supernode", "register", str(keys.public_key), CONNECTION, "--name", site]
            with self.log_path("flwr-register").open("ab") as log:
                try:
                    done = subprocess.run(
                        command, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=60, cwd=self.work_dir
                    )
                    code = str(done.returncode)
                except subprocess.TimeoutExpired:
                    code = "timeout after 60 s"
            if code != "0":
                raise PPMLError(
                    f"federation: field 'training.federation.node_authentication.sites.{site}': the SuperLink did not "
                    f"register its public key (exit {code}); fix: read {self.log_path('flwr-register')}"
                )

    def _write_cli_config(self) -> None:
        """The CLI's ``FLWR_HOME/config.toml``: one SuperLink connection named ``ppml``."""
        home = self._env("server")["FLWR_HOME"]
        (Path(home) / "config.toml").write_text(
            tomli_w.dumps({"superlink": {"default": CONNECTION, CONNECTION: self._connection()}}), encoding="utf-8"
        )

    def _server_security(self) -> list[str]:
        if self.tls is None:
            return ["--insecure"]
        return [
            "--ssl-ca-certfile",
            str(self.tls.ca_certificate),
            "--ssl-certfile",
            str(self.tls.server_certificate),
            "--ssl-keyfile",
            str(self.tls.server_key),
        ]

    def _connection(self) -> dict[str, object]:
        """The CLI's SuperLink connection: verify the SuperLink's certificate, or (loopback tests) insecure."""
        address = {"address": f"127.0.0.1:{self.superlink_port}"}
        if self.tls is None:
            return address | {"insecure": True}
        return address | {"root-certificates": str(self.tls.ca_certificate)}

    def kill_site(self, site: str) -> None:
        """SIGKILL a site's SuperNode and everything it forked (a crashed site, for fault tests)."""
        _signal_tree(self.processes[f"supernode-{site}"], signal.SIGKILL)

    def run(self, config: RunConfig, timeout_s: float) -> subprocess.CompletedProcess:
        """Submit ppml's Flower App to the SuperLink and stream its logs until the run ends."""
        app_dir = write_app(self.work_dir / "app", config)
        self._write_cli_config()
        env = self._env("server")
        env.pop(AUDIT_DIR_ENV, None)  # the CLI reads the app folder it submits; it is not the server
        with self.log_path("flwr-run").open("ab") as log:
            try:
                return subprocess.run(
                    [str(BIN / "flwr"), "run", str(app_dir), CONNECTION, "--stream"],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=timeout_s,
                    cwd=self.work_dir,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                raise PPMLError(
                    f"federation: field 'training.federation.round_timeout_s': the run did not finish in "
                    f"{timeout_s:.0f} s; fix: read {self.log_path('superlink')} or raise the timeout"
                ) from None

    def stop(self) -> None:
        for process in self.processes.values():
            _signal_tree(process, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_tree(process, signal.SIGKILL)
                process.wait(timeout=5)

    def __enter__(self) -> Federation:
        """Start; a start that fails half-way (a refused registration) stops what it had started already."""
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


def write_app(app_dir: Path, config: RunConfig) -> Path:
    """The Flower App folder: metadata, the run config, and two modules naming ppml's apps."""
    package = private_dir(app_dir / "ppml_flower_app")
    (package / "__init__.py").write_text('"""ppml\'s Flower App."""\n', encoding="utf-8")
    (package / "server.py").write_text(
        "from ppml.federated.server_app import app as ppml_app\n\napp = ppml_app\n", encoding="utf-8"
    )
    (package / "client.py").write_text(
        "from ppml.federated.client_app import app as ppml_app\n\napp = ppml_app\n", encoding="utf-8"
    )
    project = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {
            "name": "ppml-flower-app",
            "version": "1.0.0",
            "description": "ppml federated training",
            "license": "Apache-2.0",
            "dependencies": [],
        },
        "tool": {
            "hatch": {"build": {"targets": {"wheel": {"packages": ["."]}}}},
            "flwr": {
                "app": {
                    "publisher": "ppml",
                    "components": {
                        "serverapp": "ppml_flower_app.server:app",
                        "clientapp": "ppml_flower_app.client:app",
                    },
                    "config": config.to_flower(),
                }
            },
        },
    }
    (app_dir / "pyproject.toml").write_text(tomli_w.dumps(project), encoding="utf-8")
    return app_dir
