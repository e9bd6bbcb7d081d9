"""What a person wants to see when a run ends or is asked about, whichever backend ran it: where the run is, its
state (a ``running`` run whose process is gone says so), the job's own figures, and how to continue it."""
from __future__ import annotations

import json
from pathlib import Path

from jobs import JOBS


def state_line(run_dir: Path, info: dict) -> tuple[str, bool | None]:
    """The status to show and whether a process still holds the run directory (None: not asked)."""
    from jobs.run_lock import liveness

    status = info.get("status")
    if status != "running":
        return str(status), None
    alive, known = liveness(run_dir)
    where = f"pid {known.get('pid', '?')} on {known.get('host', '?')}; last heartbeat {known.get('heartbeat', 'unknown')}"
    if alive is False:  # nobody holds the run directory any more: its process is gone
        return f"died ({where}; run.json still says running)", False
    if alive:
        return f"running ({where})", True
    return "running", None


def resumable(run_dir: Path, info: dict, alive: bool | None) -> bool:
    spec = JOBS.get(info.get("job", ""))
    if not spec or not spec.resumable or "diverged" in str(info.get("error")):
        return False
    saved = (run_dir / "checkpoints" / "last.pt").is_file() or info.get("job") == "sweep"
    return saved and (info.get("status") in ("incomplete", "failed") or alive is False)


def summarize(run_dir: Path, backend: str = "local") -> str:
    info_path = run_dir / "run.json"
    if not info_path.is_file():
        return f"run directory: {run_dir} (no run.json here yet: the job has not started, or it was not pulled)"
    info = json.loads(info_path.read_text())
    status, alive = state_line(run_dir, info)
    lines = [f"run directory: {run_dir}", f"status: {status}"]
    if info.get("status") == "failed" and info.get("error"):
        lines.append(f"error: {info['error']}")
    spec = JOBS.get(info.get("job", ""))
    if spec:
        lines += spec.summarize(run_dir, info)
    if resumable(run_dir, info, alive):
        lines.append(f"resume with: launch {backend} {info['job']} --resume {run_dir}")
    return "\n".join(lines)
