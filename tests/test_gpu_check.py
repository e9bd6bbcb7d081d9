"""``bench/gpu_check.sh --smoke``: every step of the GPU check (mixed-precision and DeepSpeed training, extraction, a
video's cost, the report's latency columns, the extraction pipeline) run on this CPU at tiny sizes, so the script cannot
rot between the times a GPU machine is lent."""
import subprocess
import sys
from pathlib import Path

from conftest import cli_env

REPO = Path(__file__).resolve().parent.parent


def test_the_gpu_check_runs_every_step_on_the_cpu():
    result = subprocess.run([str(REPO / "bench" / "gpu_check.sh"), "--smoke"], cwd=REPO, env={**cli_env(), "PYTHON": sys.executable},
                            capture_output=True, text=True, timeout=900)
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0 and lines[-1].endswith("7/7 steps passed: PASS"), result.stdout[-4000:] + result.stderr[-3000:]
    table = [line for line in lines if line.startswith("| ")]
    assert len(table) == 8 and all("| PASS |" in row for row in table[1:])
    deepspeed = next(row for row in table if row.startswith("| DeepSpeed ZeRO-2 |"))
    assert "DistributedType.DEEPSPEED" in deepspeed  # ZeRO-2 through Accelerate on this CPU: the suite's DeepSpeed run
