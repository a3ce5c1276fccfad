"""Downstream protocols on tiny in-memory volumes (the cache is replaced by a dict of tensors)."""
import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

from fmct_lib import downstream, precision
from fmct_lib.data import inputs
from fmct_lib.downstream import embeddings as embed_module, protocols, reuse as reuse_module, runs as runs_module
from fmct_lib.downstream import histogram
from fmct_lib.downstream.histogram import C_GRID
from fmct_lib.config import ModelConfig, get_profile
from fmct_lib.data.manifest import write_scans
from fmct_lib.downstream import (HParams, ProtocolSkipped, VolumeSource, augment_batch, balanced_draw, fewshot_draw,
                                 fit, predict, run_protocol, run_sweep)
from fmct_lib.downstream.embeddings import embed, read_embeddings, write_embeddings
from fmct_lib.evaluate import auroc
from fmct_lib.models.checkpoints import save_checkpoint
from fmct_lib.models.heads import Classifier, build_head
from fmct_lib.models.vit3d import vit_from_config
from fmct_lib.report.run_records import stopping_table

# the toy profile's geometry (16³ inputs) with a smaller encoder and schedule, to keep these tests fast
TOY = get_profile("toy").replace(
    model=ModelConfig(img_size=16, patch_size=8, embed_dim=24, depth=1, num_heads=2),
    finetune_subset=16, finetune_max_epochs=2, finetune_patience=2,
    scratch_grid={"lr": [1e-3], "weight_decay": [0.05], "optimizer": ["adamw"]})
S = TOY.input_size


def volumes_for(labels, seed):
    """Noise volumes; positives carry a bright cube at a random place (learnable, not trivially linear)."""
    g = torch.Generator().manual_seed(seed)
    x = 0.3 + 0.05 * torch.randn(len(labels), 3, S, S, S, generator=g)
    for i, y in enumerate(labels):
        if y:
            a, b, c = torch.randint(0, S - 6, (3,), generator=g).tolist()
            x[i, :, a:a + 6, b:b + 6, c:c + 6] += 0.6
    return x


def tiny_model(kind="linear"):
    torch.manual_seed(0)
    enc = vit_from_config(TOY.model)
    return Classifier(enc, build_head(kind, enc))


# --------------------------------------------------------------------------------------- samplers
def test_balanced_draw_is_balanced_and_needs_both_classes():
    labels = np.r_[np.ones(20), np.zeros(180)]
    draw = balanced_draw(labels, 4000, np.random.default_rng(0))
    assert len(draw) == 4000 and abs(labels[draw].mean() - 0.5) < 0.03  # 0.5 ± 3.8 sd
    with pytest.raises(ProtocolSkipped, match="no positive"):
        balanced_draw(np.zeros(10), 10, np.random.default_rng(0))


def test_fewshot_draw_k_per_class_without_replacement():
    labels = np.r_[np.ones(10), np.zeros(30)].astype(int)
    pick = fewshot_draw(labels, 8, np.random.default_rng(1))
    assert len(set(pick)) == 16 and labels[pick].sum() == 8
    assert np.array_equal(pick, fewshot_draw(labels, 8, np.random.default_rng(1)))
    assert not np.array_equal(pick, fewshot_draw(labels, 8, np.random.default_rng(2)))
    with pytest.raises(ProtocolSkipped, match="only 10 exist"):
        fewshot_draw(labels, 16, np.random.default_rng(0))


def test_augment_flips_and_shift():
    x = torch.randn(4, 3, 5, 6, 7)
    hp = HParams(max_epochs=1, patience=1, batch_size=4, subset=4, flip_p=1.0, flip_axes=(1,), shift_p=0.0)
    torch.testing.assert_close(augment_batch(x, hp, torch.Generator().manual_seed(0)), x.flip(3))
    hp = HParams(max_epochs=1, patience=1, batch_size=4, subset=4, flip_p=0.0, shift=0.1, shift_p=1.0)
    out = augment_batch(x, hp, torch.Generator().manual_seed(0))
    offset = (out - x).flatten(1)
    assert torch.allclose(offset, offset[:, :1].expand_as(offset), atol=1e-6)  # one offset per volume
    assert (offset.abs() <= 0.1 + 1e-6).all() and (offset.abs() > 0).all()


def test_augment_matches_a_per_volume_loop():
    x = torch.randn(9, 3, 4, 5, 6)
    hp = HParams(max_epochs=1, patience=1, batch_size=9, subset=9, flip_p=0.4, shift=0.2, shift_p=0.5)
    g = torch.Generator().manual_seed(4)
    flips = [torch.rand(9, generator=g) < hp.flip_p for _ in hp.flip_axes]
    apply = torch.rand(9, generator=g) < hp.shift_p
    offset = (torch.rand(9, generator=g) * 2 - 1) * hp.shift * apply
    expected = x.clone()
    for i in range(9):
        for axis, flip in zip(hp.flip_axes, flips):
            if flip[i]:
                expected[i] = expected[i].flip(1 + axis)
        expected[i] += offset[i]
    before = x.clone()
    out = augment_batch(x, hp, torch.Generator().manual_seed(4))
    torch.testing.assert_close(out, expected)
    assert torch.equal(x, before) and sum(f.sum() for f in flips) > 0  # the input batch is left as it was


# ------------------------------------------------------------------------------------------ fit
def test_linear_probe_keeps_the_encoder_and_finetune_changes_it():
    y = np.array([0, 1] * 8)
    src = VolumeSource(volumes_for(y, 0))
    hp = HParams(max_epochs=1, patience=1, batch_size=4, subset=8)
    for protocol, frozen in (("linear", True), ("finetune", False)):
        model = tiny_model()
        before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
        head_before = model.head.linear.weight.clone()
        fit(model, src, y, hp, frozen=frozen, progress=False)
        same = all(torch.equal(before[k], v) for k, v in model.encoder.state_dict().items())
        assert same == frozen, protocol
        assert not torch.equal(head_before, model.head.linear.weight)


class RecordingSource(VolumeSource):
    """A VolumeSource that records which rows each training batch asked for."""

    def __init__(self, data):
        super().__init__(data)
        self.asked = []

    def batches(self, indices, batch_size, device=None):
        self.asked.append([int(i) for i in indices])
        return super().batches(indices, batch_size, device)


@pytest.mark.parametrize("subset", [12, 0])
def test_fewshot_epochs_draw_from_the_k_shot_rows(subset):
    """Few-shot trains with the full-data settings: ``subset`` class-balanced draws per epoch from its 2K
    rows (paper: "the same hyperparameter settings"); ``subset = 0`` passes each row once per epoch."""
    y = np.array([0, 1] * 20)
    shots = np.array([0, 2, 4, 1, 3, 5])  # K = 3: rows 0, 2, 4 negative, 1, 3, 5 positive
    src = RecordingSource(volumes_for(y, 0))
    hp = HParams(max_epochs=3, patience=3, batch_size=4, subset=subset)
    fit(tiny_model(), src, y, hp, frozen=False, train_indices=shots, progress=False)
    rows = np.concatenate(src.asked)
    assert set(rows) <= set(shots)
    if subset:
        assert len(rows) == 3 * subset and y[rows].sum() > 0.25 * len(rows) and (1 - y[rows]).sum() > 0.25 * len(rows)
    else:
        per_epoch = np.split(rows, 3)
        assert all(sorted(e) == sorted(shots) for e in per_epoch)


def test_fit_learns_and_keeps_the_best_validation_epoch():
    y_train, y_val, y_test = np.array([0, 0, 0, 1] * 12), np.array([0, 1] * 8), np.array([0, 1] * 10)
    train, val, test = (VolumeSource(volumes_for(y, s)) for y, s in ((y_train, 1), (y_val, 2), (y_test, 3)))
    model = tiny_model("attentive")
    hp = HParams(max_epochs=6, patience=6, batch_size=8, subset=32, lr_head=1e-2, lr_encoder=1e-3)
    history, stopping = fit(model, train, y_train, hp, frozen=False, val=val, val_labels=y_val, progress=False)
    assert [h["epoch"] for h in history] == list(range(1, 7)) and stopping.reason == "cap"
    best = max(h["val_auroc"] for h in history)
    assert auroc(y_val, predict(model, val, 8)) == pytest.approx(best)  # the kept model is the best epoch
    assert auroc(y_test, predict(model, test, 8)) > 0.8


@pytest.mark.parametrize("scores, patience, expected", [
    # best at epoch 2 (0.6); epochs 3, 4, 5 are not better: with patience 3 it stops after epoch 5
    ([0.5, 0.6, 0.55, 0.58, 0.6, 0.9, 0.9, 0.9], 3, ("rule", 5, 2)),
    # a tie is not an improvement: best stays at epoch 1, stops after epoch 2 with patience 1
    ([0.7, 0.7, 0.8], 1, ("rule", 2, 1)),
    # still improving when the cap (8 epochs) comes: the cap stops it and the last epoch is the best
    ([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], 3, ("cap", 8, 8)),
])
def test_fit_stops_by_the_rule_and_keeps_the_best_state(monkeypatch, scores, patience, expected):
    """The validation AUROCs are scripted (``fit`` scores the model through ``auroc``); the model's state at
    each evaluation is recorded, so the kept state can be checked against the best epoch's. The replay that
    chooses the patience (``tools/convergence_curves.py``) stops where ``fit`` does on the same curve."""
    from fmct_lib.downstream import training as fit_module
    y = np.array([0, 1] * 8)
    model = tiny_model()
    states, script = [], iter(scores)

    def scripted_auroc(labels, probabilities):
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        return next(script)
    monkeypatch.setattr(fit_module, "auroc", scripted_auroc)
    hp = HParams(max_epochs=8, patience=patience, batch_size=4, subset=8)
    history, stopping = fit(model, VolumeSource(volumes_for(y, 0)), y, hp, frozen=False,
                            val=VolumeSource(volumes_for(y, 1)), val_labels=y, progress=False)
    reason, stopped, best = expected
    assert (stopping.reason, stopping.stopped_epoch, stopping.best_epoch) == expected
    assert len(history) == stopped and stopping.stopped_step == stopped * 2 and stopping.best_step == best * 2
    assert stopping.best_val_auroc == scores[best - 1] and [h.get("best", False) for h in history].count(True) >= 1
    assert all(torch.equal(v, states[best - 1][k]) for k, v in model.state_dict().items())
    import runpy
    from pathlib import Path
    replay = runpy.run_path(str(Path(__file__).resolve().parents[1] / "tools" / "convergence_curves.py"))["replay"]
    replayed = replay(scores, patience)
    assert (replayed["reason"], replayed["stopped_epoch"], replayed["kept_epoch"]) == expected
    assert replayed["kept_val_auroc"] == scores[best - 1]


def test_fit_without_a_two_class_validation_split_trains_to_the_cap():
    y = np.array([0, 1] * 8)
    for val, val_labels in ((None, None), (VolumeSource(volumes_for(np.zeros(6), 1)), np.zeros(6, int))):
        history, stopping = fit(tiny_model(), VolumeSource(volumes_for(y, 0)), y,
                                HParams(max_epochs=3, patience=1, batch_size=4, subset=8), frozen=False, val=val,
                                val_labels=val_labels, progress=False)
        assert stopping.reason == "cap: no validation AUROC" and len(history) == 3 and stopping.best_epoch is None
        assert "val_auroc" not in history[-1]


def test_an_epoch_counts_only_the_steps_it_takes():
    """9 draws in batches of 4: the last batch of one is skipped (BatchNorm needs two), so an epoch is 2 steps and
    the schedule's cosine ends at the last step taken."""
    y = np.array([0, 1] * 8)
    history, stopping = fit(tiny_model(), VolumeSource(volumes_for(y, 0)), y,
                            HParams(max_epochs=2, patience=2, batch_size=4, subset=9), frozen=False, progress=False)
    assert stopping.steps_per_epoch == 2 and [h["step"] for h in history] == [2, 4] and stopping.stopped_step == 4
    profile = get_profile("toy").replace(finetune_subset=9, finetune_batch_size=4)
    assert profile.finetune_epoch_steps == 2   # what the profile reports (conclusions, run records) agrees


def test_a_diverging_model_stops_with_its_reason_instead_of_failing():
    """A learning rate far too large makes the predictions NaN; ``roc_auc_score`` would raise on them."""
    y = np.array([0, 1] * 8)
    hp = HParams(max_epochs=4, patience=2, batch_size=4, subset=8, lr_head=1e30, lr_encoder=1e30, optimizer="sgd")
    history, stopping = fit(tiny_model(), VolumeSource(volumes_for(y, 0)), y, hp, frozen=False,
                            val=VolumeSource(volumes_for(y, 1)), val_labels=y, progress=False)
    assert (stopping.reason, stopping.stopped_epoch, stopping.stopped_step) == ("diverged", 1, 2)
    assert stopping.best_epoch is None and stopping.best_val_auroc is None
    assert len(history) == 1 and np.isnan(history[0]["val_auroc"]) and "best" not in history[0]


def test_a_model_that_diverges_later_keeps_its_best_state(monkeypatch):
    """Epoch 1 is scored, epoch 2's predictions are NaN: training stops there and epoch 1's state is kept."""
    from fmct_lib.downstream import training as fit_module
    y = np.array([0, 1] * 8)
    model = tiny_model()
    states, outputs = [], iter([np.linspace(0.1, 0.9, 16), np.full(16, np.nan)])

    def scripted_predict(*args, **kwargs):
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        return next(outputs)
    monkeypatch.setattr(fit_module, "predict", scripted_predict)
    history, stopping = fit(model, VolumeSource(volumes_for(y, 0)), y,
                            HParams(max_epochs=6, patience=3, batch_size=4, subset=8), frozen=False,
                            val=VolumeSource(volumes_for(y, 1)), val_labels=y, progress=False)
    assert (stopping.reason, stopping.stopped_epoch, stopping.best_epoch) == ("diverged", 2, 1)
    assert stopping.best_val_auroc == history[0]["val_auroc"] and np.isnan(history[1]["val_auroc"])
    assert all(torch.equal(v, states[0][k]) for k, v in model.state_dict().items())
    assert not all(torch.equal(v, states[1][k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fit_and_predict_under_a_gpus_autocast(monkeypatch, dtype):
    """The GPU path (``precision.autocast_for`` on CUDA: bf16, or fp16 with a loss scaler) run on the CPU's
    autocast: the forward passes compute in ``dtype``, the weights stay fp32, the model learns as in fp32, and its
    probabilities match an fp32 pass of the same model to the precision of ``dtype``."""
    from fmct_lib.downstream import training as fit_module
    scaled = dtype == torch.float16
    fp32 = precision.autocast_for
    monkeypatch.setattr(precision, "autocast_for", lambda device: (lambda: torch.autocast("cpu", dtype=dtype), scaled))
    scalers = []
    real_scaler = torch.amp.GradScaler

    def recording_scaler(device, enabled):
        scalers.append((device, enabled))
        return real_scaler(device, enabled=enabled)
    monkeypatch.setattr(fit_module.torch.amp, "GradScaler", recording_scaler)
    y_train, y_val, y_test = np.array([0, 0, 0, 1] * 12), np.array([0, 1] * 8), np.array([0, 1] * 10)
    train, val, test = (VolumeSource(volumes_for(y, s)) for y, s in ((y_train, 1), (y_val, 2), (y_test, 3)))
    model = tiny_model("attentive")
    seen = []
    model.head.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    hp = HParams(max_epochs=6, patience=6, batch_size=8, subset=32, lr_head=1e-2, lr_encoder=1e-3)
    history, _ = fit(model, train, y_train, hp, frozen=False, val=val, val_labels=y_val, progress=False)
    assert scalers == [("cpu", scaled)] and set(seen) == {dtype}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(np.isfinite(h["loss"]) for h in history)
    reduced = predict(model, test, 8)
    assert reduced.dtype == np.float64 and auroc(y_test, reduced) > 0.8
    monkeypatch.setattr(precision, "autocast_for", fp32)  # the CPU's own: fp32
    assert np.abs(predict(model, test, 8) - reduced).max() < (1e-2 if dtype == torch.bfloat16 else 1e-3)


def test_autocast_per_device(monkeypatch):
    """fp32 on the CPU; on CUDA bf16 from compute capability 8 (Ampere: A100, H100), else fp16 with a loss scaler
    (V100 7.0, T4 7.5, where bf16 is only emulated although ``is_bf16_supported()`` says yes); the GPU asked
    about is the one whose capability counts."""
    import contextlib
    factory, scaled = precision.autocast_for("cpu")
    assert factory is contextlib.nullcontext and not scaled and precision.precision_name("cpu") == "float32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # emulation counts as support
    capability = {0: (9, 0), 1: (7, 5)}                                         # an H100 and a T4
    monkeypatch.setattr(torch.cuda, "get_device_capability",
                        lambda device=None: capability[torch.device(device).index or 0])
    for device, scaled, name in (("cuda:0", False, "bfloat16 autocast"), ("cuda:1", True, "float16 autocast")):
        assert precision.autocast_for(device)[1] is scaled and precision.precision_name(device) == name


# what FEATURES_VERSION 1's forward pass gives for the weights and input below (fp32, CPU)
FEATURES_PIN = {1: dict(mean=0.03105282, std=0.27221584, first=[-0.19456273, 0.37272096, -0.17137109],
                        last=[0.40645355, -0.08397411, 0.12387179])}


def test_features_version_pins_the_encoders_numerics():
    """The cached features are keyed by ``FEATURES_VERSION``: a change to the ViT's forward pass must bump it (and
    record its numbers here), else features cached by older code would be read back as today's. Fixed weights
    (every parameter drawn from a seeded generator, so the initialisation code plays no part) and a fixed input:
    the tokens must match the version's record to 1e-4 (CPU kernels differ across machines by ~1e-6; a change of
    the forward pass moves them by far more: without the final norm the std is 5.3, not 0.27)."""
    from fmct_lib.downstream.features import FEATURES_VERSION
    from fmct_lib.models.vit3d import VisionTransformer3d
    assert FEATURES_VERSION in FEATURES_PIN, f"record FEATURES_VERSION {FEATURES_VERSION}'s numbers in FEATURES_PIN"
    model = VisionTransformer3d(img_size=24, patch_size=6, embed_dim=48, depth=2, num_heads=4,
                                num_register_tokens=1).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
        tokens = model.forward_features(torch.randn(2, 3, 24, 24, 24, generator=g))
    pin = FEATURES_PIN[FEATURES_VERSION]
    got = dict(mean=tokens.mean().item(), std=tokens.std().item(), first=tokens[0, 0, :3].tolist(),
               last=tokens[1, -1, -3:].tolist())
    assert tokens.shape == (2, 1 + 1 + 64, 48)
    for name, value in pin.items():
        np.testing.assert_allclose(got[name], value, atol=1e-4, err_msg=f"the encoder's forward pass changed ({name}): "
                                   "bump FEATURES_VERSION in fmct_lib/downstream/features.py and record its numbers")


def test_features_under_autocast_are_cached_apart_from_fp32_ones(monkeypatch, tmp_path):
    """Tokens computed in bf16 (a GPU) and in fp32 (a CPU) differ: each is cached under its own key and neither
    is read back for the other."""
    from fmct_lib.downstream import features
    features._HELD.clear()
    encoder = tiny_model().encoder
    source = VolumeSource(volumes_for(np.array([0, 1] * 3), 0), key="six-volumes")
    fp32 = features.encoder_tokens(encoder, "enc", source, 4, cache=tmp_path)
    monkeypatch.setattr(features, "precision_name", lambda device: "bfloat16 autocast")
    monkeypatch.setattr(precision, "autocast_for", lambda device: (lambda: torch.autocast("cpu", dtype=torch.bfloat16), False))
    bf16 = features.encoder_tokens(encoder, "enc", source, 4, cache=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc", "enc@bfloat16"]
    assert bf16.dtype == torch.float32 and 0 < (bf16 - fp32).abs().max() < 0.1 * fp32.abs().max()
    features._HELD.clear()
    assert torch.equal(features.encoder_tokens(encoder, "enc", source, 4, cache=tmp_path), bf16)  # read back
    features._HELD.clear()


# ---------------------------------------------------------------------------------- run_protocol
@pytest.fixture
def toy_world(tmp_path, monkeypatch):
    """A scan table with internal/external sites, volumes in memory, and a toy encoder checkpoint."""
    monkeypatch.setenv("FMCT_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("FMCT_CACHE", str(tmp_path / "cache"))  # no other test's cache of toyset: none is built
    rng = np.random.default_rng(0)
    rows = []
    for site, n in (("internal", 60), ("external", 40)):
        for i in range(n):
            split = ["train"] * 6 + ["val"] * 2 + ["test"] * 2
            rows.append({"scan_id": f"{site[:3]}{i:03d}", "patient_id": f"{site[:3]}{i:03d}", "path": "x.nii.gz",
                         "split": split[i % 10], "manufacturer": ["A", "B"][i % 2], "slice_thickness_mm": 1.0,
                         "spacing": "1,1,1", "kvp": 120, "site": site, "ich": int(rng.random() < 0.4),
                         "bleed_left": int(i % 3 == 0)})
    table = pd.DataFrame(rows)
    table.loc[3, "ich"] = np.nan  # an unknown label
    write_scans(table, "toyset")
    vols = dict(zip(table["scan_id"], volumes_for(table["ich"].fillna(0).to_numpy(), 5)))

    def fake_source(dataset, scans, spec, num_workers=0):
        key = f"{dataset}-" + "-".join(scans["scan_id"])  # what data.inputs.volume_source keys by: these scans
        return VolumeSource(torch.stack([vols[s] for s in scans["scan_id"]]), key=key), scans.reset_index(drop=True)
    for module in (inputs, runs_module, embed_module):
        monkeypatch.setattr(module, "volume_source", fake_source)
    ckpt = save_checkpoint(tmp_path / "runs/pretrain/toydino/encoder.safetensors", vit_from_config(TOY.model),
                           {"model": TOY.model.to_dict()})
    return table, str(ckpt), tmp_path / "runs/downstream"


def test_internal_to_external_run_writes_predictions_and_resumes(toy_world, monkeypatch):
    table, ckpt, root = toy_world
    preds = run_protocol("toyset", "ich", "linear", ckpt, TOY, train_filter={"site": "internal"},
                         eval_filter={"site": "external"}, run_root=root, progress=False)
    expected = table.query("site == 'external' and split == 'test'")
    assert list(preds["scan_id"]) == list(expected["scan_id"])
    assert (preds["label"].to_numpy() == expected["ich"].to_numpy()).all()
    assert set(preds.columns) >= {"scan_id", "task", "protocol", "seed", "k", "probability", "label",
                                  "dataset", "eval_dataset"}
    assert preds["probability"].between(0, 1).all() and (preds["protocol"] == "linear").all()
    assert (preds["eval_filter"] == "site=external").all() and (preds["train_filter"] == "site=internal").all()
    run_dir = next(root.rglob("done")).parent
    assert "toydino" in str(run_dir) and {p.name for p in run_dir.iterdir()} >= {"predictions.csv", "config.json"}
    config = json.loads((run_dir / "config.json").read_text())
    assert config["n_train"] == 35 and config["n_eval"] == 8  # one internal train label is unknown
    # the linear probe is a logistic regression solved to convergence, its C chosen on validation
    assert config["history"] == [] and config["stopping"]["reason"] == "converged (L-BFGS)"
    assert config["choice"]["C"] in protocols.LINEAR_C_GRID and len(config["choice"]["val_auroc"]) == 6
    assert (preds["stop_reason"] == "converged (L-BFGS)").all()

    from fmct_lib.downstream import features
    monkeypatch.setattr(features, "encoder_tokens", lambda *a, **k: pytest.fail("a finished run was trained again"))
    again = run_protocol("toyset", "ich", "linear", ckpt, TOY, train_filter={"site": "internal"},
                         eval_filter={"site": "external"}, run_root=root, progress=False)
    assert np.allclose(again["probability"], preds["probability"])
    with pytest.raises(ValueError, match=r"holds a finished run with other settings \(seed 0 there, 1 here\); "):
        run_protocol("toyset", "ich", "linear", ckpt, TOY, train_filter={"site": "internal"},
                     eval_filter={"site": "external"}, run_dir=run_dir, seed=1, progress=False)
    with pytest.raises(ValueError, match=r"other settings \(hparams.patience 2 there, 5 here\); "):
        run_protocol("toyset", "ich", "linear", ckpt, TOY.replace(finetune_patience=5), run_dir=run_dir,
                     train_filter={"site": "internal"}, eval_filter={"site": "external"}, progress=False)


def test_the_linear_probe_is_scikit_learns_logistic_regression_on_the_cls_token(toy_world, monkeypatch):
    """Predictions of the kept LinearHead equal an independent StandardScaler + LogisticRegression fitted on the
    encoder's cls embeddings with the chosen C; the features are computed once and read back from disk."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from fmct_lib.downstream import features
    table, ckpt, root = toy_world
    preds, model = run_protocol("toyset", "ich", "linear", ckpt, TOY, train_filter={"site": "internal"},
                                run_root=root, progress=False, return_model=True)
    config = json.loads(next(root.rglob("config.json")).read_text())
    encoder = downstream.load_encoder(ckpt).eval()
    rows = lambda split: table[(table.site == "internal") & (table.split == split) & table.ich.notna()]  # noqa: E731
    embed_rows = lambda r: encoder(inputs.volume_source("toyset", r, None)[0].data).detach().double().numpy()  # noqa: E731
    train, test = rows("train"), rows("test")
    scaler = StandardScaler().fit(embed_rows(train))
    reference = LogisticRegression(C=config["choice"]["C"], class_weight="balanced", max_iter=10_000).fit(
        scaler.transform(embed_rows(train)), train["ich"].astype(int))
    expected = reference.predict_proba(scaler.transform(embed_rows(test)))[:, 1]
    np.testing.assert_allclose(preds["probability"].to_numpy(), expected, atol=1e-5)
    assert model.head.linear.weight[0].abs().sum() == 0  # class 0's logit is 0: softmax is the logistic
    # another run on the same encoder and inputs reads the tokens from the cache beside the runs
    features._HELD.clear()
    cached = list((root / "features").rglob("*.safetensors"))
    assert len(cached) == 3  # train, val, test of the internal site
    monkeypatch.setattr(type(encoder), "forward_features", lambda *a: pytest.fail("features computed again"))
    again = run_protocol("toyset", "ich", "attentive", ckpt, TOY, train_filter={"site": "internal"}, run_root=root,
                         progress=False)
    assert len(again) == len(preds)


def test_the_linear_probe_is_scikit_learns_on_features_of_tiny_variance(toy_world, monkeypatch):
    """A cls feature with a standard deviation of ~1e-5 (below the BatchNorm's √eps = 1e-3) carries the label:
    the kept head still gives sklearn's predict_proba, and so does the kept classifier read back."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    table, ckpt, root = toy_world
    dim = TOY.model.embed_dim

    def cls_features(x):
        x = x.double()
        f = 0.2 * (x[:, 0, :4, :4, :6].reshape(len(x), -1)[:, :dim] - 0.3) / 0.05
        f[:, 0] = 1.0 + 3e-6 * (x.mean(dim=(1, 2, 3, 4)) - 0.3) / 0.005
        return f.float()
    encoder_class = type(downstream.load_encoder(ckpt))
    monkeypatch.setattr(encoder_class, "forward_features", lambda self, x: cls_features(x)[:, None].repeat(1, 2, 1))
    monkeypatch.setattr(protocols, "LINEAR_C_GRID", (1.0,))  # weak regularisation: the tiny feature matters
    internal = {"site": "internal"}
    preds = run_protocol("toyset", "ich", "linear", ckpt, TOY, train_filter=internal, run_root=root,
                         progress=False)
    config = json.loads(next(root.rglob("config.json")).read_text())
    rows = lambda split: table[(table.site == "internal") & (table.split == split) & table.ich.notna()]  # noqa: E731
    x = lambda r: cls_features(inputs.volume_source("toyset", r, None)[0].data).double().numpy()  # noqa: E731
    train, test = rows("train"), rows("test")
    scaler = StandardScaler().fit(x(train))
    assert 3e-6 < scaler.scale_[0] < 3e-5
    reference = LogisticRegression(C=config["choice"]["C"], class_weight="balanced", max_iter=10_000).fit(
        scaler.transform(x(train)), train["ich"].astype(int))
    expected = reference.predict_proba(scaler.transform(x(test)))[:, 1]
    np.testing.assert_allclose(preds["probability"].to_numpy(), expected, rtol=0, atol=2e-6)
    assert np.abs(expected - 0.5).max() > 0.1 and abs(reference.coef_[0, 0]) > 0.5  # the tiny feature counts
    # the classifier read back from trained/ (another evaluation loads it) predicts the same
    again = run_protocol("toyset", "ich", "linear", ckpt, TOY, train_filter=internal, eval_split="val",
                         run_root=root, progress=False)
    expected_val = reference.predict_proba(scaler.transform(x(rows("val"))))[:, 1]
    np.testing.assert_allclose(again["probability"].to_numpy(), expected_val, rtol=0, atol=2e-6)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_the_linear_probe_records_per_c_whether_it_converged(toy_world, monkeypatch):
    """With an iteration cap too low for the weakly regularised fits, the run's choice says, per C, whether the
    solver converged, as an independent LogisticRegression with that cap does."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    table, ckpt, root = toy_world
    monkeypatch.setattr(protocols, "LINEAR_MAX_ITER", 8)
    with pytest.warns(UserWarning, match="did not converge in 8 iterations"):
        run_protocol("toyset", "ich", "linear", ckpt, TOY, train_filter={"site": "internal"}, run_root=root,
                     progress=False)
    choice = json.loads(next(root.rglob("config.json")).read_text())["choice"]
    encoder = downstream.load_encoder(ckpt).eval()
    train = table[(table.site == "internal") & (table.split == "train") & table.ich.notna()]
    x = encoder(inputs.volume_source("toyset", train, None)[0].data).detach().double().numpy()
    x = StandardScaler().fit_transform(x)
    expected = {str(c): bool(LogisticRegression(C=c, class_weight="balanced", max_iter=8).fit(
        x, train["ich"].astype(int)).n_iter_.max() < 8) for c in protocols.LINEAR_C_GRID}
    assert choice["converged"] == expected and set(expected.values()) == {True, False}


@pytest.mark.parametrize("protocol", ["linear", "finetune", "scratch"])
def test_external_validation_reuses_the_internal_runs_classifier(toy_world, monkeypatch, tmp_path, protocol):
    """Evaluated elsewhere, a run loads the classifier its training twin kept and predicts as a retrained one."""
    _, ckpt, root = toy_world
    internal = {"site": "internal"}
    run_protocol("toyset", "ich", protocol, ckpt, TOY, train_filter=internal, run_root=root, progress=False)
    kept = list((root / "trained").rglob("model.safetensors"))
    assert len(kept) == 1 and "__" not in str(kept[0].relative_to(root))  # named by the training part only
    from safetensors.torch import load_file
    keys = set(load_file(str(kept[0])))
    assert all(k.startswith("encoder.") or k.startswith("head.") for k in keys) != (protocol == "linear")
    retrained = run_protocol("toyset", "ich", protocol, ckpt, TOY, train_filter=internal,
                             eval_filter={"site": "external"}, run_root=tmp_path / "fresh", progress=False)
    fits, real_fit = [], protocols.fit
    monkeypatch.setattr(protocols, "fit", lambda *a, **k: fits.append(1))
    reused = run_protocol("toyset", "ich", protocol, ckpt, TOY, train_filter=internal,
                          eval_filter={"site": "external"}, run_root=root, progress=False)
    assert not fits and len(reused) == len(retrained) == 8
    np.testing.assert_allclose(reused["probability"], retrained["probability"], rtol=0, atol=1e-6)
    configs = {json.loads(p.read_text())["signature"]["eval_filter"]["site"]: json.loads(p.read_text())
               for p in root.rglob("config.json")}
    assert configs["external"]["history"] == configs["internal"]["history"]
    # the finished internal run gives its classifier back without training
    preds, model = run_protocol("toyset", "ich", protocol, ckpt, TOY, train_filter=internal, run_root=root,
                                progress=False, return_model=True)
    assert not fits and isinstance(model, Classifier)
    # the same weights in another folder of the same name (a moved checkout) reuse the kept classifier ...
    import shutil
    moved = tmp_path / "moved/toydino/encoder.safetensors"
    moved.parent.mkdir(parents=True)
    shutil.copy(ckpt, moved)
    run_protocol("toyset", "ich", protocol, str(moved), TOY, train_filter=internal, eval_split="val", run_root=root,
                 progress=False)
    assert not fits
    assert len(list((root / "trained").rglob("model.safetensors"))) == 1
    # ... other weights in a folder of that name are another encoder: trained and kept apart, never the kept
    # classifier reused (scratch reads no encoder: the same run)
    monkeypatch.setattr(protocols, "fit", real_fit)
    torch.manual_seed(7)
    other = save_checkpoint(tmp_path / "elsewhere/toydino/encoder.safetensors", vit_from_config(TOY.model),
                            {"model": TOY.model.to_dict()})
    run_protocol("toyset", "ich", protocol, str(other), TOY, train_filter=internal, eval_split="val",
                 run_root=root, progress=False)
    assert len(list((root / "trained").rglob("model.safetensors"))) == (1 if protocol == "scratch" else 2)


def test_a_finished_run_whose_evaluation_rows_changed_runs_again(toy_world):
    """A corrected test label and a withdrawn test scan: the finished run is not returned as it was, but run
    again (with a warning saying what changed), and its predictions are those of the current rows."""
    table, _, root = toy_world
    internal = {"site": "internal"}
    before = run_protocol("toyset", "ich", "histogram", None, TOY, train_filter=internal, run_root=root,
                          progress=False)
    assert {"int009", "int019"} <= set(before["scan_id"])
    changed = table.copy()
    changed.loc[changed.scan_id == "int009", "ich"] = 1 - changed.loc[changed.scan_id == "int009", "ich"]
    write_scans(changed[changed.scan_id != "int019"], "toyset")
    with pytest.warns(UserWarning, match=r"changed since this run finished \(1 scan\(s\) removed, 1 label\(s\) "
                                         r"changed\); running it again"):
        after = run_protocol("toyset", "ich", "histogram", None, TOY, train_filter=internal, run_root=root,
                             progress=False)
    current = changed.query("site == 'internal' and split == 'test' and scan_id != 'int019'")
    assert list(after["scan_id"]) == list(current["scan_id"])
    assert (after["label"].to_numpy() == current["ich"].to_numpy(int)).all()
    run_dir = next(root.rglob("done")).parent
    assert list(runs_module.read_predictions(run_dir / "predictions.csv")["scan_id"]) == list(current["scan_id"])
    assert json.loads((run_dir / "config.json").read_text())["n_eval"] == len(current)
    # unchanged since: returned as it is, without a warning about the rows
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = run_protocol("toyset", "ich", "histogram", None, TOY, train_filter=internal, run_root=root,
                             progress=False)
    assert not [w for w in caught if "changed since this run finished" in str(w.message)]
    np.testing.assert_array_equal(again["probability"], after["probability"])
    # a scan added to the test split is a change too
    write_scans(changed, "toyset")
    with pytest.warns(UserWarning, match=r"1 scan\(s\) added"):
        run_protocol("toyset", "ich", "histogram", None, TOY, train_filter=internal, run_root=root, progress=False)


def test_a_run_whose_training_labels_changed_is_trained_again_with_its_kept_classifier(toy_world):
    """Six training labels corrected: neither the finished run nor its kept classifier (``trained/``) is reused;
    both are trained again on today's rows, with warnings saying why."""
    from fmct_lib.data.manifest import load_scans
    _, ckpt, root = toy_world
    internal = {"site": "internal"}
    original = load_scans("toyset")
    before = run_protocol("toyset", "ich", "linear", ckpt, TOY, train_filter=internal, run_root=root, progress=False)
    changed = original.copy()
    flip = changed.scan_id.isin(changed.query("site == 'internal' and split == 'train'").scan_id.iloc[:6])
    changed.loc[flip, "ich"] = 1 - changed.loc[flip, "ich"]
    write_scans(changed, "toyset")
    try:
        with pytest.warns(UserWarning) as caught:
            after = run_protocol("toyset", "ich", "linear", ckpt, TOY, train_filter=internal, run_root=root,
                                 progress=False)
        said = " ".join(str(w.message) for w in caught)
        assert "training or validation rows or labels changed" in said and "training it again" in said
        assert not np.allclose(after["probability"], before["probability"])   # a new fit, not the kept one
        again = run_protocol("toyset", "ich", "linear", ckpt, TOY, train_filter=internal, run_root=root,
                             progress=False)
        np.testing.assert_array_equal(again["probability"], after["probability"])   # now reused as it is
    finally:
        write_scans(original, "toyset")


def test_a_run_made_from_other_volumes_or_features_is_not_reused(toy_world, monkeypatch):
    """An audit: a volume re-ingested under its scan id (the cache's index then records its new version) and a new
    version of the frozen features' numerics returned the finished run (and its kept classifier) as it was. Each
    is now run (and trained) again, with a warning saying what changed; unchanged, the run is reused as it is. A
    run computed in another precision (a GPU's bf16) is reused: it is what that run computed, and says so."""
    import warnings

    from fmct_lib.data.cache import INDEX_COLUMNS, cache_dir
    from fmct_lib.data.manifest import load_scans
    from fmct_lib.data.preprocess import paper_spec
    _, ckpt, root = toy_world
    internal = {"site": "internal"}
    table = load_scans("toyset")
    index = pd.DataFrame({"scan_id": table["scan_id"], "file": "x.npy", "shape": "1", "affine": "1",
                          "volume_stat": "100:1"})[INDEX_COLUMNS]  # as `fmct cache` writes it (the inputs are faked)
    index_csv = cache_dir("toyset", paper_spec(TOY)) / "index.csv"
    index_csv.parent.mkdir(parents=True)

    def cache_records(scan_id, version):  # what `fmct cache` records after a volume is re-ingested under scan_id
        index.loc[index.scan_id == scan_id, "volume_stat"] = version
        index.to_csv(index_csv, index=False)

    def run():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run_protocol("toyset", "ich", "linear", ckpt, TOY, train_filter=internal, run_root=root, progress=False)
        return " ".join(str(w.message) for w in caught if "changed since" in str(w.message)
                        or "training it again" in str(w.message))

    index.to_csv(index_csv, index=False)
    assert run() == ""
    run_dir = next(root.rglob("done")).parent
    kept = next((root / "trained").rglob("model.safetensors"))
    assert run() == ""  # nothing changed: reused, nothing said
    cache_records(table.query("site == 'internal' and split == 'test'").scan_id.iloc[0], "200:2")
    said = run()
    assert "changed since this run finished (evaluation volumes re-ingested since)" in said
    assert "training it again" not in said  # its classifier's volumes are as they were: kept
    cache_records(table.query("site == 'internal' and split == 'train'").scan_id.iloc[0], "200:2")
    before = kept.stat().st_mtime_ns
    said = run()
    assert "(training or validation volumes re-ingested since)" in said
    assert f"{kept}: trained on training or validation volumes re-ingested since; training it again" in said
    assert kept.stat().st_mtime_ns != before and run() == ""
    config = json.loads((run_dir / "config.json").read_text())
    assert config["reuse_record"]["precision"] == "float32"
    config["reuse_record"]["precision"] = "bfloat16 autocast"  # as a GPU's run records it
    (run_dir / "config.json").write_text(json.dumps(config))
    assert run() == ""  # reused: what that run computed, its config.json says in which precision
    monkeypatch.setattr(reuse_module, "FEATURES_VERSION", reuse_module.FEATURES_VERSION + 1)
    said = run()
    assert f"frozen features of numerics version {reuse_module.FEATURES_VERSION - 1}, " in said
    assert "training it again" in said  # the kept head was fit on the old features
    index.drop(columns="volume_stat").to_csv(index_csv, index=False)  # an older cache, without versions
    assert run() == ""  # not judged on them


def test_a_stale_run_that_fails_to_run_again_keeps_its_finished_predictions(toy_world, monkeypatch):
    """A review: a finished run lost its ``done`` marker before running again, so a failure (data away, a crash)
    left neither the old run nor a new one. It is now unmarked only when its new predictions are written, or when
    today's rows cannot make the run at all (``ProtocolSkipped``: the old predictions stayed marked finished, read
    as this run's by anyone looking in ``runs/``, and every call warned and was skipped again)."""
    _, ckpt, root = toy_world
    kw = dict(train_filter={"site": "internal"}, run_root=root, progress=False)
    run_protocol("toyset", "ich", "linear", ckpt, TOY, **kw)
    run_dir = next(root.rglob("done")).parent
    before = (run_dir / "predictions.csv").read_text()
    monkeypatch.setattr(reuse_module, "FEATURES_VERSION", reuse_module.FEATURES_VERSION + 1)  # stale now

    def fails(*args, **kwargs):
        raise RuntimeError("the data is away")
    monkeypatch.setattr(runs_module, "_training_job", fails)
    with pytest.warns(UserWarning, match="changed since this run finished"), pytest.raises(RuntimeError, match="away"):
        run_protocol("toyset", "ich", "linear", ckpt, TOY, **kw)
    assert (run_dir / "done").exists() and (run_dir / "predictions.csv").read_text() == before
    # today's rows cannot make it at all (one class left): the old run is no longer this run, and is not returned

    def skipped(*args, **kwargs):
        raise ProtocolSkipped("no positive 'ich' scans left")
    monkeypatch.setattr(runs_module, "_training_job", skipped)
    for _ in range(2):  # the second call runs it as a run never made, not as a finished one gone stale
        with pytest.raises(ProtocolSkipped, match="no positive"):
            run_protocol("toyset", "ich", "linear", ckpt, TOY, **kw)
        assert not (run_dir / "done").exists()


def test_a_scratch_run_of_a_profile_whose_model_changed_is_trained_again(toy_world, monkeypatch):
    """An audit: a scratch run is named by its profile, so after the library changed the profile's model the
    finished run and its kept classifier were reused. The architecture is recorded and compared."""
    import warnings

    from fmct_lib import config
    _, _, root = toy_world
    monkeypatch.setitem(config.PROFILES, "toy", TOY)
    kw = dict(train_filter={"site": "internal"}, run_root=root, progress=False)
    before = run_protocol("toyset", "ich", "scratch", None, "toy", **kw)
    wider = TOY.replace(model=ModelConfig(img_size=16, patch_size=8, embed_dim=36, depth=1, num_heads=2))
    monkeypatch.setitem(config.PROFILES, "toy", wider)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        after = run_protocol("toyset", "ich", "scratch", None, "toy", **kw)
    said = " ".join(str(w.message) for w in caught)
    assert "changed since this run finished (a scratch model of another architecture than the profile's now)" in said
    assert "training it again" in said
    assert not np.allclose(after["probability"], before["probability"])
    assert len(list(root.rglob("done"))) == 1  # the same run, made again in its directory


def test_a_finished_kshot_run_whose_draw_changed_runs_again(toy_world):
    """The same training rows in another order draw other K shots from the same seed: the rows' digest cannot see
    it, the recorded draw can. The finished run is run again on today's draw, with a warning; unchanged, reused."""
    from fmct_lib.data.manifest import load_scans
    _, _, root = toy_world
    internal = {"site": "internal"}
    original = load_scans("toyset")
    run_protocol("toyset", "ich", "histogram", None, TOY, train_filter=internal, k_shot=3, run_root=root,
                 progress=False)
    run_dir = next(p.parent for p in root.rglob("done") if json.loads((p.parent / "config.json").read_text())
                   ["signature"]["k"] == 3)
    before = json.loads((run_dir / "config.json").read_text())["train_scan_ids"]
    write_scans(original.iloc[::-1], "toyset")
    try:
        with pytest.warns(UserWarning, match=r"the K-shot draw from today's training rows differs in \d+ scan"):
            run_protocol("toyset", "ich", "histogram", None, TOY, train_filter=internal, k_shot=3, run_root=root,
                         progress=False)
        after = json.loads((run_dir / "config.json").read_text())["train_scan_ids"]
        train = original.iloc[::-1].query("site == 'internal' and split == 'train'").reset_index(drop=True)
        drawn = fewshot_draw(train["ich"].to_numpy(), 3, np.random.default_rng(0))  # an independent redraw
        assert after == list(train["scan_id"].iloc[drawn]) and set(after) != set(before)
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run_protocol("toyset", "ich", "histogram", None, TOY, train_filter=internal, k_shot=3, run_root=root,
                         progress=False)
        assert not [w for w in caught if "K-shot draw" in str(w.message)]
    finally:
        write_scans(original, "toyset")


def test_fewshot_runs_keep_no_classifier(toy_world):
    _, ckpt, root = toy_world
    run_protocol("toyset", "ich", "fewshot", ckpt, TOY, train_filter={"site": "internal"}, k_shot=3,
                 run_root=root, progress=False)
    assert not (root / "trained").exists()


def test_in_domain_default_eval_filter_and_fewshot(toy_world):
    table, ckpt, root = toy_world
    preds = run_protocol("toyset", "ich", "fewshot", ckpt, TOY, train_filter={"site": "external"}, k_shot=3,
                         seed=2, run_root=root, progress=False)
    assert set(preds["scan_id"]) == set(table.query("site == 'external' and split == 'test'")["scan_id"])
    assert (preds["protocol"] == "finetune").all() and (preds["k"] == 3).all()
    config = json.loads(next(root.rglob("config.json")).read_text())
    picked = table.set_index("scan_id").loc[config["train_scan_ids"]]
    assert len(picked) == 6 and picked["ich"].sum() == 3 and (picked["site"] == "external").all()
    assert (picked["split"] == "train").all()


def test_scratch_sweep_records_the_choice(toy_world):
    _, _, root = toy_world
    grid = {"lr": [1e-3, 1e-4], "weight_decay": [0.05], "optimizer": ["sgd"]}
    profile = TOY.replace(scratch_grid=grid)
    preds = run_protocol("toyset", "bleed_left", "scratch", None, profile, run_root=root, progress=False)
    config = json.loads(next(root.rglob("config.json")).read_text())
    assert len(config["scratch_grid"]) == 2
    best = max(config["scratch_grid"], key=lambda r: r["val_auroc"])
    assert config["choice"] == {k: best[k] for k in grid}
    assert config["signature"]["hparams"]["flip_axes"] == [1, 2]  # no left-right flips for a lateral task
    assert (preds["task"] == "bleed_left").all()
    # another grid is another run, never the finished one above
    other = TOY.replace(scratch_grid={**grid, "lr": [1e-2]})
    run_protocol("toyset", "bleed_left", "scratch", None, other, run_root=root, progress=False)
    choices = [json.loads(p.read_text())["choice"]["lr"] for p in root.rglob("config.json")]
    assert sorted(choices) in ([1e-4, 1e-2], [1e-3, 1e-2])


def test_a_scratch_profile_with_another_architecture_is_another_run(toy_world, monkeypatch):
    """``profile.replace(model=…)`` under the same name trains its own scratch run (never the finished one of the
    named profile's architecture); a run with the named profile's own architecture keeps its signature."""
    from fmct_lib import config as config_module
    _, _, root = toy_world
    monkeypatch.setitem(config_module.PROFILES, "toy", TOY)  # here TOY is the toy profile
    wider = TOY.replace(model=ModelConfig(img_size=16, patch_size=8, embed_dim=36, depth=1, num_heads=2))
    first = run_protocol("toyset", "ich", "scratch", None, TOY, run_root=root, progress=False)
    (own,) = [p.parent for p in root.rglob("done")]
    assert "model" not in json.loads((own / "config.json").read_text())["signature"]
    preds, model = run_protocol("toyset", "ich", "scratch", None, wider, run_root=root, progress=False,
                                return_model=True)
    assert model.encoder.config.embed_dim == 36 and not np.allclose(preds["probability"], first["probability"])
    (other,) = [p.parent for p in root.rglob("done") if p.parent != own]
    assert json.loads((other / "config.json").read_text())["signature"]["model"]["embed_dim"] == 36
    assert len(list((root / "trained").rglob("model.safetensors"))) == 2
    _, again = run_protocol("toyset", "ich", "scratch", None, wider, run_root=root, progress=False,
                            return_model=True)
    assert again.encoder.config.embed_dim == 36


def test_the_paper_profiles_scratch_grid_is_the_papers_and_every_optimiser_builds():
    """Methods: lr {1e-3, 1e-4, 1e-5}, weight decay {0.01, 0.05, 1e-4, 1e-5}, optimizer {SGD, Adam, AdamW} (its grid
    over epochs is the convergence rule here); the small profiles keep their one point."""
    from fmct_lib.downstream.training import _optimizer
    grid = get_profile("paper").scratch_grid
    assert {k: sorted(v) for k, v in grid.items()} == {
        "lr": [1e-5, 1e-4, 1e-3], "weight_decay": [1e-5, 1e-4, 0.01, 0.05], "optimizer": ["adam", "adamw", "sgd"]}
    for name in grid["optimizer"]:
        hp = HParams(max_epochs=1, patience=1, batch_size=4, subset=4, optimizer=name, weight_decay=1e-4)
        optimiser = _optimizer(tiny_model(), hp, frozen=False)
        assert type(optimiser).__name__.lower() == name and optimiser.defaults["weight_decay"] == 1e-4
    for small in ("demo", "toy"):
        assert get_profile(small).scratch_grid == {"lr": [1e-3], "weight_decay": [0.05], "optimizer": ["adamw"]}


def test_a_scratch_grid_point_that_diverges_is_recorded_and_never_chosen(toy_world):
    _, _, root = toy_world
    grid = {"lr": [1e30, 1e-3], "weight_decay": [0.05], "optimizer": ["sgd"]}
    preds = run_protocol("toyset", "ich", "scratch", None, TOY.replace(scratch_grid=grid), run_root=root,
                         progress=False)
    config = json.loads(next(root.rglob("config.json")).read_text())
    diverged, other = config["scratch_grid"]
    assert diverged["lr"] == 1e30 and diverged["stop_reason"] == "diverged" and np.isnan(diverged["val_auroc"])
    assert other["stop_reason"] != "diverged" and config["choice"]["lr"] == 1e-3
    assert preds["probability"].notna().all()


def test_every_model_stops_by_one_rule_recorded_in_its_run(toy_world):
    """Scratch and fine-tuned models train by the same rule; a changed rule is a run of its own."""
    _, ckpt, root = toy_world
    assert get_profile("demo").finetune_epoch_steps == 800 // 16 and get_profile("paper").finetune_epoch_steps == 313
    patient = TOY.replace(finetune_max_epochs=4, finetune_patience=1)
    for protocol in ("scratch", "finetune"):
        run_protocol("toyset", "ich", protocol, ckpt, TOY, run_root=root, progress=False)
        preds = run_protocol("toyset", "ich", protocol, ckpt, patient, run_root=root, progress=False)
        assert preds["stopped_step"].nunique() == 1 and preds["stop_reason"].iloc[0] in ("rule", "cap")
    stops = {}
    for path in root.rglob("config.json"):
        config = json.loads(path.read_text())
        s = config["stopping"]
        assert s["stopped_epoch"] == len(config["history"]) and s["stopped_step"] == s["stopped_epoch"] * 4
        assert s["best_val_auroc"] == max(h["val_auroc"] for h in config["history"])
        assert (config["device"], config["precision"]) == ("cpu", "float32")  # what it computed in
        stops[config["signature"]["protocol"], config["signature"]["hparams"]["patience"]] = s
    assert sorted(stops) == [("finetune", 1), ("finetune", 2), ("scratch", 1), ("scratch", 2)]
    for protocol in ("finetune", "scratch"):  # patience 1: stops one epoch after its best, or at the cap of 4
        s = stops[protocol, 1]
        assert (s["reason"], s["stopped_epoch"]) in (("rule", s["best_epoch"] + 1), ("cap", 4))


def test_sweep_expands_fewshot_resumes_and_records_skips(toy_world, monkeypatch):
    _, ckpt, root = toy_world
    with pytest.warns(UserWarning, match="K=50"):
        result = run_sweep("toyset", ["ich"], ["fewshot", "linear"], ckpt, TOY, shots=(2, 50), resamples=2,
                           train_filter={"site": "internal"}, run_root=root, progress=False)
    runs = result.groupby(["protocol", "k", "seed"], dropna=False).size()
    assert len(runs) == 4  # finetune k=2 × 2 seeds, finetune all data, linear
    assert set(result.loc[result["k"].notna(), "seed"]) == {0, 1}
    assert [s["k"] for s in result.attrs["skipped"]] == [50, 50]
    seeded = run_sweep("toyset", ["ich"], ["fewshot", "linear"], ckpt, TOY, shots=(2,), resamples=1, n_seeds=2,
                       train_filter={"site": "internal"}, run_root=root, progress=False)
    runs = seeded.groupby(["protocol", "k", "seed"], dropna=False).size().index.tolist()
    assert sorted(runs, key=str) == sorted([("finetune", 2, 0), ("finetune", pd.NA, 0), ("finetune", pd.NA, 1),
                                            ("linear", pd.NA, 0), ("linear", pd.NA, 1)], key=str)
    monkeypatch.setattr(protocols, "fit", lambda *a, **k: pytest.fail("a finished run was trained again"))
    with pytest.warns(UserWarning):
        again = run_sweep("toyset", ["ich"], ["fewshot", "linear"], ckpt, TOY, shots=(2, 50), resamples=2,
                          train_filter={"site": "internal"}, run_root=root, progress=False)
    pd.testing.assert_frame_equal(again, result)


@pytest.fixture()
def cached_cohort(tmp_path, monkeypatch):
    """A small synthetic cohort on disk with its cache (what worker processes read: no in-memory volumes)."""
    from fmct_lib.data.cache import build_cache
    from fmct_lib.data.preprocess import paper_spec
    from fmct_lib.data.synthetic import generate_cohort
    for var, sub in (("FMCT_DATA", "data"), ("FMCT_CACHE", "cache"), ("FMCT_RUNS", "runs")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    prevalence = {k: 0.0 for k in ("tumor", "hydrocephalus", "edema", "adrd", "iph", "ivh", "sdh", "edh", "sah",
                                   "fracture")}
    table = generate_cohort("toy", seed=0, workers=1, prevalence={**prevalence, "iph": 0.4}, n_internal=60,
                            n_external=1, n_pretrain=0)
    build_cache("synthetic", paper_spec("toy"), workers=1)
    ckpt = save_checkpoint(tmp_path / "runs/pretrain/toydino/encoder.safetensors", vit_from_config(TOY.model),
                           {"model": TOY.model.to_dict()})
    return table, str(ckpt)


@pytest.mark.usefixtures("one_thread")  # here and in each worker: the same kernels, so the same numbers
def test_a_sweep_in_worker_processes_gives_what_one_process_gives(cached_cohort, tmp_path):
    """The trained runs go to 2 spawned processes (one thread each) and the frozen ones stay here: the same
    predictions in the same order as the whole sweep in this process, and the same skipped runs."""
    _, ckpt = cached_cohort
    args = dict(shots=(2, 50), resamples=1, n_seeds=2, train_filter={"site": "internal"}, eval_split="val",
                progress=False)  # the validation split: 5 scans, 2 positive (the test split is 3 positives)
    sweeps = {}
    for workers in (1, 2):
        with pytest.warns(UserWarning, match="K=50"):
            sweeps[workers] = run_sweep("synthetic", ["ich"], ["fewshot", "scratch", "linear"], ckpt, TOY,
                                        workers=workers, run_root=tmp_path / f"w{workers}", **args)
    alone, pooled = sweeps[1], sweeps[2]
    assert alone.groupby(["protocol", "k", "seed"], dropna=False).ngroups == 7  # K=2, all data ×2, scratch ×2, linear ×2
    assert pooled.attrs["skipped"] == alone.attrs["skipped"] and len(alone.attrs["skipped"]) == 1
    pd.testing.assert_frame_equal(pooled.drop(columns="probability"), alone.drop(columns="probability"))
    np.testing.assert_allclose(pooled["probability"], alone["probability"], rtol=0, atol=1e-5)
    assert len(list((tmp_path / "w2").rglob("done"))) == len(list((tmp_path / "w1").rglob("done"))) == 7


def test_bad_requests_fail_clearly(toy_world):
    _, ckpt, root = toy_world
    with pytest.raises(ValueError, match="needs a pretrained encoder"):
        run_protocol("toyset", "ich", "finetune", None, TOY, run_root=root)
    with pytest.raises(ValueError, match="unknown protocol"):
        run_protocol("toyset", "ich", "knn", ckpt, TOY, run_root=root)
    with pytest.raises(ProtocolSkipped, match="no label column"):
        run_protocol("toyset", "tumor", "linear", ckpt, TOY, run_root=root)
    with pytest.raises(ValueError, match="filter column"):
        run_protocol("toyset", "ich", "linear", ckpt, TOY, train_filter={"hospital": "x"}, run_root=root)
    # a value no row has (a typo): it ended in "nothing could be evaluated" or in torch.cat (an audit of the CLI)
    with pytest.raises(ValueError, match=r"toyset train: filter site=internl matches no row \(its values: external, "
                                         r"internal\)"):
        run_protocol("toyset", "ich", "linear", ckpt, TOY, train_filter={"site": ["internal", "internl"]},
                     run_root=root)
    # filters combine in any order: a value of the table that an earlier column's filter removed is no typo (a
    # review: site=internal then manufacturer=GE+Siemens was refused, Siemens being external only)
    from fmct_lib.data.inputs import select_rows
    table = pd.DataFrame({"site": ["internal", "internal", "external", "external"],
                          "manufacturer": ["GE", "GE", "GE", "Siemens"], "split": "train"})
    for filt in ({"site": "internal", "manufacturer": ["GE", "Siemens"]},
                 {"manufacturer": ["GE", "Siemens"], "site": "internal"}):
        assert len(select_rows(table, filt, None, None, "t")) == 2
    # K = 0 trained on all the data in the all-data run's folder, recorded as k 0, and barred the real run after it
    for k in (0, -3, 2.5):
        with pytest.raises(ValueError, match=rf"k_shot {k!r}: a whole number of at least 1"):
            run_protocol("toyset", "ich", "fewshot", ckpt, TOY, k_shot=k, run_root=root)
    demo = get_profile("demo")  # a 32³ profile cannot feed the 16³ toy encoder
    with pytest.raises(ValueError, match="16³ inputs"):
        run_protocol("toyset", "ich", "linear", ckpt, demo, run_root=root, progress=False)


def test_embed_table_and_round_trips(toy_world, tmp_path):
    table, ckpt, _ = toy_world
    emb = embed("toyset", ckpt, TOY, split="test", progress=False)
    test = table.query("split == 'test'")
    assert list(emb["scan_id"]) == list(test["scan_id"])
    assert {"manufacturer", "slice_thickness_mm", "kvp", "site", "ich", "bleed_left"} <= set(emb.columns)
    vec = emb[[f"e{i}" for i in range(TOY.model.embed_dim)]].to_numpy()
    enc = downstream.load_encoder(ckpt).eval()
    source, _ = inputs.volume_source("toyset", test, None)
    with torch.no_grad():
        direct = enc(next(source.batches(range(len(test)), len(test)))).numpy()
    np.testing.assert_allclose(vec, direct, atol=1e-5)
    for suffix in (".csv", ".npz"):
        back = read_embeddings(write_embeddings(emb, tmp_path / f"emb{suffix}"))
        np.testing.assert_allclose(back[[f"e{i}" for i in range(vec.shape[1])]].to_numpy(), vec, atol=1e-6)
        assert list(back["scan_id"].astype(str)) == list(emb["scan_id"])
        assert np.allclose(back["ich"].astype(float), emb["ich"].astype(float), equal_nan=True)
    with pytest.raises(ValueError, match=".csv or .npz"):
        write_embeddings(emb, tmp_path / "emb.parquet")
    # an encoder of another input size: refused naming both sizes (a "not divisible by the patch size" deep inside)
    with pytest.raises(ValueError, match=r"encoder.safetensors: takes 16³ inputs, but the paper preprocessing of "
                                         r"profile 'demo' makes 32³ ones"):
        embed("toyset", ckpt, get_profile("demo"), split="test", progress=False)


def test_command_line_finetune_and_embed(toy_world, tmp_path, capsys):
    from fmct_lib.cli import main
    _, ckpt, root = toy_world
    out = tmp_path / "not_yet" / "preds.csv"  # its folder is made (the sweep used to fail after training)
    code = main(["finetune", "--dataset", "toyset", "--task", "ich", "--protocol", "linear", "--encoder", ckpt,
                 "--profile", "toy", "--max-epochs", "1", "--train-filter", "site=internal", "--eval-filter",
                 "site=external", "--run-root", str(root), "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and "AUROC" in printed and "macro" in printed
    preds = pd.read_csv(out)
    assert len(preds) == 8 and (preds["eval_filter"] == "site=external").all()
    assert json.loads(next(root.rglob("config.json")).read_text())["signature"]["hparams"]["max_epochs"] == 1
    assert main(["embed", "--dataset", "toyset", "--encoder", ckpt, "--profile", "toy", "--split", "val",
                 "--out", str(tmp_path / "e.npz")]) == 0
    written = read_embeddings(tmp_path / "e.npz")
    assert len(written) == 20 and (written["split"] == "val").all() and written["scan_id"].is_unique
    # the file holds what the encoder gives those scans (the library's embed, in the same order), to float32
    direct = embed("toyset", ckpt, "toy", split="val", progress=False)
    vectors = [c for c in direct.columns if c.startswith("e") and c[1:].isdigit()]
    from fmct_lib.models.checkpoints import load_checkpoint
    assert list(written["scan_id"]) == list(direct["scan_id"]) and len(vectors) == load_checkpoint(ckpt)[0].embed_dim
    np.testing.assert_allclose(written[vectors].to_numpy(), direct[vectors].to_numpy(), rtol=1e-6, atol=1e-6)
    assert written[vectors].std(axis=0).gt(0).any()   # scans differ: not one constant vector
    with pytest.raises(SystemExit):
        main(["finetune", "--task", "ich", "--protocol", "knn"])
    capsys.readouterr()
    # what the user gave and cannot be used: one line on stderr, exit 2, nothing computed
    demo = save_checkpoint(tmp_path / "demo.safetensors", vit_from_config(get_profile("demo").model),
                           {"model": get_profile("demo").model.to_dict()})
    refused = {
        "dataset not ingested": ["finetune", "--dataset", "nosuch", "--task", "ich", "--protocol", "linear",
                                 "--encoder", ckpt, "--profile", "toy", "--run-root", str(root)],
        "unknown table format": ["embed", "--dataset", "toyset", "--encoder", ckpt, "--profile", "toy",
                                 "--out", str(tmp_path / "e.parquet")],
        "encoder of another input size": ["embed", "--dataset", "toyset", "--encoder", str(demo), "--profile", "toy",
                                          "--out", str(tmp_path / "e2.npz")],
        "filter without =": ["finetune", "--dataset", "toyset", "--task", "ich", "--protocol", "linear",
                             "--encoder", ckpt, "--profile", "toy", "--train-filter", "siteinternal",
                             "--run-root", str(root)],
        # an audit's: each ran (exit 1 "nothing could be evaluated", a torch traceback) or trained first
        "no task": ["finetune", "--dataset", "toyset", "--task", ",", "--protocol", "linear", "--encoder", ckpt,
                    "--profile", "toy", "--run-root", str(root)],
        "no such split": ["finetune", "--dataset", "toyset", "--task", "ich", "--protocol", "linear", "--encoder",
                          ckpt, "--profile", "toy", "--eval-split", "tset", "--run-root", str(root)],
        "no such device": ["finetune", "--dataset", "toyset", "--task", "ich", "--protocol", "linear", "--encoder",
                           ckpt, "--profile", "toy", "--device", "cuad", "--run-root", str(root)],
        "filter value no row has": ["embed", "--dataset", "toyset", "--encoder", ckpt, "--profile", "toy",
                                    "--filter", "site=internl", "--out", str(tmp_path / "e3.npz")],
        "embed split": ["embed", "--dataset", "toyset", "--encoder", ckpt, "--profile", "toy", "--split", "tset",
                        "--out", str(tmp_path / "e4.npz")],
        "embed device": ["embed", "--dataset", "toyset", "--encoder", ckpt, "--profile", "toy", "--device", "cuad",
                         "--out", str(tmp_path / "e5.npz")],
        "out is a folder": ["finetune", "--dataset", "toyset", "--task", "ich", "--protocol", "linear", "--encoder",
                            ckpt, "--profile", "toy", "--out", str(tmp_path), "--run-root", str(root)],
        "out under a file": ["finetune", "--dataset", "toyset", "--task", "ich", "--protocol", "linear", "--encoder",
                             ckpt, "--profile", "toy", "--out", str(out / "p.csv"), "--run-root", str(root)],
        "pretrain device": ["pretrain", "--method", "dino", "--dataset", "toyset", "--profile", "toy", "--device",
                            "cuad"],
    }
    said = {}
    for case, argv in refused.items():
        assert main(argv) == 2, case
        said[case] = capsys.readouterr().err
        assert said[case].startswith(f"fmct {argv[0]}: error: ") and said[case].count("\n") == 1, case
    assert "'nosuch'" in said["dataset not ingested"] and "siteinternal" in said["filter without ="]
    assert "32³ inputs" in said["encoder of another input size"]
    assert said["no such split"].endswith("--eval-split 'tset' is not a split of 'toyset' (its splits: test, train, "
                                          "val)\n") and "device 'cuad'" in said["no such device"]
    assert "filter site=internl matches no row" in said["filter value no row has"]
    assert "a folder; name the CSV file" in said["out is a folder"]
    assert "its folder cannot be made" in said["out under a file"] and "device 'cuad'" in said["pretrain device"]
    for argv in (["--shots", "0"], ["--shots", "2,-1"], ["--seed", "-1"]):  # usage errors of argparse: exit 2
        with pytest.raises(SystemExit) as usage:
            main(["finetune", "--task", "ich", "--protocol", "fewshot", *argv])
        assert usage.value.code == 2 and "expected a whole number of at least" in capsys.readouterr().err
    # an encoder that nothing reads is said to be unused, not ignored in silence
    assert main(["finetune", "--dataset", "toyset", "--task", "ich", "--protocol", "histogram", "--encoder",
                 str(tmp_path / "missing.safetensors"), "--profile", "toy", "--run-root", str(root)]) == 0
    assert "--encoder " + str(tmp_path / "missing.safetensors") + " is not used" in capsys.readouterr().err
    assert not (tmp_path / "e.parquet").exists() and not (tmp_path / "e2.npz").exists()


def test_the_command_line_summary_orders_k_as_numbers():
    from fmct_lib.cli.finetune import _summary
    rng = np.random.default_rng(0)
    rows = [{"task": "ich", "protocol": "finetune", "k": k, "seed": 0, "scan_id": f"s{i}", "label": i % 2,
             "probability": rng.random()} for k in (16, 8, None, 128) for i in range(10)]
    text, defined = _summary(pd.DataFrame(rows).astype({"k": "Int64"}), "test")
    header = text.splitlines()[1].split()
    assert defined and header[header.index("k") + 1:] == ["8", "16", "128", "all"]


def test_real_cache_path_with_a_rejected_scan(tmp_path, isolated_roots, monkeypatch):
    """NIfTI files → scan table → the preprocessing cache → a linear probe; an unreadable file is left out."""
    import nibabel as nib
    folder = tmp_path / "data" / "niftis"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(14):
        hu = np.full((40, 40, 30), -1000, np.int16)
        hu[8:32, 8:32, 5:25] = 30 + rng.integers(-5, 5, (24, 24, 20))
        label = i % 2
        if label:
            hu[15:22, 15:22, 10:16] = 70  # a "bleed"
        path = folder / f"s{i}.nii.gz"
        nib.save(nib.Nifti1Image(hu, np.diag([5.0, 5.0, 6.0, 1.0])), path)
        rows.append({"scan_id": f"s{i}", "patient_id": f"p{i}", "path": str(path),
                     "split": "train" if i < 8 else "val" if i < 10 else "test", "manufacturer": "A",
                     "slice_thickness_mm": 6.0, "spacing": "5,5,6", "ich": label})
    (folder / "s3.nii.gz").write_bytes(b"not a nifti")  # one corrupt training scan
    write_scans(pd.DataFrame(rows), "niftis")
    profile = get_profile("toy")
    ckpt = save_checkpoint(tmp_path / "enc.safetensors", vit_from_config(profile.model),
                           {"model": profile.model.to_dict()})
    from fmct_lib.data.cache import build_cache
    from fmct_lib.data.preprocess import paper_spec
    build_cache("niftis", paper_spec(profile), workers=1)  # in-process here; run_protocol finds it built
    with pytest.warns(UserWarning, match="1 scan"):
        preds = run_protocol("niftis", "ich", "linear", ckpt, profile, run_root=tmp_path / "runs", progress=False,
                             hparams={"max_epochs": 1, "subset": 8})
    assert list(preds["scan_id"]) == ["s10", "s11", "s12", "s13"] and preds["probability"].between(0, 1).all()
    config = json.loads(next((tmp_path / "runs").rglob("config.json")).read_text())
    assert config["n_train"] == 7 and config["spec"]["canvas"] == profile.canvas
    # small splits are held in memory; the inputs are those read batch by batch from the cache
    table = pd.DataFrame(rows[:3])
    held, _ = inputs.volume_source("niftis", table, paper_spec(profile))
    monkeypatch.setattr(inputs, "IN_MEMORY_BYTES", 0)
    streamed, _ = inputs.volume_source("niftis", table, paper_spec(profile))
    assert torch.is_tensor(held.data) and not torch.is_tensor(streamed.data)
    assert torch.equal(torch.cat(list(held.batches([2, 0], 2))), torch.cat(list(streamed.batches([2, 0], 2))))
    # the next run of the process gets the same tensor; a rebuilt cache or other scans get their own
    monkeypatch.setattr(inputs, "IN_MEMORY_BYTES", 1 << 30)
    build_cache("niftis", paper_spec(profile), workers=1)  # the pipeline builds it before every run: a no-op here
    again, _ = inputs.volume_source("niftis", table, paper_spec(profile))
    assert again.data is held.data
    assert inputs.volume_source("niftis", pd.DataFrame(rows[:2]), paper_spec(profile))[0].data is not held.data
    from fmct_lib.data.cache import cache_dir
    index = cache_dir("niftis", paper_spec(profile)) / "index.csv"
    index.write_text(index.read_text())  # rewritten, as a rebuild does
    os.utime(index, ns=(index.stat().st_atime_ns, index.stat().st_mtime_ns + 10**9))
    rebuilt, _ = inputs.volume_source("niftis", table, paper_spec(profile))
    assert rebuilt.data is not held.data and torch.equal(rebuilt.data, held.data)
    monkeypatch.setattr(inputs, "HELD_BYTES", held.data.numel() * 4)  # room for one split: the oldest goes
    inputs.volume_source("niftis", pd.DataFrame(rows[:1]), paper_spec(profile))
    assert len(inputs._HELD) == 1


def test_histogram_reference_sees_the_same_draws_learns_and_resumes(toy_world, monkeypatch):
    table, ckpt, root = toy_world
    sweep = dict(shots=(3,), resamples=2, train_filter={"site": "internal"}, run_root=root, progress=False)
    hist = downstream.fewshot_sweep("toyset", ["ich"], "histogram", None, TOY, **sweep)
    tuned = downstream.fewshot_sweep("toyset", ["ich"], "finetune", ckpt, TOY, resamples=1, shots=(3,),
                                     train_filter={"site": "internal"}, run_root=root, progress=False)
    assert (hist["protocol"] == "histogram").all()
    assert sorted(hist.groupby(["k", "seed"], dropna=False).size().index.tolist(), key=str) == \
        sorted([(3, 0), (3, 1), (pd.NA, 0)], key=str)
    configs, folders = {}, {}
    for path in root.rglob("config.json"):
        c = json.loads(path.read_text())
        key = (c["signature"]["protocol"], c["signature"]["k"], c["signature"]["seed"])
        configs[key], folders[key] = c, path.relative_to(root).parts
    assert configs[("histogram", 3, 0)]["train_scan_ids"] == configs[("finetune", 3, 0)]["train_scan_ids"]
    assert configs[("histogram", 3, 0)]["train_scan_ids"] != configs[("histogram", 3, 1)]["train_scan_ids"]
    assert configs[("histogram", None, 0)]["choice"]["C"] in C_GRID
    # where and why each stopped, as every run records it: the chosen C's L-BFGS iterations, converged
    runs = stopping_table(hist)
    assert (runs["stop_reason"] == "converged (L-BFGS)").all() and (runs["stopped_step"] > 0).all()
    chosen = configs[("histogram", None, 0)]["choice"]
    assert configs[("histogram", None, 0)]["stopping"]["stopped_step"] == chosen["iterations"][str(chosen["C"])]
    assert folders[("histogram", 3, 1)][:2] == ("toy", "histogram") and folders[("finetune", 3, 0)][1].startswith("toydino-")
    full = hist[hist["k"].isna()]
    assert auroc(full["label"], full["probability"]) > 0.9  # the positives' bright cube fills the top bins
    assert len(tuned) == len(full) * 2  # finetune: one K=3 draw and the all-data run
    monkeypatch.setattr(histogram, "fit_histogram_classifier", lambda *a, **k: pytest.fail("fitted again"))
    again = downstream.fewshot_sweep("toyset", ["ich"], "histogram", None, TOY, **sweep)
    pd.testing.assert_frame_equal(again, hist)


def test_encoder_free_runs_ignore_the_encoder_argument_old_and_new(toy_world, monkeypatch):
    _, ckpt, root = toy_world
    first = run_protocol("toyset", "ich", "scratch", ckpt, TOY, run_root=root, progress=False)
    config_path = next(root.rglob("config.json"))
    assert json.loads(config_path.read_text())["signature"]["encoder"] is None
    config = json.loads(config_path.read_text())  # a run stored by an older version kept the unused path
    config["signature"]["encoder"] = ckpt
    config_path.write_text(json.dumps(config))
    monkeypatch.setattr(protocols, "fit", lambda *a, **k: pytest.fail("a finished run was trained again"))
    again = run_protocol("toyset", "ich", "scratch", None, TOY, run_root=root, progress=False)
    pd.testing.assert_frame_equal(again, first)
    with pytest.raises(ValueError, match="other settings"):  # everything else still has to match
        run_protocol("toyset", "ich", "scratch", None, TOY, run_dir=config_path.parent, seed=3, progress=False)


def test_a_script_without_a_main_guard_gets_a_clear_error_not_a_bare_broken_pool(tmp_path):
    """Spawned workers import the calling script: unguarded, each would start the sweep again while it
    bootstraps, and the pool breaks. The caller is told why and what to do."""
    import subprocess
    import sys
    script = tmp_path / "unguarded.py"
    script.write_text("from fmct_lib.downstream import sweeps\n"
                      "sweeps._run_all([('ich', 'finetune', None, 0)], 'none', None, 'toy', workers=2, progress=False)\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode != 0
    assert 'if __name__ == "__main__":' in done.stderr and "FMCT_WORKERS=1" in done.stderr


@pytest.mark.parametrize("tool, argv, said", [
    ("probe_encoders", ["e=x.safetensors", "--profile", "nope"], "unknown profile 'nope'"),
    ("pretrain_trial", ["t", "--method", "dino", "--epochs", "1", "--profile", "nope"], "unknown profile 'nope'"),
    ("release_encoders", ["--profile", "nope"], "unknown profile 'nope'"),
    ("convergence_curves", ["--profile", "nope", "--out", "x"], "unknown profile 'nope'"),
])
def test_the_tools_say_bad_input_in_one_line_as_the_cli_does(tool, argv, said, monkeypatch, capsys):
    """A typo given to a script in ``tools/`` is one line and exit status 2 (``cli.report_errors``), not a
    traceback; ``FMCT_TRACEBACK=1`` gives the traceback."""
    import runpy
    import sys
    from pathlib import Path
    path = str(Path(__file__).resolve().parents[1] / "tools" / f"{tool}.py")
    monkeypatch.setattr(sys, "argv", [path, *argv])
    with pytest.raises(SystemExit) as stopped:
        runpy.run_path(path, run_name="__main__")
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and err.startswith(f"tools/{tool}.py: error: ") and err.count("\n") == 1, err
    assert said in err
    monkeypatch.setenv("FMCT_TRACEBACK", "1")
    with pytest.raises(ValueError):
        runpy.run_path(path, run_name="__main__")


def test_a_pretraining_trial_records_every_setting_of_its_recipe():
    """``tools/pretrain_trial.py``'s recipe column (docs/measurements/ssl_trials.csv): MAE's own options and the
    profile are in it (they were left out: two MAE trials of different mask ratios read the same), bookkeeping
    such as the seed or the checkpoint interval is not."""
    import runpy
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    recipe = runpy.run_path(str(root / "tools" / "pretrain_trial.py"))["recipe"]
    run = json.loads((root / "encoders" / "synthetic_mae_f0.1_demo_s0" / "config.json").read_text())["run"]
    said = json.loads(recipe(run, "demo", [("global_crop", "[48, 75]")]))
    assert said["mask_ratio"] == 0.75 and said["norm_pix_loss"] is False and said["profile"] == "demo"
    assert said["lr"] == run["lr"] and said["total_steps"] == run["total_steps"] and said["global_crop"] == "[48, 75]"
    assert not {"seed", "checkpoint_every", "method", "n_scans"} & set(said)
    other = json.loads(recipe({**run, "mask_ratio": 0.9}, "demo", []))
    assert other["mask_ratio"] == 0.9


def test_runs_recorded_by_their_encoders_path_are_migrated_and_reused(toy_world, monkeypatch):
    """tools/migrate_runs.py: a run made when signatures named the checkpoint by its path is renamed to the name
    its weights give it, and found again without training; one whose checkpoint is gone stays where it is."""
    import runpy
    import shutil
    from pathlib import Path
    _, ckpt, root = toy_world
    first = run_protocol("toyset", "ich", "fewshot", ckpt, TOY, train_filter={"site": "internal"}, k_shot=3,
                         run_root=root, progress=False)
    run_dir = next(root.rglob("done")).parent
    config = json.loads((run_dir / "config.json").read_text())
    config["signature"]["encoder"] = ckpt  # as an older version stored it, in the folder named without the sha
    parts = list(run_dir.relative_to(root).parts)
    assert parts[1].startswith("toydino-")
    parts[1] = "toydino"
    old = root.joinpath(*parts)
    shutil.move(str(run_dir), str(old))
    (old / "config.json").write_text(json.dumps(config))
    gone = root / "toy" / "elsewhere" / "x" / "seed0"  # an old run whose checkpoint no longer exists
    gone.mkdir(parents=True)
    (gone / "config.json").write_text(json.dumps({"signature": {**config["signature"], "encoder": "/gone/e.pt"}}))

    tool = runpy.run_path(str(Path(__file__).resolve().parents[1] / "tools" / "migrate_runs.py"))
    assert tool["main"](["--runs", str(root.parent)]) == 0
    assert (run_dir / "done").exists() and not old.exists() and (gone / "config.json").exists()
    monkeypatch.setattr(protocols, "fit", lambda *a, **k: pytest.fail("a migrated run was trained again"))
    again = run_protocol("toyset", "ich", "fewshot", ckpt, TOY, train_filter={"site": "internal"}, k_shot=3,
                         run_root=root, progress=False)
    pd.testing.assert_frame_equal(again, first)


def test_encoder_id_is_the_files_sha256_and_follows_a_rewrite(tmp_path):
    """The identity a run records is the checkpoint's sha256 (hashlib on the bytes), hashed once per process and
    hashed again when the file is replaced or rewritten in place."""
    import hashlib

    from fmct_lib.downstream.features import encoder_id
    path = tmp_path / "enc" / "encoder.safetensors"
    torch.manual_seed(0)
    save_checkpoint(path, vit_from_config(TOY.model), {"model": TOY.model.to_dict()})
    assert encoder_id(path) == hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    assert encoder_id(str(path)) == encoder_id(path)
    first = encoder_id(path)
    save_checkpoint(path, vit_from_config(TOY.model), {"model": TOY.model.to_dict()})  # replaced (new file)
    assert encoder_id(path) == hashlib.sha256(path.read_bytes()).hexdigest()[:16] != first
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    with open(path, "r+b") as f:  # rewritten in place: the same inode and size
        f.write(bytes(data))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    assert encoder_id(path) == hashlib.sha256(bytes(data)).hexdigest()[:16]


def test_a_dataset_with_its_own_epoch_draws_trains_on_them(toy_world):
    """The paper draws 5,000 scans per epoch, 500 on CQ500 (Methods): a profile's per-dataset draws reach the
    run, and they are that dataset's default, so its run name carries no hyper-parameter suffix."""
    assert HParams.from_profile("paper", "cq500").subset == 500
    assert HParams.from_profile("paper", "rsna").subset == HParams.from_profile("paper").subset == 5000
    _, ckpt, root = toy_world
    own = TOY.replace(finetune_subset_by_dataset={"toyset": 8}, finetune_max_epochs=2, finetune_patience=2)
    run_protocol("toyset", "ich", "finetune", ckpt, own, run_root=root / "own", progress=False)
    path = next((root / "own").rglob("config.json"))
    config = json.loads(path.read_text())
    assert config["signature"]["hparams"]["subset"] == 8
    assert config["stopping"]["stopped_step"] == config["stopping"]["stopped_epoch"] * 2  # 8 draws / batch 4
    from dataclasses import asdict
    from fmct_lib.data.preprocess import paper_spec
    signature = {"dataset": "cq500", "train_filter": None, "train_scans": None, "profile": "paper", "task": "ich",
                 "protocol": "scratch", "k": None, "seed": 0, "encoder": None, "eval_dataset": "cq500",
                 "eval_filter": None, "eval_split": "test", "spec": paper_spec("paper").hash, "scratch_grid": None}
    cq500 = runs_module.default_run_name({**signature, "hparams": asdict(HParams.from_profile("paper", "cq500"))})
    assert cq500.endswith("/seed0")
    assert not runs_module.default_run_name({**signature, "hparams": asdict(HParams.from_profile("paper"))}).endswith("/seed0")


def test_predict_runs_the_model_where_its_inputs_go(monkeypatch):
    """A kept classifier is loaded on the CPU; ``predict`` on a GPU moves it there with its inputs ("meta" stands in
    for the GPU: no CUDA here)."""
    enc = vit_from_config(ModelConfig(img_size=8, patch_size=4, embed_dim=12, depth=1, num_heads=2))
    model = Classifier(enc, build_head("linear", enc))
    seen = []
    monkeypatch.setattr(precision, "infer", lambda fn, batches, device: seen.append(
        (str(device), {p.device.type for p in model.parameters()})) or [])
    downstream.predict(model, VolumeSource(torch.rand(4, 3, 8, 8, 8)), 2, device="meta")
    assert seen == [("meta", {"meta"})]


@pytest.mark.parametrize("name", ["attentive", "abmil", "linear"])
def test_a_frozen_probe_predicts_on_the_jobs_device(name, monkeypatch):
    """The probes train on the job's device and must predict there too (on a GPU, a CPU prediction of a GPU head
    is a device-mismatch error): every ``predict`` they make is given the job's device."""
    from fmct_lib.downstream import features
    enc = vit_from_config(ModelConfig(img_size=8, patch_size=4, embed_dim=12, depth=1, num_heads=2))
    source = VolumeSource(torch.rand(8, 3, 8, 8, 8))
    devices = []

    def spy_predict(model, source, batch_size, indices=None, device="cpu"):
        devices.append(device)
        return np.linspace(0.1, 0.9, len(source))

    monkeypatch.setattr(protocols, "predict", spy_predict)
    monkeypatch.setattr(protocols, "encoder_module", lambda encoder, profile: enc)
    monkeypatch.setattr(features, "encoder_id", lambda encoder: "enc")
    monkeypatch.setattr(features, "encoder_tokens", lambda encoder, identity, source, batch_size, device="cpu",
                        cache=None: torch.rand(len(source), 9, 12))
    monkeypatch.setattr(protocols, "fit", lambda model, *a, device="cpu", **k: (
        [], downstream.training.Stopping("cap", 1, 1, None, None, None, 1, 1, 1)))
    job = protocols.TrainingJob(profile=TOY, hp=HParams.from_profile(TOY), seed=0, encoder="enc.safetensors",
                                input_size=8, train=source, train_labels=np.array([0, 1] * 4), val=source,
                                val_labels=np.array([0, 1] * 4), train_indices=None, device="cuda:1", progress=False)
    protocols.get_protocol(name).train(job).predict(source)
    assert devices and set(devices) == {"cuda:1"}


@pytest.mark.parametrize("held", [False, True])
def test_model_inputs_are_made_on_the_device_they_go_to(held):
    """The cached canvases go to the device first and the crop, windows and resize (``to_input``) run there, so a
    GPU run does not preprocess in the CPU's main process ("meta" stands in for the GPU)."""
    seen = []

    def to_input(x):
        seen.append(x.device.type)
        return x * 2

    canvases = [torch.full((2, 2, 2), i, dtype=torch.int16) for i in range(3)]
    source = VolumeSource(torch.stack(canvases) if held else canvases, to_input=to_input)
    out = list(source.batches([2, 0, 1], 2, device="meta"))
    assert seen == ["meta", "meta"] and [b.shape[0] for b in out] == [2, 1]
    assert all(b.device.type == "meta" and b.dtype == torch.float32 for b in out)
    on_cpu = torch.cat(list(source.batches([2, 0, 1], 2)))   # no device: where they are read, as before
    assert on_cpu.device.type == "cpu" and on_cpu[:, 0, 0, 0].tolist() == [4.0, 0.0, 2.0]


def test_a_profile_of_its_own_name_runs_and_keeps_its_runs_apart(toy_world):
    """A profile made with ``replace(name=…)`` (not in config.PROFILES) runs under its own name; a changed
    profile that keeps a known name still gets the hash of what it changed."""
    table, ckpt, root = toy_world
    mine = TOY.replace(name="mytoy")
    preds = run_protocol("toyset", "ich", "linear", ckpt, mine, run_root=root, progress=False)
    assert len(preds) == (table["split"] == "test").sum()
    assert [p.relative_to(root).parts[0] for p in root.rglob("done")] == ["mytoy"]
    changed = TOY.replace(finetune_patience=TOY.finetune_patience + 1)  # the name "toy", another setting
    run_protocol("toyset", "ich", "linear", ckpt, changed, run_root=root, progress=False)
    toy_run = next(p for p in root.rglob("done") if p.relative_to(root).parts[0] == "toy").parent
    assert toy_run.name != "seed0" and toy_run.name.startswith("seed0-")
