"""``python -m jobs.evaluate_search --index DIR|URL``: what searching the cheap index costs in quality.

The index keeps, for every video, the student's vector (what search uses) and the teacher's dense
vector (the reference). Both are ranked the same way and compared:
- video -> video: each video queries the others. The target is its nearest neighbour by the teacher;
  R@K is how often the student's top K holds it, MedR its median rank there; overlap@10 is the share
  of the teacher's top 10 the student's top 10 recovers.
- text -> video: each text query is embedded by the teacher family's text tower. Without labels, the
  target is the teacher's top video; with labels (``--queries`` CSV with ``text,video_id``), the
  labelled video, and the teacher index is scored against the same labels, side by side.
Ranks are 1-based; ties count against the target. Writes ``search_eval.json`` into an index directory.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from data_shards.files import atomic_write_text
from jobs import exit_job, now
from jobs.config import ConfigError, apply_override, format_validation_error
from model.encoders import EncoderError
from model.selection import RECALL_AT
from search.store import SearchIndexError, Snapshot, is_server

DEFAULT_QUERIES = (
    "a person cooking in a kitchen", "a dog playing outside", "a car driving on a road", "people dancing to music",
    "a man talking to the camera", "a woman singing on stage", "a soccer match", "a cartoon character", "a news anchor reporting",
    "children playing in a park", "a video game being played", "someone playing a guitar", "a cat on a sofa",
    "a crowd cheering at a concert", "waves on a beach", "a person explaining how to fix something", "a basketball game",
    "a tutorial about makeup", "an airplane taking off", "food being prepared on a grill",
)
OVERLAP_AT = 10


def ranks_of(scores: np.ndarray, targets: np.ndarray, excluded: np.ndarray | None = None) -> np.ndarray:
    """1-based rank of each row's target among its columns (``excluded[i]``: a column row i may not see)."""
    scores = scores.astype(np.float64, copy=True)
    rows = np.arange(len(scores))
    if excluded is not None:
        scores[rows, excluded] = -np.inf
    positive = scores[rows, targets]
    return (scores >= positive[:, None]).sum(1)  # the target itself counts once: ranks start at 1


def summarize_ranks(ranks: np.ndarray) -> dict:
    out = {f"r{k}": 100.0 * float(np.mean(ranks <= k)) for k in RECALL_AT}
    out["medr"], out["meanr"] = float(np.median(ranks)), float(np.mean(ranks))
    return out


def top(scores: np.ndarray, k: int, excluded: np.ndarray | None = None) -> np.ndarray:
    scores = scores.astype(np.float64, copy=True)
    if excluded is not None:
        scores[np.arange(len(scores)), excluded] = -np.inf
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    return 100.0 * float(np.mean([len(set(x) & set(y)) / len(x) for x, y in zip(a, b)]))


def video_to_video(student: np.ndarray, teacher: np.ndarray, max_queries: int) -> dict:
    n = len(student)
    if n < 3:
        raise ConfigError(f"video->video needs at least 3 indexed videos, the index has {n}")
    queries = np.arange(min(n, max_queries))
    t_scores, s_scores = teacher[queries] @ teacher.T, student[queries] @ student.T
    targets = top(t_scores, 1, excluded=queries)[:, 0]
    k = min(OVERLAP_AT, n - 1)
    return {"queries": int(len(queries)), **summarize_ranks(ranks_of(s_scores, targets, excluded=queries)),
            f"overlap@{k}": overlap(top(s_scores, k, queries), top(t_scores, k, queries))}


def text_to_video(ids: list[str], student: np.ndarray, teacher: np.ndarray, texts: list[str], labels: list[str | None],
                  encode: Callable[[list[str]], np.ndarray]) -> dict:
    vectors = encode(texts)
    t_scores, s_scores = vectors @ teacher.T, vectors @ student.T
    k = min(OVERLAP_AT, len(ids))
    result: dict[str, object] = {"queries": len(texts), f"overlap@{k}": overlap(top(s_scores, k), top(t_scores, k))}
    position = {video_id: i for i, video_id in enumerate(ids)}
    labelled = [(i, label) for i, label in enumerate(labels) if label is not None]
    if labelled:
        missing = sorted({label for _, label in labelled} - set(position))
        if missing:
            raise ConfigError(f"--queries labels name videos the index does not have: {', '.join(missing[:5])}")
        rows, targets = np.array([i for i, _ in labelled]), np.array([position[label] for _, label in labelled])
        result["labelled"] = {"queries": len(labelled),
                              "student": summarize_ranks(ranks_of(s_scores[rows], targets)),
                              "teacher": summarize_ranks(ranks_of(t_scores[rows], targets))}
    targets = top(t_scores, 1)[:, 0]
    result["vs_teacher_top1"] = summarize_ranks(ranks_of(s_scores, targets))
    return result


def read_queries(path: str | None) -> tuple[list[str], list[str | None]]:
    """Built-in generic queries, a text file (one query per line) or a CSV with ``text`` [, ``video_id``]."""
    if path is None:
        return list(DEFAULT_QUERIES), [None] * len(DEFAULT_QUERIES)
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--queries {path}: no such file")
    if file.suffix.lower() == ".csv":
        with open(file, newline="") as handle:
            reader = csv.DictReader(handle)
            if "text" not in (reader.fieldnames or []):
                raise ConfigError(f"{path}: a queries CSV needs a 'text' column (and optionally 'video_id'), got {reader.fieldnames}")
            rows = [(r["text"].strip(), (r.get("video_id") or "").strip() or None) for r in reader]
    else:
        rows = [(line.strip(), None) for line in file.read_text().splitlines()]
    rows = [row for row in rows if row[0]]
    if not rows:
        raise ConfigError(f"{path}: no queries in it")
    return [r[0] for r in rows], [r[1] for r in rows]


def evaluate_index(args: argparse.Namespace) -> dict:
    from model.text import QueryEncoders, QueryEncodersConfig
    from search.query import encoders_config

    texts, labels = read_queries(args.queries)
    snapshot = Snapshot.open(args.index, args.name)
    state, ids, student, teacher = snapshot.state(), snapshot.ids, np.asarray(snapshot.student), np.asarray(snapshot.teacher)
    result = {"index": args.index, "videos": len(ids), "student": state.get("student"), "evaluated_at": now(),
              "video_to_video": video_to_video(student, teacher, args.max_queries)}
    if args.no_text:
        return result
    overrides: dict = {"random_init": True} if args.random_init else {}
    for assignment in args.overrides:
        apply_override(overrides, assignment)
    try:
        encoders = QueryEncoders(encoders_config(state, overrides), frames=False)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, QueryEncodersConfig)) from None
    encoders.check_dims(student.shape[1])
    return {**result, "encoders": encoders.describe(),
            "text_to_video": text_to_video(ids, student, teacher, texts, labels, encoders.videos.encode)}


def report_lines(result: dict) -> list[str]:
    v, t = result["video_to_video"], result.get("text_to_video", {})
    keys = [f"r{k}" for k in RECALL_AT]
    fmt = lambda m: "  ".join(f"R@{k[1:]} {m[k]:5.1f}" for k in keys) + f"  MedR {m['medr']:.1f}"  # noqa: E731
    lines = [f"index {result['index']}: {result['videos']} videos",
             f"video->video ({v['queries']} queries, target = teacher's nearest): student {fmt(v)}  "
             + "  ".join(f"{k} {v[k]:.1f}" for k in v if k.startswith("overlap"))]
    if t:
        lines.append(f"text->video  ({t['queries']} queries, target = teacher's top video): student {fmt(t['vs_teacher_top1'])}")
    if "labelled" in t:
        lab = t["labelled"]
        lines += [f"text->video  ({lab['queries']} labelled queries): student {fmt(lab['student'])}",
                  f"{'':>42}teacher {fmt(lab['teacher'])}"]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.evaluate_search", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True, help="index directory or Qdrant server URL")
    parser.add_argument("--name", default="streamapprox", help="the index's collection prefix")
    parser.add_argument("--queries", help="text queries: a .txt (one per line) or .csv (text[,video_id]); default: built-in generic ones")
    parser.add_argument("--max-queries", type=int, default=2000, help="video->video queries (the first N videos by id)")
    parser.add_argument("--random-init", action="store_true", help="random-init text towers (tests only)")
    parser.add_argument("--no-text", action="store_true", help="video->video only (no text towers needed, e.g. synthetic shards)")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="text tower settings, as for launch serve")
    parser.add_argument("--out", help="write the JSON here (default: INDEX/search_eval.json for an index directory)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    logging.getLogger("streamapprox").setLevel(logging.INFO)  # ours; open_clip logs chatter at INFO on the root logger
    try:
        result = evaluate_index(args)
    except (ConfigError, SearchIndexError, EncoderError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = args.out or (None if is_server(args.index) else str(Path(args.index) / "search_eval.json"))
    if out:
        atomic_write_text(Path(out), json.dumps(result, indent=2, sort_keys=True) + "\n")
    print("\n".join(report_lines(result)) + (f"\nwritten to {out}" if out else ""))
    return 0


if __name__ == "__main__":
    exit_job(main())
