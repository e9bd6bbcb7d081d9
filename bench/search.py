"""Search request cost: what `launch serve` pays for the default request (``k=10``, ``frames=3``: top 10 videos and the best
3 frames of each), side by side with a numpy reference doing the same work in the same run, plus throughput and start-up.

For each size (videos; 3 frames each) the bench writes the index snapshot ``jobs.index`` writes and ``launch serve`` maps
(``search.store.write_snapshot``: ImageBind-sized 1024-d student and teacher unit vectors with cluster structure, 512-d CLIP
frame vectors, the job's payload). The service reads nothing else; filling the Qdrant collections the job exports it from
would take minutes per 10k videos and is the index job's cost, not a request's. Then:
- ready: ``launch serve --index DIR --no-text`` (the launcher and the service process, both started) until ``/health`` answers;
- engine vs numpy: the default video request ``SearchEngine.search_video(ID)`` in this process against the reference
  (``student @ q`` without the query video, argpartition, the query's mean frame vector against each result's frames),
  alternating query by query;
- HTTP: the same requests through the real FastAPI app on uvicorn at 127.0.0.1 (the ``launch serve`` above), one client,
  and, at the first size, 8 concurrent clients (threads, one keep-alive ``http.client`` connection each) for ``--seconds``.
Every answer (engine and HTTP) is checked against the reference: same videos in order, same frames, scores within 1e-5.

    .venv/bin/python bench/search.py [--sizes 10000 100000] [--queries 300] [--seconds 10]

Targets: at the first size HTTP p50 <= 30 ms and p99 <= 100 ms, engine p50 <= 3x numpy's, >= 100 requests/s with 8 clients;
``launch serve`` ready in <= 5 s at the largest size; every answer identical. The last line holds the figures and PASS or
FAIL; exit 0 on PASS.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path[0:1] = [str(REPO)]

from search.query import SearchEngine  # noqa: E402
from search.store import Snapshot, write_snapshot  # noqa: E402

K, FRAMES, TIMES = 10, 3, [1.0, 5.0, 9.0]


def clustered_unit_vectors(n: int, dim: int, rng: np.random.Generator, clusters: int = 200) -> np.ndarray:
    centers = rng.standard_normal((clusters, dim), dtype=np.float32)
    x = centers[rng.integers(0, clusters, n)]
    for start in range(0, n, 10_000):  # float32 throughout: 100k x 1024 stays 400 MB
        x[start : start + 10_000] += 0.8 * rng.standard_normal((min(10_000, n - start), dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def build(n: int, folder: Path, rng: np.random.Generator) -> Snapshot:
    """The snapshot an index of ``n`` videos gets, written where the index job writes it."""
    rows = [{"video_id": f"video{i:07d}", "split": "test", "has_audio": True, "duration_s": 10.0, "frame_times_s": TIMES,
             "source": None, "shard": f"test-{i // 1000:06d}.tar"} for i in range(n)]
    frames = len(TIMES)
    state = {"format": 1, "student": {"checkpoint_sha256": "bench"}, "dims": {"video": 1024, "frame": 512}, "done": {},
             "counts": {"videos": n, "frames": frames * n}}
    snapshot = Snapshot(state, rows, clustered_unit_vectors(n, 1024, rng), clustered_unit_vectors(n, 1024, rng),
                        clustered_unit_vectors(frames * n, 512, rng), np.tile(np.arange(frames, dtype=np.int32), n),
                        np.tile(np.array(TIMES), n), np.arange(0, frames * n + 1, frames, dtype=np.int64))
    write_snapshot(folder, "streamapprox", snapshot)
    return snapshot


def reference(s: Snapshot, row: int) -> list:
    """Brute force on the in-memory arrays: what the default request for video ``row`` must answer."""
    scores = s.student @ s.student[row]
    scores[row] = -np.inf
    top = np.argpartition(-scores, K)[:K]
    top = top[np.argsort(-scores[top], kind="stable")]
    query = s.clip[s.offsets[row] : s.offsets[row + 1]].mean(axis=0)
    query /= np.linalg.norm(query)
    results = []
    for r in top:
        frame_scores = s.clip[s.offsets[r] : s.offsets[r + 1]] @ query
        best = np.argsort(-frame_scores, kind="stable")[:FRAMES]
        results.append((s.ids[r], float(scores[r]), [(int(i), TIMES[i], float(frame_scores[i])) for i in best]))
    return results


def same(answer: dict, expected: list) -> bool:
    got = answer["results"]
    return (len(got) == len(expected) and all(
        g["video_id"] == video_id and abs(g["score"] - score) <= 1e-5
        and [(f["frame"], f["t"]) for f in g["frames"]] == [(f, t) for f, t, _ in frames]
        and all(abs(f["score"] - fs) <= 1e-5 for f, (_, _, fs) in zip(g["frames"], frames))
        for g, (video_id, score, frames) in zip(got, expected)))


def stats(seconds: list[float]) -> tuple[float, float]:
    ms = np.array(seconds) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(folder: Path) -> tuple[subprocess.Popen, int, float]:
    """``launch serve`` as a user starts it; seconds until ``/health`` answers."""
    port = free_port()
    began = time.perf_counter()
    log = folder.parent / "serve.log"  # a file, not a pipe: the access log of thousands of requests would fill a pipe and stall it
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "launch.cli", "serve", "--index", str(folder), "--no-text", "--port", str(port)],
                                   cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    while True:
        if process.poll() is not None:
            raise SystemExit(f"launch serve exited ({process.returncode}): {log.read_text()[-2000:]}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return process, port, time.perf_counter() - began
        except OSError:
            time.sleep(0.02)


def stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def get(connection: http.client.HTTPConnection, video_id: str) -> dict:
    connection.request("GET", f"/search?video={video_id}")
    response = connection.getresponse()
    body = response.read()
    if response.status != 200:
        raise SystemExit(f"/search?video={video_id}: HTTP {response.status}: {body[:300]!r}")
    return json.loads(body)


def load(port: int, queries: list[str], expected: dict, clients: int, seconds: float) -> tuple[float, list[float], int]:
    """``clients`` threads, each with a keep-alive connection, for ``seconds``: requests/s, latencies, wrong answers."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    wrong = [0] * clients
    start = threading.Barrier(clients + 1)
    deadline = [0.0]

    def client(i: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        start.wait()
        j = i
        while time.perf_counter() < deadline[0]:
            video_id = queries[j % len(queries)]
            began = time.perf_counter()
            answer = get(connection, video_id)
            latencies[i].append(time.perf_counter() - began)
            wrong[i] += not same(answer, expected[video_id])
            j += clients

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    deadline[0] = time.perf_counter() + seconds
    began = time.perf_counter()
    start.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    flat = [x for part in latencies for x in part]
    return len(flat) / elapsed, flat, sum(wrong)


def measure(n: int, queries: int, seconds: float, clients: int, rng: np.random.Generator) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        folder = Path(tmp) / "index"
        began = time.perf_counter()
        data = build(n, folder, rng)
        write_s = time.perf_counter() - began
        process, port, ready_s = serve(folder)
        try:
            engine = SearchEngine(Snapshot.open(folder), None)
            rows = rng.choice(n, queries, replace=False)
            expected = {data.ids[row]: reference(data, row) for row in rows[:20]}
            for row in rows[:20]:  # warm: page cache, BLAS threads
                engine.search_video(data.ids[row])
            engine_s, numpy_s, checked, wrong = [], [], 0, 0
            for row in rows:
                began = time.perf_counter()
                answer = engine.search_video(data.ids[row])
                engine_s.append(time.perf_counter() - began)
                began = time.perf_counter()
                expected[data.ids[row]] = reference(data, row)
                numpy_s.append(time.perf_counter() - began)
                checked, wrong = checked + 1, wrong + (not same(answer, expected[data.ids[row]]))
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            ids = [data.ids[row] for row in rows]
            for video_id in ids[:20]:
                get(connection, video_id)
            http_s = []
            for video_id in ids:
                began = time.perf_counter()
                answer = get(connection, video_id)
                http_s.append(time.perf_counter() - began)
                checked, wrong = checked + 1, wrong + (not same(answer, expected[video_id]))
            result = {"n": n, "write_s": write_s, "ready_s": ready_s, "engine": stats(engine_s), "numpy": stats(numpy_s),
                      "http": stats(http_s)}
            if seconds:
                rps, latencies, bad = load(port, ids, expected, clients, seconds)
                result.update(rps=rps, loaded=stats(latencies))
                checked, wrong = checked + len(latencies), wrong + bad
            result.update(checked=checked, wrong=wrong)
            return result
        finally:
            stop(process)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="videos per index (3 frames each)")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=10.0, help="load test at the first size (0: none)")
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"cpus {os.cpu_count()}; default request k={K} frames={FRAMES} (video query); ms are p50 / p99", flush=True)
    print(f"{'videos':>7} {'frames':>7} {'write s':>7} {'ready s':>7} | {'engine':>13} {'numpy':>13} {'ratio':>5} | {'HTTP 1 client':>13} | "
          f"{args.clients} clients: {'req/s':>5} {'latency':>13} | checked", flush=True)
    results = []
    for number, n in enumerate(args.sizes):
        m = measure(n, args.queries, args.seconds if number == 0 else 0, args.clients, rng)
        results.append(m)
        loaded = f"{m['rps']:>5.0f} {m['loaded'][0]:>6.1f}/{m['loaded'][1]:>6.1f}" if "rps" in m else f"{'-':>5} {'-':>13}"
        print(f"{n:>7} {3 * n:>7} {m['write_s']:>7.1f} {m['ready_s']:>7.2f} | {m['engine'][0]:>6.2f}/{m['engine'][1]:>6.2f} "
              f"{m['numpy'][0]:>6.2f}/{m['numpy'][1]:>6.2f} {m['engine'][0] / m['numpy'][0]:>4.2f}x | "
              f"{m['http'][0]:>6.2f}/{m['http'][1]:>6.2f} | {' ' * len(str(args.clients))}{' ' * 9}{loaded} | "
              f"{m['checked'] - m['wrong']}/{m['checked']} identical", flush=True)
    first, largest = results[0], max(results, key=lambda m: m["n"])
    ratio = first["engine"][0] / first["numpy"][0]
    checks = {"p50": first["http"][0] <= 30, "p99": first["http"][1] <= 100, "ratio": ratio <= 3,
              "rps": first.get("rps", 0) >= 100, "ready": largest["ready_s"] <= 5, "identical": all(m["wrong"] == 0 for m in results)}
    verdict = "PASS" if all(checks.values()) else "FAIL (" + ", ".join(k for k, ok in checks.items() if not ok) + ")"
    print(f"search at {first['n']} videos: HTTP p50 {first['http'][0]:.1f} ms (<=30), p99 {first['http'][1]:.1f} ms (<=100); engine p50 "
          f"{first['engine'][0]:.2f} ms = {ratio:.2f}x numpy (<=3x); {first.get('rps', 0):.0f} req/s with {args.clients} clients (>=100); "
          f"launch serve ready in {largest['ready_s']:.2f} s at {largest['n']} videos (<=5); "
          f"{sum(m['checked'] - m['wrong'] for m in results)}/{sum(m['checked'] for m in results)} answers identical to brute force: "
          f"{verdict}", flush=True)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
