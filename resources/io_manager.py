"""Stores asset outputs as Parquet (tables) and JSON (records of decisions and metrics) under a base location.

Plain files rather than pickles so that an auditor can open every intermediate data set with standard tools,
and so that outputs never depend on the Python version that wrote them. The base is ``PPML_HOME/assets`` by
default, or ``PPML_ASSET_BASE``: a shared path or an fsspec URL, so that workers on several hosts read what the
others wrote (:mod:`ppml.locations`). Writes are atomic (temporary file, then rename): a failed step never leaves
a partial file behind for a downstream step to read; local files are owner-only (0600 in 0700 folders) because
assets hold personal data.
"""

import json
from typing import Any

import pandas as pd
from dagster import AssetKey, ConfigurableIOManager, ConfigurableResource, InputContext, MetadataValue, OutputContext

from ppml.errors import PPMLError
from ppml.locations import resolve_location, write_atomically
from ppml_assets.metadata import table_metadata


class LocalFileIOManager(ConfigurableIOManager):
    """DataFrames to ``<base_dir>/<asset>/<partition>.parquet``; dicts to ``.json`` beside them.

    ``base_dir`` is a path or an fsspec URL (``file://``, ``s3://``, ``memory://`` ...).
    """

    base_dir: str

    def _stem(self, asset_path: list[str], partition: str | None) -> Any:
        return resolve_location(self.base_dir).joinpath(*asset_path, partition or "latest")

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        if obj is None:
            return
        asset_path = list(context.asset_key.path)
        if context.has_asset_partitions and len(context.asset_partition_keys) > 1:
            if not isinstance(obj, dict) or set(obj) != set(context.asset_partition_keys):
                raise PPMLError(
                    f"{context.asset_key.to_user_string()}: field '(output)': a multi-partition run must return "
                    "one object per partition key; fix: return a dict keyed by partition"
                )
            items = obj.items()
        else:
            partition = context.asset_partition_key if context.has_asset_partitions else None
            items = [(partition, obj)]
        written = []
        for partition, value in items:
            written.append(self._write(self._stem(asset_path, partition), value))
        context.add_output_metadata(
            {"path": MetadataValue.path(str(written[0].parent)), "files": len(written), **table_metadata(obj)}
        )

    def _write(self, stem: Any, value: Any) -> Any:
        if isinstance(value, pd.DataFrame):
            path = stem.with_name(stem.name + ".parquet")
            write_atomically(path, lambda handle: value.to_parquet(handle, index=False))
        else:
            path = stem.with_name(stem.name + ".json")
            data = json.dumps(value, indent=2, sort_keys=True, default=str).encode("utf-8")
            write_atomically(path, lambda handle: handle.write(data))
        return path

    def load_input(self, context: InputContext) -> Any:
        asset_path = list(context.asset_key.path)
        if context.has_asset_partitions:
            keys = list(context.asset_partition_keys)
            values = [self._read(self._stem(asset_path, key), context, key) for key in keys]
            if len(values) == 1:
                return values[0]
            if all(isinstance(v, pd.DataFrame) for v in values):
                return pd.concat(values, ignore_index=True)
            return dict(zip(keys, values, strict=True))
        return self._read(self._stem(asset_path, None), context, None)

    def _read(self, stem: Any, context: InputContext, partition: str | None) -> Any:
        return AssetStore(base_dir=self.base_dir).read_stored(context.asset_key.to_user_string(), partition)


class AssetStore(ConfigurableResource):
    """Read access to what LocalFileIOManager stored, for checks and sensors that resolve partitions themselves.

    ``key_prefix`` is the policy graph's asset key prefix (empty for the single-policy default): names given to
    ``read_stored`` and ``asset_key`` are that graph's assets, stored under ``<base_dir>/<prefix>/<asset>/``.
    """

    base_dir: str
    key_prefix: str = ""

    def asset_key(self, asset: str) -> AssetKey:
        """The key of one of this graph's assets, named as in the stage modules."""
        return AssetKey([*filter(None, [self.key_prefix]), *asset.split("/")])

    def write_private(self, name: str, partition: str, frame: pd.DataFrame) -> None:
        """A side table that no asset releases (e.g. the release's pseudonyms): owner-only, atomic, beside the
        assets so that ``read_stored(name, partition)`` finds it."""
        path = resolve_location(self.base_dir).joinpath(*self.asset_key(name).path, f"{partition}.parquet")
        write_atomically(path, lambda handle: frame.to_parquet(handle, index=False))

    def read_stored(self, asset: str, partition: str | None = None) -> Any:
        stem = resolve_location(self.base_dir).joinpath(*self.asset_key(asset).path, partition or "latest")
        parquet, document = stem.with_name(stem.name + ".parquet"), stem.with_name(stem.name + ".json")
        if parquet.is_file():
            with parquet.open("rb") as handle:
                return pd.read_parquet(handle)
        if document.is_file():
            return json.loads(document.read_text(encoding="utf-8"))
        where = f" partition {partition}" if partition else ""
        raise PPMLError(
            f"{stem.parent}: field '{asset}': upstream{where} is not materialized; "
            f"fix: materialize (backfill) {asset}{where} first"
        )
