"""The synthetic shard set as a job: ``RUN/shards`` holds it, ``RUN/run.json`` says what it is.

Sliceable like extraction: ``--slice I/N`` writes the I-th of N interleaved slices (remote backends
run one per kernel with ``--num-kernels N``), and ``--merge-slices RUN`` joins ``RUN/slices/*/shards``
into ``RUN/shards`` — sample for sample the set one worker writes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data_shards.errors import ShardError
from data_shards.merge import merge_shard_sets
from data_shards.synthetic import SyntheticSpec, generate
from jobs import exit_job, new_run_id, now
from jobs.contract import update_run
from jobs.rundir import launched_by


def parse_slice(text: str) -> tuple[int, int]:
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--slice takes I/N (e.g. 0/4), got {text!r}") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"--slice {text}: need 0 <= I < N")
    return index, count


def write_run(run: Path, **fields) -> None:
    update_run(run, run_id=run.name, job="synthesize", ended_at=now(), backend=launched_by(), **fields)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.synthesize", description=__doc__)
    parser.add_argument("--url", default="synthetic://msrvtt", help="synthetic://msrvtt[?train=..&val=..&test=..&samples_per_shard=..]")
    parser.add_argument("--run-dir", help="default: runs/synthesize-<time>-<id>")
    parser.add_argument("--slice", type=parse_slice, default=(0, 1), metavar="I/N", help="write only slice I of N")
    parser.add_argument("--merge-slices", metavar="RUN", help="join RUN/slices/*/shards into RUN/shards, then exit")
    args = parser.parse_args(argv)
    try:
        if args.merge_slices:
            run = Path(args.merge_slices)
            parts = sorted(p / "shards" for p in (run / "slices").iterdir() if (p / "shards").is_dir())
            manifest = merge_shard_sets(parts, run / "shards")
            write_run(run, status="complete", slices=len(parts), splits=manifest.splits, manifest_digest=manifest.digest())
            print(f"merged {len(parts)} slices into {run / 'shards'}: {manifest.splits}")
            return 0
        spec = SyntheticSpec.from_url(args.url)
        run = Path(args.run_dir or Path("runs") / new_run_id("synthesize"))
        run.mkdir(parents=True, exist_ok=True)
        generate(spec, run / "shards", progress=sys.stderr.isatty(), part=args.slice)
    except (ShardError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    index, count = args.slice
    write_run(run, status="complete", url=args.url, slice=f"{index}/{count}")
    print(f"wrote {'slice ' + str(index) + '/' + str(count) + ' of ' if count > 1 else ''}{args.url} into {run / 'shards'}")
    return 0


if __name__ == "__main__":
    exit_job(main())
