"""The policy's federation section: which sites train together and how (validated like the rest of the policy).

Kept apart from ppml/policy.py so that the central policy schema stays small; policy.py only hooks it in under
``training.federation`` when ``training.mode`` is ``federated``.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SITE_NAME = r"^[a-z][a-z0-9_]{1,31}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SiteSource(_Strict):
    """One site: its own landing zone (daily CSV files) or its own SQL table -- never a shared one."""

    name: str = Field(pattern=SITE_NAME, description="Short site name (also its ledger partition: site:<name>).")
    landing_zone: str | None = Field(
        default=None, description="The site's landing zone folder; relative paths lie under the workspace."
    )
    sql_table: str | None = Field(default=None, description="The site's SQL table (URL from sql_url_env).")
    sql_url_env: str = Field(
        default="PPML_SITE_SQL_URL", description="Environment variable holding the site's SQLAlchemy URL."
    )

    @model_validator(mode="after")
    def _one_source(self) -> SiteSource:
        if (self.landing_zone is None) == (self.sql_table is None):
            raise ValueError(f"site '{self.name}' needs exactly one source; fix: give either landing_zone or sql_table")
        if self.sql_table is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]{0,62}", self.sql_table):
            raise ValueError(f"site '{self.name}': sql_table {self.sql_table!r} is not a table name; fix: e.g. records")
        return self


class TransportSecurity(_Strict):
    """TLS for every Flower connection (Fleet, Control and Runtime APIs): PEM files, relative to the policy's
    folder. Without it the federation runs ``--insecure``, which only loopback tests should do."""

    ca_certificate: str = Field(description="The CA certificate the SuperNodes and the CLI verify the SuperLink with.")
    server_certificate: str = Field(description="The SuperLink's certificate (its host name or IP in the SAN).")
    server_key: str = Field(description="The SuperLink's private key (readable by the SuperLink host only).")


class SiteKeyPair(_Strict):
    """One SuperNode's identity: an EC key pair on a NIST curve (P-384 recommended) in OpenSSH format, as Flower's
    SuperNode (``--auth-supernode-private-key``) and ``flwr supernode register`` read them."""

    private_key: str = Field(description="The site's OpenSSH EC private key (0600; only its SuperNode reads it).")
    public_key: str = Field(description="The matching OpenSSH public key, registered with the SuperLink.")


class NodeAuthentication(_Strict):
    """SuperNode authentication: the SuperLink accepts only the registered sites' public keys, and every request of a
    SuperNode is signed with its site's private key. Paths lie beside the policy."""

    sites: dict[str, SiteKeyPair] = Field(description="Every site's key pair, by site name.")


class FederationSettings(_Strict):
    """Rounds, sampling, local work and the DP mode of one federated training run."""

    sites: list[SiteSource] = Field(min_length=2, max_length=32)
    rounds: int = Field(default=3, ge=1, le=1000)
    clients_per_round: int = Field(default=0, ge=0, description="Sites sampled per round (0 = every site).")
    min_sites: int = Field(default=2, ge=1, description="Fewest sites a round may complete with (else the run fails).")
    local_epochs: int = Field(default=1, ge=1, le=100)
    learning_rate: float = Field(default=0.5, gt=0, le=10)
    batch_size: int = Field(default=256, ge=8)
    aggregation: Literal["fedavg"] = "fedavg"
    dp_mode: Literal["example", "client"] = Field(
        default="example",
        description="example: DP-SGD (Opacus) inside each site; client: DP-FedAvg (clipping + server noise).",
    )
    client_clipping_norm: float = Field(default=1.0, gt=0, description="L2 bound of one site's update (client).")
    secure_aggregation: bool = Field(default=True, description="SecAgg+: the server sees only the sum of updates.")
    round_timeout_s: float = Field(default=300, gt=0, le=86400)
    tls: TransportSecurity | None = Field(default=None, description="TLS for every connection (else --insecure).")
    node_authentication: NodeAuthentication | None = Field(
        default=None, description="Only registered SuperNodes may connect (needs tls)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> FederationSettings:
        names = [site.name for site in self.sites]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"site name '{duplicates[0]}' is used twice; fix: give every site its own name")
        sources = [s.landing_zone or f"sql:{s.sql_url_env}:{s.sql_table}" for s in self.sites]
        shared = sorted({s for s in sources if sources.count(s) > 1})
        if shared:
            raise ValueError(f"two sites read the same source {shared[0]!r}; fix: give every site its own source")
        if self.clients_per_round > len(self.sites):
            raise ValueError(
                f"clients_per_round {self.clients_per_round} exceeds the {len(self.sites)} sites; "
                "fix: lower it or use 0 for every site"
            )
        if self.min_sites > self.sampled_sites:
            raise ValueError(
                f"min_sites {self.min_sites} exceeds the {self.sampled_sites} sites sampled per round; fix: lower it"
            )
        if self.secure_aggregation and self.min_sites < 2:
            raise ValueError("secure aggregation needs min_sites >= 2 (one site's sum is its update); fix: raise it")
        self._check_node_authentication(names)
        return self

    def _check_node_authentication(self, names: list[str]) -> None:
        """Flower's SuperLink refuses node authentication without TLS, and a site without a registered key could
        never join: both are refused when the policy loads rather than when the processes start."""
        if self.node_authentication is None:
            return
        if self.tls is None:
            raise ValueError(
                "node_authentication needs tls (Flower refuses SuperNode authentication without TLS); "
                "fix: add training.federation.tls or remove node_authentication"
            )
        keyed = set(self.node_authentication.sites)
        unknown, unkeyed = sorted(keyed - set(names)), [n for n in names if n not in keyed]
        if unknown:
            raise ValueError(
                f"node_authentication names site '{unknown[0]}', which is not a federation site; fix: remove it"
            )
        if unkeyed:
            raise ValueError(
                f"site '{unkeyed[0]}' has no key pair in node_authentication.sites; fix: add its private_key and "
                "public_key"
            )

    @property
    def sampled_sites(self) -> int:
        return self.clients_per_round or len(self.sites)

    def site(self, name: str) -> SiteSource:
        for site in self.sites:
            if site.name == name:
                return site
        raise KeyError(name)


def refuse_federated_policy(policy_path: object, mode: str, where: str) -> None:
    """A federated policy trains only through the federated code location: the central graph would pool the
    sites' records, which is exactly what such a policy forbids, so it is refused there in one line."""
    if mode == "federated":
        from ppml.errors import PPMLError

        raise PPMLError(
            f"{policy_path}: field 'training.mode': federated policies do not run in {where}; "
            "fix: run it from the federated code location (dagster dev -m ppml_assets.federated, docs/federated.md)"
        )
