"""The Kaggle calls ``launch kaggle`` makes, through the ``kaggle`` package (uploads, kernel push, the live log
stream) and its ``kagglesdk`` client (status, outputs, quota), under the one retry policy of ``sync.kaggle`` (429
honouring Retry-After, 5xx and dropped connections retried with exponential backoff); 401/403 and 404 are explained.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any

from launch.errors import Busy, LaunchError, Unreachable
from sync import SyncError

log = logging.getLogger("streamapprox.kaggle")
TERMINAL = {"COMPLETE", "ERROR", "CANCEL_ACKNOWLEDGED"}


class NotFound(LaunchError):
    """Kaggle answered 404."""


class GpuSessionsBusy(Busy):
    """Kaggle refused a push: the account already runs as many GPU sessions as it may (2)."""


GPU_SESSION_LIMIT = "Maximum batch GPU session count"  # how Kaggle words that refusal (kaggle-api #185)
DATASET_FIRST_POLL_S = 1.0  # a new dataset version is usually ready within seconds to minutes: ask soon, then less often
DATASET_MAX_POLL_S = 30.0
STREAM_RECONNECTS = 5  # a log stream that breaks this many times in a row without new data is given up (the official client's)


@dataclass
class KernelState:
    status: str  # QUEUED, RUNNING, COMPLETE, ERROR, CANCEL_REQUESTED, CANCEL_ACKNOWLEDGED
    failure: str = ""

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


class KaggleService:
    def __init__(self, owner: str | None = None):
        from sync.kaggle import kaggle_api

        try:
            self.api = kaggle_api()
        except SyncError as exc:
            raise LaunchError(str(exc)) from None
        self.owner = owner or self.api.get_config_value(self.api.CONFIG_NAME_USER)
        if not self.owner:
            raise LaunchError("kaggle: cannot tell your Kaggle username from the credentials; pass --owner USERNAME")

    # -- the retry policy: sync's, shared by every Kaggle call -------------------------------------
    def call(self, what: str, fn, *args, **kwargs):
        from sync.kaggle import KaggleRequestError, with_retries

        try:
            return with_retries(what, fn, *args, **kwargs)
        except KaggleRequestError as exc:
            raise self._explain(what, exc.status, exc) from None

    def _explain(self, what: str, status: int | None, exc) -> LaunchError:
        if status in (401, 403):
            return LaunchError(f"kaggle: {what}: Kaggle refused the credentials of user {self.owner!r} (HTTP {status}). "
                               "Check KAGGLE_USERNAME/KAGGLE_KEY, KAGGLE_API_TOKEN or ~/.kaggle/kaggle.json, and that the account may do this")
        if status == 404:
            return NotFound(f"kaggle: {what}: not found (HTTP 404)")
        if status is None or status == 429 or status >= 500:  # still failing after sync's retries: the driver's policy goes on
            return Unreachable(str(exc))
        return LaunchError(str(exc))

    def rpc(self, what: str, path: str, request):
        """One kagglesdk call, e.g. ``rpc(..., "kernels.kernels_api_client.get_kernel_session_status", req)``."""
        def once():
            with self.api.build_kaggle_client() as client:
                return attrgetter(path)(client)(request)

        return self.call(what, once)

    # -- datasets --------------------------------------------------------------------------------
    def dataset_status(self, slug: str) -> str | None:
        """``ready``, a processing state, ``failed``, or None when Kaggle does not know it (yet)."""
        from kagglesdk.datasets.types.dataset_api_service import ApiGetDatasetStatusRequest

        request = ApiGetDatasetStatusRequest()
        request.owner_slug, request.dataset_slug = self.owner, slug
        try:
            response = self.rpc(f"status of dataset {self.owner}/{slug}", "datasets.dataset_api_client.get_dataset_status", request)
        except NotFound:
            return None
        return response.status.name.lower()

    def dataset_file(self, slug: str, name: str) -> bytes | None:
        """A small file of a dataset (a marker), or None if the dataset or file is missing."""
        from kagglesdk.datasets.types.dataset_api_service import ApiDownloadDatasetRequest

        request = ApiDownloadDatasetRequest()
        request.owner_slug, request.dataset_slug, request.file_name, request.raw = self.owner, slug, name, True
        try:
            response = self.rpc(f"download {name} from dataset {self.owner}/{slug}", "datasets.dataset_api_client.download_dataset", request)
        except NotFound:
            return None
        with response:
            return response.content if response.status_code == 200 else None

    def dataset_files(self, slug: str) -> dict[str, int] | None:
        """Name -> size of every file in the dataset's current version (every page), or None when Kaggle does not know it."""
        from kagglesdk.datasets.types.dataset_api_service import ApiListDatasetFilesRequest

        files, token = {}, ""
        while True:
            request = ApiListDatasetFilesRequest()
            request.owner_slug, request.dataset_slug, request.page_size, request.page_token = self.owner, slug, 100, token
            try:
                page = self.rpc(f"files of dataset {self.owner}/{slug}", "datasets.dataset_api_client.list_dataset_files", request)
            except NotFound:
                return None
            if page.error_message:
                raise LaunchError(f"kaggle: files of dataset {self.owner}/{slug}: {page.error_message}")
            files.update({item.name: int(item.total_bytes) for item in page.dataset_files})
            token = page.next_page_token
            if not token:
                return files

    def upload_dataset(self, folder: Path, slug: str, title: str, new: bool, notes: str, timeout_s: float) -> None:
        """Create the private dataset (``new``) or a new version of it from the files in ``folder``. The kaggle
        package resumes interrupted file uploads itself; a file it gave up on is caught by the caller's listing check."""
        metadata = {"id": f"{self.owner}/{slug}", "title": title, "licenses": [{"name": "other"}]}
        (folder / "dataset-metadata.json").write_text(json.dumps(metadata))
        if new:
            what = f"create dataset {self.owner}/{slug}"
            result = self.call(what, self.api.dataset_create_new, str(folder), public=False, quiet=True, dir_mode="skip")
            if result is not None and result.error and "already in use" in result.error:
                return  # an earlier attempt of this call created it (its answer was lost); the listing check decides
        else:
            what = f"new version of dataset {self.owner}/{slug}"
            try:
                result = self.call(what, self.api.dataset_create_version, str(folder), notes, quiet=True, dir_mode="skip")
            except LaunchError:
                if self.dataset_status(slug) in (None, "ready", "failed"):
                    raise
                # Kaggle answers a misleading 403 while the previous version is still processed: wait, then once more
                self.wait_dataset_ready(slug, timeout_s)
                result = self.call(what, self.api.dataset_create_version, str(folder), notes, quiet=True, dir_mode="skip")
        if result is None or result.error:
            raise LaunchError(f"kaggle: {what}: {getattr(result, 'error', None) or 'refused'}")

    def wait_dataset_ready(self, slug: str, timeout_s: float) -> None:
        self.wait_datasets_ready([slug], timeout_s)

    def wait_datasets_ready(self, slugs: list[str], timeout_s: float) -> None:
        """A new dataset version answers 404 or a processing state for a while; kernels may only mount it when ready.
        Several are waited for together (Kaggle processes them side by side): asked after a second, then half as long
        again each time, up to every 30 s."""
        deadline, delay, waiting = time.monotonic() + timeout_s, DATASET_FIRST_POLL_S, list(slugs)
        while True:
            statuses = {slug: self.dataset_status(slug) for slug in waiting}
            for slug, status in statuses.items():
                if status == "failed":
                    raise LaunchError(f"kaggle: dataset {self.owner}/{slug}: Kaggle failed to process the upload; run the launch again "
                                      "to re-upload")
            waiting = [slug for slug, status in statuses.items() if status != "ready"]
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise LaunchError(f"kaggle: dataset {self.owner}/{waiting[0]} still not ready after {timeout_s:.0f} s "
                                  f"(status {statuses[waiting[0]] or 'not found yet'}); try again later (--dataset-timeout)")
            for slug in waiting:
                log.info("kaggle: dataset %s/%s is %s; waiting %.1f s", self.owner, slug, statuses[slug] or "not visible yet", delay)
            time.sleep(delay)
            delay = min(delay * 1.5, DATASET_MAX_POLL_S)

    def model_version(self, instance: str) -> int | None:
        """The latest version of a model variation (``OWNER/MODEL/FRAMEWORK/VARIATION``), None when Kaggle does not know it."""
        try:
            return self.call(f"model variation {instance}", self.api.model_instance_get, instance).version_number or None
        except NotFound:
            return None

    # -- kernels ---------------------------------------------------------------------------------
    def push_kernel(self, folder: Path) -> str:
        response = self.call("push kernel", self.api.kernels_push, str(folder))
        if response.error and GPU_SESSION_LIMIT in response.error:
            raise GpuSessionsBusy(f"kaggle: push kernel: {response.error}")
        if response.error:
            raise LaunchError(f"kaggle: push kernel: {response.error}")
        invalid = [*response.invalid_dataset_sources, *response.invalid_kernel_sources, *response.invalid_model_sources]
        if invalid:
            raise LaunchError(f"kaggle: push kernel: Kaggle did not accept these sources: {', '.join(invalid)}")
        return response.url

    def kernel_state(self, slug: str) -> KernelState:
        from kagglesdk.kernels.types.kernels_api_service import ApiGetKernelSessionStatusRequest

        request = ApiGetKernelSessionStatusRequest()
        request.user_name, request.kernel_slug = self.owner, slug
        response = self.rpc(f"status of kernel {self.owner}/{slug}", "kernels.kernels_api_client.get_kernel_session_status", request)
        return KernelState(response.status.name, response.failure_message or "")

    def log_events(self, slug: str):
        """The kernel's log events from Kaggle's logs endpoint, the one the official ``kaggle kernels logs --follow``
        reads: while the session runs a server-sent stream that ends with END_OF_LOG, once it ended its whole log."""
        return self.api.kernels_logs_stream(f"{self.owner}/{slug}")

    def kernel_log(self, slug: str) -> str:
        """A finished kernel's whole log (a running one's as far as it got, once its stream ends)."""
        return self.call(f"log of kernel {self.owner}/{slug}", lambda: "".join(map(event_text, self.log_events(slug))))

    def log_stream(self, slug: str) -> LogStream:
        def running() -> bool:
            try:
                return not self.kernel_state(slug).finished
            except LaunchError:
                return True  # not known: read on

        return LogStream(f"{self.owner}/{slug}", lambda: self.log_events(slug), running)

    def quota(self) -> GpuQuota | None:
        """Kaggle's own figures of this week's GPU time, where Kaggle answers its (undocumented) quota call; None where
        it does not -- the launcher never depends on it."""
        from kagglesdk.kernels.types.kernels_api_service import ApiGetAcceleratorQuotaStatisticsRequest

        try:
            response = self.rpc("GPU quota", "kernels.kernels_api_client.get_accelerator_quota_statistics",
                                ApiGetAcceleratorQuotaStatisticsRequest())
        except LaunchError:
            return None
        gpu = response.gpu_quota
        if gpu is None or gpu.total_time_allowed is None:
            return None
        used = gpu.time_used or dt.timedelta(0)
        return GpuQuota(used.total_seconds() / 3600, gpu.total_time_allowed.total_seconds() / 3600)


@dataclass
class GpuQuota:
    used_hours: float
    allowed_hours: float


def event_text(event: dict[str, Any]) -> str:
    """One log event as the official client prints it: its data, as a line of its own."""
    data = str(event.get("data") or "")
    return data if not data or data.endswith("\n") else data + "\n"


class LogStream:
    """A running kernel's log as it grows, read by a thread from Kaggle's logs stream. A stream that breaks is opened
    again; Kaggle replays it from the start, so the events already read are skipped (as the official client does).
    ``ended``: the stream ended while the kernel no longer runs (a stream that closes on a running kernel was cut, not
    done: the package cannot tell END_OF_LOG from a closed connection) -- or it was given up, which ``failure`` says."""

    def __init__(self, kernel: str, open_events: Callable[[], Any], running: Callable[[], bool]):
        self.kernel, self.open_events, self.running = kernel, open_events, running
        self.text = ""
        self.failure: str | None = None
        self.ended = threading.Event()
        self.grew = threading.Event()
        self._lock = threading.Lock()
        threading.Thread(target=self._read, name=f"log stream {kernel}", daemon=True).start()

    def _read(self) -> None:
        import requests
        from urllib3.exceptions import ProtocolError

        seen, broken = 0, 0
        while True:
            before = seen
            try:
                for index, event in enumerate(self.open_events()):
                    if index < seen:
                        continue
                    seen = index + 1
                    with self._lock:
                        self.text += event_text(event)
                    self.grew.set()
                if not self.running():
                    break
                reason = "it closed while the kernel ran"
            except (requests.exceptions.RequestException, ProtocolError, ValueError) as exc:
                reason = type(exc).__name__
            broken = 0 if seen > before else broken + 1
            if broken >= STREAM_RECONNECTS:
                self.failure = f"the log stream of {self.kernel} broke {broken} times without new lines ({reason})"
                break
            time.sleep(1.0)
        self.ended.set()
        self.grew.set()

    def read(self, offset: int) -> tuple[str, int]:
        with self._lock:
            text = self.text
        return text[offset:], max(len(text), offset)
