"""The evidence pack's thin Dagster layer: walk the asset graph from a model version back to collection and hand
the engine (:mod:`ppml.evidence.pack`) one node per stored materialization, then attach the signed manifest to
the MLflow model version. The lineage is read from the code location's asset graph and its partition mappings,
so the hash DAG mirrors exactly what Dagster shows."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from typing import Any

from dagster import AssetExecutionContext, AssetKey, TimeWindowPartitionMapping

from ppml.evidence import signing
from ppml.evidence.pack import NodeSpec, PackFiles, write_pack
from ppml.policy import LoadedPolicy
from ppml_assets.common import latest_metadata
from resources import AssetStore, MlflowResource

EVIDENCE_ROOT_TAG = "ppml.evidence_root_sha256"


def _node_id(key: AssetKey, partition: str | None) -> str:
    return f"{key.to_user_string()}/{partition or 'latest'}"


def _parent_partitions(graph: Any, child: AssetKey, parent: AssetKey, partition: str | None) -> list[str | None]:
    """The parent's partitions one child partition reads, by the edge's partition mapping."""
    parent_node = graph.get(parent)
    if parent_node.partitions_def is None:
        return [None]
    mapping = graph.get_partition_mapping(child, parent)
    if partition is None or not isinstance(mapping, TimeWindowPartitionMapping):
        return [partition]
    first = parent_node.partitions_def.get_first_partition_key()
    day = date.fromisoformat(partition)
    window = range(mapping.start_offset, mapping.end_offset + 1)
    keys = [(day + timedelta(days=offset)).isoformat() for offset in window]
    return [k for k in keys if first is None or k >= first]


def _asset_graph(context: AssetExecutionContext, loaded: LoadedPolicy, asset_store: AssetStore) -> Any:
    """The code location's whole asset graph (a job's own graph lacks the partitions of assets outside it). An
    in-process run has no repository on its context: then this policy's graph is built again from the same
    declarations the code location used (``ppml_assets.graph``), with the policy's window."""
    from dagster_shared.check import CheckError

    try:
        return context.repository_def.asset_graph
    except CheckError:
        from dagster._core.definitions.assets.graph.asset_graph import AssetGraph  # no public builder without resources

        import ppml_assets.definitions  # noqa: F401  # registers every stage's declarations
        from ppml_assets.graph import DEFAULT_GRAPH, PolicyGraph, graph_assets

        graph = DEFAULT_GRAPH
        if asset_store.key_prefix:
            days = loaded.policy.collection.training_window_days
            graph = PolicyGraph(policy_path=loaded.path, window_days=days, prefix=asset_store.key_prefix)
        return AssetGraph.from_assets(graph_assets(graph)[0])


def _stored_file(asset_store: AssetStore, key: AssetKey, partition: str | None) -> str | None:
    from ppml.locations import resolve_location

    stem = resolve_location(asset_store.base_dir).joinpath(*key.path, partition or "latest")
    for suffix in (".parquet", ".json"):
        candidate = stem.with_name(stem.name + suffix)
        if candidate.is_file():
            return str(candidate)
    return None


def _recorded_hash(instance: Any, key: AssetKey, partition: str | None) -> str | None:
    """The collection-time hash of a partition whose file was disposed (raw copies), from its metadata."""
    if partition is None:
        return None
    recorded = latest_metadata(instance, key, partition).get("content_sha256")
    if isinstance(recorded, dict):
        recorded = recorded.get(partition)
    return str(recorded) if recorded else None


def lineage_nodes(
    context: AssetExecutionContext, loaded: LoadedPolicy, asset_store: AssetStore, sinks: list[str], partition: str
) -> tuple[list[NodeSpec], list[str]]:
    """One node per materialization upstream of (and including) ``sinks`` at ``partition``; returns the nodes
    and the ids of the sinks themselves."""
    graph = _asset_graph(context, loaded, asset_store)
    keys = [asset_store.asset_key(name) for name in sinks]
    pending = [(key, None if graph.get(key).partitions_def is None else partition) for key in keys]
    sink_ids = [_node_id(key, part) for key, part in pending]
    seen: dict[str, NodeSpec] = {}
    while pending:
        key, part = pending.pop()
        node_id = _node_id(key, part)
        if node_id in seen:
            continue
        inputs = []
        for parent in sorted(graph.get(key).parent_keys, key=lambda k: k.to_user_string()):
            for parent_part in _parent_partitions(graph, key, parent, part):
                inputs.append(_node_id(parent, parent_part))
                pending.append((parent, parent_part))
        stored = _stored_file(asset_store, key, part)
        recorded = None if stored else _recorded_hash(context.instance, key, part)
        note = "" if stored else ("hash recorded at materialization; file disposed" if recorded else "not stored")
        seen[node_id] = NodeSpec(node_id, tuple(inputs), stored, recorded, note)
    return list(seen.values()), sink_ids


def policy_nodes(loaded: LoadedPolicy) -> list[NodeSpec]:
    """The policy file and every file it names (hierarchies, erasure list) as inputs of privacy_requirements."""
    named = {"policy_file": loaded.path, **{f"policy_file/{f}": p for f, p in loaded.named_files().items()}}
    return [NodeSpec(node_id, (), str(path), note="file named by the policy") for node_id, path in named.items()]


def model_nodes(mlflow: MlflowResource, model_name: str, version: str, parent: str) -> list[NodeSpec]:
    """Every file of the registered model version's artifacts (local artifact store); a remote store's files are
    hashed from a download and recorded, since verify cannot read them without MLflow access."""
    import tempfile

    from ppml.evidence.pack import file_sha256

    client = mlflow.client()
    source = client.get_model_version(model_name, version).source
    prefix = f"mlflow_model/{model_name}/v{version}"
    location = ""
    if source.startswith("models:/"):
        location = client.get_logged_model(source.removeprefix("models:/").split("/")[0]).artifact_location
    local = location.removeprefix("file://") if location.startswith(("file://", "/")) else ""
    if local and Path(local).is_dir():
        files = sorted(p for p in Path(local).rglob("*") if p.is_file())
        return [NodeSpec(f"{prefix}/{p.relative_to(local)}", (parent,), str(p)) for p in files]
    from mlflow.artifacts import download_artifacts

    with tempfile.TemporaryDirectory(prefix="ppml-model-") as scratch:
        root = Path(download_artifacts(artifact_uri=source, dst_path=scratch, tracking_uri=mlflow.tracking_uri))
        return [
            NodeSpec(f"{prefix}/{p.relative_to(root)}", (parent,), None, file_sha256(p), f"remote artifact {source}")
            for p in sorted(root.rglob("*"))
            if p.is_file()
        ]


def report_nodes(files: list[Path], inputs: list[str], directory: Path) -> list[NodeSpec]:
    """The report, evidence.json, documents, plots and PDF: products of the lineage's sinks."""
    return [NodeSpec(f"report/{path.relative_to(directory).as_posix()}", tuple(inputs), str(path)) for path in files]


def sign_and_attach(nodes: list[NodeSpec], model: dict[str, Any], directory: Path, mlflow: MlflowResource) -> PackFiles:
    """Sign the pack with PPML_SIGNING_KEY and attach it to the model version (run artifacts + root-hash tag)."""
    key = signing.signing_key_from_env()
    pack = write_pack(nodes, model, directory, key)
    client = mlflow.client()
    for path in (pack.manifest, pack.signature, pack.public_key):
        client.log_artifact(model["mlflow_run_id"], str(path), "evidence_pack")
    client.set_model_version_tag(model["model_name"], str(model["version"]), EVIDENCE_ROOT_TAG, pack.root_sha256)
    client.set_model_version_tag(model["model_name"], str(model["version"]), "ppml.evidence_pack", str(directory))
    return pack


def build_evidence_pack(
    context: AssetExecutionContext,
    *,
    loaded: LoadedPolicy,
    asset_store: AssetStore,
    mlflow: MlflowResource,
    sinks: list[str],
    report_files: list[Path],
    decision: dict[str, Any],
    mlflow_run_id: str,
) -> PackFiles:
    """The whole pack for the model version in ``decision``: lineage, policy files, model files, report files."""
    partition = context.partition_key
    lineage, sink_ids = lineage_nodes(context, loaded, asset_store, sinks, partition)
    policy = policy_nodes(loaded)
    requirements = _node_id(asset_store.asset_key("privacy_requirements"), None)
    lineage = [
        NodeSpec(n.id, (*n.inputs, *(p.id for p in policy)), n.path, n.recorded_sha256, n.note)
        if n.id == requirements
        else n
        for n in lineage
    ]
    dp_model = _node_id(asset_store.asset_key("dp_model"), partition)
    model = {
        "model_name": decision["model_name"],
        "version": str(decision["version"]),
        "status": decision.get("status"),
        "mlflow_run_id": mlflow_run_id,
        "dagster_run_id": context.run.run_id,
        "as_of": partition,
        "policy_sha256": loaded.content_hash,
    }
    files = model_nodes(mlflow, model["model_name"], model["version"], dp_model)
    directory = Path(report_files[0]).parent
    nodes = [*lineage, *policy, *files, *report_nodes(report_files, sink_ids, directory)]
    return sign_and_attach(nodes, model, directory, mlflow)
