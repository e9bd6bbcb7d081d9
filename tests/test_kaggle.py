"""``launch kaggle``: the real CLI and the real ``kaggle`` package against a loopback Kaggle server
that executes the pushed kernels in a sandbox laid out like /kaggle."""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
import torch
from conftest import FAST_MLP, SMALL, TINY_EXTRACT, cli_env, launch_command, read_jsonl, tiny_encoder_weights
from contract import BackendContract, Target
from kaggle_server import FAST, KEY, USER, kaggle_env, launch_kaggle, only_run_dir
from test_trackers import expected_series, mlflow_series, wandb_series

from jobs.trackers import wandb_id


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory, shard_cache) -> Path:
    """A local shard set (the kind that must travel as a dataset)."""
    from data_shards.synthetic import SyntheticSpec, generate

    out = tmp_path_factory.mktemp("shards") / "msrvtt-small"
    generate(SyntheticSpec.from_url(SMALL), out, progress=False)
    return out


class KaggleTarget(Target):
    """The loopback Kaggle; its status calls fail for a while (5xx, a dropped connection). No continuation kernels: the
    contract resumes by hand."""

    backend, stops = "kaggle", False
    SENDING = ("SaveKernel", "CreateDataset", "CreateDatasetVersion", "StartBlobUpload")

    def __init__(self, kaggle, shards: Path, tmp_path: Path):
        super().__init__({**kaggle_env(kaggle, USER, KEY, tmp_path / "kaggle-config"), "STREAMAPPROX_KAGGLE_ATTEMPTS": "2"}, shards)
        self.kaggle = kaggle

    def options(self, tmp_path: Path) -> list[str]:
        return [*FAST, "--max-continuations", "0"]

    def sent(self, tmp_path: Path) -> list:
        return [method for method, _ in self.kaggle.requests if method in self.SENDING]

    def trouble(self) -> None:
        self.kaggle.faults["GetKernelSessionStatus"] = [503, "drop", 503, 503]

    def troubled(self, output: str) -> bool:
        return not self.kaggle.faults["GetKernelSessionStatus"] and "retrying" in output and "reached again" in output


@pytest.fixture
def target(kaggle, shard_dir, tmp_path) -> KaggleTarget:
    return KaggleTarget(kaggle, shard_dir, tmp_path)


class TestContract(BackendContract):
    pass


def test_train_mlp_end_to_end_then_unchanged_launch_uploads_nothing(tmp_path, kaggle, shard_dir):
    args = ["kaggle", "train_mlp", *FAST, "--set", *FAST_MLP, f"data.shards={shard_dir}"]
    first = launch_kaggle(kaggle, tmp_path, *args)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    run = only_run_dir(tmp_path)
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "complete" and info["backend"] == "kaggle"
    assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "epoch"] == [0, 1, 2]
    results = json.loads((run / "eval" / "results.json").read_text())["metrics"]
    assert results["n"] == 200 and results["s2t_r1"] > 5  # real training on the sandbox "kernel", far above chance
    # the kernel read the shards it unpacked from their packs (in its own /tmp), not anything of this machine's
    assert "/streamapprox-inputs/" in torch.load(run / "checkpoints" / "best.pt", weights_only=False)["config"]["data"]["shards"]
    assert "epoch 2 done" in first.stdout  # the kernel's log, shown as it grew
    assert "test (200 videos)" in first.stdout
    record = json.loads((run / "launch.json").read_text())
    assert record["units"][0]["state"] == "succeeded" and record["plan"]["bytes_uploaded"] > 0
    slug = record["units"][0]["handle"]["slug"]
    assert json.loads((run / "logs" / f"kaggle-{slug}.json").read_text())["exit_code"] == 0  # the kernel's own record
    assert "epoch 2 done" in (run / "logs" / f"kaggle-{slug}.log").read_text()
    uploaded_first = kaggle.bytes_received

    logs = launch_kaggle(kaggle, tmp_path, "logs", str(run))  # later, from another shell
    assert logs.returncode == 0 and "epoch 2 done" in logs.stdout
    again = launch_kaggle(kaggle, tmp_path, "pull", run.name)
    assert again.returncode == 0 and "copied 0 files" in again.stdout and "10 unchanged" in again.stdout, again.stdout + again.stderr

    second = launch_kaggle(kaggle, tmp_path, *args, "--detach")  # pushed, and left to run: the uploads are what counts here
    assert second.returncode == 0, second.stderr[-3000:]
    assert kaggle.bytes_received == uploaded_first  # unchanged code and shards: 0 bytes of datasets
    assert "uploaded 0 bytes of datasets" in second.stdout

    everything = b"".join(data for _, data in kaggle.uploaded)
    assert KEY.encode() not in everything and KEY not in first.stdout + first.stderr + second.stdout + second.stderr
    for path in tmp_path.joinpath("runs").rglob("*"):
        assert not path.is_file() or KEY.encode() not in path.read_bytes(), path


def run_state(run: Path):
    """Everything that must match between a continued run and an uninterrupted one."""
    records = [{k: v for k, v in r.items() if k != "elapsed_s"} for r in read_jsonl(run / "metrics.jsonl")]
    weights = torch.load(run / "checkpoints" / "last.pt", weights_only=False)["model"]
    results = json.loads((run / "eval" / "results.json").read_text())["metrics"]
    return records, weights, results


def test_continuation_chain_equals_an_uninterrupted_run(tmp_path, kaggle, small_shards, monkeypatch):
    """Each kernel may take 80 of the run's 222 steps (train.session_steps: a budget that does not depend on
    the machine's speed), so the run takes exactly three kernels; it must read as one continuous run -- in its W&B and
    MLflow records too, which a kernel (no credentials there) keeps in the run directory."""
    settings = [f"data.shards={SMALL}", "train.epochs=6", "data.batch_size=16", "model.hidden=[256,256]", "train.log_every=5",
                "train.patience=null"]
    chained = launch_kaggle(kaggle, tmp_path, "kaggle", "train_mlp", *FAST, "--max-continuations", "8",
                            "--set", *settings, "train.session_steps=80", "train.log_with=tensorboard,mlflow,wandb", timeout=600)
    assert chained.returncode == 0, chained.stdout[-3000:] + chained.stderr[-3000:]
    run = only_run_dir(tmp_path)
    record = json.loads((run / "launch.json").read_text())
    assert [unit["resume"] for unit in record["units"]] == [False, True, True]
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "complete" and len(info["resumed_at"]) == len(record["units"]) - 1
    assert {"wandb==0.31.0", "mlflow-skinny==3.18.0"} <= set(record["plan"]["kernel"]["requirements"])  # the trackers extra

    expected = expected_series(run)
    logged, sessions = wandb_series(run)  # what `wandb sync RUN/wandb/offline-run-*` uploads
    assert logged == expected and len(sessions) == 3 and {s.run_id for s in sessions} == {wandb_id(run.name)}
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    history, _, named = mlflow_series(run / "mlruns", run.name)
    assert history == expected and named == 1  # each continuation went on with the first kernel's MLflow run

    reference = subprocess.run(launch_command("local", "train_mlp", "--run-dir", str(tmp_path / "ref"), "--set", *settings),
                               cwd=tmp_path, capture_output=True, text=True, timeout=300, env=kaggle_env(kaggle, USER, KEY, tmp_path))
    assert reference.returncode == 0, reference.stderr[-3000:]
    records, weights, results = run_state(run)
    ref_records, ref_weights, ref_results = run_state(tmp_path / "ref")
    assert records == ref_records  # one continuous metrics.jsonl: no gap, no duplicate
    assert results == ref_results
    assert weights.keys() == ref_weights.keys() and all(torch.equal(weights[k], ref_weights[k]) for k in weights)


QUICK = ["--set", f"data.shards={SMALL}", "train.epochs=1", "data.batch_size=64", "model.hidden=[64,64]"]


def test_datasets_not_ready_and_transient_errors_are_waited_out(tmp_path, kaggle, small_shards):
    kaggle.hidden_polls, kaggle.processing_polls = 2, 3  # a new version: 404 twice, then processing, then ready
    stale = (USER, "streamapprox-code")  # older code on Kaggle, its last version still processing
    kaggle.datasets[stale] = {"BUNDLE.json": b'{"digest": "an-older-bundle"}', "code.tar": b""}
    kaggle.dataset_polls[stale] = ["BLOBS_RECEIVED"] * 2
    kaggle.faults = {"StartBlobUpload": [503], "SaveKernel": [500, 502], "GetKernelSessionStatus": [429, 503, 504],
                     "ListKernelSessionOutput": [500]}
    result = launch_kaggle(kaggle, tmp_path, "kaggle", "train_mlp", *FAST, *QUICK)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert json.loads((only_run_dir(tmp_path) / "run.json").read_text())["status"] == "complete"
    assert not any(kaggle.faults.values())  # every injected failure was met, and retried
    assert "HTTP 429; retrying" in result.stderr and "HTTP 500; retrying" in result.stderr
    methods = [method for method, _ in kaggle.requests]
    pushed = methods.index("SaveKernel")
    assert methods[:pushed].count("GetDatasetStatus") >= 8  # waited through 404 and processing before the push
    assert methods.count("CreateDatasetVersion") == 1 and "CreateDataset" not in methods  # a new version, once it could
    assert json.loads(kaggle.datasets[stale]["BUNDLE.json"])["digest"] != "an-older-bundle"


def test_kernel_error_shows_the_log_tail_and_fails(tmp_path, kaggle, small_shards):
    # passes the local check, fails on the kernel: the learning rate makes training diverge
    result = launch_kaggle(kaggle, tmp_path, "kaggle", "train_mlp", *FAST, "--set", f"data.shards={SMALL}", "optim.lr=1e9",
                           "data.batch_size=64")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "ended failed" in result.stderr and "Last lines of its log" in result.stderr
    assert "job exited with" in result.stderr.split("Last lines of its log")[1]
    record = json.loads((only_run_dir(tmp_path) / "launch.json").read_text())
    assert record["units"][0]["state"] == "failed"


def test_p100_under_a_torch_without_sm60_fails_fast_in_the_probe(tmp_path, kaggle, small_shards):
    result = launch_kaggle(kaggle, tmp_path, "kaggle", "train_mlp", *FAST, "--accelerator", "p100", *QUICK)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    tail = result.stderr.split("Last lines of its log")[1]
    assert "Tesla P100-PCIE-16GB" in tail and "sm_60" in tail and "T4 x2" in tail
    assert "installing" not in result.stdout + tail  # the probe ran before anything was installed
    body = next(b for m, b in kaggle.requests if m == "SaveKernel")
    assert body["machineShape"] == "NvidiaTeslaP100" and body["enableGpu"] is True


def test_missing_or_rejected_credentials_stop_before_any_upload(tmp_path, kaggle):
    env = {"KAGGLE_USERNAME": None, "KAGGLE_KEY": None, "KAGGLE_API_TOKEN": None}
    missing = launch_kaggle(kaggle, tmp_path, "kaggle", "train_mlp", *FAST, *QUICK, env_extra={**env, "HOME": str(tmp_path)})
    assert missing.returncode == 2 and "no usable credentials" in missing.stderr, missing.stderr[-2000:]
    assert missing.stdout == "" and len(missing.stderr.strip().splitlines()) == 1  # our line only, not the package's banner
    assert kaggle.requests == []

    wrong = "kgl-" + secrets.token_hex(12)
    rejected = launch_kaggle(kaggle, tmp_path, "kaggle", "train_mlp", *FAST, *QUICK, env_extra={"KAGGLE_KEY": wrong})
    assert rejected.returncode == 2 and "refused the credentials of user 'kaggle-user' (HTTP 401)" in rejected.stderr, rejected.stderr[-2000:]
    assert kaggle.bytes_received == 0 and wrong not in rejected.stdout + rejected.stderr


def test_unknown_kernel_and_bad_config_fail_with_the_reason(tmp_path, kaggle, small_shards):
    bad = launch_kaggle(kaggle, tmp_path, "kaggle", "train_mlp", *FAST, "--set", "loss.temprature=0.1")
    assert bad.returncode == 2 and "did you mean temperature" in bad.stderr and kaggle.bytes_received == 0

    kaggle.faults = {"GetKernelSessionStatus": [404]}
    gone = launch_kaggle(kaggle, tmp_path, "kaggle", "train_mlp", *FAST, *QUICK)
    assert gone.returncode == 3 and "not found (HTTP 404)" in gone.stderr and "The run may go on" in gone.stderr, gone.stderr[-2000:]
    run = only_run_dir(tmp_path)
    status = launch_kaggle(kaggle, tmp_path, "status", run.name)  # the kernel still ran: another shell can follow it
    assert status.returncode == 0 and "kernel kaggle-user/" in status.stdout, status.stderr[-2000:]


def test_fan_out_over_three_kernels_merges_into_the_single_worker_set(tmp_path, kaggle, small_shards):
    from data_shards import load_split, open_shards

    kaggle.layout = "legacy"  # older images mount inputs at /kaggle/input/<slug>
    pushed = launch_kaggle(kaggle, tmp_path, "kaggle", "synthesize", *FAST, "--num-kernels", "3", "--url", SMALL, "--detach")
    assert pushed.returncode == 0 and "detached" in pushed.stdout, pushed.stdout[-3000:] + pushed.stderr[-3000:]
    run = only_run_dir(tmp_path)
    assert not (run / "shards").exists()
    result = launch_kaggle(kaggle, tmp_path, "kaggle", "synthesize", *FAST, "--resume", str(run))  # follow it from another shell
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "merged 3 slices" in result.stdout
    assert len({body["slug"] for method, body in kaggle.requests if method == "SaveKernel"}) == 3
    merged, whole = open_shards(run / "shards"), open_shards(small_shards)  # open_shards verifies every digest
    assert merged.manifest.splits == whole.manifest.splits and merged.manifest.source["merged_parts"] == 3
    for split in whole.manifest.splits:
        a, b = load_split(merged, split), load_split(whole, split)
        order = sorted(range(len(a.keys)), key=a.keys.__getitem__)
        reference = sorted(range(len(b.keys)), key=b.keys.__getitem__)
        assert [a.keys[i] for i in order] == [b.keys[i] for i in reference]
        assert torch.equal(a.teacher[order], b.teacher[reference]) and torch.equal(a.clip[order], b.clip[reference])

    refused = launch_kaggle(kaggle, tmp_path, "kaggle", "train_mlp", *FAST, "--num-kernels", "2", *QUICK)
    assert refused.returncode == 2 and "--num-kernels N works with: extract, synthesize" in refused.stderr


def test_one_process_per_gpu_and_fp16_where_there_is_no_bf16():
    from launch.accelerate import Devices, job_command

    def accelerate_arguments(gpus: list[dict], **devices) -> list[str]:
        command = job_command("python", "jobs.train_mlp", [], True, Devices(gpus, **devices))
        return command.argv[3:command.argv.index("-m", 3)], command.env

    t4x2 = [{"name": "Tesla T4", "capability": "7.5"}] * 2
    assert accelerate_arguments(t4x2) == (["--num_machines", "1", "--machine_rank", "0", "--num_processes", "2", "--mixed_precision",
                                           "fp16", "--dynamo_backend", "no", "--multi_gpu"], {})
    h100, _ = accelerate_arguments([{"name": "H100", "capability": "9.0"}])
    assert "bf16" in h100 and "--multi_gpu" not in h100
    one_cpu, env = accelerate_arguments([])
    assert "--cpu" in one_cpu and "--mixed_precision" in one_cpu and one_cpu[one_cpu.index("--mixed_precision") + 1] == "no"
    two_nodes, env = accelerate_arguments([], per_node=1, nodes=2, rank=1, main_address="10.0.0.1")
    assert two_nodes[two_nodes.index("--num_processes") + 1] == "2" and "--multi_gpu" in two_nodes and "--cpu" not in two_nodes
    assert "10.0.0.1" in two_nodes and env == {"ACCELERATE_USE_CPU": "true"}  # CPU processes over gloo, as use_cpu says


def test_a_space_file_outside_the_code_bundle_is_refused_before_any_push(tmp_path, kaggle, shard_dir):
    """A sweep in one kernel is the docs' example (docs/backends/kaggle.md, run as written); a space file the kernel
    cannot reach is refused here before anything is pushed."""
    stray = tmp_path / "my_space.yaml"
    stray.write_text((Path(__file__).parent.parent / "tune" / "spaces" / "temperature_depth.yaml").read_text())
    refused = launch_kaggle(kaggle, tmp_path, "kaggle", "sweep", *FAST, "--space", str(stray), "--set", f"data.shards={shard_dir}")
    assert refused.returncode == 2 and "is not in the code bundle" in refused.stderr
    assert not [m for m, _ in kaggle.requests if m in ("SaveKernel", "CreateDataset", "CreateDatasetVersion")]


def test_sweep_continues_over_two_kernels_and_exports_the_best_trial(tmp_path, kaggle, small_shards):
    """--epoch-budget 4: each kernel reports four trial-epochs (a budget of work, not wall time), so two trials of
    three epochs take exactly two kernels on any machine, the first kernel finishing the first trial and starting the
    second, the second kernel continuing it from its checkpoint. Tune's state restores (each trial's epochs are
    reported once, in order), and the winner exported is the best trial on validation, its checkpoints there."""
    space = Path(__file__).parent.parent / "tune" / "spaces" / "temperature_depth.yaml"
    result = launch_kaggle(kaggle, tmp_path, "kaggle", "sweep", *FAST, "--space", str(space), "--preset", "train_transformer",
                           "--num-samples", "2", "--max-concurrent", "1", "--scheduler", "none", "--epoch-budget", "4",
                           "--max-continuations", "3", "--set", "train.epochs=3", "model.width=32", "model.heads=2",
                           "data.batch_size=128", f"data.shards={SMALL}", timeout=500)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    sweep = only_run_dir(tmp_path)
    record = json.loads((sweep / "launch.json").read_text())
    info = json.loads((sweep / "run.json").read_text())
    assert len(record["units"]) == 2 and info["status"] == "complete" and len(info["resumed_at"]) == 1
    rows = json.loads((sweep / "trials.json").read_text())
    assert [row["status"] for row in rows] == ["TERMINATED"] * 2 and all(row["epochs_run"] == 3 for row in rows)
    for rows_of_trial in (read_jsonl(p) for p in (sweep / "tune").glob("*/result.json")):
        assert [row["epoch"] for row in rows_of_trial] == [1, 2, 3]  # nothing lost, nothing redone
    best_row = max(rows, key=lambda row: row["val_s2t_r1"])
    assert info["winner"]["trial_id"] == best_row["trial_id"] and info["winner"]["value"] == best_row["val_s2t_r1"]
    best = sweep / "best"
    assert (best / "checkpoints" / "best.pt").is_file() and (best / "eval" / "results.json").is_file()
    assert json.loads((best / "run.json").read_text())["sweep"]["trial_id"] == best_row["trial_id"]
    evaluated = subprocess.run(launch_command("local", "evaluate", str(best), "--shards", str(SMALL)), cwd=tmp_path,
                               capture_output=True, text=True, timeout=120)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads((best / "eval" / "results.json").read_text())["metrics"]["s2t_r1"] == pytest.approx(info["test"]["s2t_r1"])


def test_weights_travel_once_as_datasets_or_are_read_from_the_users_own_dataset(tmp_path, kaggle):
    """Extraction on a kernel with real (tiny) weights given as local paths: each file goes up once, as a dataset
    named by its sha256. Then, on 2 kernels, the videos and the teacher's weights from a dataset of the user's (made
    beforehand with the kaggle package; Kaggle unpacks the checkpoint, a zip) and CLIP's from a Kaggle model of theirs
    (its latest version, asked of Kaggle once, so every kernel mounts the same one): listed through the API for the
    plan, attached to the kernels, not one byte uploaded -- no video, no weights again. Both runs' shards equal a local
    extraction's. A URL weight is refused for a kernel without internet, and a model Kaggle does not know, before
    anything is uploaded."""
    import sys

    from data_shards.synthetic_videos import write_collection
    from sync.remote_file import local_file

    mine = tmp_path / "my-data"  # the videos and the teacher's checkpoint, as the user keeps them on Kaggle
    listing = write_collection(mine, 4, seconds=2.0)
    videos = [p.read_bytes() for p in sorted(mine.glob("*.mp4"))]
    weights = tiny_encoder_weights(tmp_path / "weights")
    local_weights = [f"{key}={path}" for key, path in weights.items()]
    args = ["--videos", str(listing), *TINY_EXTRACT, *local_weights]
    result = launch_kaggle(kaggle, tmp_path, "kaggle", "extract", *FAST, *args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = only_run_dir(tmp_path)
    created = json.dumps([body for method, body in kaggle.requests if method == "CreateDataset"])
    assert "streamapprox-videos-" in created
    for path in weights.values():
        assert f"streamapprox-file-{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}" in created, created[:2000]
    local = subprocess.run([sys.executable, "-m", "jobs.extract", *args, "--out", str(tmp_path / "local")], env=cli_env(),
                           capture_output=True, text=True, timeout=300)
    assert local.returncode == 0, local.stderr[-3000:]
    tars = sorted(p.name for p in (tmp_path / "local").glob("*.tar"))
    assert tars == sorted(p.name for p in (run / "shards").glob("*.tar")) and len(tars) == 3
    assert all((run / "shards" / name).read_bytes() == (tmp_path / "local" / name).read_bytes() for name in tars)
    assert json.loads((run / "run.json").read_text())["status"] == "complete"

    (mine / "imagebind.pt").write_bytes(weights["teacher.imagebind.weights"].read_bytes())
    create_dataset(kaggle, tmp_path, "my-data", mine)
    saved = dict(os.environ)
    os.environ.update(kaggle_env(kaggle, USER, KEY, tmp_path / "kaggle-config"))
    try:  # off Kaggle, the same location is fetched with the kaggle package
        fetched = local_file(f"kaggle://datasets/{USER}/my-data/imagebind.pt")
        assert fetched.sha256 == hashlib.sha256(weights["teacher.imagebind.weights"].read_bytes()).hexdigest()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    kaggle.add_model(USER, "tiny-clip", "pyTorch", "default", {"clip.pt": weights["student.clip.weights"].read_bytes()})
    received, blobs, requests = kaggle.bytes_received, len(kaggle.uploaded), len(kaggle.requests)
    mounted = [f"student.clip.weights=kaggle://models/{USER}/tiny-clip/pyTorch/default/clip.pt", local_weights[1],
               f"teacher.imagebind.weights=kaggle://datasets/{USER}/my-data/imagebind.pt"]
    planned = launch_kaggle(kaggle, tmp_path, "kaggle", "extract", *FAST, "--num-kernels", "2", "--runs-dir", "again", "--videos",
                            f"kaggle://datasets/{USER}/my-data/{listing.name}", *TINY_EXTRACT, *mounted, "--dry-run")
    assert planned.returncode == 0, planned.stdout[-3000:] + planned.stderr[-3000:]
    attached = [line.strip() for line in planned.stdout.splitlines() if line.strip().startswith("attach: ")]
    assert attached == [f"attach: input.videos from dataset {USER}/my-data ({listing.name}): nothing uploaded",
                        f"attach: student.clip.weights from model {USER}/tiny-clip/pyTorch/default/1 (clip.pt): nothing uploaded",
                        f"attach: teacher.imagebind.weights from dataset {USER}/my-data (imagebind.pt): nothing uploaded"], planned.stdout
    assert "install: " in planned.stdout and " pinned packages (the project's with the extract extra) from the package index" in planned.stdout
    again = launch_kaggle(kaggle, tmp_path, "kaggle", "extract", *FAST, "--num-kernels", "2", "--runs-dir", "again", "--videos",
                          f"kaggle://datasets/{USER}/my-data/{listing.name}", *TINY_EXTRACT, *mounted)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    uploads = [line for line in again.stdout.splitlines() if "upload" in line or "already" in line]
    assert kaggle.bytes_received == received and "uploaded 0 bytes of datasets" in again.stdout, uploads
    sent = b"".join(data for _, data in kaggle.uploaded[blobs:])
    assert not any(video[1000:3000] in sent for video in videos)
    assert not [body for method, body in kaggle.requests[requests:] if method == "CreateDataset"]
    pushed = [body for method, body in kaggle.requests[requests:] if method == "SaveKernel"]
    assert [body["modelDataSources"] for body in pushed] == [[f"{USER}/tiny-clip/pyTorch/default/1"]] * 2  # its latest version
    for unpacked in (f"input student.clip.weights: model {USER}/tiny-clip/pyTorch/default/1/clip.pt was unpacked by Kaggle; zipped again",
                     f"input teacher.imagebind.weights: dataset {USER}/my-data/imagebind.pt was unpacked by Kaggle; zipped again"):
        assert unpacked in again.stdout, again.stdout[-3000:]
    shards = next((tmp_path / "again").iterdir()) / "shards"
    assert all((shards / name).read_bytes() == (tmp_path / "local" / name).read_bytes() for name in tars)
    files = json.loads((shards / "manifest.json").read_text())["source"]["files"]
    assert files["teacher.imagebind.weights"]["sha256"] != hashlib.sha256(weights["teacher.imagebind.weights"].read_bytes()).hexdigest()

    pushes = len(kaggle.requests)
    refused = launch_kaggle(kaggle, tmp_path, "kaggle", "extract", *FAST, "--no-internet", "--runs-dir", "refused", "--videos",
                            str(listing), *TINY_EXTRACT, *local_weights[:2], "teacher.imagebind.weights=https://example.org/imagebind.pt")
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
    assert "teacher.imagebind.weights: https://example.org/imagebind.pt is downloaded by the job, and a --no-internet kernel cannot" \
        in refused.stderr
    assert not [m for m, _ in kaggle.requests[pushes:] if m in ("CreateDataset", "CreateDatasetVersion", "SaveKernel")]
    unknown = launch_kaggle(kaggle, tmp_path, "kaggle", "extract", *FAST, "--runs-dir", "unknown", "--videos", str(listing), *TINY_EXTRACT,
                            f"student.clip.weights=kaggle://models/{USER}/no-such/pyTorch/default/clip.pt", *local_weights[1:])
    assert unknown.returncode == 2 and f"Kaggle has no model variation {USER}/no-such/pyTorch/default visible to you" in unknown.stderr, \
        unknown.stdout[-2000:] + unknown.stderr[-2000:]
    assert not [m for m, _ in kaggle.requests[pushes:] if m in ("CreateDataset", "CreateDatasetVersion", "SaveKernel")]


def test_msrvtt_in_a_kaggle_dataset_takes_its_splits_from_files_here_or_beside_the_videos(tmp_path, kaggle):
    """MSR-VTT as users hold it: the videos in a Kaggle dataset of theirs, CLIP4Clip's split files either on this
    machine (two small files that travel, by content) or beside the videos in the dataset (mounted, read on the
    laptop through the kaggle package for the plan). Each kernel gives every video the split the files give it --
    the shards a local extraction of the same folder with the same files writes -- and no video byte is uploaded."""
    import sys

    from data_shards.sources import MSRVTT_TEST, MSRVTT_TRAIN
    from data_shards.synthetic_videos import write_collection

    mine = tmp_path / "msrvtt"  # the videos at the dataset's top level, and the split files beside them
    write_collection(mine, 3, seconds=2.0).unlink()
    (mine / MSRVTT_TRAIN).write_text("video_id,sentence\nvideo0000,a\nvideo0002,b\nvideo9999,not in this copy\n")
    (mine / MSRVTT_TEST).write_text("key,vid_key,video_id,sentence\nret0,msr1,video0001,c\n")
    splits = tmp_path / "msrvtt_data"
    splits.mkdir()
    for name in (MSRVTT_TRAIN, MSRVTT_TEST):
        (splits / name).write_bytes((mine / name).read_bytes())
    videos = [p.read_bytes() for p in sorted(mine.glob("*.mp4"))]
    create_dataset(kaggle, tmp_path, "msrvtt", mine)
    args = ["--random-init", *TINY_EXTRACT]
    local = subprocess.run([sys.executable, "-m", "jobs.extract", "--videos", str(mine), "--msrvtt-splits", str(splits), *args, "--out",
                            str(tmp_path / "local")], env=cli_env(), capture_output=True, text=True, timeout=300)
    assert local.returncode == 0, local.stderr[-3000:]
    tars = sorted(p.name for p in (tmp_path / "local").glob("*.tar"))
    ids = {name: sorted({member.split(".")[0] for member in tarfile.open(tmp_path / "local" / name).getnames()}) for name in tars}
    assert ids == {"test-000000.tar": ["video0001"], "val-000000.tar": ["video0000", "video0002"]}  # 500 of the 7k are val: all here
    for where, given in (("here", str(splits)), ("beside", f"kaggle://datasets/{USER}/msrvtt")):
        blobs = len(kaggle.uploaded)
        result = launch_kaggle(kaggle, tmp_path, "kaggle", "extract", *FAST, "--runs-dir", where, "--videos",
                               f"kaggle://datasets/{USER}/msrvtt", "--msrvtt-splits", given, *args)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        sent = b"".join(data for _, data in kaggle.uploaded[blobs:])
        assert not any(video[1000:3000] in sent for video in videos)
        assert ((mine / MSRVTT_TRAIN).read_bytes() in sent) == (where == "here")  # the split files travel only from here
        shards = next((tmp_path / where).iterdir()) / "shards"
        assert sorted(p.name for p in shards.glob("*.tar")) == tars
        assert all((shards / name).read_bytes() == (tmp_path / "local" / name).read_bytes() for name in tars), where


@pytest.mark.parametrize("mount", ["models/you/tiny-clip/pytorch/default/3", "tiny-clip/pytorch/default/3"])
def test_a_model_file_is_found_where_current_and_older_images_mount_models(tmp_path, mount):
    from launch.compute.kaggle_kernel import KernelFailure, mounted_model_file

    (tmp_path / mount).mkdir(parents=True)
    (tmp_path / mount / "clip.pt").write_bytes(b"weights")
    wanted = {"model": "you/tiny-clip/pyTorch/default/3", "path": "clip.pt"}
    assert mounted_model_file("student.clip.weights", wanted, tmp_path) == tmp_path / mount / "clip.pt"
    with pytest.raises(KernelFailure, match="input student.clip.weights: clip.pt is not in model you/tiny-clip/pyTorch/default/4"):
        mounted_model_file("student.clip.weights", {**wanted, "model": "you/tiny-clip/pyTorch/default/4"}, tmp_path)


def create_dataset(kaggle, tmp_path: Path, slug: str, folder: Path) -> None:
    """A dataset of the user's, made with the kaggle package as a user makes one (processing for a while after)."""
    from sync.kaggle import kaggle_api

    (folder / "dataset-metadata.json").write_text(json.dumps({"title": slug, "id": f"{USER}/{slug}", "licenses": [{"name": "CC0-1.0"}]}))
    saved = dict(os.environ)
    os.environ.update(kaggle_env(kaggle, USER, KEY, tmp_path / "kaggle-config"))
    try:
        api = kaggle_api()
        api.dataset_create_new(str(folder), public=False, quiet=True)
        for _ in range(100):  # as a user does: `kaggle datasets status` until it is ready
            try:
                if api.dataset_status(f"{USER}/{slug}").lower() == "ready":
                    break
            except Exception:  # the kaggle package raises its HTTP errors as they come (404 while Kaggle hides a new dataset)
                pass
            time.sleep(0.2)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_index_runs_in_a_kernel_with_the_student_as_a_dataset_and_comes_back_reusable(tmp_path, kaggle, shard_dir):
    """The student checkpoint travels as its own dataset (named by its sha256), the index is built inside
    the kernel's run directory and pulled back; indexing the same shards here with it is then a no-op."""
    import sys

    student = tmp_path / "student"
    trained = subprocess.run([sys.executable, "-m", "jobs.train_mlp", "--run-dir", str(student), "--set", f"data.shards={shard_dir}",
                              "train.epochs=1", "data.batch_size=64", "model.hidden=[64]"], env=cli_env(), capture_output=True,
                             text=True, timeout=300)
    assert trained.returncode == 0, trained.stderr[-3000:]
    refused = launch_kaggle(kaggle, tmp_path, "kaggle", "index", *FAST, "--run", str(student), "--shards", str(shard_dir),
                            "--index", str(tmp_path / "here"))
    assert refused.returncode != 0 and "on a remote backend a job writes only into its run directory" in refused.stderr
    result = launch_kaggle(kaggle, tmp_path, "kaggle", "index", *FAST, "--run", str(student), "--shards", str(shard_dir))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    uploads = json.dumps([body for method, body in kaggle.requests if method == "CreateDataset"])
    assert "streamapprox-file-" in uploads and "streamapprox-shards-" in uploads
    run = only_run_dir(tmp_path)
    assert json.loads((run / "run.json").read_text())["index"]["videos"] == 920
    again = subprocess.run([sys.executable, "-m", "jobs.index", "--run", str(student), "--shards", str(shard_dir), "--index",
                            str(run / "index")], env=cli_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "0 shards indexed, 8 unchanged; 920 videos" in again.stdout, again.stdout + again.stderr
