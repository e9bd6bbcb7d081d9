"""Feature shards: the schema, a writer, a verifying reader, and the synthetic dataset.

One sample is one video. Every shard set carries a ``manifest.json`` (dims, encoders,
per-shard sha256) that readers check before they trust a byte.

Names are imported lazily, so light users (``data_shards.files`` in ``launch sync``) do not pay
for torch and webdataset.
"""
from importlib import import_module

_EXPORTS = {
    "SCHEMA_VERSION": "data_shards.schema",
    "Dims": "data_shards.schema",
    "Manifest": "data_shards.manifest",
    "ShardEntry": "data_shards.manifest",
    "ShardError": "data_shards.errors",
    "ShardSet": "data_shards.shard_set",
    "ShardSetWriter": "data_shards.writer",
    "SplitTensors": "data_shards.reader",
    "load_split": "data_shards.reader",
    "open_shards": "data_shards.locations",
    "check_shards": "data_shards.locations",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'data_shards' has no attribute {name!r}")
