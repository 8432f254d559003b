"""One policy's asset graph, so that one code location can serve several policies side by side.

Every stage asset and check is declared once with ``@policy_asset`` / ``@policy_asset_check`` (in place of
Dagster's ``@asset`` / ``@asset_check``) and instantiated per ``PolicyGraph``: the graph's key prefix on the asset,
on every upstream key it reads and on the checked asset; its group names; its training window as the partition
mapping; and its own ``policy``, ``asset_store`` and ``paths`` resources (bound under prefixed resource keys, so
two graphs' resources never collide in one ``Definitions``). The single-policy default graph has no prefix: its
keys, groups and resource keys are exactly the names the module-level objects have always had.
"""

import functools
import inspect
import os
import re
import typing
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dagster import (
    AssetCheckSpec,
    AssetIn,
    AssetKey,
    AssetsDefinition,
    ConfigurableResource,
    PreviewWarning,
    TimeWindowPartitionMapping,
    asset,
    asset_check,
    multi_asset_check,
)

from ppml.errors import input_error
from ppml.federated.settings import refuse_federated_policy
from ppml.policy import load_policy
from ppml_assets.metadata import asset_definition_options, lifecycle_group
from ppml_assets.settings import POLICY_PATH, daily_partitions, training_window, training_window_days

#: Resources that belong to one policy's graph; shared ones (record source, key, MLflow, ledger, IO manager) don't.
SCOPED_RESOURCES = ("policy", "asset_store", "paths")
PREFIX_PATTERN = re.compile(r"^[a-z][a-z0-9_]{2,63}$")


@dataclass(frozen=True)
class PolicyGraph:
    """Where one policy's graph lives in the code location: its key prefix ('' for the default graph), its
    policy file and its training window (static, because the partition mapping is)."""

    policy_path: Path
    window_days: int
    prefix: str = ""

    def key(self, name: str) -> AssetKey:
        return AssetKey([self.prefix, name]) if self.prefix else AssetKey(name)

    def name(self, name: str) -> str:
        """A job, schedule, sensor, group or resource name of this graph."""
        return f"{self.prefix}__{name}" if self.prefix else name

    @functools.cached_property
    def training_window(self) -> TimeWindowPartitionMapping:
        if not self.prefix and self.window_days == training_window_days():
            return training_window
        return TimeWindowPartitionMapping(
            start_offset=-(self.window_days - 1), end_offset=0, allow_nonexistent_upstream_partitions=True
        )


DEFAULT_GRAPH = PolicyGraph(policy_path=POLICY_PATH, window_days=training_window_days())


def prefix_for(policy_name: str) -> str:
    """The key prefix of a policy's graph: its name with '-' as '_' (Dagster names and resource keys)."""
    return policy_name.replace("-", "_")


def rename_resources(fn: Callable[..., Any], graph: PolicyGraph) -> Callable[..., Any]:
    """``fn`` with its scoped resource parameters named after the graph's resource keys (Dagster binds resources
    by parameter name and honours an explicit ``__signature__``); calls reach ``fn`` under the original names."""
    if not graph.prefix:
        return fn
    signature = inspect.signature(fn)
    renamed = {name: graph.name(name) for name in SCOPED_RESOURCES if name in signature.parameters}
    if not renamed:
        return fn
    original = {new: old for old, new in renamed.items()}

    @functools.wraps(fn)
    def scoped(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **{original.get(name, name): value for name, value in kwargs.items()})

    hints = typing.get_type_hints(fn)
    scoped.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[
            p.replace(name=renamed.get(p.name, p.name), annotation=hints.get(p.name, p.annotation))
            for p in signature.parameters.values()
        ],
        return_annotation=hints.get("return", signature.return_annotation),
    )
    del scoped.__wrapped__  # type: ignore[attr-defined]  # the renamed signature is the one Dagster must read
    scoped.__annotations__ = {renamed.get(name, name): hint for name, hint in hints.items()}
    return scoped


def _input_names(fn: Callable[..., Any]) -> list[str]:
    """The parameters that are upstream assets: not the context, the run config or a resource."""
    hints = typing.get_type_hints(fn)
    names = []
    for index, name in enumerate(inspect.signature(fn).parameters):
        hint = hints.get(name)
        if (index == 0 and name == "context") or name == "config":
            continue
        if isinstance(hint, type) and issubclass(hint, ConfigurableResource):
            continue
        names.append(name)
    return names


@dataclass
class _Template:
    """One asset or check declaration, built once per graph."""

    kind: str
    fn: Callable[..., Any]
    options: dict[str, Any]
    window_inputs: tuple[str, ...] = ()
    deps: tuple[str, ...] = ()
    target: str = ""
    built: dict[PolicyGraph, Any] = field(default_factory=dict)

    def build(self, graph: PolicyGraph) -> Any:
        if graph not in self.built:
            builders = {"asset": self._build_asset, "check": self._build_check, "checks": self._build_checks}
            self.built[graph] = builders[self.kind](graph)
        return self.built[graph]

    def _build_asset(self, graph: PolicyGraph) -> AssetsDefinition:
        options = dict(self.options)
        partitioned = options.pop("partitioned", True)
        group = options.pop("group_name")
        options = asset_definition_options(self.fn, group, options)
        ins = {
            name: AssetIn(
                key=graph.key(name),
                partition_mapping=graph.training_window if name in self.window_inputs else None,
            )
            for name in _input_names(self.fn)
        }
        return asset(
            name=self.fn.__name__,
            key_prefix=graph.prefix or None,
            group_name=graph.name(lifecycle_group(group)),
            ins=ins,
            deps=[graph.key(name) for name in self.deps] or None,
            partitions_def=daily_partitions if partitioned else None,
            **options,
        )(rename_resources(self.fn, graph))

    def _build_check(self, graph: PolicyGraph) -> Any:
        inputs = [name for name in _input_names(self.fn) if name != self.target]
        return asset_check(
            asset=graph.key(self.target),
            additional_ins={name: AssetIn(key=graph.key(name)) for name in inputs} or None,
            partitions_def=daily_partitions,
            **self.options,
        )(rename_resources(self.fn, graph))

    def _build_checks(self, graph: PolicyGraph) -> Any:
        """One op for several checks on the target that may leave some without a result: Dagster shows those
        as skipped and, since 1.13, does not gate downstream steps on an absent result."""
        options = dict(self.options)
        descriptions: dict[str, str] = options.pop("checks")
        blocking = options.pop("blocking", False)
        with warnings.catch_warnings():  # a partitioned AssetCheckSpec is a preview feature in 1.13
            warnings.simplefilter("ignore", PreviewWarning)
            specs = [
                AssetCheckSpec(
                    name,
                    asset=graph.key(self.target),
                    description=description,
                    blocking=blocking,
                    partitions_def=daily_partitions,
                )
                for name, description in descriptions.items()
            ]
        return multi_asset_check(
            name=graph.name(self.fn.__name__),
            specs=specs,
            can_subset=True,
            ins={name: AssetIn(key=graph.key(name)) for name in _input_names(self.fn)},
            **options,
        )(rename_resources(self.fn, graph))


_TEMPLATES: list[_Template] = []


def policy_asset(*, window_inputs: Iterable[str] = (), deps: Iterable[str] = (), **options: Any) -> Any:
    """``@asset`` of every policy graph, daily-partitioned unless ``partitioned=False``; ``window_inputs`` read
    the training window ending the as-of partition, ``deps`` name upstream assets by name. Returns the default
    graph's definition."""

    def declare(fn: Callable[..., Any]) -> AssetsDefinition:
        template = _Template("asset", fn, options, window_inputs=tuple(window_inputs), deps=tuple(deps))
        _TEMPLATES.append(template)
        return template.build(DEFAULT_GRAPH)

    return declare


def policy_asset_check(*, asset: str, **options: Any) -> Any:
    """``@asset_check`` on the named asset of every policy graph (other inputs are that graph's assets too)."""

    def declare(fn: Callable[..., Any]) -> Any:
        template = _Template("check", fn, options, target=asset)
        _TEMPLATES.append(template)
        return template.build(DEFAULT_GRAPH)

    return declare


def policy_multi_asset_check(*, asset: str, checks: dict[str, str], blocking: bool = False, **options: Any) -> Any:
    """Several checks (name -> description) on the named asset of every policy graph, computed by one op that
    yields a result only for the checks that apply: the others show as skipped, not as passed."""

    def declare(fn: Callable[..., Any]) -> Any:
        template = _Template("checks", fn, {"checks": dict(checks), "blocking": blocking, **options}, target=asset)
        _TEMPLATES.append(template)
        return template.build(DEFAULT_GRAPH)

    return declare


def graph_assets(graph: PolicyGraph) -> tuple[list[AssetsDefinition], list[Any]]:
    """Every declared asset and check, built for one graph (the stage modules must have been imported)."""
    assets = [t.build(graph) for t in _TEMPLATES if t.kind == "asset"]
    checks = [t.build(graph) for t in _TEMPLATES if t.kind in ("check", "checks")]
    return assets, checks


def discover_policy_graphs(folder: Path) -> list[PolicyGraph]:
    """One graph per policy file (``*.yaml``/``*.yml``) in ``folder``, prefixed by the policy's name; two policies
    with one prefix or one ``dataset.id`` are refused in one line naming both files."""
    source = f"PPML_POLICY_DIR {folder}"
    if not folder.is_dir():
        raise input_error(source, "(folder)", "not a folder", "export PPML_POLICY_DIR as a folder of policy files")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".yaml", ".yml"))
    if not files:
        raise input_error(source, "(files)", "no policy file (*.yaml)", "put the policies to serve in the folder")
    graphs: list[PolicyGraph] = []
    by_prefix: dict[str, Path] = {}
    by_dataset: dict[str, Path] = {}
    for path in files:
        loaded = load_policy(path, check_files=False)
        refuse_federated_policy(path, loaded.policy.training.mode, "the central code location (PPML_POLICY_DIR)")
        prefix = prefix_for(loaded.policy.name)
        if not PREFIX_PATTERN.match(prefix):
            raise input_error(
                str(path),
                "name",
                f"'{loaded.policy.name}' gives no usable asset key prefix ('{prefix}' must start with a letter)",
                "start the policy's name with a letter",
            )
        if prefix in by_prefix:
            raise input_error(
                str(path),
                "name",
                f"its asset key prefix '{prefix}' is already that of {by_prefix[prefix]}",
                "give every policy in the folder its own name",
            )
        dataset = loaded.policy.dataset.id
        if dataset in by_dataset:
            raise input_error(
                str(path),
                "dataset.id",
                f"'{dataset}' is already served by {by_dataset[dataset]} in the same code location",
                "give each policy in the folder its own data set, or serve the other one from another folder",
            )
        by_prefix[prefix], by_dataset[dataset] = path, path
        graphs.append(PolicyGraph(path.resolve(), loaded.policy.collection.training_window_days, prefix))
    return graphs


def policy_graphs_from_env() -> list[PolicyGraph]:
    """PPML_POLICY_DIR: every policy in that folder, each its own prefixed graph; otherwise the single default
    graph of PPML_POLICY (or the bundled policy), unprefixed as it has always been."""
    folder = os.environ.get("PPML_POLICY_DIR", "").strip()
    if not folder:
        return [DEFAULT_GRAPH]
    if os.environ.get("PPML_POLICY", "").strip():
        raise input_error(
            "environment",
            "PPML_POLICY_DIR",
            "both PPML_POLICY and PPML_POLICY_DIR are set",
            "unset one: PPML_POLICY serves one policy, PPML_POLICY_DIR every policy in a folder",
        )
    return discover_policy_graphs(Path(folder))
