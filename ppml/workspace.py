"""The embedded default workspace under PPML_HOME (``.ppml/``): Dagster instance, MLflow store, secrets.

`ppml demo` and `ppml ui` prepare it so that a fresh clone runs with no set-up: DAGSTER_HOME with SQLite
storage, MLflow tracking in SQLite with local artifacts, the bundled landing zone, and — only when the operator
has not exported one — a generated pseudonymization key kept in a 0600 file for the demo. Production sets
PPML_HMAC_KEY and points DAGSTER_HOME at a directory holding ``deploy/dagster.yaml`` (PostgreSQL).
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ppml.deidentification import HMAC_KEY_ENV, hmac_key_from_env
from ppml.evidence.signing import SIGNING_KEY_ENV, ensure_demo_key, signing_key_from_env
from ppml.private_files import private_dir, tighten_tree, use_private_umask

EMBEDDED_DAGSTER_YAML = """# Embedded default: SQLite storage under this folder, written by ppml.
# For PostgreSQL see deploy/dagster.yaml.
storage:
  sqlite:
    base_dir: {base_dir}
telemetry:
  enabled: false
"""


@dataclass(frozen=True)
class Workspace:
    home: Path

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @property
    def landing_zone(self) -> Path:
        return self.home / "landing"

    @property
    def reports(self) -> Path:
        return self.home / "reports"

    @property
    def mlflow_dir(self) -> Path:
        return self.home / "mlflow"

    @property
    def mlflow_tracking_uri(self) -> str:
        return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.mlflow_dir / 'mlflow.db'}"

    @property
    def ledger_url(self) -> str:
        """The ledger lives in the Dagster instance's database: PostgreSQL when configured, else SQLite beside it."""
        return os.environ.get("PPML_LEDGER_URL") or f"sqlite:///{self.dagster_home / 'privacy_ledger.db'}"

    def use_dagster_home(self) -> Path:
        """DAGSTER_HOME as exported (production), else the embedded SQLite instance here; returns the folder."""
        if "DAGSTER_HOME" not in os.environ:
            os.environ["DAGSTER_HOME"] = str(self.dagster_home)
            private_dir(self.dagster_home)
            config = self.dagster_home / "dagster.yaml"
            if not config.exists():  # written beside and renamed: a racing reader never sees half a file
                partial = config.with_name(f".dagster.yaml.{os.getpid()}.tmp")
                partial.write_text(EMBEDDED_DAGSTER_YAML.format(base_dir=self.dagster_home / "storage"))
                os.replace(partial, config)
        return Path(os.environ["DAGSTER_HOME"])


def default_home() -> Path:
    return Path(os.environ.get("PPML_HOME", Path.cwd() / ".ppml")).resolve()


def prepare_workspace(
    home: Path | None = None, *, demo_key: Literal["create", "reuse", "never"] = "create"
) -> tuple[Workspace, list[str]]:
    """Create the folders and environment the embedded default needs; return notes for the operator.

    Only the demo may generate a pseudonymization key (``create``); ``ppml ui`` may reuse the key the demo made
    (``reuse``); every other command needs PPML_HMAC_KEY (``never``). A key that is set but weak is always an
    error, never replaced by the demo key. The evidence-signing key (PPML_SIGNING_KEY) follows the same rules.
    """
    workspace = Workspace((home or default_home()).resolve())
    key_file = workspace.home / "secrets" / "demo_hmac_key"
    usable_demo_key = demo_key == "create" or (demo_key == "reuse" and key_file.is_file())
    if os.environ.get(HMAC_KEY_ENV) or not usable_demo_key:
        hmac_key_from_env()  # checked before anything is created
    signing_file = workspace.home / "secrets" / "demo_signing_key"
    usable_demo_signing = demo_key == "create" or (demo_key == "reuse" and signing_file.is_file())
    if os.environ.get(SIGNING_KEY_ENV) or demo_key == "never":
        signing_key_from_env()  # the evidence pack is signed at the end of every run: refuse before it starts
    notes: list[str] = []
    use_private_umask()
    private_dir(workspace.home)
    loosened = tighten_tree(workspace.home)
    if loosened:
        notes.append(f"{loosened} files under {workspace.home} were readable by others: now owner-only (0600)")
    for folder in (workspace.dagster_home, workspace.reports, workspace.mlflow_dir / "artifacts"):
        private_dir(folder)
    os.environ["PPML_HOME"] = str(workspace.home)
    workspace.use_dagster_home()
    os.environ.setdefault("MLFLOW_TRACKING_URI", workspace.mlflow_tracking_uri)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if not os.environ.get(HMAC_KEY_ENV):
        if not key_file.exists():
            private_dir(key_file.parent)
            descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(secrets.token_hex(32))
        os.environ[HMAC_KEY_ENV] = key_file.read_text().strip()
        notes.append(
            f"DEMO KEY: {HMAC_KEY_ENV} is not set, so pseudonyms use a generated demo key kept in {key_file} "
            f"(mode 0600) - for the bundled synthetic data only; for real data export {HMAC_KEY_ENV} from your "
            "secret store."
        )
    if not os.environ.get(SIGNING_KEY_ENV) and usable_demo_signing:
        os.environ[SIGNING_KEY_ENV], key_path = ensure_demo_key(private_dir(signing_file.parent))
        notes.append(
            f"DEMO KEY: {SIGNING_KEY_ENV} is not set, so the evidence pack is signed with a generated demo key kept "
            f"in {key_path} (mode 0600); for real data export {SIGNING_KEY_ENV} from your secret store."
        )
    return workspace, notes
