"""Stores asset outputs as Parquet (tables) and JSON (records of decisions and metrics) under PPML_HOME.

Plain files rather than pickles so that an auditor can open every intermediate data set with standard tools,
and so that outputs never depend on the Python version that wrote them. Writes are atomic (temporary file,
then rename): a failed step never leaves a partial file behind for a downstream step to read.
"""

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
from dagster import AssetKey, ConfigurableIOManager, ConfigurableResource, InputContext, MetadataValue, OutputContext

from ppml.errors import PPMLError
from ppml.private_files import PRIVATE_FILE_MODE, private_dir


def _atomic_write(path: Path, write: Any) -> None:
    """Write beside the target, then rename; owner-only (0600 in 0700 folders) because assets hold personal data."""
    private_dir(path.parent)
    temporary = path.with_name(f".{path.name}.tmp")
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE))
    os.chmod(temporary, PRIVATE_FILE_MODE)
    write(temporary)
    os.chmod(temporary, PRIVATE_FILE_MODE)
    os.replace(temporary, path)


class LocalFileIOManager(ConfigurableIOManager):
    """DataFrames to ``<base_dir>/<asset>/<partition>.parquet``; dicts to ``.json`` beside them."""

    base_dir: str

    def _stem(self, asset_path: list[str], partition: str | None) -> Path:
        folder = Path(self.base_dir, *asset_path)
        return folder / (partition or "latest")

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
        context.add_output_metadata({"path": MetadataValue.path(str(written[0].parent)), "files": len(written)})

    def _write(self, stem: Path, value: Any) -> Path:
        if isinstance(value, pd.DataFrame):
            path = stem.with_suffix(".parquet")
            _atomic_write(path, lambda p: value.to_parquet(p, index=False))
        else:
            path = stem.with_suffix(".json")
            text = json.dumps(value, indent=2, sort_keys=True, default=str)
            _atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))
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

    def _read(self, stem: Path, context: InputContext, partition: str | None) -> Any:
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

    def read_stored(self, asset: str, partition: str | None = None) -> Any:
        stem = Path(self.base_dir, *self.asset_key(asset).path) / (partition or "latest")
        parquet, document = stem.with_suffix(".parquet"), stem.with_suffix(".json")
        if parquet.is_file():
            return pd.read_parquet(parquet)
        if document.is_file():
            return json.loads(document.read_text(encoding="utf-8"))
        where = f" partition {partition}" if partition else ""
        raise PPMLError(
            f"{stem.parent}: field '{asset}': upstream{where} is not materialized; "
            f"fix: materialize (backfill) {asset}{where} first"
        )
