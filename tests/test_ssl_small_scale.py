"""Issue 24: schedules in epochs, the VICReg control's loss, health signals and the kNN monitor, each against
an independent computation (NumPy loops, hand-set values)."""
import math

import numpy as np
import pytest
import torch

from fmct_lib.config import get_profile
from fmct_lib.ssl.health import effective_rank, feature_std
from fmct_lib.train.methods import get_method
from fmct_lib.train.methods.vicreg import vicreg_loss
from fmct_lib.train.monitor import knn_scores
from fmct_lib.train.schedules import cosine_momentum, teacher_temperature, warmup_cosine
from fmct_lib.train.trainer import run_config


# ----------------------------------------------------------------------------------------------- schedules
def _values(cfg: dict, step: int) -> dict:
    """Every schedule of a DINO run at ``step``, as the loop and the method compute them."""
    dino = cfg["dino"]
    return {"lr": warmup_cosine(step, cfg["total_steps"], cfg["warmup_steps"], cfg["lr"], cfg["min_lr"]),
            "teacher_temp": teacher_temperature(step, cfg["teacher_temp_warmup_steps"], dino["warmup_teacher_temp"],
                                                dino["teacher_temp"]),
            "momentum": cosine_momentum(step, cfg["total_steps"], dino["momentum_teacher"]),
            "prototypes_frozen": step < cfg["freeze_last_layer_steps"]}


def test_paper_schedules_are_the_papers_epochs_at_any_run_length():
    # paper, Methods: DINO 1,000 epochs of 1,000 steps (64,000 scans, batch 64), warm-up on the first 5 epochs;
    # teacher temperature over 30 epochs and prototypes frozen for 1 (DINO's defaults)
    cfg = run_config("dino", "paper", n_scans=64_000)
    assert (cfg["steps_per_epoch"], cfg["total_steps"]) == (1000, 1_000_000)
    assert (cfg["warmup_steps"], cfg["teacher_temp_warmup_steps"], cfg["freeze_last_layer_steps"]) == (5000, 30_000, 1000)
    v = _values(cfg, 2500)
    assert v["lr"] == pytest.approx(cfg["lr"] / 2) and v["prototypes_frozen"] is False
    assert _values(cfg, 5000)["teacher_temp"] == pytest.approx(0.04 + 0.03 / 6)
    assert _values(cfg, 999)["prototypes_frozen"] and not _values(cfg, 1000)["prototypes_frozen"]
    assert _values(cfg, 30_000)["teacher_temp"] == 0.07 and _values(cfg, 5000)["lr"] == pytest.approx(cfg["lr"])
    half = 5000 + (1_000_000 - 5000) // 2   # half-way down the cosine
    assert _values(cfg, half)["lr"] == pytest.approx((cfg["lr"] + cfg["min_lr"]) / 2)
    assert _values(cfg, 500_000)["momentum"] == pytest.approx(1 - 0.004 / 2)  # follows the global step
    # MAE: 400 epochs, warm-up on the first 5% of steps (paper, Methods)
    mae = run_config("mae", "paper", n_scans=64_000)
    assert (mae["total_steps"], mae["warmup_steps"]) == (400_000, 20_000)
    # a run ended early keeps the periods in steps: 5 epochs of warm-up do not shrink with max_steps
    short = run_config("dino", "paper", n_scans=64_000, max_steps=20_000)
    assert (short["warmup_steps"], short["teacher_temp_warmup_steps"]) == (5000, 20_000)


def test_demo_schedules_follow_the_profile_in_epochs():
    demo = get_profile("demo")
    cfg = run_config("dino", demo, n_scans=7200)               # 450 steps per epoch at batch 16
    spe = cfg["steps_per_epoch"]
    assert spe == 450
    assert cfg["warmup_steps"] == round(demo.pretrain_warmup_epochs * spe)
    opts = demo.pretrain_options["dino"]
    assert cfg["teacher_temp_warmup_steps"] == round(opts["warmup_teacher_temp_epochs"] * spe)
    assert cfg["freeze_last_layer_steps"] == round(opts["freeze_last_layer_epochs"] * spe)
    # an option given by the user overrides the profile's value, the others stay
    mine = run_config("dino", demo, n_scans=7200, options={"freeze_last_layer_epochs": 0})
    assert mine["freeze_last_layer_steps"] == 0 and mine["teacher_temp_warmup_steps"] == cfg["teacher_temp_warmup_steps"]
    # VICReg reads the profile's expander width and the same warm-up
    vic = run_config("vicreg", demo, n_scans=7200)
    assert vic["vicreg"]["expander_dim"] == demo.pretrain_options["vicreg"]["expander_dim"]
    assert vic["warmup_steps"] == cfg["warmup_steps"]


# --------------------------------------------------------------------------------------------------- VICReg
def _vicreg_numpy(a: np.ndarray, b: np.ndarray, lam=25.0, mu=25.0, nu=1.0, gamma=1.0, eps=1e-4) -> float:
    """VICReg, equations (1)–(6) of Bardes et al. 2022, with explicit loops."""
    n, d = a.shape
    inv = sum((a[i, j] - b[i, j]) ** 2 for i in range(n) for j in range(d)) / (n * d)
    var = cov = 0.0
    for z in (a, b):
        mean = z.mean(0)
        for j in range(d):
            s2 = sum((z[i, j] - mean[j]) ** 2 for i in range(n)) / (n - 1)
            var += max(0.0, gamma - math.sqrt(s2 + eps)) / d
        for j in range(d):
            for k in range(d):
                if j != k:
                    c = sum((z[i, j] - mean[j]) * (z[i, k] - mean[k]) for i in range(n)) / (n - 1)
                    cov += c * c / d
    return lam * inv + mu * var + nu * cov


def test_vicreg_loss_matches_a_loop_over_the_formula():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(7, 5)) * np.array([0.2, 1.5, 0.7, 3.0, 0.05])  # some dimensions below the margin
    b = a + 0.3 * rng.normal(size=(7, 5))
    loss, terms = vicreg_loss(torch.tensor(a), torch.tensor(b))
    assert float(loss) == pytest.approx(_vicreg_numpy(a, b), rel=1e-5)
    assert float(vicreg_loss(torch.tensor(a), torch.tensor(b), 1.0, 0.0, 0.0)[0]) == pytest.approx(np.mean((a - b) ** 2))
    # a collapsed batch pays the full variance margin: 2 × (1 − √ε) with μ = 1
    z = torch.ones(6, 4)
    assert vicreg_loss(z, z, 0.0, 1.0, 0.0)[1]["variance"] == pytest.approx(2 * (1 - 1e-2))


def test_vicreg_gradients_reach_the_backbone_and_the_method_is_registered():
    assert get_method("vicreg").name == "vicreg"
    a = torch.randn(8, 6, requires_grad=True)
    loss, _ = vicreg_loss(a, a.detach() + 0.1)
    loss.backward()
    assert a.grad is not None and torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------ health signals
def test_feature_std_and_effective_rank_against_numpy():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(64, 16))
    zn = z / np.linalg.norm(z, axis=1, keepdims=True)
    assert feature_std(torch.tensor(z)) == pytest.approx(zn.std(0, ddof=1).mean() * 4, rel=1e-5)
    s = np.linalg.svd(z, compute_uv=False)
    p = s / s.sum() + 1e-7
    assert effective_rank(torch.tensor(z)) == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-5)
    # collapse: every sample the same vector → std 0, rank 1
    same = torch.tensor(rng.normal(size=(1, 16))).repeat(32, 1)
    assert feature_std(same) == pytest.approx(0, abs=1e-6)
    assert effective_rank(same) == pytest.approx(1.0, abs=1e-3)
    # three orthogonal directions equally used → rank 3
    three = torch.zeros(30, 16)
    for i in range(30):
        three[i, i % 3] = 1.0
    assert effective_rank(three) == pytest.approx(3.0, rel=1e-4)


# -------------------------------------------------------------------------------------------- kNN monitor
def test_knn_scores_match_a_brute_force_vote():
    rng = np.random.default_rng(2)
    train, query = rng.normal(size=(40, 8)), rng.normal(size=(9, 8))
    labels = rng.integers(0, 2, 40)
    got = knn_scores(torch.tensor(train), labels, torch.tensor(query), k=5, temperature=0.1)
    for q, score in zip(query, got):
        sims = [float(q @ t / np.linalg.norm(q) / np.linalg.norm(t)) for t in train]
        top = sorted(range(40), key=lambda i: -sims[i])[:5]
        w = [math.exp(sims[i] / 0.1) for i in top]
        assert score == pytest.approx(sum(wi * labels[i] for wi, i in zip(w, top)) / sum(w), rel=1e-5)


# ------------------------------------------------------------------------------ the loop logs what it watches
def test_vicreg_trains_and_the_loop_logs_health_and_the_monitor(tmp_path):
    import pandas as pd

    from fmct_lib.models.checkpoints import load_checkpoint
    from fmct_lib.train.trainer import pretrain_on
    from _support import InMemoryVolumes

    calls = []

    def monitor(encoder, device):  # records which encoder state it saw; returns a made-up score
        calls.append(sum(float(p.sum()) for p in encoder.parameters()))
        return {"knn_auroc": 0.5 + 0.1 * len(calls)}

    run_dir = pretrain_on(InMemoryVolumes(8, 37), method="vicreg", profile="toy", run_dir=tmp_path / "run",
                          batch_size=4, progress=False, device="cpu", monitor=monitor)
    metrics = pd.read_csv(run_dir / "metrics.csv")
    # step 0 (the random encoder) and the end of each of the 2 epochs of 2 steps
    assert list(metrics["step"]) == [0, 1, 2, 3, 4]
    assert metrics.set_index("step")["knn_auroc"].dropna().to_dict() == pytest.approx({0: 0.6, 2: 0.7, 4: 0.8})
    assert len(set(calls)) == 3  # the encoder changed between the calls
    trained = metrics[metrics["step"] > 0]
    assert trained[["loss", "invariance", "variance", "covariance", "feature_std", "effective_rank"]].notna().all().all()
    encoder, config = load_checkpoint(run_dir / "encoder.safetensors")
    assert config["method"] == "vicreg" and encoder(torch.rand(2, 3, 16, 16, 16)).shape == (2, 48)


# ------------------------------------------------------------------------------------- small local crops
def test_local_crops_at_their_own_size_go_through_one_forward():
    from fmct_lib.data.augment import AugmentConfig, multicrop_views
    from fmct_lib.models.dino_head import DINOHead
    from fmct_lib.models.vit3d import vit_from_config
    from fmct_lib.train.methods.dino import DINOModel

    toy = get_profile("toy").replace(local_input_size=8)
    cfg = AugmentConfig.from_profile(toy)
    canvases = torch.randint(-1000, 1500, (3, toy.canvas, toy.canvas, toy.canvas), dtype=torch.int16)
    views = multicrop_views(canvases, cfg, torch.Generator().manual_seed(0))
    assert [tuple(v.shape) for v in views] == [(3, 3, 16, 16, 16)] * 2 + [(3, 3, 8, 8, 8)] * 3
    torch.manual_seed(0)
    model = DINOModel(vit_from_config(toy.model), DINOHead.from_profile(toy)).eval()
    together = model(views)  # one forward: backbone per size, head once
    separately = torch.cat([model(torch.cat(views[:2])), model(torch.cat(views[2:]))])
    assert together.shape == (15, toy.dino_out_dim) and torch.allclose(together, separately, atol=1e-5)
