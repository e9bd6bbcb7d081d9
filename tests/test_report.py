"""Evaluation and the report: hand-counted FLOPs, the latency budget, and a report over synthetic runs
(two trained presets + the zero-shot floor) with every table and plot, costs measured with the real
encoder architectures at tiny sizes."""
import csv
import json
import shutil
import time

import torch

from conftest import FIXTURES, launch

# Synthetic features as wide as the tiny test encoders, so the measured pipelines fit the trained heads.
TINY_DIMS = "synthetic://msrvtt?train=300&val=60&test=100&samples_per_shard=128&clip_dim=32&teacher_dim=32"
TRAIN = ["--set", f"data.shards={TINY_DIMS}", "model.clip_dim=32", "model.out_dim=32", "train.epochs=2", "data.batch_size=64",
         "model.hidden=[64]"]
TINY_ENCODERS = ["--set", "student.clip.model=tiny_clip", f"student.clip.architecture={FIXTURES / 'tiny_clip.json'}",
                 f"teacher.imagebind.architecture={FIXTURES / 'tiny_imagebind.json'}"]
PLOTS = ("recall_at_k.png", "cosine_distributions.png", "pca_overlay.png", "costs.png")


def test_flop_counter_matches_hand_counts():
    from model import MLPStudentConfig, build_student
    from model.costs import count_flops
    from model.pipelines import head_pipeline, measure

    linear = torch.nn.Linear(64, 32)
    assert count_flops(lambda: linear(torch.randn(8, 64))) == 2 * 8 * 64 * 32  # one multiply-add = 2 FLOPs
    conv = torch.nn.Conv2d(3, 16, kernel_size=3, padding=1)
    assert count_flops(lambda: conv(torch.randn(1, 3, 8, 8))) == 2 * (16 * 8 * 8) * (3 * 3 * 3)

    # attention counts as its two matmuls even where inference would take a fused kernel that counts 0
    b, length, d, heads, ffn = 2, 10, 64, 4, 256
    layer = torch.nn.TransformerEncoderLayer(d, heads, ffn, dropout=0.0, batch_first=True, norm_first=True).eval()
    with torch.inference_mode():
        counted = count_flops(lambda: layer(torch.randn(b, length, d)))
    projections = 2 * b * length * d * (3 * d) + 2 * b * length * d * d
    attention = 2 * (2 * b * heads * length * length * (d // heads))  # Q K^T and weights x V
    assert counted == projections + attention + 2 * (2 * b * length * d * ffn)

    # the MLP head: (frames x clip + audio + has-audio flag) -> 16 -> 6; batch norm, GELU, normalize are not counted;
    # FLOPs are per video at batch 1 even when only larger batches are timed
    head = build_student(MLPStudentConfig(frames=2, clip_dim=8, audio_dim=4, out_dim=6, hidden=[16])).eval()
    cost = measure(head_pipeline("head", head), [torch.device("cpu")], batches=(2, 4), repeats=2)
    assert cost.flops_per_video == 2 * (2 * 8 + 4 + 1) * 16 + 2 * 16 * 6
    assert cost.parameters == sum(p.numel() for p in head.parameters())
    assert all(cost.latency["cpu"][b].repeats == 2 and cost.latency["cpu"][b].median_s > 0 for b in (2, 4))


def test_a_cell_predicted_to_overrun_the_budget_is_skipped_and_says_so():
    from model.pipelines import Pipeline, measure

    def slow(inputs):
        time.sleep(0.02 * inputs["x"].shape[0])
        return inputs["x"]

    pipeline = Pipeline("slow", [], lambda batch, device: {"x": torch.zeros(batch, 1)}, slow, "sleeps 20 ms per video")
    cost = measure(pipeline, [torch.device("cpu")], batches=(1, 256), repeats=3, budget_s=1.0)
    assert cost.latency["cpu"][1].median_s >= 0.02
    skipped = cost.latency["cpu"][256]  # the prediction scales batch 1's measured time (>= 20 ms): >= 5 s, more on a busy machine
    assert skipped.startswith("skipped: warm-up + 1 call ~ 2 x ") and skipped.endswith(" s (predicted from batch 1) would overrun the 1 s budget")
    assert float(skipped.split("~ 2 x ")[1].split(" s")[0]) >= 5


def test_report_over_two_presets_and_the_floor_lists_every_run_with_all_tables_and_plots(tmp_path, shard_cache):
    runs = {}
    for job, extra in (("train_mlp", []), ("train_mlp", ["--preset", "mlp_cosine"]), ("zero_shot", [])):
        before = set((tmp_path / "runs").glob("*")) if (tmp_path / "runs").exists() else set()
        args = TRAIN if job != "zero_shot" else TRAIN[:4]
        result = launch("local", job, *extra, *args, cwd=tmp_path)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        (run,) = set((tmp_path / "runs").glob("*")) - before
        runs[extra[-1] if extra else job] = run
    cosine, floor = json.loads((runs["mlp_cosine"] / "run.json").read_text()), json.loads((runs["zero_shot"] / "run.json").read_text())
    assert cosine["preset"] == "mlp_cosine" and cosine["config"]["loss"]["kind"] == "cosine"
    assert floor["config"]["model"]["kind"] == "zero_shot" and floor["student_parameters"] == 0 and floor["status"] == "complete"

    # evaluate takes several runs; a run without eval/ is evaluated by the report itself
    for run in runs.values():
        shutil.rmtree(run / "eval")
    evaluated = launch("local", "evaluate", str(runs["train_mlp"]), str(runs["mlp_cosine"]), cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert all((runs[k] / "eval" / "embeddings.npz").is_file() for k in ("train_mlp", "mlp_cosine"))

    result = launch("report", *map(str, runs.values()), *TINY_ENCODERS, "--batches", "1,2", "--repeats", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (out,) = (tmp_path / "reports").iterdir()
    for name in PLOTS:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    rows = list(csv.DictReader((out / "comparison.csv").open()))
    assert [r["run"] for r in rows] == [run.name for run in runs.values()]
    assert [r["preset"] for r in rows] == ["train_mlp", "mlp_cosine", "zero_shot"]
    assert rows[0]["s2t_r1"] != "" and rows[0]["t2s_r1"] != "" and rows[2]["head_parameters"] == "0"

    costs = {c["name"].split(" (")[0].split(":")[0]: c for c in json.loads((out / "costs.json").read_text())["costs"]}
    assert set(costs) == {"head", "student pipeline", "teacher pipeline"}
    for cost in costs.values():
        assert cost["flops_per_video"] > 0 and set(cost["latency"]["cpu"]) == {"1", "2"}
    assert all("median_s" in cell for cell in costs["teacher pipeline"]["latency"]["cpu"].values())

    report = (out / "report.md").read_text()
    assert "SYNTHETIC features" in report and "the zero-shot floor reaches" in report
    for run in runs.values():
        assert run.name in report
    for name in PLOTS:
        assert f"]({name})" in report
    assert "FLOPs = 2 × MACs" in report and "| pipeline | parameters | FLOPs / video | cpu ms, batch 1 | cpu ms, batch 2 |" in report

    single = launch("report", str(runs["zero_shot"]), "--no-costs", cwd=tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    assert "Not measured (`--no-costs`)" in (runs["zero_shot"] / "eval" / "report.md").read_text()
