"""Losses: values against naive formulas, H-NAC's behaviour, the temperature clamp, and the
cross-rank gather (2 real gloo processes) giving the global-batch loss and gradient."""
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from model.config import LossConfig
from model.losses import DistillLoss


def naive_infonce(s, t, scale, weights=None):
    s, t = F.normalize(s, dim=-1), F.normalize(t, dim=-1)
    n, total = len(s), 0.0
    for queries, items in ((s, t), (t, s)):
        for i in range(n):
            logits = [scale * float(queries[i] @ items[j]) for j in range(n)]
            w = [1.0 if j == i or weights is None else weights[i][j] for j in range(n)]
            denominator = sum(w[j] * math.exp(logits[j]) for j in range(n))
            total += -(logits[i] - math.log(denominator))
    return total / (2 * n)


def test_infonce_cosine_joint_match_formulas():
    torch.manual_seed(0)
    s, t = torch.randn(8, 5), torch.randn(8, 5)
    infonce = DistillLoss(LossConfig(kind="infonce", temperature=0.1, learn_temperature=False))(s, t)
    assert infonce["loss"].item() == pytest.approx(naive_infonce(s, t, 10.0), rel=1e-5)
    cosine = DistillLoss(LossConfig(kind="cosine"))(s, t)["loss"].item()
    assert cosine == pytest.approx(float((1 - F.cosine_similarity(s, t)).mean()), rel=1e-6)
    joint = DistillLoss(LossConfig(kind="joint", alpha=0.3, temperature=0.1, learn_temperature=False))(s, t)["loss"].item()
    assert joint == pytest.approx(0.7 * cosine + 0.3 * naive_infonce(s, t, 10.0), rel=1e-5)


def test_hnac_matches_its_formula_and_downweights_near_duplicates():
    torch.manual_seed(1)
    t = F.normalize(torch.randn(6, 8), dim=-1)
    t[1] = F.normalize(t[0] + 0.01 * torch.randn(8), dim=0)  # video 1 is a near-duplicate of video 0
    s = t + 0.3 * torch.randn(6, 8)
    cfg = LossConfig(kind="hnac", temperature=0.1, learn_temperature=False, hnac_threshold=0.8, hnac_sharpness=0.05)
    got = DistillLoss(cfg)(s, t)["loss"].item()
    c = t @ t.T
    weights = [[float(torch.sigmoid((0.8 - c[i, j]) / 0.05)) for j in range(6)] for i in range(6)]
    assert got == pytest.approx(naive_infonce(s, t, 10.0, weights), rel=1e-5)
    assert weights[0][1] < 0.05 and min(weights[i][j] for i in range(2, 6) for j in range(2, 6) if i != j) > 0.99
    plain = DistillLoss(LossConfig(kind="infonce", temperature=0.1, learn_temperature=False))(s, t)["loss"].item()
    assert got < plain  # the false negative no longer counts against the positive


def test_hnac_recovers_infonce_at_the_limit():
    torch.manual_seed(2)
    s, t = torch.randn(7, 6), torch.randn(7, 6)
    limit = LossConfig(kind="hnac", temperature=0.2, learn_temperature=False, hnac_threshold=1.0, hnac_sharpness=1e-4)
    plain = LossConfig(kind="infonce", temperature=0.2, learn_temperature=False)
    assert DistillLoss(limit)(s, t)["loss"].item() == pytest.approx(DistillLoss(plain)(s, t)["loss"].item(), rel=1e-5)


def test_learned_temperature_is_a_parameter_and_clamped():
    loss = DistillLoss(LossConfig(kind="infonce", temperature=0.05, max_logit_scale=100.0))
    assert [name for name, _ in loss.named_parameters()] == ["log_scale"]
    assert loss.scale().item() == pytest.approx(20.0)
    with torch.no_grad():
        loss.log_scale.fill_(10.0)
    assert loss.scale().item() == pytest.approx(100.0)
    fixed = DistillLoss(LossConfig(kind="infonce", learn_temperature=False))
    assert list(fixed.parameters()) == [] and "log_scale" in dict(fixed.named_buffers())


def _rank(rank: int, world: int, init: str, s: torch.Tensor, t: torch.Tensor, kind: str, out: dict) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    rows = slice(rank * len(s) // world, (rank + 1) * len(s) // world)
    local = s[rows].clone().requires_grad_(True)
    cfg = LossConfig(kind=kind, temperature=0.1, learn_temperature=False)
    loss = DistillLoss(cfg)(local, t[rows])["loss"]
    loss.backward()
    out[rank] = (loss.item(), local.grad.clone())
    dist.destroy_process_group()


@pytest.mark.parametrize("kind", ["infonce", "hnac"])
def test_gather_with_grad_gives_global_batch_loss_and_gradient(tmp_path, kind):
    torch.manual_seed(4)
    s, t = torch.randn(8, 6), torch.randn(8, 6)
    full = s.clone().requires_grad_(True)
    expected = DistillLoss(LossConfig(kind=kind, temperature=0.1, learn_temperature=False))(full, t)["loss"]
    expected.backward()
    out = mp.Manager().dict()
    mp.spawn(_rank, args=(2, f"file://{tmp_path}/rendezvous", s, t, kind, out), nprocs=2, join=True)
    # The mean of the ranks' local losses is the global loss; DDP's gradient averaging (1/world)
    # of each rank's gradient gives the global gradient of that rank's rows.
    assert (out[0][0] + out[1][0]) / 2 == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(torch.cat([out[0][1], out[1][1]]) / 2, full.grad, rtol=1e-5, atol=1e-7)


def test_the_optimizer_is_torchs_fused_adamw_with_the_updates_of_the_adamw_formula():
    """``build_optimizer`` uses torch's fused AdamW kernel on a CPU (its default there loops over the tensors); its
    steps equal AdamW's formula, written out here, with no weight decay on vectors and the temperature."""
    from jobs.config import load_config
    from jobs.trainer import build_optimizer

    cfg = load_config("train_mlp", overrides=["optim.lr=0.01", "optim.weight_decay=0.1"])
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.LayerNorm(4))
    model.register_parameter("log_scale", torch.nn.Parameter(torch.tensor(2.0)))
    optimizer = build_optimizer(model, cfg)
    assert all(group["fused"] for group in optimizer.param_groups)
    start = {name: param.detach().clone() for name, param in model.named_parameters()}
    grads = [{name: torch.randn_like(param) for name, param in model.named_parameters()} for _ in range(3)]
    for step in grads:
        for name, param in model.named_parameters():
            param.grad = step[name].clone()
        optimizer.step()
    o, (beta1, beta2) = cfg.optim, cfg.optim.betas
    for name, param in model.named_parameters():
        decay = o.weight_decay if param.ndim >= 2 and name != "log_scale" else 0.0
        value, m, v = start[name].double(), 0.0, 0.0
        for t, step in enumerate(grads, start=1):
            g = step[name].double()
            value = value * (1 - o.lr * decay)
            m, v = beta1 * m + (1 - beta1) * g, beta2 * v + (1 - beta2) * g * g
            value = value - o.lr * (m / (1 - beta1 ** t)) / ((v / (1 - beta2 ** t)).sqrt() + o.eps)
        assert torch.allclose(param.detach().double(), value, atol=1e-6), name
