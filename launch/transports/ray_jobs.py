"""A Ray cluster's Jobs API (``ray.job_submission``) with its failures told apart: a refused connection, a timeout or
a 5xx is ``Unreachable`` (the driver retries it); a bad token, a 4xx or a dashboard that is not Ray's is a
``LaunchError``. Ray's token authentication works as Ray's own clients do (``RAY_AUTH_TOKEN``,
``~/.ray/auth_token``); the token never enters a bundle or a record."""
from __future__ import annotations

import re
import sys
import time

from launch.errors import LaunchError, Unreachable

AGENT_WAIT_S = 120  # Ray answers "No available agent to submit job, please try again later" while a head starts
STATES = {"PENDING": "queued", "RUNNING": "running", "SUCCEEDED": "succeeded", "FAILED": "failed", "STOPPED": "stopped"}


def _explain(address: str, what: str, exc: Exception) -> LaunchError:
    import requests

    text = str(exc).splitlines()[0][:400] if str(exc) else type(exc).__name__
    status = re.search(r"status code (\d{3})", str(exc))
    if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError, TimeoutError)) \
            or (status and int(status.group(1)) >= 500):
        return Unreachable(f"Ray Jobs at {address}: {what}: {type(exc).__name__}: {text}")
    return LaunchError(f"Ray Jobs at {address}: {what}: {type(exc).__name__}: {text} (check --address, that the cluster runs "
                       "the dashboard (ray[default]), and RAY_AUTH_TOKEN)")


class RayJobs:
    def __init__(self, address: str):
        from ray.job_submission import JobSubmissionClient

        self.address = address
        try:
            self.client = JobSubmissionClient(address)
        except Exception as exc:  # connection refused, bad token, not a Ray dashboard
            raise _explain(address, "connecting", exc) from None

    def call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise _explain(self.address, what, exc) from None

    def submit(self, entrypoint: str, submission_id: str, cpus: float, gpus: float, working_dir: str, metadata: dict) -> str:
        """One Ray job; a head still starting its job agent ("No available agent") is waited for."""
        deadline = time.monotonic() + AGENT_WAIT_S
        while True:
            try:
                return self.client.submit_job(entrypoint=entrypoint, submission_id=submission_id, entrypoint_num_cpus=cpus,
                                              entrypoint_num_gpus=gpus, metadata=metadata,
                                              runtime_env={"working_dir": working_dir,
                                                           "env_vars": {"PYTHONUNBUFFERED": "1", "STREAMAPPROX_BACKEND": "ray"}})
            except Exception as exc:
                if "No available agent" in str(exc) and time.monotonic() < deadline:
                    print("launch ray: the cluster's job agent is not up yet; retrying", file=sys.stderr, flush=True)
                    time.sleep(2)
                    continue
                if "already exists" in str(exc):  # an earlier try of this very submission got through; its answer was lost
                    return submission_id
                raise _explain(self.address, f"submitting {submission_id}", exc) from None

    def state(self, submission_id: str) -> tuple[str, str]:
        info = self.call(f"status of {submission_id}", self.client.get_job_info, submission_id)
        status = str(info.status.value)
        return STATES.get(status, status.lower()), (info.message or "") if status != "SUCCEEDED" else ""

    def logs(self, submission_id: str) -> str:
        return self.call(f"logs of {submission_id}", self.client.get_job_logs, submission_id)

    def stop(self, submission_id: str) -> bool:
        return self.call(f"stopping {submission_id}", self.client.stop_job, submission_id)
