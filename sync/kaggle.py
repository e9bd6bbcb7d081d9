"""Read-only Kaggle stores through the ``kaggle`` package: ``kaggle://OWNER/KERNEL`` (a kernel's
outputs, every page of them) and ``kaggle-dataset://OWNER/SLUG`` (a dataset's files).

Credentials come from the kaggle package's own chain (KAGGLE_USERNAME/KAGGLE_KEY, KAGGLE_API_TOKEN,
~/.kaggle/kaggle.json). Unlike ``kaggle kernels output``, a download that answers with an error
status is rejected and leaves nothing behind, and one that breaks off is resumed where it stopped.
Every call goes through one retry policy (``with_retries``), which ``launch kaggle`` uses too.
``STREAMAPPROX_KAGGLE_ENDPOINT`` points the client at a Kaggle-compatible server (the tests' loopback one).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import threading
import time
from operator import attrgetter
from pathlib import Path

from sync.base import SYNC_MANIFEST, Entry, Progress, Store, SyncError
from sync.http import RETRIED, fetch, ranged, retry_policy, session
from sync.http import delay as _delay

PAGE_SIZE = 100
log = logging.getLogger("streamapprox.kaggle")


QUIET = threading.Lock()  # the stdout/stderr swap below is process-wide: threads take turns, or one leaves them swapped


def kaggle_api():
    """The kaggle package's API object, authenticated from the user's credentials. The package prints a
    long banner (twice) when it finds none; that is swallowed: the one line below says what to do."""
    endpoint = os.environ.get("STREAMAPPROX_KAGGLE_ENDPOINT")
    if endpoint:
        os.environ["KAGGLE_API_ENVIRONMENT"] = "LOCALHOST"
        from kagglesdk import kaggle_env

        kaggle_env._env_to_endpoint[kaggle_env.KaggleEnv.LOCAL] = endpoint.rstrip("/")
    chatter = io.StringIO()
    try:
        with QUIET, contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            from kaggle.api.kaggle_api_extended import KaggleApi  # importing kaggle authenticates

            api = KaggleApi()
            api.authenticate()
    except (OSError, ValueError, KeyError, SystemExit) as exc:  # kaggle exit()s when it finds no credentials
        raise SyncError(
            "kaggle: no usable credentials (set KAGGLE_USERNAME and KAGGLE_KEY, or KAGGLE_API_TOKEN, "
            f"or write ~/.kaggle/kaggle.json): {type(exc).__name__}"
        ) from None
    return api


def kaggle_client():
    """An authenticated kagglesdk client (a context manager)."""
    return kaggle_api().build_kaggle_client()


class KaggleRequestError(SyncError):
    """Kaggle refused a request, or could not be reached after the retries; ``status`` is the HTTP status (None: no answer)."""

    def __init__(self, message: str, status: int | None):
        super().__init__(message)
        self.status = status


def _attempts() -> tuple[int, float]:
    return retry_policy("STREAMAPPROX_KAGGLE")


def with_retries(what: str, fn, *args, **kwargs):
    """The one retry policy for every Kaggle call: 429 (honouring Retry-After), 5xx and dropped or timed-out
    connections are retried with exponential backoff (``STREAMAPPROX_KAGGLE_ATTEMPTS``, default 6;
    ``STREAMAPPROX_KAGGLE_BACKOFF_S``, default 2); anything else, or the last failure, raises ``KaggleRequestError``."""
    import requests

    attempts, backoff = _attempts()
    for attempt in range(1, attempts + 1):
        try:
            return fn(*args, **kwargs)
        except requests.exceptions.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            if status not in RETRIED or attempt == attempts:
                raise KaggleRequestError(f"kaggle: {what}: Kaggle answered HTTP {status} ({exc})", status) from None
            delay, reason = _delay(attempt, backoff, exc.response), f"HTTP {status}"
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
            if attempt == attempts:
                raise KaggleRequestError(f"kaggle: {what}: cannot reach Kaggle ({type(exc).__name__}) after {attempt} attempts", None) from None
            delay, reason = _delay(attempt, backoff), type(exc).__name__
        log.warning("kaggle: %s: %s; retrying in %.1f s (attempt %d of %d)", what, reason, delay, attempt, attempts)
        time.sleep(delay)
    raise AssertionError("unreachable")


def pages(url: str, method, request_type, **fields):
    """Every page of a paged Kaggle listing: ``method(client)`` gives the RPC, ``request_type`` its
    request class, ``fields`` its attributes besides the paging ones."""
    token = ""
    with kaggle_client() as client:
        while True:
            request = request_type()
            for name, value in {**fields, "page_size": PAGE_SIZE, "page_token": token}.items():
                setattr(request, name, value)
            page = _call(url, method(client), request)
            yield page
            token = page.next_page_token
            if not token:
                return


def _call(url: str, fn, request):
    try:
        return with_retries(f"listing {url}", fn, request)
    except KaggleRequestError as exc:
        if exc.status is None:
            raise SyncError(f"{url}: cannot reach Kaggle ({exc})") from None
        raise SyncError(f"{url}: Kaggle refused the request (HTTP {exc.status}); check the name and that your account can read it") from None


class KaggleKernelOutputStore(Store):
    """A kernel's output files, or those under one folder of them (``kaggle://OWNER/KERNEL/DIR``).
    Kaggle lists no sizes or digests; where the kernel wrote a content manifest
    (``.streamapprox-sync.json``, as ``launch kaggle`` kernels do for their run directory), its sizes
    and sha256 digests verify every download and let unchanged files stay put. Otherwise each file
    moves again, checked against its Content-Length and HTTP status."""

    writable = False

    def __init__(self, url: str, owner: str, kernel: str, folder: str = ""):
        self.url, self.owner, self.kernel = url, owner, kernel
        self.prefix = folder.strip("/") + "/" if folder.strip("/") else ""
        self._urls: dict[str, str] = {}

    def list(self) -> dict[str, Entry]:
        from kagglesdk.kernels.types.kernels_api_service import ApiListKernelSessionOutputRequest

        entries = {}
        rpc = attrgetter("kernels.kernels_api_client.list_kernel_session_output")
        for page in pages(self.url, rpc, ApiListKernelSessionOutputRequest, user_name=self.owner, kernel_slug=self.kernel):
            for item in page.files:
                if item.file_name.startswith(self.prefix):
                    rel = item.file_name[len(self.prefix):]
                    self._urls[rel] = item.url
                    entries[rel] = Entry(None)
        if SYNC_MANIFEST in entries:
            recorded = self._recorded()
            entries = {rel: Entry(recorded[rel]["size"], recorded[rel]["sha256"]) if rel in recorded else entry
                       for rel, entry in entries.items() if rel != SYNC_MANIFEST}
        return entries

    def _recorded(self) -> dict[str, dict]:
        with tempfile.TemporaryDirectory(prefix="streamapprox-manifest-") as tmp:
            local = Path(tmp) / SYNC_MANIFEST
            self._fetch(SYNC_MANIFEST, local, Entry(None), lambda n: None)
            try:
                return json.loads(local.read_text())["files"]
            except (ValueError, KeyError) as exc:
                raise SyncError(f"{self.url}/{SYNC_MANIFEST}: unreadable content manifest ({exc})") from None

    def _fetch(self, rel: str, dest: Path, expected: Entry, progress: Progress) -> Entry:
        with session() as http:
            return fetch(f"{self.url}/{rel}", ranged(http, self._urls[rel]), dest, expected, progress, _attempts())

    def download(self, rel: str, dest: Path, expected: Entry, progress: Progress) -> Entry:
        if rel not in self._urls:
            self.list()
        return self._fetch(rel, dest, expected, progress)


class KaggleDatasetStore(Store):
    writable = False

    def __init__(self, url: str, owner: str, slug: str):
        self.url, self.owner, self.slug = url, owner, slug

    def list(self) -> dict[str, Entry]:
        from kagglesdk.datasets.types.dataset_api_service import ApiListDatasetFilesRequest

        entries = {}
        rpc = attrgetter("datasets.dataset_api_client.list_dataset_files")
        for page in pages(self.url, rpc, ApiListDatasetFilesRequest, owner_slug=self.owner, dataset_slug=self.slug):
            if page.error_message:
                raise SyncError(f"{self.url}: {page.error_message}")
            entries.update({item.name: Entry(item.total_bytes) for item in page.dataset_files})
        return entries

    def download(self, rel: str, dest: Path, expected: Entry, progress: Progress) -> Entry:
        from kagglesdk.datasets.types.dataset_api_service import ApiDownloadDatasetRequest

        request = ApiDownloadDatasetRequest()
        request.owner_slug, request.dataset_slug, request.file_name, request.raw = self.owner, self.slug, rel, True
        with kaggle_client() as client:  # the API answers with a redirect to a signed URL, where the bytes are
            response = _call(self.url, client.datasets.dataset_api_client.download_dataset, request)
            response.close()
        with session() as http:
            return fetch(f"{self.url}/{rel}", ranged(http, response.url), dest, expected, progress, _attempts())
