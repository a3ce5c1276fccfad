"""DINO's update step as the training loop runs it (``train/methods/dino.py`` under ``train/loop.py``): the
prototypes frozen for the first epoch, weight decay on matrices only, per-parameter clipping, the KoLeo term in
the loss, and the teacher as the EMA of the student. Each against a hand check, not against the code itself."""
import contextlib

import pytest
import torch

from fmct_lib.config import get_profile
from fmct_lib.data.augment import AugmentConfig
from fmct_lib.ssl.dino import DINOConfig
from fmct_lib.train import run_config
from fmct_lib.train.distributed import DistInfo
from fmct_lib.train.loop import make_optimizer, train
from fmct_lib.train.methods.dino import DINOTask
from _support import InMemoryVolumes

pytestmark = pytest.mark.usefixtures("one_thread")


def _task(n_scans: int = 8, seed: int = 0, **options) -> DINOTask:
    profile = get_profile("toy")
    run = run_config("dino", profile, n_scans, batch_size=4, options=DINOConfig(**options))
    torch.manual_seed(seed)
    return DINOTask(profile, AugmentConfig.from_profile(profile, **DINOTask.crops(run)), run)


def _copy(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_the_loop_freezes_the_prototypes_for_one_epoch_trains_the_rest_and_moves_the_teacher_by_ema(tmp_path):
    volumes = InMemoryVolumes(8, 37)
    task = _task()
    run = task.schedule
    assert (run["steps_per_epoch"], run["total_steps"], run["freeze_last_layer_steps"]) == (2, 4, 2)
    start = _copy(task.student)
    seen = {}

    def snapshot(step, row):
        seen[step] = {"student": _copy(task.student), "teacher": _copy(task.teacher), "row": row}

    teacher_before = {}
    original_after_step = task.after_step

    def after_step(step):  # the teacher just before its EMA update
        teacher_before[step + 1] = _copy(task.teacher)
        return original_after_step(step)

    task.after_step = after_step
    train(task, volumes, run, tmp_path, DistInfo(0, 1, 0, torch.device("cpu")), progress=False, on_step=snapshot)
    assert seen[2]["row"]["lr"] > 0                        # step 2 took a real step, inside the frozen epoch
    prototypes = "head.last_layer.weight_v"
    assert torch.equal(seen[2]["student"][prototypes], start[prototypes])          # frozen through epoch 1
    assert not torch.equal(seen[4]["student"][prototypes], seen[2]["student"][prototypes])  # then trained
    for name in ("backbone.blocks.0.attn.qkv.weight", "backbone.patch_embed.proj.weight", "head.mlp.0.weight"):
        assert not torch.equal(seen[2]["student"][name], start[name]), name        # the rest learns from step 2
    # θ_teacher ← m θ_teacher + (1 − m) θ_student, m the step's logged momentum
    m = seen[3]["row"]["momentum"]
    for name, value in seen[3]["teacher"].items():
        if value.is_floating_point() and name in dict(task.teacher.named_parameters()):
            expected = m * teacher_before[3][name] + (1 - m) * seen[3]["student"][name]
            torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-7)


def test_weight_decay_falls_on_matrices_only():
    student = _task().student
    optimizer = make_optimizer(student, lr=1e-3, weight_decay=0.05)
    names = {id(p): n for n, p in student.named_parameters()}
    decayed = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] == 0.05 for p in g["params"]}
    undecayed = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert {"backbone.blocks.0.attn.qkv.weight", "backbone.blocks.0.mlp.fc1.weight", "backbone.patch_embed.proj.weight",
            "head.mlp.0.weight", "head.last_layer.weight_v"} <= decayed
    assert {"backbone.blocks.0.attn.proj.bias", "backbone.blocks.0.norm1.weight", "backbone.blocks.0.norm1.bias",
            "backbone.norm.weight", "backbone.cls_token", "backbone.pos_embed", "head.mlp.0.bias"} <= undecayed
    assert all(n.endswith("bias") or "norm" in n or "token" in n or n.endswith("pos_embed") for n in undecayed)
    assert decayed.isdisjoint(undecayed) and decayed | undecayed == {n for n, p in student.named_parameters()
                                                                      if p.requires_grad}


def _backward(task: DINOTask, step: int = 0) -> torch.Tensor:
    canvases = InMemoryVolumes(4, 37).volumes
    loss = task.micro_step(task.student, canvases, torch.Generator().manual_seed(1), slice(0, 4), 4, step,
                           contextlib.nullcontext)
    loss.backward()
    return loss


def test_each_gradient_is_clipped_to_the_norm_on_its_own():
    task = _task()
    _backward(task)
    before = {n: p.grad.norm().item() for n, p in task.student.named_parameters() if p.grad is not None}
    task.before_optimizer(step=task.schedule["freeze_last_layer_steps"])  # after the frozen epoch
    after = {n: p.grad.norm().item() for n, p in task.student.named_parameters() if p.grad is not None}
    clip = task.cfg.clip_grad
    assert any(v > clip for v in before.values()), "no gradient large enough to test the clip"
    for name, norm in before.items():   # min(‖g‖, clip), each parameter on its own (not one global norm)
        assert after[name] == pytest.approx(min(norm, clip), rel=1e-4), name


def test_koleo_adds_its_weight_times_the_logged_term_to_the_dino_loss():
    with_koleo, without = _task(koleo_weight=0.1), _task(koleo_weight=0.0)
    loss_with, loss_without = _backward(with_koleo), _backward(without)   # same weights, same crops
    koleo = with_koleo._koleo[-1]
    assert koleo != 0
    assert loss_with.item() - loss_without.item() == pytest.approx(0.1 * koleo, rel=1e-4)
