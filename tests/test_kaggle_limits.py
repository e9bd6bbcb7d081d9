"""``launch kaggle`` against Kaggle's limits and faults as the loopback server models them (tests/kaggle_server.py,
after ../shared/REMOTE_FACTS.md): archives unpacked, both mount layouts, 50 files per dataset, two GPU sessions,
the weekly quota, transfers that break off, and shards that stay in the kernels that extracted them."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from pathlib import Path

from conftest import TINY_EXTRACT, cli_env
from kaggle_server import FAST, USER, launch_kaggle, only_run_dir, packed

from data_shards import open_shards

QUICK_TRAIN = ["train.epochs=1", "data.batch_size=64", "model.hidden=[64]"]


def read_run(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


def test_the_synthetic_default_comes_back_complete_with_archives_kept_and_the_legacy_mount(tmp_path, kaggle):
    kaggle.layout, kaggle.unpack = "legacy", False  # older images: /kaggle/input/<slug>; archives left as files
    result = launch_kaggle(kaggle, tmp_path, "kaggle", "train_mlp", *FAST, "--set", *QUICK_TRAIN, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = only_run_dir(tmp_path)
    info = read_run(run)
    assert info["status"] == "complete" and info["shards"]["location"] == "synthetic://msrvtt"
    assert json.loads((run / "eval" / "results.json").read_text())["metrics"]["n"] == 1000
    code = kaggle.datasets[(USER, "streamapprox-code")]
    assert all(name.endswith(".pack") for name in code if name != "BUNDLE.json")  # the code travels packed
    assert all("streamapprox-code/pack-000-of-001.pack" in kernel.input_listing for kernel in kaggle.sessions)


def test_a_62_shard_set_travels_in_packs_under_kaggles_file_cap_and_is_verified_on_the_kernel(tmp_path, kaggle):
    from data_shards.synthetic import SyntheticSpec, generate

    shards = tmp_path / "many-shards"
    generate(SyntheticSpec(train=600, val=120, test=200, samples_per_shard=15), shards, progress=False)
    count = len(list(shards.glob("*.tar")))
    assert count >= 60
    result = launch_kaggle(kaggle, tmp_path, "kaggle", "train_mlp", *FAST, "--set", f"data.shards={shards}", *QUICK_TRAIN,
                           "data.batch_size=32")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = only_run_dir(tmp_path)
    assert read_run(run)["status"] == "complete"
    dataset = next(files for (owner, slug), files in kaggle.datasets.items() if slug.startswith("streamapprox-shards-"))
    assert len(dataset) <= 50 and not any(name.endswith(".tar") for name in dataset)
    assert sorted(packed(dataset)) == sorted(["manifest.json", *(p.name for p in shards.glob("*.tar"))])
    assert read_run(run)["shards"]["manifest_digest"] == open_shards(shards).digest()  # the set it was sent, verified there


def test_extraction_runs_in_waves_of_two_gpu_sessions_and_a_kernel_trains_on_its_outputs_where_they_are(tmp_path, kaggle):
    """Three t4x2 kernels while another of the account's GPU sessions holds a slot for a while: Kaggle refuses the
    pushes past two sessions, the launcher waits and goes on, and the merged set is byte for byte a local run's. Then
    a fourth kernel trains on the three kernels' outputs mounted as sources (their shard tars unpacked by Kaggle,
    rebuilt and verified there): no shard byte is uploaded."""
    from data_shards.synthetic_videos import write_collection

    listing = write_collection(tmp_path / "videos", 12, seconds=2.0)
    args = ["--videos", str(listing), "--random-init", *TINY_EXTRACT]
    kaggle.outside_gpu_sessions = 1  # a notebook open in the web editor
    threading.Timer(20, lambda: setattr(kaggle, "outside_gpu_sessions", 0)).start()
    extract = launch_kaggle(kaggle, tmp_path, "kaggle", "extract", "--accelerator", "t4x2", "--num-kernels", "3", *args,
                            timeout=600)
    assert extract.returncode == 0, extract.stdout[-3000:] + extract.stderr[-3000:]
    assert kaggle.refused_pushes >= 1 and "Maximum batch GPU session count of 2 reached" in extract.stdout
    assert kaggle.gpu_sessions_at_once() == 2 and len(kaggle.sessions) == 3
    run = only_run_dir(tmp_path)
    local = subprocess.run([sys.executable, "-m", "jobs.extract", *args, "--out", str(tmp_path / "local")], env=cli_env(),
                           capture_output=True, text=True, timeout=300)
    assert local.returncode == 0, local.stderr[-3000:]
    tars = sorted(p.name for p in (tmp_path / "local").glob("*.tar"))
    assert tars == sorted(p.name for p in (run / "shards").glob("*.tar")) and len(tars) == 6
    assert all((run / "shards" / name).read_bytes() == (tmp_path / "local" / name).read_bytes() for name in tars)
    record = json.loads((run / "launch.json").read_text())
    assert all(unit["account"]["gpu_hours"] > 0 for unit in record["units"])  # each GPU kernel's hours are in the quota ledger

    hint = next(line for line in extract.stdout.splitlines() if "data.shards=kaggle://" in line)
    location = hint.split("data.shards=", 1)[1]
    assert location.count("kaggle://") == 3
    received = kaggle.bytes_received
    dims = json.loads((tmp_path / "local" / "manifest.json").read_text())["dims"]
    student = ["train.epochs=2", "data.batch_size=2", "data.eval_batch_size=2", "model.hidden=[32]", f"model.clip_dim={dims['clip']}",
               f"model.out_dim={dims['teacher']}", f"model.frames={dims['frames']}", f"model.audio_dim={dims['audio']}"]
    train = launch_kaggle(kaggle, tmp_path, "kaggle", "train_mlp", *FAST, "--set", f"data.shards={location}", *student, timeout=400)
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    assert kaggle.bytes_received == received and "uploaded 0 bytes of datasets" in train.stdout  # no shard byte went up
    push = [body for method, body in kaggle.requests if method == "SaveKernel"][-1]
    assert sorted(push["kernelDataSources"]) == sorted(f"{USER}/{unit['handle']['slug']}" for unit in record["units"])
    assert not any("shards" in source for source in push["datasetDataSources"])
    trained = next(p for p in (tmp_path / "runs").iterdir() if p.name.startswith("train_mlp"))
    info = read_run(trained)
    assert info["status"] == "complete" and info["shards"]["manifest_digest"] == open_shards(run / "shards").digest()
    rebuilt = "shards from 3 kernel output(s), verified" in train.stdout
    mounted = next(kernel.input_listing for kernel in kaggle.sessions if kernel.slug.startswith(trained.name.replace("_", "-")))
    unpacked = [name for name in mounted if re.fullmatch(r"notebooks/[^/]+/[^/]+/[^/]+/shards/train-[^/]+", name.rstrip("/"))]
    assert rebuilt and unpacked and all(name.endswith("/") for name in unpacked)  # Kaggle unpacked them; the kernel rebuilt them


def test_a_broken_transfer_is_resumed_and_one_that_stays_broken_says_how_to_continue(tmp_path, kaggle):
    settings = ["--set", "data.shards=synthetic://msrvtt?train=600&val=120&test=200&samples_per_shard=128", *QUICK_TRAIN]
    kaggle.upload_faults = {".pack": ["drop"]}  # the line drops halfway through the code's upload
    kaggle.blob_faults = {"checkpoints/last.pt": ["truncate"], "metrics.jsonl": ["reset"]}
    kaggle.faults = {"GetKernelSessionStatus": ["drop"]}
    result = launch_kaggle(kaggle, tmp_path, "kaggle", "train_mlp", *FAST, *settings)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert not any(kaggle.upload_faults.values()) and not any(kaggle.blob_faults.values()) and not any(kaggle.faults.values())
    assert "broke off at" in result.stderr and "resuming" in result.stderr
    run = only_run_dir(tmp_path)
    assert read_run(run)["status"] == "complete" and (run / "checkpoints" / "last.pt").is_file()

    kaggle.blob_faults = {"checkpoints/best.pt": ["truncate"] * 20}
    broken = launch_kaggle(kaggle, tmp_path, "kaggle", "train_mlp", *FAST, *settings, env_extra={"STREAMAPPROX_KAGGLE_ATTEMPTS": "3"})
    assert broken.returncode == 3, broken.stdout[-3000:] + broken.stderr[-3000:]
    second = next(p for p in (tmp_path / "runs").iterdir() if p != run)
    assert "Traceback" not in broken.stderr and f"Bring it back with: launch pull {Path('runs') / second.name}" in broken.stderr
    assert "checkpoints/best.pt: the download broke off" in broken.stderr
    kaggle.blob_faults = {}
    pulled = launch_kaggle(kaggle, tmp_path, "pull", second.name)
    assert pulled.returncode == 0 and read_run(second)["status"] == "complete", pulled.stderr[-2000:]


def test_quota_is_shown_planned_and_enforced_before_anything_is_pushed(tmp_path, kaggle):
    from launch.transports.kaggle_quota import week_start

    import datetime as dt

    saturday = dt.datetime(2026, 11, 28, 0, 0, tzinfo=dt.timezone.utc)
    assert week_start(dt.datetime(2026, 11, 27, 23, 59, tzinfo=dt.timezone.utc)) == saturday - dt.timedelta(days=7)
    assert week_start(saturday) == saturday and week_start(saturday + dt.timedelta(days=6, hours=23)) == saturday
    cache = {"STREAMAPPROX_CACHE": str(tmp_path / "cache")}  # this account's ledger only
    ledger = tmp_path / "cache" / "kaggle" / USER / "gpu-usage"
    ledger.mkdir(parents=True)
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    (ledger / "old-run.json").write_text(json.dumps({"kernel": f"{USER}/old-run", "run_id": "old", "accelerator": "t4x2", "hours": 20.5,
                                                     "started_at": started, "measured_by": "kernel"}))
    shown = launch_kaggle(kaggle, tmp_path, "quota", env_extra=cache)
    assert shown.returncode == 0 and "20.50 h of GPU used this week" in shown.stdout and "9.50 h left of 30" in shown.stdout

    plan = ["kaggle", "extract", "--accelerator", "t4x2", "--num-kernels", "3", "--time-budget", "3600",
            "--max-continuations", "1", "--videos", str(tmp_path / "videos" / "videos.csv"), "--random-init", *TINY_EXTRACT]
    from data_shards.synthetic_videos import write_collection

    write_collection(tmp_path / "videos", 3, seconds=1.0)
    dry = launch_kaggle(kaggle, tmp_path, *plan, "--dry-run", env_extra=cache)
    assert dry.returncode == 0, dry.stdout[-2000:] + dry.stderr[-2000:]
    assert "3 x t4x2 (NvidiaTeslaT4), at most 2 at a time: 2 waves" in dry.stdout
    # 3 kernels x 2 in a chain x (1 h + 0.5 h margin) at worst; expected: the videos' FLOPs at 30 % of 2 x 65 TFLOP/s
    assert "expected about 0.00 h (estimated from FLOPs at 30% of the fp16 peak), worst case 9.00 h" in dry.stdout
    assert "with this week's, at most 29.50 h" in dry.stdout
    kernels = [line.strip() for line in dry.stdout.splitlines() if line.strip().startswith("kernel ")]
    assert [line.split(" (")[0] for line in kernels] == ["kernel 0: 1 video", "kernel 1: 1 video", "kernel 2: 1 video"], kernels
    assert all(line.endswith(" GPU s") and " MB), about " in line for line in kernels)
    assert "GPU hours: an estimate from FLOPs, not a measurement:" in dry.stdout and "at 30% of 130 TFLOP/s (t4x2" in dry.stdout
    assert "upload: kaggle-user/streamapprox-videos-" in dry.stdout and "upload: kaggle-user/streamapprox-code" in dry.stdout
    assert kaggle.bytes_received == 0 and not any(method in ("SaveKernel", "StartBlobUpload") for method, _ in kaggle.requests)

    refused = launch_kaggle(kaggle, tmp_path, *plan, "--quota-hours", "20", env_extra=cache)  # 20.5 h used already
    assert refused.returncode == 2 and "with this week's, at most 29.50 h of --quota-hours 20" in refused.stderr
    assert ": over the limit (by the estimate, 0.00 h)" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and kaggle.bytes_received == 0
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
