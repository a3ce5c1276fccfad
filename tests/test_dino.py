"""DINO: loss against a hand computation, centring, EMA, health signals, head, clipping, schedules."""
import math

import numpy as np
import pytest
import torch

from fmct_lib.config import get_profile
from fmct_lib.models.dino_head import DINOHead
from fmct_lib.models.vit3d import vit_from_config
from fmct_lib.ssl.dino import (DINOConfig, clip_gradients, dino_loss, ema_update, koleo_loss, sinkhorn_knopp,
                               teacher_health, teacher_targets, update_centre)
from fmct_lib.train.schedules import cosine_momentum, teacher_temperature, warmup_cosine
from fmct_lib.train.methods.dino import DINOModel


pytestmark = pytest.mark.usefixtures("one_thread")


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def test_dino_loss_matches_hand_computation():
    rng = np.random.default_rng(0)
    B, K, n_crops, n_global = 2, 5, 4, 2
    s = rng.normal(size=(n_crops * B, K))
    t = rng.normal(size=(n_global * B, K))
    c = rng.normal(size=K) * 0.1
    ts, tt = 0.1, 0.04
    # independent: loop over every (teacher view i, student view j != i) pair and every sample
    terms = []
    for i in range(n_global):
        for j in range(n_crops):
            if i == j:
                continue
            ce = [-(_softmax((t[i * B + b] - c) / tt) * np.log(_softmax(s[j * B + b] / ts))).sum() for b in range(B)]
            terms.append(np.mean(ce))
    expected = np.mean(terms)
    assert len(terms) == 2 * n_crops - 2
    got = dino_loss(torch.tensor(s, dtype=torch.float32), torch.tensor(t, dtype=torch.float32),
                    torch.tensor(c, dtype=torch.float32), ts, tt, n_global)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_dino_loss_rejects_mismatched_rows():
    with pytest.raises(ValueError, match="do not split"):
        dino_loss(torch.zeros(7, 3), torch.zeros(4, 3), torch.zeros(3), 0.1, 0.04, 2)


def test_centre_update_formula():
    centre = torch.tensor([1.0, -2.0, 0.5])
    t = torch.tensor([[1.0, 2.0, 3.0], [3.0, 0.0, -1.0]])
    update_centre(centre, t.sum(0), t.shape[0], momentum=0.9)
    expected = 0.9 * torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.tensor([2.0, 1.0, 1.0])
    assert torch.allclose(centre, expected)


def test_ema_update_formula_and_buffers():
    torch.manual_seed(0)
    student, teacher = DINOHead(8, 6, 10, 4), DINOHead(8, 6, 10, 4)
    teacher.last_layer.weight_g.fill_(2.0)  # buffers must be copied from the student
    before = {k: v.clone() for k, v in teacher.named_parameters()}
    ema_update(teacher, student, 0.9)
    for (name, t), (_, s) in zip(teacher.named_parameters(), student.named_parameters()):
        assert torch.allclose(t, 0.9 * before[name] + 0.1 * s), name
    assert torch.equal(teacher.last_layer.weight_g, student.last_layer.weight_g)


def test_teacher_health_extremes():
    k = 16
    flat = teacher_health(torch.zeros(8, k), torch.zeros(k), 0.04)
    assert flat["teacher_entropy"] == pytest.approx(math.log(k), rel=1e-5)
    assert flat["kl_to_uniform"] == pytest.approx(0.0, abs=1e-6)
    collapsed = torch.zeros(8, k)
    collapsed[:, 3] = 10.0  # every sample puts its mass on one prototype
    h = teacher_health(collapsed, torch.zeros(k), 0.04)
    assert h["teacher_entropy"] < 1e-3
    assert h["kl_to_uniform"] == pytest.approx(math.log(k), rel=1e-3)


def test_teacher_health_of_a_diverse_teacher_and_a_centre_against_numpy():
    """The extremes above cannot tell the mean per-sample entropy from the entropy of the batch mean (they are equal
    there). A healthy teacher (sample i sure of prototype i) has entropy ~0 and KL ~0; a random batch with a centre
    against the formulas in numpy: softmax((t - c) / T), mean_i H(p_i), sum_k pbar_k log(K pbar_k)."""
    k = 8
    diverse = teacher_health(torch.eye(k) * 10.0, torch.zeros(k), 0.04)
    assert diverse["teacher_entropy"] < 1e-3 and diverse["kl_to_uniform"] == pytest.approx(0.0, abs=1e-3)
    rng = np.random.default_rng(0)
    logits, centre, temp = rng.normal(size=(12, k)), rng.normal(size=k), 0.5
    z = (logits - centre) / temp
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    pbar = p.mean(0)
    h = teacher_health(torch.tensor(logits, dtype=torch.float32), torch.tensor(centre, dtype=torch.float32), temp)
    assert h["teacher_entropy"] == pytest.approx(-(p * np.log(p)).sum(1).mean(), rel=1e-5)
    assert h["kl_to_uniform"] == pytest.approx((pbar * np.log(k * pbar)).sum(), rel=1e-4, abs=1e-6)


def test_head_weight_norm_keys_and_unit_prototypes():
    head = DINOHead(12, 7, hidden_dim=16, bottleneck_dim=5)
    keys = set(head.state_dict())
    assert {"mlp.0.weight", "mlp.2.weight", "mlp.4.weight", "last_layer.weight_g", "last_layer.weight_v"} <= keys
    assert "last_layer.weight_g" not in dict(head.named_parameters())  # frozen norm: a buffer
    assert torch.allclose(head.last_layer.weight.norm(dim=1), torch.ones(7), atol=1e-6)
    x = torch.randn(3, 12)
    out = head(x)
    with torch.no_grad():
        head.last_layer.weight_v.mul_(torch.rand(7, 1) + 0.5)  # row scales do not matter
    assert torch.allclose(head(x), out, atol=1e-5)
    # the bottleneck is L2-normalised: logits are cosines, bounded by 1
    assert out.abs().max() <= 1 + 1e-5


def test_clip_gradients_per_parameter():
    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))
    a.grad, b.grad = torch.tensor([3.0, 4.0, 0.0]), torch.tensor([0.3, 0.4])
    module = torch.nn.Module()
    module.a, module.b = a, b
    clip_gradients(module, 1.0)
    assert a.grad.norm().item() == pytest.approx(1.0, rel=1e-5)
    assert torch.allclose(a.grad, torch.tensor([0.6, 0.8, 0.0]), atol=1e-5)
    assert torch.allclose(b.grad, torch.tensor([0.3, 0.4]))  # below the limit: untouched


def test_schedules():
    assert warmup_cosine(0, 100, 10, 1.0, 0.01) == 0.0
    assert warmup_cosine(5, 100, 10, 1.0, 0.01) == pytest.approx(0.5)
    assert warmup_cosine(10, 100, 10, 1.0, 0.01) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10, 1.0, 0.01) == pytest.approx(0.01 + 0.99 * 0.5)
    assert warmup_cosine(100, 100, 10, 1.0, 0.01) == pytest.approx(0.01)
    assert cosine_momentum(0, 50, 0.996) == pytest.approx(0.996)
    assert cosine_momentum(25, 50, 0.996) == pytest.approx(0.998)
    assert cosine_momentum(50, 50, 0.996) == pytest.approx(1.0)
    assert teacher_temperature(0, 10, 0.04, 0.07) == pytest.approx(0.04)
    assert teacher_temperature(5, 10, 0.04, 0.07) == pytest.approx(0.055)
    assert teacher_temperature(30, 10, 0.04, 0.07) == pytest.approx(0.07)


def test_dino_loss_falls_on_a_fixed_batch():
    torch.manual_seed(0)
    p = get_profile("toy")
    student = DINOModel(vit_from_config(p.model), DINOHead.from_profile(p))
    teacher = DINOModel(vit_from_config(p.model), DINOHead.from_profile(p))
    teacher.load_state_dict(student.state_dict())
    teacher.requires_grad_(False)
    centre = torch.zeros(p.dino_out_dim)
    views = [torch.rand(4, 3, 16, 16, 16) for _ in range(4)]  # 2 global + 2 local, fixed
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        with torch.no_grad():
            t = teacher(torch.cat(views[:2]))
        loss = dino_loss(student(torch.cat(views)), t, centre, 0.1, 0.04)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema_update(teacher, student, 0.99)
        update_centre(centre, t.sum(0), t.shape[0], 0.9)
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


def _sinkhorn_numpy(logits, temp, iterations=3):
    """Sinkhorn-Knopp as SwAV writes it, in float64 NumPy: the independent computation."""
    q = np.exp(logits / temp).T  # K × B
    k, b = q.shape
    q = q / q.sum()
    for _ in range(iterations):
        q = q / q.sum(axis=1, keepdims=True) / k
        q = q / q.sum(axis=0, keepdims=True) / b
    return (q * b).T


def test_sinkhorn_targets_match_numpy_and_spread_the_batch_over_the_prototypes():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(12, 5)) + np.array([3.0, 0, 0, 0, 0])  # every scan leans to prototype 0
    got = sinkhorn_knopp(torch.tensor(logits, dtype=torch.float32), 0.5).numpy()
    want = _sinkhorn_numpy(logits, 0.5)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)  # one distribution per scan
    # the softmax gives prototype 0 most of the batch; Sinkhorn-Knopp brings every prototype near 1/K of it
    soft = torch.softmax(torch.tensor(logits) / 0.5, dim=-1).numpy().mean(0)
    assert soft[0] > 0.8 and np.abs(got.mean(0) - 1 / 5).max() < 0.05
    # ema centring is the softmax of the centred logits; the centre plays no part in Sinkhorn-Knopp
    t, c = torch.tensor(logits, dtype=torch.float32), torch.ones(5)
    torch.testing.assert_close(teacher_targets(t, c, 0.5), torch.softmax((t - c) / 0.5, dim=-1))
    torch.testing.assert_close(teacher_targets(t, c, 0.5, "sinkhorn"), teacher_targets(t, 0 * c, 0.5, "sinkhorn"))


def test_koleo_is_minus_mean_log_nearest_neighbour_distance():
    from scipy.spatial.distance import cdist
    rng = np.random.default_rng(1)
    x = rng.normal(size=(9, 4))
    z = x / np.linalg.norm(x, axis=1, keepdims=True)
    d = cdist(z, z)
    want = -np.mean([np.log(min(d[i, j] for j in range(9) if j != i) + 1e-8) for i in range(9)])
    assert float(koleo_loss(torch.tensor(x, dtype=torch.float32))) == pytest.approx(want, rel=1e-5)
    # spreading the batch lowers it: two clusters of near-copies score higher than spread points
    tight = torch.tensor(np.repeat(z[:2], 4, axis=0) + 1e-3 * rng.normal(size=(8, 4)), dtype=torch.float32)
    assert float(koleo_loss(tight)) > float(koleo_loss(torch.tensor(z[:8], dtype=torch.float32))) + 3
    # a batch of 64 (cdist's matrix-product shortcut starts above 25 rows) with two rows 1e-5 apart: exact
    big = rng.normal(size=(64, 16))
    big[1] = big[0] + 1e-5 * rng.normal(size=16)
    zb = big / np.linalg.norm(big, axis=1, keepdims=True)
    db = cdist(zb, zb) + np.diag(np.full(64, np.inf))
    want = -np.mean(np.log(db.min(axis=1) + 1e-8))
    assert float(koleo_loss(torch.tensor(big, dtype=torch.float32))) == pytest.approx(want, rel=2e-3)


def test_dinov2_options_are_checked_and_recorded_only_when_on():
    with pytest.raises(ValueError, match="centring must be one of"):
        DINOConfig(centring="mean")
    assert "centring" not in DINOConfig().to_dict() and "koleo_weight" not in DINOConfig().to_dict()
    on = DINOConfig(centring="sinkhorn", koleo_weight=0.1).to_dict()
    assert on["centring"] == "sinkhorn" and on["koleo_weight"] == 0.1
    assert DINOConfig(**on) == DINOConfig(centring="sinkhorn", koleo_weight=0.1)   # the record rebuilds it
