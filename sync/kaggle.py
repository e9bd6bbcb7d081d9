"""Read-only Kaggle stores through the ``kaggle`` package: ``kaggle://OWNER/KERNEL`` (a kernel's
outputs, every page of them) and ``kaggle-dataset://OWNER/SLUG`` (a dataset's files).

Credentials come from the kaggle package's own chain (KAGGLE_USERNAME/KAGGLE_KEY, KAGGLE_API_TOKEN,
~/.kaggle/kaggle.json). Unlike ``kaggle kernels output``, a download that answers with an error
status, or ends short of its Content-Length, is rejected and leaves nothing behind.
``STREAMAPPROX_KAGGLE_ENDPOINT`` points the client at a Kaggle-compatible server (the tests' loopback one).
"""
from __future__ import annotations

import json
import os
from operator import attrgetter
from pathlib import Path

from data_shards.files import CHUNK, atomic_destination
from sync.base import SYNC_MANIFEST, Entry, Progress, Store, SyncError, Verifier

PAGE_SIZE = 100
DOWNLOAD_TIMEOUT_S = 60


def kaggle_api():
    """The kaggle package's API object, authenticated from the user's credentials."""
    endpoint = os.environ.get("STREAMAPPROX_KAGGLE_ENDPOINT")
    if endpoint:
        os.environ["KAGGLE_API_ENVIRONMENT"] = "LOCALHOST"
        from kagglesdk import kaggle_env

        kaggle_env._env_to_endpoint[kaggle_env.KaggleEnv.LOCAL] = endpoint.rstrip("/")
    try:
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


def _session():
    """Plain HTTP for the signed file URLs Kaggle hands out, with retries on transient failures."""
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    session = requests.Session()
    retry = Retry(total=5, backoff_factor=0.5, status_forcelist=(429, 500, 502, 503, 504), allowed_methods=("GET",))
    session.mount("http://", HTTPAdapter(max_retries=retry))
    session.mount("https://", HTTPAdapter(max_retries=retry))
    return session


def stream_to(url: str, response, dest: Path, expected: Entry, progress: Progress) -> Entry:
    """Write an HTTP response body to ``dest`` only if it is a complete, successful body."""
    if response.status_code != 200:
        kind = response.headers.get("Content-Type", "unknown type")
        raise SyncError(f"{url}: the file server answered HTTP {response.status_code} ({kind}) instead of the file; nothing was kept")
    length = response.headers.get("Content-Length")
    promised = Entry(int(length) if length is not None else expected.size, expected.sha256, expected.md5)
    verifier = Verifier(url, promised)
    with atomic_destination(dest) as sink:
        for block in response.iter_content(CHUNK):
            sink.write(block)
            verifier.update(block)
            progress(len(block))
        return verifier.check()


def _call(url: str, fn, request):
    import requests

    try:
        return fn(request)
    except requests.exceptions.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        raise SyncError(f"{url}: Kaggle refused the request (HTTP {status}: {exc}); check the name and that your account can read it") from None
    except requests.exceptions.RequestException as exc:
        raise SyncError(f"{url}: cannot reach Kaggle ({type(exc).__name__})") from None


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
        with _session() as session, session.get(self._urls[SYNC_MANIFEST], timeout=DOWNLOAD_TIMEOUT_S) as response:
            if response.status_code != 200:
                raise SyncError(f"{self.url}/{SYNC_MANIFEST}: the file server answered HTTP {response.status_code}")
            try:
                return json.loads(response.content)["files"]
            except (ValueError, KeyError) as exc:
                raise SyncError(f"{self.url}/{SYNC_MANIFEST}: unreadable content manifest ({exc})") from None

    def download(self, rel: str, dest: Path, expected: Entry, progress: Progress) -> Entry:
        if rel not in self._urls:
            self.list()
        with _session() as session, session.get(self._urls[rel], stream=True, timeout=DOWNLOAD_TIMEOUT_S) as response:
            return stream_to(f"{self.url}/{rel}", response, dest, expected, progress)


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
        with kaggle_client() as client:
            response = _call(self.url, client.datasets.dataset_api_client.download_dataset, request)
            with response:
                return stream_to(f"{self.url}/{rel}", response, dest, expected, progress)
