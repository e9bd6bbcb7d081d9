"""Sweeps: search-space validation, and real local Ray Tune sweeps through the real CLI (ASHA,
export of the winner, interrupt + resume, storage mirror on a loopback S3, the test split withheld
until the winner is chosen)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SMALL, cli_env, launch, launch_command, read_jsonl

from data_shards import ShardError, load_split, open_shards
from jobs.config import ConfigError
from tune.runner import trials_root
from tune.space import load_space, parse_distribution

TINY = {"train.epochs": 3, "data.batch_size": 128, "model.hidden": [256], "train.log_every": 5}
# Two learning rates that learn, two that cannot move in 3 epochs: ASHA must stop the latter early.
LR_GRID = "grid([3.0e-3, 1.0e-6, 1.0e-3, 2.0e-6])"


def write_space(path: Path, space: dict, fixed: dict | None = None, preset: str = "train_mlp") -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"preset": preset, "set": {**TINY, **(fixed or {})}, "space": space}))
    return path


def sweep_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "jobs.sweep", *args]


def run_to_end(command: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a sweep in its own process group and leave no Ray process behind, whatever happens."""
    process = subprocess.Popen(command, cwd=cwd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        out, _ = process.communicate(timeout=timeout)
    finally:
        kill_group(process.pid)
    return subprocess.CompletedProcess(command, process.returncode, out, "")


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def trials(sweep: Path) -> list[dict]:
    return json.loads((sweep / "trials.json").read_text())


def progress_rows(sweep: Path) -> dict[str, list[dict]]:
    """Every epoch each trial reported to Tune (Tune's own per-trial result log)."""
    return {p.parent.name: read_jsonl(p) for p in sorted((sweep / "tune").glob("*/result.json"))}


# -- search spaces (no Ray) ---------------------------------------------------------------------
def test_bundled_spaces_validate_against_the_training_config():
    space = load_space("temperature_depth")
    assert space.preset == "train_transformer" and space.metric == "s2t_r1"
    assert set(space.params) == {"loss.temperature", "model.depth"}
    cfg = space.trial_config({"loss.temperature": 0.031, "model.depth": 3})
    assert cfg.model.depth == 3 and cfg.loss.temperature == 0.031 and cfg.loss.learn_temperature is False
    assert len(load_space("transformer_full").params) == 5


@pytest.mark.parametrize("space, fixed, message", [
    ({"model.dpeth": "choice([1, 2])"}, None, "model.dpeth: unknown config key (did you mean depth"),
    ({"optim.lrr": "loguniform(1e-4, 1e-2)"}, None, "optim.lrr: unknown config key (did you mean lr"),
    ({"model.dropout": "choice(['high'])"}, None, "space key model.dropout = choice(['high']) (value 'high')"),
    ({"optim.lr": "loguniform(0, 1e-2)"}, None, "loguniform needs low > 0"),
    ({"optim.lr": "lognormal(1e-3, 2)"}, None, "unknown distribution 'lognormal'"),
    ({"optim.lr": "uniform(1e-2, 1e-3)"}, None, "needs low < high"),
    ({"optim.lr": 0.001}, None, "is a fixed value, not a distribution"),
    ({"optim.lr": "loguniform(1e-4, 1e-2"}, None, "cannot parse"),
    ({"optim.lr": "loguniform(1e-4, 1e-2)"}, {"optim.lr": 0.01}, "searched by the space and also fixed"),
    ({"data.eval_batch_size": "randint(0, 8)"}, None, "(value 0)"),
])
def test_malformed_spaces_are_rejected_naming_file_and_key(tmp_path, space, fixed, message):
    path = write_space(tmp_path / "bad.yaml", space, fixed)
    with pytest.raises(ConfigError) as err:
        load_space(str(path))
    assert message in str(err.value) and str(path) in str(err.value)


def test_space_file_structure_errors(tmp_path):
    (tmp_path / "extra.yaml").write_text("preset: train_mlp\nspaces: {optim.lr: 'uniform(0.1, 0.2)'}\n")
    with pytest.raises(ConfigError, match="unknown top-level key"):
        load_space(str(tmp_path / "extra.yaml"))
    with pytest.raises(ConfigError, match="not a file and not a bundled space"):
        load_space("no_such_space")
    with pytest.raises(ConfigError, match="no preset 'train_gpt'"):
        load_space("temperature_depth", preset="train_gpt")
    with pytest.raises(ConfigError, match="model.depth: unknown config key"):  # the MLP has no fusion depth
        load_space("temperature_depth", preset="train_mlp")
    assert parse_distribution("randint(1, 5)", "k").edge_values() == [1, 4]


def test_trials_share_cpus_and_fractional_gpus():
    from tune.runner import SweepSettings, trial_resources

    two_t4 = {"CPU": 4, "GPU": 2}
    assert trial_resources(SweepSettings(max_concurrent=4), two_t4, 8) == {"cpu": 1, "gpu": 0.5}  # 4 trials on 2 GPUs
    assert trial_resources(SweepSettings(max_concurrent=3), two_t4, 8)["gpu"] == 0.5
    assert trial_resources(SweepSettings(), two_t4, 2) == {"cpu": 2, "gpu": 1.0}
    assert trial_resources(SweepSettings(gpus_per_trial=0.25), two_t4, 8)["gpu"] == 0.25
    assert trial_resources(SweepSettings(), {"CPU": 2}, 8) == {"cpu": 1, "gpu": 0.0}
    with pytest.raises(ConfigError, match="Ray sees no GPU here"):
        trial_resources(SweepSettings(gpus_per_trial=0.5), {"CPU": 2}, 4)
    with pytest.raises(ConfigError, match="Ray has only 2 CPUs"):
        trial_resources(SweepSettings(cpus_per_trial=4), {"CPU": 2}, 4)


def test_the_alias_of_a_sweep_directory_that_is_gone_is_removed_unless_a_running_sweep_holds_it(tmp_path):
    """Each sweep's alias lives in /tmp; one whose sweep directory was deleted goes when the next sweep makes its own,
    and a living sweep's stays -- as does a running sweep's whose directory cannot be seen from here (here: deleted;
    in life, the disk of another mount namespace sharing /tmp), until that sweep's process ends."""
    import secrets

    from tune.runner import experiment_dir

    def sweep_process(folder: Path, name: str) -> subprocess.Popen:
        """A process that makes the alias of a sweep in ``folder`` and lives until its stdin closes."""
        process = subprocess.Popen([sys.executable, "-c", "import sys; from pathlib import Path; from tune.runner import experiment_dir; "
                                    f"experiment_dir(Path({str(folder)!r}), {name!r}); print('made', flush=True); sys.stdin.read()"],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent)
        assert process.stdout.readline() == "made\n"
        return process

    gone, living, elsewhere = tmp_path / "gone-sweep", tmp_path / "living-sweep", tmp_path / "elsewhere-sweep"
    for folder in (gone, living, elsewhere):
        folder.mkdir()
    names = [f"test-{secrets.token_hex(6)}" for _ in range(4)]
    aliases = Path("/tmp") / f"streamapprox-{os.getuid()}" / "sweeps"
    processes = []
    try:
        processes = [sweep_process(folder, name) for folder, name in zip((gone, living, elsewhere), names)]
        processes[0].communicate("", timeout=30)  # the gone sweep's process has ended
        gone.rmdir()
        elsewhere.rmdir()
        mine = experiment_dir(tmp_path, names[3]).parent
        assert not (aliases / names[0]).is_symlink() and not (aliases / f".{names[0]}.lock").exists()
        assert (aliases / names[1]).resolve() == living and mine.resolve() == tmp_path
        assert (aliases / names[2]).is_symlink(), "the alias of a running sweep was removed"
        processes[2].communicate("", timeout=30)
        experiment_dir(tmp_path, names[3])
        assert not (aliases / names[2]).is_symlink()
    finally:
        for process in processes:
            process.kill()
        for name in names:
            (aliases / name).unlink(missing_ok=True)
            (aliases / f".{name}.lock").unlink(missing_ok=True)


def test_a_trial_cannot_read_the_test_split(small_shards):
    shards = open_shards(small_shards, splits=("train", "val"))
    assert len(load_split(shards, "val")) == 120
    with pytest.raises(ShardError, match="split 'test' is withheld from this process"):
        load_split(shards, "test")


# -- real Ray sweeps -----------------------------------------------------------------------------
def test_local_sweep_asha_stops_weak_trials_and_the_winner_is_an_ordinary_run(tmp_path, small_shards):
    space = write_space(tmp_path / "lr.yaml", {"optim.lr": LR_GRID})
    result = launch("local", "sweep", "--space", str(space), "--num-samples", "1", "--max-concurrent", "1",
                    "--set", f"data.shards={SMALL}", cwd=tmp_path, timeout=400)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    (sweep,) = (tmp_path / "runs").iterdir()
    rows = trials(sweep)
    assert len(rows) == 4 and all(row["status"] == "TERMINATED" for row in rows)
    by_lr = {row["optim.lr"]: row for row in rows}
    assert by_lr[1e-6]["stopped_early"] and by_lr[2e-6]["stopped_early"] and by_lr[1e-6]["epochs_run"] < 3
    assert not by_lr[3e-3]["stopped_early"] and by_lr[3e-3]["epochs_run"] == 3
    reported = progress_rows(sweep)
    assert all(len(reported[row["trial_id"]]) == row["epochs_run"] for row in rows)
    # One worker process ran trial after trial, and a trial in a used process trains as a fresh process does.
    pids = {row["trial_id"]: {epoch["pid"] for epoch in reported[row["trial_id"]]} for row in rows}
    assert len(set().union(*pids.values())) < len(rows), pids
    third = by_lr[1e-3]  # the third trial of the grid: its process had run two before it
    assert pids[third["trial_id"]] & (pids[by_lr[3e-3]["trial_id"]] | pids[by_lr[1e-6]["trial_id"]]), pids
    fresh = launch("local", "train_mlp", "--run-dir", "runs-plain/lr1e-3", "--set", f"data.shards={SMALL}", "optim.lr=1.0e-3",
                   *(f"{key}={json.dumps(value)}" for key, value in TINY.items()), cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stderr
    plain = [r for r in read_jsonl(tmp_path / "runs-plain" / "lr1e-3" / "metrics.jsonl") if r["kind"] == "epoch"]
    for epoch, record in zip(plain, reported[third["trial_id"]], strict=False):
        assert record["train_loss"] == pytest.approx(epoch["train_loss"], rel=1e-4)
        assert record["val_mean_cos"] == pytest.approx(epoch["val"]["mean_cos"], rel=1e-4)

    info = json.loads((sweep / "run.json").read_text())
    winner = max(rows, key=lambda row: row["val_s2t_r1"])
    assert info["status"] == "complete" and info["winner"]["trial_id"] == winner["trial_id"]
    assert [row["trial_id"] for row in rows if "test_s2t_r1" in row] == [winner["trial_id"]]  # test metrics: the winner's only
    assert (sweep / "trials.csv").read_text().count("\n") == 5
    assert (sweep / "val_r1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "best run:" in result.stdout and "test (200 videos)" in result.stdout

    # The exported winner is an ordinary run directory: `evaluate` accepts it and agrees with the sweep.
    best = sweep / "best"
    assert json.loads((best / "run.json").read_text())["status"] == "complete"
    (best / "eval" / "results.json").unlink()
    again = launch("local", "evaluate", str(best), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    metrics = json.loads((best / "eval" / "results.json").read_text())["metrics"]
    assert metrics["s2t_r1"] == pytest.approx(winner["test_s2t_r1"]) and metrics["n"] == 200
    scratch = trials_root(info["sweep"]["alias"])  # each trial's working copy on its node: gone once the trial ended; its state is in tune/
    assert not (sweep / "trials").exists() and scratch.parent.is_dir() and not any(scratch.glob("*"))

    copied = launch("sync", str(sweep), str(tmp_path / "copy"), cwd=tmp_path)  # by default: table, plot, best/ -- not tune/
    assert copied.returncode == 0, copied.stderr
    assert (tmp_path / "copy" / "best" / "checkpoints" / "best.pt").is_file() and (tmp_path / "copy" / "trials.csv").is_file()
    assert (tmp_path / "copy" / "val_r1.png").is_file() and not (tmp_path / "copy" / "tune").exists()


def test_a_used_worker_process_runs_a_trial_of_another_precision(tmp_path, small_shards):
    """accelerate keeps its precision process-wide and refuses a second Accelerator that differs: a process that ran a
    trial must be left as a new one, or the next trial it is given errors."""
    space = write_space(tmp_path / "precision.yaml", {"train.mixed_precision": 'grid(["no", "bf16"])'}, {"train.epochs": 1})
    result = launch("local", "sweep", "--space", str(space), "--num-samples", "1", "--max-concurrent", "1", "--scheduler", "none",
                    "--set", f"data.shards={SMALL}", cwd=tmp_path, timeout=400)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    (sweep,) = (tmp_path / "runs").iterdir()
    assert sorted(row["train.mixed_precision"] for row in trials(sweep)) == ["bf16", "no"]
    assert len({epoch["pid"] for rows in progress_rows(sweep).values() for epoch in rows}) == 1


def ctrl_c_enabled() -> None:
    """A shell's background jobs (``cmd &``, nohup) start with SIGINT ignored, and children inherit that: the
    launcher under test must take Ctrl-C as a terminal's foreground job does, however pytest was started."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def stored_progress(client, bucket: str, prefix: str) -> dict[str, list[dict]]:
    """Every epoch each trial reported, from Tune's experiment in storage (where Tune writes it with --storage)."""
    keys = [obj["Key"] for obj in client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/tune/").get("Contents", [])
            if obj["Key"].endswith("/result.json")]
    return {key.split("/")[-2]: [json.loads(line) for line in client.get_object(Bucket=bucket, Key=key)["Body"].read().decode().splitlines()
                                 if line.strip()] for key in sorted(keys)}


def test_interrupted_sweep_resumes_from_storage_without_rerunning_finished_trials(tmp_path, small_shards, bucket):
    """Ctrl-C (SIGINT to `launch local`) mid-sweep; the local sweep directory is then lost, and
    `--resume --storage s3://...` brings it back from a loopback S3 server and finishes it. Tune's experiment
    lives in storage (each trial persists there itself); the mirror carries the rest of the sweep directory."""
    client, name = bucket
    space = write_space(tmp_path / "lr.yaml", {"optim.lr": "grid([3.0e-3, 2.0e-3, 1.0e-3])"}, {"train.epochs": 3})
    storage = f"s3://{name}/sweeps/interrupted"
    env = {**cli_env(), "AWS_ENDPOINT_URL": client.meta.endpoint_url}
    process = subprocess.Popen(launch_command("local", "sweep", "--space", str(space), "--num-samples", "1", "--max-concurrent", "1",
                                              "--scheduler", "none", "--set", f"data.shards={SMALL}", "--storage", storage),
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                               preexec_fn=ctrl_c_enabled)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # the first trial done (3 epochs) and the second one under way
            if sum(len(rows) for rows in stored_progress(client, name, "sweeps/interrupted").values()) >= 4:
                break
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=120)
    finally:
        kill_group(process.pid)
    assert process.returncode == 3, out[-4000:]
    (sweep,) = (tmp_path / "runs").iterdir()
    info = json.loads((sweep / "run.json").read_text())
    assert info["status"] == "incomplete" and f"launch local sweep --resume {sweep.relative_to(tmp_path)}" in out
    before = stored_progress(client, name, "sweeps/interrupted")
    finished = [trial for trial, rows in before.items() if len(rows) == 3]
    assert finished and len(before) >= 2

    import shutil

    shutil.rmtree(sweep)
    resumed = subprocess.run(launch_command("local", "sweep", "--resume", str(sweep.relative_to(tmp_path)), "--storage", storage),
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400, start_new_session=True)
    assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr[-2000:]
    after = stored_progress(client, name, "sweeps/interrupted")
    assert len(after) == 3 and all(after[trial][:3] == before[trial] for trial in finished)  # nothing reported is lost
    for trial, rows in after.items():  # an interrupted trial continued from its checkpoint, not from scratch
        epochs = [row["epoch"] for row in rows]
        # at most the epoch in flight at the interrupt is redone: Tune's last experiment snapshot can precede
        # that epoch's report (even a trial's final one), and the trial then resumes from the epoch before
        assert sorted(set(epochs)) == [1, 2, 3] and epochs == sorted(epochs) and len(epochs) <= 4, (trial, epochs)
    info = json.loads((sweep / "run.json").read_text())
    assert info["status"] == "complete" and len(info["resumed_at"]) == 1
    stored = {obj["Key"] for obj in client.list_objects_v2(Bucket=name, Prefix="sweeps/interrupted/")["Contents"]}
    assert "sweeps/interrupted/best/checkpoints/best.pt" in stored and "sweeps/interrupted/trials.csv" in stored
    assert not any("/trials/" in key for key in stored)


def test_a_space_with_an_edge_the_shards_cannot_feed_is_refused_before_ray_starts(tmp_path, small_shards, capsys, monkeypatch):
    """Every edge value of every searched key is checked against the shards (student dims, one batch per step), with
    --check and without: a value no trial could train with fails in a second, not after Ray started every trial."""
    import yaml

    from jobs.sweep import main

    space = tmp_path / "batch.yaml"
    space.write_text(yaml.safe_dump({"preset": "train_mlp", "space": {"data.batch_size": "grid([128, 100000])"}}))
    monkeypatch.chdir(tmp_path)
    for check in (["--check"], []):
        assert main(["--space", str(space), *check, "--set", f"data.shards={SMALL}"]) == 2
        error = capsys.readouterr().err
        assert error.startswith(f"error: {space}: space key data.batch_size = grid([128, 100000]) (value 100000): data.batch_size=100000")
        assert "larger than the 'train' split (600 videos)" in error and error.count("\n") == 1
    ray = sys.modules.get("ray")  # another test file on this worker may have imported it; none started it here
    assert not (tmp_path / "runs").exists() and not (ray and ray.is_initialized())


def test_check_report_of_a_space_on_the_default_shards(tmp_path, small_shards):
    """A space that leaves data.shards to the preset (the README's first example) reports the default location."""
    from jobs.sweep import write_check_report

    write_check_report(tmp_path / "check.json", load_space("temperature_depth"), open_shards(small_shards))
    shard_input = json.loads((tmp_path / "check.json").read_text())["inputs"]["data.shards"]
    assert shard_input["location"] == "synthetic://msrvtt" and shard_input["regenerable"]


def test_an_errored_trial_fails_the_sweep_and_the_test_split_is_not_read_until_the_winner_is_chosen(tmp_path, small_shards):
    """One sampled config fails as it trains (a learning rate that diverges at its second step): the sweep must not end
    complete with a winner among the survivors, unless asked to; then it says how many errored. The test shards are
    corrupted all the while: every trial still runs and, allowed, a winner is chosen (so nothing before that read them --
    each read verifies the sha256); the one test evaluation then fails naming the shard. Repaired, --resume evaluates
    the winner without rerunning a trial."""
    import shutil

    import yaml

    from data_shards.manifest import Manifest

    shards = tmp_path / "shards"
    shutil.copytree(small_shards, shards)
    test_shard = shards / Manifest.read(shards).shards_of("test")[0].name
    original = test_shard.read_bytes()
    test_shard.write_bytes(original[:1000] + bytes(len(original) - 1000))

    space = tmp_path / "crash.yaml"
    space.write_text(yaml.safe_dump({"preset": "train_mlp", "set": {"train.epochs": 2, "model.hidden": [256]},
                                     "space": {"optim.lr": "grid([0.003, 1.0e30])"}}))
    sweep = tmp_path / "sweep"  # the job itself: `launch local` checks every shard first, and would refuse the test split
    failed = run_to_end(sweep_command("--space", str(space), "--num-samples", "1", "--scheduler", "none", "--max-failures", "1",
                                      "--set", f"data.shards={shards}", "--run-dir", str(sweep)), tmp_path)
    assert failed.returncode == 1, failed.stdout[-3000:]
    info = json.loads((sweep / "run.json").read_text())
    (errored,) = info["errored_trials"]
    assert info["status"] == "failed" and "winner" not in info and not (sweep / "best").exists()
    assert errored["params"] == {"optim.lr": 1e30} and "training diverged" in errored["error"]
    assert f"1 of 2 trials errored ({errored['trial_id']}: " in failed.stdout and "--allow-errored-trials" in failed.stdout

    chosen = run_to_end(sweep_command("--resume", str(sweep), "--allow-errored-trials"), tmp_path)
    assert chosen.returncode == 2, chosen.stdout[-3000:]
    assert f"{test_shard}: sha256 does not match manifest.json" in chosen.stdout
    assert "(chosen among 1: 1 errored)" in chosen.stdout and "Trial status" not in chosen.stdout  # not searched again
    info = json.loads((sweep / "run.json").read_text())
    assert info["status"] == "failed" and info["winner"]["params"] == {"optim.lr": 0.003} and info["selected_at"]
    assert "test" not in info and not any("test_s2t_r1" in row for row in trials(sweep))
    reported = progress_rows(sweep)
    assert sorted(len(rows) for rows in reported.values()) == [0, 2]  # the diverged trial reported no epoch, the other two

    test_shard.write_bytes(original)
    repaired = run_to_end(sweep_command("--resume", str(sweep), "--allow-errored-trials"), tmp_path)
    assert repaired.returncode == 0, repaired.stdout[-3000:]
    info = json.loads((sweep / "run.json").read_text())
    assert info["status"] == "complete" and info["test"]["s2t_r1"] > 5 and len(info["errored_trials"]) == 1
    assert (sweep / "best" / "eval" / "results.json").is_file()
    assert progress_rows(sweep) == reported  # no trial ran again
    assert "Trial status" not in repaired.stdout  # Tune did not even start


def test_a_sweep_moved_to_another_directory_between_sessions_keeps_every_checkpoint(tmp_path, small_shards):
    """What a Kaggle continuation or another machine does to a sweep: each session (--epoch-budget 4 of 3 trials x 3
    epochs) runs from a new directory, the old one gone. Tune's state holds absolute paths, and trials created by a
    restored search write where the first session was; nothing may be written outside the current directory."""
    space = write_space(tmp_path / "lr.yaml", {"optim.lr": "grid([3.0e-3, 2.0e-3, 1.0e-3])"}, {"train.epochs": 3})
    where = tmp_path / "session0" / "sweep"
    started = run_to_end(sweep_command("--space", str(space), "--num-samples", "1", "--max-concurrent", "1", "--scheduler", "none",
                                       "--epoch-budget", "4", "--set", f"data.shards={SMALL}", "--run-dir", str(where)), tmp_path)
    assert started.returncode == 0, started.stdout[-3000:]
    sessions = 1
    while json.loads((where / "run.json").read_text())["status"] == "incomplete":
        moved = tmp_path / f"session{sessions}" / "sweep"
        moved.parent.mkdir()
        where.rename(moved)
        where.parent.rmdir()
        resumed = run_to_end(sweep_command("--resume", str(moved)), tmp_path)
        assert resumed.returncode == 0, resumed.stdout[-3000:]
        assert not where.parent.exists(), f"the session wrote into {where.parent}, a directory the sweep left"
        where, sessions = moved, sessions + 1
    assert sessions == 3 and json.loads((where / "run.json").read_text())["status"] == "complete"
    assert [row["status"] for row in trials(where)] == ["TERMINATED"] * 3
    assert {trial: [row["epoch"] for row in rows] for trial, rows in progress_rows(where).items()} == \
        {row["trial_id"]: [1, 2, 3] for row in trials(where)}
