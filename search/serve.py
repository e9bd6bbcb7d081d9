"""``python -m search.serve --index DIR|URL`` (what ``launch serve`` runs): the search service on uvicorn.

The text towers default to those the indexed shard set was extracted with (recorded in the index);
``--set`` changes them, e.g. ``--set imagebind.weights=PATH`` or ``--set clip.pretrained=laion2b_s34b_b79k``.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from pydantic import ValidationError

# Requests are the parallelism here: OpenBLAS threads inside concurrent requests spin against each other (8 clients
# on 2 cores: 77 req/s, p99 445 ms; single-threaded: 417 req/s, p99 36 ms). Set before numpy loads; an explicit setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="launch serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True, help="index directory (embedded Qdrant and its snapshot) or a Qdrant server URL "
                        "(read once at start)")
    parser.add_argument("--name", default="streamapprox", help="collection name prefix the index was built with")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--videos", help="where the source videos are on this machine (a directory or CSV/JSON list), for "
                        "thumbnails of an index built elsewhere")
    parser.add_argument("--no-text", action="store_true", help="no text towers: video queries only (synthetic shards, or "
                        "no weights on this machine)")
    parser.add_argument("--random-init", action="store_true", help="random-init text towers (tests only: results are meaningless)")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="text tower settings (QueryEncodersConfig): video_text, imagebind.*, clip.*, seed")
    return parser.parse_args(argv)


def build_engine(args: argparse.Namespace):
    """The engine over the index's snapshot; the text towers (and torch) only load when text is on."""
    from search.query import SearchEngine, encoders_config
    from search.store import Snapshot

    snapshot = Snapshot.open(args.index, args.name)
    encoders = None
    if not args.no_text:
        from jobs.config import apply_override, format_validation_error
        from model.text import QueryEncoders, QueryEncodersConfig

        overrides: dict = {"random_init": True} if args.random_init else {}
        for assignment in args.overrides:
            apply_override(overrides, assignment)
        try:
            config = encoders_config(snapshot.state(), overrides)
        except ValidationError as exc:
            raise ValueError(format_validation_error(exc, QueryEncodersConfig)) from None
        encoders = QueryEncoders(config)
    sources = {}
    if args.videos:
        from data_shards.sources import list_videos

        sources = {entry.video_id: str(Path(entry.path).resolve()) for entry in list_videos(args.videos)}
    return SearchEngine(snapshot, encoders, sources)


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    from search.app import create_app
    from search.store import SearchIndexError

    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    logging.getLogger("streamapprox").setLevel(logging.INFO)  # ours; open_clip logs chatter at INFO on the root logger
    refused: tuple = (SearchIndexError, ValueError)  # ValueError: ConfigError, ShardError and bad --set values among them
    if not args.no_text:
        from model.encoders import EncoderError

        refused += (EncoderError,)
    try:
        engine = build_engine(args)
    except refused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = engine.index.count()
    print(f"serving {counts['videos']} videos, {counts['frames']} frames from {args.index} on http://{args.host}:{args.port}/ "
          "(API docs /docs, metrics /metrics)", flush=True)
    uvicorn.run(create_app(engine), host=args.host, port=args.port, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
