"""First-sync throughput of `launch sync` against `aws s3 sync` on the same data and the same
loopback S3 server (moto), measured side by side in one run, plus the bytes a second sync moves.
Targets: throughput ratio >= 1.0; second sync 0 bytes.

    .venv/bin/python bench/sync.py [--files 24] [--file-mb 4] [--big-mb 48] [--repeats 2]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# This file is named sync.py, so its own folder must not shadow the `sync` package.
REPO = Path(__file__).resolve().parent.parent
sys.path[0:1] = [str(REPO), str(REPO / "tests")]

from servers import MotoServer  # noqa: E402  (the same loopback server the tests use)

from sync import sync  # noqa: E402


def timed(command: list[str], env: dict) -> float:
    began = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=24)
    parser.add_argument("--file-mb", type=int, default=4)
    parser.add_argument("--big-mb", type=int, default=48, help="one large file (multipart for both tools)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    aws = shutil.which("aws", path=str(Path(sys.executable).parent)) or shutil.which("aws")
    if aws is None:
        print("the aws CLI is not installed (./setup.sh --dev installs it)")
        return 2
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")})
    server = MotoServer()
    try:
        import boto3

        boto3.client("s3", endpoint_url=server.endpoint).create_bucket(Bucket="bench")
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "data"
            data.mkdir()
            for i in range(args.files):
                (data / f"shard-{i:04d}.tar").write_bytes(os.urandom(args.file_mb << 20))
            (data / "big.tar").write_bytes(os.urandom(args.big_mb << 20))
            total = sum(p.stat().st_size for p in data.iterdir())
            ours, theirs = [], []
            for r in range(args.repeats):  # each run to a fresh prefix; who goes first alternates
                commands = [(ours, [sys.executable, "-m", "launch.cli", "sync", str(data), f"s3://bench/ours-{r}",
                                    "--endpoint-url", server.endpoint]),
                            (theirs, [aws, "--endpoint-url", server.endpoint, "s3", "sync", str(data), f"s3://bench/aws-{r}",
                                      "--only-show-errors"])]
                for times, command in commands if r % 2 == 0 else reversed(commands):
                    times.append(timed(command, env))
            second = sync(str(data), "s3://bench/ours-0", endpoint_url=server.endpoint)
    finally:
        server.stop()
    mid_ours, mid_aws = statistics.median(ours), statistics.median(theirs)
    print(f"data: {args.files} x {args.file_mb} MB + 1 x {args.big_mb} MB = {total / 1e6:.0f} MB, loopback moto S3, "
          f"median of {args.repeats} alternating runs")
    print(f"launch sync : {mid_ours:6.2f} s  {total / mid_ours / 1e6:7.1f} MB/s   (runs: {', '.join(f'{t:.2f}' for t in ours)})")
    print(f"aws s3 sync : {mid_aws:6.2f} s  {total / mid_aws / 1e6:7.1f} MB/s   (runs: {', '.join(f'{t:.2f}' for t in theirs)})")
    ratio = mid_aws / mid_ours
    print(f"first-sync throughput ratio launch/aws: {ratio:.2f} (target >= 1.0): {'PASS' if ratio >= 1.0 else 'FAIL'}")
    print(f"second sync of unchanged data: {second.bytes_moved} bytes moved, {len(second.unchanged)} files unchanged: "
          f"{'PASS' if second.bytes_moved == 0 else 'FAIL'}")
    return 0 if ratio >= 1.0 and second.bytes_moved == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
