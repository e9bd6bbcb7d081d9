"""Feature shards: the schema, a writer, a verifying reader, and the synthetic dataset.

One sample is one video. Every shard set carries a ``manifest.json`` (dims, encoders,
per-shard sha256) that readers check before they trust a byte.
"""
from data_shards.errors import ShardError
from data_shards.manifest import Manifest, ShardEntry
from data_shards.reader import ShardSet, SplitTensors, open_shards
from data_shards.schema import SCHEMA_VERSION, Dims
from data_shards.writer import ShardSetWriter

__all__ = [
    "SCHEMA_VERSION",
    "Dims",
    "Manifest",
    "ShardEntry",
    "ShardError",
    "ShardSet",
    "ShardSetWriter",
    "SplitTensors",
    "open_shards",
]
