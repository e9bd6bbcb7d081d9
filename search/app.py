"""The search service (FastAPI): ``/search``, ``/videos/{id}``, thumbnails, ``/health``, Prometheus
``/metrics``, OpenAPI at ``/docs``, and a web page at ``/``.

One engine serves every request: its index snapshot is read-only (requests run side by side in the
thread pool; the numpy products release the GIL) and only the text towers take turns, so one process
answers a request in milliseconds; users who need more run several service processes.
"""
from __future__ import annotations

import io
import time
from functools import lru_cache
from pathlib import Path

from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from search.query import MAX_FRAMES, MAX_K, SPACES, QueryError, SearchEngine

PAGE = Path(__file__).with_name("page.html")
THUMBNAIL_WIDTH = 240


def create_app(engine: SearchEngine) -> FastAPI:
    app = FastAPI(title="StreamApprox search", version="1",
                  description="Search a video collection indexed by a cheap StreamApprox student: text or video queries, "
                              "top-k videos and their best-matching frames with timestamps.")
    registry = CollectorRegistry()
    requests = Counter("streamapprox_requests", "HTTP requests", ["method", "route", "status"], registry=registry)
    latency = Histogram("streamapprox_request_seconds", "request latency", ["route"], registry=registry,
                        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))

    @app.middleware("http")
    async def measure(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        requests.labels(request.method, route, str(response.status_code)).inc()
        latency.labels(route).observe(time.perf_counter() - started)
        return response

    @app.exception_handler(QueryError)
    async def query_error(request: Request, exc: QueryError):
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return PAGE.read_text()

    @app.get("/search", summary="top-k videos for a text or an indexed video, with their best frames")
    def search(q: str | None = Query(None, description="text query", max_length=1000),
               video: str | None = Query(None, description="an indexed video id: find videos like it"),
               k: int = Query(10, ge=1, le=MAX_K), frames: int = Query(3, ge=0, le=MAX_FRAMES),
               space: str = Query("student", description=f"which vectors rank videos: {', '.join(SPACES)} (teacher: the "
                                                         "dense reference, for comparison)")) -> dict:
        if q is not None and video is not None:
            raise QueryError("give either q (text) or video (an indexed video id), not both")
        if video is not None:
            return engine.search_video(video, k, frames, space)
        return engine.search_text(q or "", k, frames, space)

    @app.get("/videos/{video_id}", summary="an indexed video's metadata and frame timestamps")
    def video(video_id: str) -> dict:
        return engine.video(video_id)

    @app.get("/videos/{video_id}/frame", summary="a JPEG thumbnail of the video at t seconds (needs the source file)",
             response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
    def frame(video_id: str, t: float = Query(0.0, ge=0)) -> Response:
        source = engine.source(video_id)
        if not source or not Path(source).is_file():
            raise QueryError(f"video {video_id!r}: its source file is not on this machine; index with --videos DIR for "
                             "thumbnails", status=404)
        return Response(thumbnail(source, round(t, 2)), media_type="image/jpeg")

    @app.get("/health", summary="liveness and what is being served")
    def health() -> dict:
        counts = engine.index.count()
        encoders = engine.encoders.describe() if engine.encoders else {}
        return {"status": "ok", **counts, "student": engine.state.get("student"), "text": bool(encoders), "encoders": encoders,
                "random_init": any(e["random_init"] for e in encoders.values()),
                "shards_random_init": bool(((engine.state.get("shards") or {}).get("encoders") or {}).get("random_init"))}

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


@lru_cache(maxsize=512)
def thumbnail(source: str, t: float) -> bytes:
    """The frame nearest ``t`` seconds, scaled to ``THUMBNAIL_WIDTH`` wide, as JPEG."""
    from PIL import Image

    from data_shards.video import DecodeError, decode_frames, probe

    try:
        info = probe(source)
        index = min(max(int(round(t * info.fps)), 0), info.frame_count - 1)
        image = Image.fromarray(decode_frames(info, [index])[index])
    except DecodeError as exc:
        raise QueryError(f"{source}: cannot decode a frame at {t} s ({exc})", status=404) from None
    image.thumbnail((THUMBNAIL_WIDTH, THUMBNAIL_WIDTH))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return out.getvalue()
