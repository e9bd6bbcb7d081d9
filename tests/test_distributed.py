"""Several processes: 2 CPU ranks over gloo see disjoint data and hold identical parameters after
every step; how a distributed job's processes start and end. (DeepSpeed ZeRO-2 on CPU: bench/gpu_check.sh --smoke,
tests/test_gpu_check.py.)"""
import json
import subprocess
import sys
from collections import defaultdict

from conftest import SMALL, launch, only_run, read_jsonl
from servers import CHECKOUT

TINY = [f"data.shards={SMALL}", "data.batch_size=32", "model.hidden=[128]", "train.log_every=5"]


def test_two_gloo_ranks_disjoint_data_identical_parameters(tmp_path, small_shards):
    result = launch("local", "train_mlp", "--accelerate-config", "cpu_ddp2", "--set", *TINY, "train.epochs=2",
                    "train.audit=true", "train.evaluate_test=false", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = only_run(tmp_path)
    info = json.loads((run / "run.json").read_text())
    assert info["hardware"]["num_processes"] == 2 and info["status"] == "complete"
    ranks = [read_jsonl(run / "logs" / f"audit-rank{r}.jsonl") for r in range(2)]
    steps_per_epoch = 600 // (32 * 2)
    assert [len(r) for r in ranks] == [2 * steps_per_epoch] * 2  # equal batch counts: nobody waits forever
    seen_in_epoch = defaultdict(set)
    for step0, step1 in zip(*ranks):
        assert step0["step"] == step1["step"]
        assert step0["params"] == step1["params"]  # identical parameters after each step
        assert not set(step0["samples"]) & set(step1["samples"])  # disjoint data in each step
        epoch = (step0["step"] - 1) // steps_per_epoch
        batch = step0["samples"] + step1["samples"]
        assert not seen_in_epoch[epoch] & set(batch)  # and across the epoch
        seen_in_epoch[epoch] |= set(batch)
    assert len({r["params"] for r in ranks[0]}) == len(ranks[0])  # the parameters really moved each step


def test_a_process_that_keeps_a_process_group_runs_its_exit_handlers_and_ends_without_freeing_it(tmp_path):
    """How a distributed job's process ends (``jobs.keep_until_exit``, ``jobs.exit_job``): the atexit handlers run (logs
    flushed) and what was kept is never freed -- a Gloo process group's destructor can deadlock on the GIL."""
    script = """
import atexit, logging, sys
from jobs import exit_job, keep_until_exit

class ProcessGroupHolder:
    def __del__(self):
        print("freed", end="")

def job():  # as jobs.train.main: the holder is a local of the job's function
    logging.basicConfig(filename=sys.argv[1])
    logging.getLogger("job").warning("the job's last log line")
    atexit.register(print, " and the exit handlers ran")
    keep_until_exit(ProcessGroupHolder())
    print("the job ended", end="")
    return 3

exit_job(job())
"""
    log = tmp_path / "job.log"
    ended = subprocess.run([sys.executable, "-c", script, str(log)], cwd=CHECKOUT, capture_output=True, text=True, timeout=120)
    assert ended.returncode == 3, ended.stderr
    assert ended.stdout == "the job ended and the exit handlers ran\n", ended.stdout  # and nothing was freed
    assert "the job's last log line" in log.read_text()


def test_one_process_runs_the_job_in_accelerates_own_process_with_the_environment_it_prepares(tmp_path):
    """``launch.compute.accelerate_run`` with one process: accelerate reads its arguments and picks its simple launcher,
    whose child would import torch a second time; the job runs in the launching process instead, as ``python -m``,
    with the environment accelerate prepared (its thread count applied) and its exit code. Two processes still go
    through accelerate's launcher, each rank a process of its own."""
    # A rank that fails ends its peers (torchrun's agent), so each rank fails only once both have recorded themselves.
    (tmp_path / "probe_job.py").write_text("""
import json, os, sys, time, torch
record = {"pid": os.getpid(), "name": __name__, "argv": sys.argv[1:], "threads": torch.get_num_threads(),
          "cpu": os.environ.get("ACCELERATE_USE_CPU"), "precision": os.environ.get("ACCELERATE_MIXED_PRECISION"),
          "rank": os.environ.get("RANK")}
name = f"probe-{os.environ.get('RANK', 'single')}"
with open(f"{name}.tmp", "w") as handle:
    json.dump(record, handle)
os.replace(f"{name}.tmp", f"{name}.json")
deadline = time.monotonic() + 60
while "RANK" in os.environ and not all(os.path.exists(f"probe-{rank}.json") for rank in ("0", "1")) and time.monotonic() < deadline:
    time.sleep(0.1)
sys.exit(3)
""")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{CHECKOUT}:{tmp_path}", "OMP_NUM_THREADS": "1", "HOME": str(tmp_path)}
    one = ["--num_machines", "1", "--num_processes", "1", "--mixed_precision", "bf16", "--dynamo_backend", "no", "--cpu",
           "--num_cpu_threads_per_process", "2"]
    process = subprocess.Popen([sys.executable, "-m", "launch.compute.accelerate_run", *one, "-m", "probe_job", "--set", "a=1"],
                               cwd=tmp_path, env=env)
    assert process.wait(timeout=120) == 3
    single = json.loads((tmp_path / "probe-single.json").read_text())
    assert single == {"pid": process.pid, "name": "__main__", "argv": ["--set", "a=1"], "threads": 2, "cpu": "True",
                      "precision": "bf16", "rank": None}
    two = ["--num_machines", "1", "--num_processes", "2", "--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", "0"]
    process = subprocess.Popen([sys.executable, "-m", "launch.compute.accelerate_run", *two, "-m", "probe_job"], cwd=tmp_path,
                               env={**env, "ACCELERATE_USE_CPU": "true"})
    assert process.wait(timeout=120) == 3
    ranks = [json.loads((tmp_path / f"probe-{rank}.json").read_text()) for rank in ("0", "1")]
    assert len({process.pid, *(rank["pid"] for rank in ranks)}) == 3 and [rank["rank"] for rank in ranks] == ["0", "1"]
