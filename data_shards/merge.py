"""Join shard sets written apart (slices of one extraction, one per kernel or worker) into one set
with one manifest. Every part is verified against its own manifest first; parts must agree on dims
and encoders, and shard names must not collide. Written through a staging directory and renamed
into place, like every shard set."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from data_shards.errors import ShardError
from data_shards.manifest import Manifest
from data_shards.reader import open_shards


def merge_shard_sets(parts: list[Path], out: Path) -> Manifest:
    if not parts:
        raise ShardError(f"{out}: no shard sets to merge")
    opened = [open_shards(part) for part in parts]
    first = opened[0].manifest
    shards, seen = [], {}
    for part in opened:
        m = part.manifest
        if m.dims != first.dims or m.encoders != first.encoders:
            raise ShardError(f"{part.root}: dims/encoders differ from {opened[0].root}; only slices of one extraction can be merged")
        for shard in m.shards:
            if shard.name in seen:
                raise ShardError(f"{part.root / shard.name}: shard name also in {seen[shard.name]}; slices must name their shards apart")
            seen[shard.name] = part.root
            shards.append(shard)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        for shard in shards:
            source, target = seen[shard.name] / shard.name, staging / shard.name
            try:
                os.link(source, target)  # same file system: no copy
            except OSError:
                shutil.copy2(source, target)
        merged = Manifest(dims=first.dims, shards=sorted(shards, key=lambda s: s.name), encoders=first.encoders,
                          source={**first.source, "merged_parts": len(parts)})
        merged.write(staging)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return merged
