"""retrieval_metrics against a deliberately naive reference written from the documented conventions."""
import math

import torch

from model.metrics import retrieval_metrics
from model.selection import is_better


def naive(student, teacher):
    n = len(student)
    s = [[float(x) for x in row / row.norm()] for row in student.double()]
    t = [[float(x) for x in row / row.norm()] for row in teacher.double()]
    def dot(a, b):
        return sum(x * y for x, y in zip(a, b))

    out = {}
    for name, queries, items in (("s2t", s, t), ("t2s", t, s)):
        ranks, gaps = [], []
        for i in range(n):
            sims = [dot(queries[i], items[j]) for j in range(n)]
            ranks.append(1 + sum(1 for j in range(n) if j != i and sims[j] >= sims[i]))
            gaps.append(sims[i] - max(sims[j] for j in range(n) if j != i))
        ordered = sorted(ranks)
        median = (ordered[(n - 1) // 2] + ordered[n // 2]) / 2
        for k in (1, 5, 10):
            out[f"{name}_r{k}"] = 100.0 * sum(r <= k for r in ranks) / n
        out[f"{name}_medr"], out[f"{name}_meanr"] = median, sum(ranks) / n
        out[f"{name}_cos_gap"] = sum(gaps) / n
    out["mean_cos"] = sum(dot(s[i], t[i]) for i in range(n)) / n
    out["mse"] = sum((a - b) ** 2 for i in range(n) for a, b in zip(s[i], t[i])) / (n * len(s[0]))
    return out


def test_matches_naive_reference_on_noisy_data():
    torch.manual_seed(0)
    teacher = torch.randn(40, 16)
    student = teacher + 1.2 * torch.randn(40, 16)
    got, want = retrieval_metrics(student, teacher, chunk=7), naive(student, teacher)
    for key, value in want.items():
        assert math.isclose(got[key], value, rel_tol=1e-9, abs_tol=1e-9), key
    assert got["n"] == 40


def test_ties_are_pessimistic_and_perfect_is_perfect():
    teacher = torch.eye(6)
    perfect = retrieval_metrics(teacher.clone(), teacher)
    assert perfect["s2t_r1"] == 100.0 and perfect["s2t_medr"] == 1.0 and perfect["mean_cos"] > 0.999999
    constant = retrieval_metrics(torch.ones(6, 6), teacher)
    # Every item ties with the positive: a constant embedding ranks last, never first.
    assert constant["s2t_r1"] == 0.0 and constant["s2t_meanr"] == 6.0
    for key, value in naive(torch.ones(6, 6), teacher).items():
        assert math.isclose(constant[key], value, rel_tol=1e-9, abs_tol=1e-12), key


def test_even_median_and_direction_asymmetry():
    torch.manual_seed(3)
    teacher, student = torch.randn(10, 4), torch.randn(10, 4)
    got, want = retrieval_metrics(student, teacher), naive(student, teacher)
    assert got["s2t_medr"] == want["s2t_medr"] and got["t2s_medr"] == want["t2s_medr"]


def test_is_better_knows_direction():
    assert is_better("s2t_r1", 50.0, 40.0) and not is_better("s2t_r1", 30.0, 40.0)
    assert is_better("s2t_medr", 2.0, 3.0) and is_better("mse", 0.1, 0.2) and is_better("mean_cos", 0.5, None)
