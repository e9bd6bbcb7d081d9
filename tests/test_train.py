"""The spine end to end through the real CLI: `launch local train_mlp` / `train_transformer`
write a complete run directory, and `launch local evaluate` reproduces its test results."""
import json

import torch

from conftest import FAST_MLP, SMALL, launch, only_run, read_jsonl


def test_launch_help_lists_backends_and_jobs(tmp_path):
    result = launch("--help", cwd=tmp_path)
    assert result.returncode == 0
    for word in ("local", "train_mlp", "train_transformer", "evaluate"):
        assert word in result.stdout


def test_train_mlp_end_to_end_then_evaluate(tmp_path, small_shards):
    result = launch("local", "train_mlp", "--set", f"data.shards={SMALL}", *FAST_MLP, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = only_run(tmp_path)
    for name in ("run.json", "metrics.jsonl", "checkpoints/best.pt", "checkpoints/last.pt", "eval/results.json", "eval/results.csv",
                 "logs/train.log"):
        assert (run / name).is_file(), name
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "complete" and info["job"] == "train_mlp" and info["backend"] == "local"
    assert info["config"]["model"]["hidden"] == [256, 256] and info["config"]["data"]["shards"] == SMALL
    assert len(info["shards"]["manifest_digest"]) == 64 and info["shards"]["source_kind"] == "synthetic"
    assert info["hardware"]["num_processes"] == 1 and "commit" in info["git"]

    records = read_jsonl(run / "metrics.jsonl")
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [0, 1, 2]
    assert sum(r["kind"] == "step" for r in records) == 3 * (600 // 64)
    assert all(r["val"]["n"] == 120 for r in epochs)  # selection saw the validation split only

    results = json.loads((run / "eval" / "results.json").read_text())
    assert results["split"] == "test" and results["metrics"]["n"] == 200
    chance = 100 / 200
    assert results["metrics"]["s2t_r1"] > 10 * chance
    assert "run directory:" in result.stdout and "test (200 videos)" in result.stdout

    best = torch.load(run / "checkpoints" / "best.pt", weights_only=False)
    assert best["config"]["model"]["kind"] == "mlp"  # the resolved config travels in every checkpoint
    (run / "eval" / "results.json").unlink()
    again = launch("local", "evaluate", str(run), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((run / "eval" / "results.json").read_text())["metrics"] == results["metrics"]


def test_train_transformer_with_depth_override(tmp_path, small_shards):
    result = launch(
        "local", "train_transformer", "--set", f"data.shards={SMALL}", "model.depth=2", "model.width=64", "train.epochs=2",
        "data.batch_size=64", cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = only_run(tmp_path)
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "complete" and info["config"]["model"]["depth"] == 2
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=False)
    assert sum(k.startswith("student.encoder.layers.") and k.endswith("linear1.weight") for k in state["model"]) == 2
    assert json.loads((run / "eval" / "results.json").read_text())["metrics"]["s2t_r1"] > 5 * 100 / 200


def test_the_training_check_reads_everything_and_imports_no_torch(tmp_path, small_shards):
    """Every launcher runs the job's --check before it starts or sends it: config, shard digests, dims, batch sizes, the
    GPUs (asked only where a GPU device node exists). None of it needs torch, whose import alone is about 1 s here."""
    import subprocess
    import sys

    from servers import CHECKOUT

    script = ("import sys; from jobs.train import main; code = main(sys.argv[1:]); "
              "print('exit', code, 'torch' in sys.modules, 'webdataset' in sys.modules)")
    check = ["--check", "--set", f"data.shards={SMALL}", *FAST_MLP]
    ok = subprocess.run([sys.executable, "-c", script, *check], cwd=CHECKOUT, capture_output=True, text=True, timeout=120)
    assert ok.stdout.splitlines()[-1] == "exit 0 False False", ok.stdout + ok.stderr
    bad = subprocess.run([sys.executable, "-c", script, *check, "data.batch_size=100000"], cwd=CHECKOUT, capture_output=True,
                         text=True, timeout=120)
    assert bad.stdout.splitlines()[-1] == "exit 2 False False" and "data.batch_size" in bad.stderr, bad.stdout + bad.stderr
