"""Search index speed: query latency (p50/p99) and queries/s of the Qdrant index ``jobs.index`` builds
(embedded mode, the default) against brute-force numpy search over the same vectors, at 10k and 100k
indexed videos, measured side by side in one run; plus the index build rate.

Vectors are ImageBind-sized (1024) unit vectors with cluster structure; the index stores what the
real job stores (student and teacher vectors, payload). Top-k agreement with brute force is checked
on every query. The last line measures the real job end to end (shards read, student run, upserts)
on the default synthetic shard set.

    .venv/bin/python bench/search.py [--sizes 10000 100000] [--queries 200] [--k 10]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path[0:1] = [str(REPO)]

from search.store import VectorIndex  # noqa: E402


def clustered_unit_vectors(n: int, dim: int, rng: np.random.Generator, clusters: int = 200) -> np.ndarray:
    centers = rng.standard_normal((clusters, dim)).astype(np.float32)
    x = centers[rng.integers(0, clusters, n)] + 0.8 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def percentiles(seconds: list[float]) -> dict:
    ms = np.array(seconds) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "qps": len(ms) / (ms.sum() / 1000)}


def brute_force(matrix: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    scores = matrix @ query
    top = np.argpartition(-scores, k)[:k]
    return top[np.argsort(-scores[top], kind="stable")]


def measure(n: int, dim: int, queries: int, k: int, rng: np.random.Generator) -> dict:
    student, teacher = clustered_unit_vectors(n, dim, rng), clustered_unit_vectors(n, dim, rng)
    ids = [f"video{i:07d}" for i in range(n)]
    rows = [{"video_id": video_id, "split": "test", "has_audio": True, "duration_s": 10.0, "frame_times_s": [1.0, 5.0, 9.0],
             "source": None, "shard": f"test-{i // 1000:06d}.tar"} for i, video_id in enumerate(ids)]
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        index = VectorIndex(Path(tmp) / "index", create=True)
        index.create(dim, 512)
        began = time.perf_counter()
        for start in range(0, n, 1000):
            index.upsert_videos(rows[start : start + 1000], student[start : start + 1000], teacher[start : start + 1000])
        build_s = time.perf_counter() - began
        index.close()
        began = time.perf_counter()
        index = VectorIndex(Path(tmp) / "index")  # what `launch serve` pays at start
        open_s = time.perf_counter() - began
        picks = rng.integers(0, n, queries)
        probes = student[picks] + 0.3 * rng.standard_normal((queries, dim)).astype(np.float32)
        probes /= np.linalg.norm(probes, axis=1, keepdims=True)
        qdrant_s, numpy_s, agree = [], [], 0
        for probe in probes:
            began = time.perf_counter()
            hits = index.search_videos(probe, k)
            qdrant_s.append(time.perf_counter() - began)
            began = time.perf_counter()
            top = brute_force(student, probe, k)
            numpy_s.append(time.perf_counter() - began)
            agree += [h.payload["video_id"] for h in hits] == [ids[i] for i in top]
        index.close()
    return {"n": n, "build_vectors_per_s": n / build_s, "open_s": open_s, "qdrant": percentiles(qdrant_s),
            "numpy": percentiles(numpy_s), "identical_topk": agree / queries}


def job_rate(shards: str) -> dict:
    """The real index job on a real (synthetic) shard set with a freshly trained student."""
    with tempfile.TemporaryDirectory(prefix="bench-index-job-") as tmp:
        run = Path(tmp) / "run"
        subprocess.run([sys.executable, "-m", "jobs.train_mlp", "--run-dir", str(run), "--set", f"data.shards={shards}",
                        "train.epochs=1", "train.evaluate_test=false"], check=True, cwd=REPO, capture_output=True)
        began = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "jobs.index", "--run", str(run), "--shards", shards, "--index",
                              str(Path(tmp) / "index")], check=True, cwd=REPO, capture_output=True, text=True)
        seconds = time.perf_counter() - began
        info = json.loads(subprocess.run([sys.executable, "-c", "import json,sys; from search.store import VectorIndex; "
                                          f"i=VectorIndex({str(Path(tmp) / 'index')!r}); print(json.dumps(i.count()))"],
                                         check=True, cwd=REPO, capture_output=True, text=True).stdout)
        return {"videos": info["videos"], "frames": info["frames"], "seconds": seconds, "videos_per_s": info["videos"] / seconds,
                "log": out.stdout.strip().splitlines()[-1]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--shards", default="synthetic://msrvtt", help="shard set for the end-to-end job rate ('' skips it)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'vectors':>8} {'build vec/s':>11} {'open s':>7} | {'qdrant p50':>10} {'p99':>7} {'q/s':>7} | {'numpy p50':>9} {'p99':>7} "
          f"{'q/s':>7} | {'qdrant/numpy latency':>20} {'same top-k':>10}")
    for n in args.sizes:
        m = measure(n, args.dim, args.queries, args.k, rng)
        q, b = m["qdrant"], m["numpy"]
        print(f"{n:>8} {m['build_vectors_per_s']:>11.0f} {m['open_s']:>7.1f} | {q['p50_ms']:>8.2f}ms {q['p99_ms']:>5.2f}ms "
              f"{q['qps']:>7.0f} | {b['p50_ms']:>7.2f}ms {b['p99_ms']:>5.2f}ms {b['qps']:>7.0f} | "
              f"{q['p50_ms'] / b['p50_ms']:>19.1f}x {100 * m['identical_topk']:>9.0f}%", flush=True)
    if args.shards:
        job = job_rate(args.shards)
        print(f"index job on {args.shards}: {job['videos']} videos + {job['frames']} frames in {job['seconds']:.1f} s "
              f"({job['videos_per_s']:.0f} videos/s end to end, student included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
