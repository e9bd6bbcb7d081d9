"""The Kaggle calls ``launch kaggle`` makes, through the ``kaggle`` package (uploads, kernel push)
and its ``kagglesdk`` client (status, outputs), with one retry policy: 429 (honouring Retry-After),
5xx and dropped connections are retried with exponential backoff; 401/403 and 404 are explained.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path

from launch.local import LaunchError
from sync import SyncError

log = logging.getLogger("streamapprox.kaggle")
RETRIED = {429, 500, 502, 503, 504}
TERMINAL = {"COMPLETE", "ERROR", "CANCEL_ACKNOWLEDGED"}


class NotFound(LaunchError):
    """Kaggle answered 404."""


@dataclass
class KernelState:
    status: str  # QUEUED, RUNNING, COMPLETE, ERROR, CANCEL_REQUESTED, CANCEL_ACKNOWLEDGED
    failure: str = ""

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


def kernel_log_text(raw: str) -> str:
    """Kaggle serves a script kernel's log as a JSON list of ``{stream_name, time, data}``; plain
    text (or a list still being written) is shown as it is."""
    if not raw:
        return ""
    for candidate in (raw, raw.rstrip().rstrip(",") + "]"):
        try:
            entries = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(entries, list):
            return "".join(str(e.get("data", "")) for e in entries if isinstance(e, dict))
    return raw


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
        self.attempts = int(os.environ.get("STREAMAPPROX_KAGGLE_ATTEMPTS", "6"))
        self.backoff_s = float(os.environ.get("STREAMAPPROX_KAGGLE_BACKOFF_S", "2"))

    # -- the retry policy ------------------------------------------------------------------------
    def call(self, what: str, fn, *args, **kwargs):
        import requests

        for attempt in range(1, self.attempts + 1):
            try:
                return fn(*args, **kwargs)
            except requests.exceptions.HTTPError as exc:
                status = exc.response.status_code if exc.response is not None else None
                if status not in RETRIED or attempt == self.attempts:
                    raise self._explain(what, status, exc) from None
                delay = self._delay(attempt, exc.response)
                reason = f"HTTP {status}"
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
                if attempt == self.attempts:
                    raise LaunchError(f"kaggle: {what}: cannot reach Kaggle ({type(exc).__name__}) after {attempt} attempts") from None
                delay, reason = self._delay(attempt, None), type(exc).__name__
            log.warning("kaggle: %s: %s; retrying in %.1f s (attempt %d of %d)", what, reason, delay, attempt, self.attempts)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _delay(self, attempt: int, response) -> float:
        retry_after = response.headers.get("Retry-After") if response is not None else None
        if retry_after:
            try:
                return min(float(retry_after), 300.0)
            except ValueError:
                pass
        return min(self.backoff_s * 2 ** (attempt - 1), 60.0)

    def _explain(self, what: str, status: int | None, exc) -> LaunchError:
        if status in (401, 403):
            return LaunchError(f"kaggle: {what}: Kaggle refused the credentials of user {self.owner!r} (HTTP {status}). "
                               "Check KAGGLE_USERNAME/KAGGLE_KEY, KAGGLE_API_TOKEN or ~/.kaggle/kaggle.json, and that the account may do this")
        if status == 404:
            return NotFound(f"kaggle: {what}: not found (HTTP 404)")
        return LaunchError(f"kaggle: {what}: Kaggle answered HTTP {status} ({exc})")

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

    def upload_dataset(self, folder: Path, slug: str, title: str, new: bool, notes: str) -> None:
        """Create the private dataset (``new``) or a new version of it from the files in ``folder``."""
        metadata = {"id": f"{self.owner}/{slug}", "title": title, "licenses": [{"name": "other"}]}
        (folder / "dataset-metadata.json").write_text(json.dumps(metadata))
        if new:
            what = f"create dataset {self.owner}/{slug}"
            result = self.call(what, self.api.dataset_create_new, str(folder), public=False, quiet=True, dir_mode="skip")
        else:
            what = f"new version of dataset {self.owner}/{slug}"
            result = self.call(what, self.api.dataset_create_version, str(folder), notes, quiet=True, dir_mode="skip")
        if result is None or result.error:
            raise LaunchError(f"kaggle: {what}: {getattr(result, 'error', None) or 'refused'}")

    def wait_dataset_ready(self, slug: str, timeout_s: float, poll_s: float) -> None:
        """A new dataset version answers 404 or a processing state for a while; kernels may only mount it when ready."""
        deadline, delay = time.monotonic() + timeout_s, poll_s
        while True:
            status = self.dataset_status(slug)
            if status == "ready":
                return
            if status == "failed":
                raise LaunchError(f"kaggle: dataset {self.owner}/{slug}: Kaggle failed to process the upload; run the launch again to re-upload")
            if time.monotonic() > deadline:
                raise LaunchError(f"kaggle: dataset {self.owner}/{slug} still not ready after {timeout_s:.0f} s "
                                  f"(status {status or 'not found yet'}); try again later (--dataset-timeout)")
            log.info("kaggle: dataset %s/%s is %s; waiting %.1f s", self.owner, slug, status or "not visible yet", delay)
            time.sleep(delay)
            delay = min(delay * 1.5, 30.0)

    # -- kernels ---------------------------------------------------------------------------------
    def push_kernel(self, folder: Path) -> str:
        response = self.call("push kernel", self.api.kernels_push, str(folder))
        if response.error:
            raise LaunchError(f"kaggle: push kernel: {response.error}")
        invalid = list(response.invalid_dataset_sources) + list(response.invalid_kernel_sources)
        if invalid:
            raise LaunchError(f"kaggle: push kernel: Kaggle did not accept these sources: {', '.join(invalid)}")
        return response.url

    def kernel_state(self, slug: str) -> KernelState:
        from kagglesdk.kernels.types.kernels_api_service import ApiGetKernelSessionStatusRequest

        request = ApiGetKernelSessionStatusRequest()
        request.user_name, request.kernel_slug = self.owner, slug
        response = self.rpc(f"status of kernel {self.owner}/{slug}", "kernels.kernels_api_client.get_kernel_session_status", request)
        return KernelState(response.status.name, response.failure_message or "")

    def kernel_log(self, slug: str) -> str:
        from kagglesdk.kernels.types.kernels_api_service import ApiListKernelSessionOutputRequest

        request = ApiListKernelSessionOutputRequest()
        request.user_name, request.kernel_slug, request.page_size = self.owner, slug, 1
        response = self.rpc(f"log of kernel {self.owner}/{slug}", "kernels.kernels_api_client.list_kernel_session_output", request)
        return kernel_log_text(response.log or "")
