"""ConfigurableResources over the engines' configuration.

Values come from environment variables (see README, "Configuration"); secrets such as the pseudonymization key
are declared with ``EnvVar`` so that Dagster never stores or displays them.
"""

from pathlib import Path

from dagster import ConfigurableResource

from ppml.collection import LandingZoneReader, RecordReader, SqlTableReader
from ppml.policy import LoadedPolicy, load_policy


class PolicyResource(ConfigurableResource):
    """The policy file every stage reads its settings from."""

    path: str

    def load(self) -> LoadedPolicy:
        return load_policy(self.path)


class RecordSource(ConfigurableResource):
    """Where raw records come from; subclasses are the supported source kinds."""

    def reader(self) -> RecordReader:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError


class LandingZoneSource(RecordSource):
    """A landing zone of daily CSV files: ``<root>/event_date=YYYY-MM-DD/records.csv``."""

    root: str

    def reader(self) -> RecordReader:
        return LandingZoneReader(Path(self.root))

    def describe(self) -> str:
        return f"landing zone {self.root}"


class SqlTableSource(RecordSource):
    """An SQL table read by event date through SQLAlchemy (PostgreSQL tested)."""

    url: str
    table: str
    event_date_column: str = "event_date"
    db_schema: str | None = None

    def reader(self) -> RecordReader:
        return SqlTableReader(self.url, self.table, self.event_date_column, self.db_schema)

    def describe(self) -> str:
        from sqlalchemy.engine import make_url

        return f"SQL table {self.table} at {make_url(self.url).render_as_string(hide_password=True)}"


class PseudonymizationKey(ConfigurableResource):
    """The HMAC key for pseudonyms; configure it with ``EnvVar("PPML_HMAC_KEY")`` so it is never displayed."""

    hmac_key: str

    def key(self) -> bytes:
        from ppml.deidentification import hmac_key_from_env

        return hmac_key_from_env({"PPML_HMAC_KEY": self.hmac_key})


class WorkspacePaths(ConfigurableResource):
    """Folders under PPML_HOME for reports and training checkpoints; ``scope`` (a policy graph's key prefix)
    gives each policy of a multi-policy code location its own folders, so as-of days never collide;
    ``checkpoint_base`` puts checkpoints on a shared path, so a training resumed on another host finds them."""

    home: str
    scope: str = ""
    checkpoint_base: str | None = None

    @property
    def reports_dir(self) -> Path:
        return Path(self.home, "reports", *filter(None, [self.scope]))

    @property
    def checkpoints_dir(self) -> Path:
        if self.checkpoint_base:
            from ppml.locations import local_directory

            return local_directory(self.checkpoint_base, "PPML_CHECKPOINT_BASE").joinpath(*filter(None, [self.scope]))
        return Path(self.home, "checkpoints", *filter(None, [self.scope]))


class MlflowResource(ConfigurableResource):
    """MLflow tracking and registry (SQLite + local artifacts by default, PostgreSQL in production)."""

    tracking_uri: str
    registry_uri: str | None = None
    artifact_location: str | None = None
    experiment_name: str = "ppml"

    def configure(self) -> str:
        """Create the experiment with its artifact location on first use; return its id.

        Nothing global is changed (no ``mlflow.set_experiment``): every call goes through an explicit client, so
        several workspaces can share one process (tests, the in-process executor).
        """
        client = self.client()
        experiment = client.get_experiment_by_name(self.experiment_name)
        if experiment is None:
            experiment_id = client.create_experiment(self.experiment_name, artifact_location=self.artifact_location)
        else:
            experiment_id = experiment.experiment_id
        return experiment_id

    def client(self):  # type: ignore[no-untyped-def]  # mlflow is imported lazily: it is slow to import
        from mlflow import MlflowClient

        from ppml.storage import prepare_mlflow

        prepare_mlflow(self.tracking_uri)  # parallel steps on a fresh store: tables created once, under a lock
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri or self.tracking_uri)


class LedgerResource(ConfigurableResource):
    """The lifetime privacy-budget ledger, in the same database as the Dagster instance."""

    url: str
