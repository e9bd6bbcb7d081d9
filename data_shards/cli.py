"""``data_shards validate PATH``, ``data_shards merge PART... --out DIR``, ``data_shards synthetic --out DIR``,
``data_shards synthetic-videos --out DIR`` and ``data_shards import INPUT... --map ROLE=FIELD... --out DIR``."""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import fields
from pathlib import Path

from data_shards.errors import ShardError
from data_shards.importer import ROLES, import_arrays, parse_mapping
from data_shards.merge import merge_shard_sets
from data_shards import open_shards
from data_shards.reader import load_split
from data_shards.schema import TEACHER_NORM_TOLERANCE
from data_shards.synthetic import SyntheticSpec, generate


def validate(location: str) -> str:
    """Verify digests, decode every sample and check it; return a human summary."""
    shards = open_shards(location)
    lines = [f"shard set {shards.root}", f"  digest   {shards.digest()}", f"  dims     {shards.dims.to_dict()}"]
    for split, count in sorted(shards.manifest.splits.items()):
        tensors = load_split(shards, split)
        duplicates = [key for key, n in Counter(tensors.keys).items() if n > 1]
        if duplicates:
            raise ShardError(f"split {split!r}: duplicate video ids {duplicates[:5]}")
        norms = tensors.teacher.double().norm(dim=1)
        worst = int((norms - 1).abs().argmax())
        if abs(float(norms[worst]) - 1) > TEACHER_NORM_TOLERANCE:
            raise ShardError(f"split {split!r}: sample {tensors.keys[worst]!r} teacher norm {float(norms[worst]):.4f}, expected 1.")
        silent = int((~tensors.has_audio).sum())
        loud_zero = int(((tensors.audio.float().abs().sum(1) == 0) & tensors.has_audio).sum())
        note = f", {loud_zero} with has_audio=true but all-zero audio (check the audio decoder)" if loud_zero else ""
        shard_count = len(shards.manifest.shards_of(split))
        lines.append(f"  {split:<6} {count:>7} videos in {shard_count} shards, {silent} silent ({100 * silent / count:.1f} %){note}")
    failures = shards.manifest.source.get("failures", [])
    if failures:
        first = failures[0]
        lines.append(f"  {len(failures)} videos failed extraction (manifest.json 'failures'), e.g. {first['video_id']}: {first['reason']}")
    if shards.manifest.encoders.get("random_init"):
        lines.append("  RANDOM-INIT encoders: these features are for tests and benchmarks only")
    lines.append("  ok: every shard matches manifest.json and every sample decodes")
    return "\n".join(lines)


IMPORT_EPILOG = "roles for --map:\n" + "\n".join(f"  {role:<10} {text}" for role, text in ROLES.items()) + """

examples:
  data_shards import train_features_v2.pt test_features_v2.pt --split train test --val-from train --val-count 500 \\
      --map clip=clip_features audio=vggish teacher=imagebind ids=video_ids --out data/mine
  data_shards import features.npz --map clip=clip audio=audio teacher=teacher ids=ids split=split has_audio=has_audio --out data/mine"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="data_shards", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("validate", help="verify a shard set against its manifest and print a summary")
    check.add_argument("path")
    join = sub.add_parser("merge", help="join slices of one extraction (or synthetic set) into one shard set")
    join.add_argument("parts", nargs="+")
    join.add_argument("--out", required=True)
    videos = sub.add_parser("synthetic-videos", help="write small synthetic videos (moving shapes + tone) and videos.csv")
    videos.add_argument("--out", required=True)
    videos.add_argument("--count", type=int, default=24)
    videos.add_argument("--seconds", type=float, default=4.0)
    synth = sub.add_parser("synthetic", help="write the deterministic MSR-VTT-shaped synthetic shard set")
    synth.add_argument("--out", required=True)
    for f in fields(SyntheticSpec):
        synth.add_argument(f"--{f.name.replace('_', '-')}", type=float if f.type == "float" else int, default=f.default)
    imp = sub.add_parser("import", help="turn CLIP/VGGish/teacher arrays you hold (.pt, .npz, .safetensors, a folder of .npy) into "
                         "a verified shard set", epilog=IMPORT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    imp.add_argument("inputs", nargs="+", metavar="INPUT", help=".pt (a torch.save'd dict), .npz, .safetensors, or a folder of .npy "
                     "(one per field, named by its stem)")
    imp.add_argument("--map", nargs="+", action="extend", required=True, metavar="ROLE=FIELD", help="which field of the inputs "
                     "holds each role (below); a dotted FIELD reaches into nested dicts")
    imp.add_argument("--split", nargs="+", action="extend", metavar="NAME", help="the split of each INPUT, one name per input in "
                     "order (or map split=FIELD for a per-row split array)")
    imp.add_argument("--out", required=True)
    imp.add_argument("--normalize-teacher", action="store_true", help="L2-normalize the teacher rows (else rows off unit norm "
                     "are refused)")
    imp.add_argument("--val-from", metavar="SPLIT", help="carve the val split out of SPLIT (with --val-count; seeded)")
    imp.add_argument("--val-count", type=int, metavar="N")
    imp.add_argument("--seed", type=int, default=0, help="the seed of the --val-from choice (default 0)")
    imp.add_argument("--samples-per-shard", type=int, default=1000)
    args = parser.parse_args(argv)
    try:
        if args.command == "validate":
            print(validate(args.path))
        elif args.command == "merge":
            merge_shard_sets([Path(p) for p in args.parts], Path(args.out))
            print(validate(args.out))
        elif args.command == "synthetic-videos":
            from data_shards.synthetic_videos import write_collection

            print(f"wrote {args.count} synthetic videos and {write_collection(args.out, args.count, args.seconds)}")
        elif args.command == "import":
            manifest = import_arrays([Path(p) for p in args.inputs], parse_mapping(args.map), Path(args.out), splits=args.split,
                                     normalize_teacher=args.normalize_teacher, val_from=args.val_from, val_count=args.val_count,
                                     seed=args.seed, samples_per_shard=args.samples_per_shard, progress=sys.stderr.isatty())
            counts = ", ".join(f"{split} {count}" for split, count in sorted(manifest.splits.items()))
            print(f"imported {sum(manifest.splits.values())} videos from {len(args.inputs)} inputs ({counts}) into {args.out}")
            print(validate(args.out))
        else:
            spec = SyntheticSpec(**{f.name: getattr(args, f.name) for f in fields(SyntheticSpec)})
            generate(spec, args.out, progress=sys.stderr.isatty())
            print(validate(args.out))
    except ShardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
