"""Join shard sets written apart (slices of one extraction, one per kernel or worker) into one set
with one manifest. Every part is verified against its own manifest first; parts must agree on dims
and encoders, and shard names must not collide. Written through a staging directory and renamed
into place, like every shard set.

Slices of a video extraction also carry their plan: they must share it, no planned shard may be in
two parts (its videos would be duplicated) and every planned shard must be in one (or its videos
are missing). The failures of all parts are kept."""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from data_shards.errors import ShardError
from data_shards.manifest import Manifest, ShardEntry
from data_shards.shard_set import open_root

Part = TypeVar("Part")  # how a caller names a part: its folder (Path), or its URL (str)


def merge_manifests(manifests: list[Manifest], parts: Sequence[Part]) -> tuple[Manifest, dict[str, Part]]:
    """The one manifest of slices that belong together (``parts`` name them in messages): they must agree on
    dims and encoders, name their shards apart, and (extractions) share a plan that they cover exactly once.
    Returns it with each shard's part."""
    if not manifests:
        raise ShardError("no shard sets to merge")
    first = manifests[0]
    joined = _joined_plan(manifests, parts) if "plan" in first.source else {**first.source, "merged_parts": len(parts)}
    shards: list[ShardEntry] = []
    seen: dict[str, Part] = {}
    for manifest, part in zip(manifests, parts):
        if manifest.dims != first.dims or manifest.encoders != first.encoders:
            raise ShardError(f"{part}: dims/encoders differ from {parts[0]}; only slices of one extraction can be merged")
        for shard in manifest.shards:
            if shard.name in seen:
                raise ShardError(f"{part}/{shard.name}: shard name also in {seen[shard.name]}; slices must name their shards apart")
            seen[shard.name] = part
            shards.append(shard)
    merged = Manifest(dims=first.dims, shards=sorted(shards, key=lambda s: s.name), encoders=first.encoders, source=joined)
    return merged, seen


def merge_shard_sets(parts: list[Path], out: Path) -> Manifest:
    if not parts:
        raise ShardError(f"{out}: no shard sets to merge")
    opened = [open_root(Path(part), partial=True) for part in parts]
    merged, owner = merge_manifests([p.manifest for p in opened], [p.root for p in opened])
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        for shard in merged.shards:
            source, target = owner[shard.name] / shard.name, staging / shard.name
            try:
                os.link(source, target)  # same file system: no copy
            except OSError:
                shutil.copy2(source, target)
        merged.write(staging)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return merged


def _joined_plan(manifests: list[Manifest], parts: Sequence[Part]) -> dict:
    plan = manifests[0].source["plan"]
    owner: dict[str, Part] = {}
    for manifest, part in zip(manifests, parts):
        if manifest.source.get("plan", {}).get("digest") != plan["digest"]:
            raise ShardError(f"{part}: extracted with another plan (videos or settings) than {parts[0]}; only slices of one extraction merge")
        for name in manifest.source["done"]:
            if name in owner:
                raise ShardError(f"{part}: planned shard {name} is also in {owner[name]}; its {plan['shards'][name]} videos would be "
                                 "duplicated. Keep one copy of each slice")
            owner[name] = part
    missing = [name for name in plan["shards"] if name not in owner]
    if missing:
        videos = sum(plan["shards"][name] for name in missing)
        raise ShardError(f"missing videos: planned shards {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} "
                         f"({videos} videos) are in none of the {len(parts)} parts; run the workers that own them (same command, "
                         "same --num-shards) and merge again")
    failures = sorted((f for m in manifests for f in m.source["failures"]), key=lambda f: f["video_id"])
    return {**manifests[0].source, "done": sorted(owner), "complete": True, "failures": failures,
            "silent": sum(m.source["silent"] for m in manifests), "merged_parts": len(parts)}
