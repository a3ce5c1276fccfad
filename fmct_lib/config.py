"""Profiles: one set of code, three sizes (DESIGN §5).

A profile scales the geometry consistently (voxel spacing, canvas, evaluation crop, model input, patch),
the model size and the schedule lengths. It never switches code paths.

- ``toy``   CI: seconds per notebook on 2 CPU cores.
- ``demo``  the main job (``make reproduce``) on a laptop-class CPU: minutes.
- ``paper`` the published geometry (ViT-B/12 at 96³, 224³ canvas, 192³ evaluation crop at 1 mm) and
  schedule, for a GPU.

The physical field of view is the same in every profile: the canvas covers ~224 mm and the evaluation
crop ~192 mm, as in the paper's Methods; coarser profiles use coarser voxels.
"""
from __future__ import annotations

import math
import numbers
import re
from dataclasses import asdict, dataclass, field, replace

__all__ = ["ModelConfig", "Profile", "PROFILES", "get_profile", "patch_variant", "coarser_variant"]


@dataclass(frozen=True)
class ModelConfig:
    """Encoder size. ``embed_dim`` must be divisible by 6 (3-D sine-cosine table) and by ``num_heads``."""

    img_size: int = 96
    patch_size: int = 12
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = False
    num_register_tokens: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Profile:
    """Everything that changes with the size of a run. Read it, never branch on ``name``."""

    name: str
    # geometry (preprocessing, DESIGN §4)
    spacing_mm: float            # isotropic target spacing
    canvas: int                  # pad/crop size of the cached volume (paper: 224 at 1 mm)
    eval_crop: int               # centre crop for evaluation (paper: 192)
    global_crop: tuple[int, int]  # DINO global crop side range on the canvas (paper: 112–224)
    local_crop: tuple[int, int]   # DINO local crop side range (paper: 64–112)
    local_input_size: int         # side the local crops are resampled to (paper: 96, the input size)
    model: ModelConfig
    # self-supervised heads
    dino_out_dim: int            # prototypes (paper 65,536)
    dino_hidden_dim: int         # paper 2048
    dino_bottleneck_dim: int     # paper 256
    mae_decoder_dim: int         # paper 768
    mae_decoder_depth: int       # paper 8
    mae_decoder_heads: int       # paper 16
    # schedules
    pretrain_epochs: int
    pretrain_batch_size: int
    pretrain_warmup_epochs: int
    # every downstream model trains by one rule (downstream.training.fit): validation AUROC after each epoch, stop after
    # finetune_patience epochs without improvement, never past finetune_max_epochs; docs/experiments.md
    finetune_max_epochs: int     # the cap, set so that models stop by the rule (paper: at most 10)
    finetune_patience: int       # epochs without a better validation AUROC before a model stops
    finetune_batch_size: int
    finetune_subset: int         # balanced subset drawn each epoch (paper 5,000; ``finetune_subset_by_dataset``)
    # encoder learning rate of fine-tuning (paper 1e-5 for ViT-B); Adam's LR scales ~1/width, so the narrow
    # demo encoder (96 wide, 768/96 = 8×) takes 1e-4
    finetune_lr_encoder: float = 1e-5
    scratch_grid: dict = field(default_factory=dict)  # scratch hyper-parameter sweep (paper Methods)
    # training seeds of every model in Fig. 1e, 1f-g and the stars of Fig. 2 (paper: 1); docs/experiments.md
    finetune_seeds: int = 1
    # balanced draws per epoch on the datasets where they differ from ``finetune_subset`` (paper: 500 on CQ500)
    finetune_subset_by_dataset: dict = field(default_factory=dict)
    # pretraining learning rate per 256 scans, by method; empty = the paper's (DINO 3e-4, MAE 1.5e-3)
    pretrain_base_lr: dict = field(default_factory=dict)
    # pretraining epochs by method where they differ from ``pretrain_epochs``
    pretrain_epochs_by_method: dict = field(default_factory=dict)
    # the profile's values of a method's options (``train/methods``), e.g. DINO's schedules in epochs
    pretrain_options: dict = field(default_factory=dict)
    # the pretraining the notebooks start from unless told otherwise (paper: DINO, its final model)
    pretrain_method: str = "dino"
    fewshot_shots: tuple[int, ...] = (8, 16, 32, 64, 128, 256)
    fewshot_resamples: int = 5
    n_bootstrap: int = 100
    n_permutations: int = 1000
    # synthetic cohort sizes (scans) and phantom grid
    synth_grid_mm: float = 1.0
    synth_internal: int = 0
    synth_external: int = 0
    synth_pretrain: int = 0
    # notebooks: evaluate at most this many tasks by default (those with the most held-out positives;
    # 0 = every task of the dataset) — a compute limit for the small profiles, never a selection by result
    max_tasks: int = 0

    @property
    def input_size(self) -> int:
        return self.model.img_size

    @property
    def patch_size(self) -> int:
        return self.model.patch_size

    @property
    def finetune_epoch_steps(self) -> int:
        """Optimiser steps of one downstream epoch: ⌈balanced draws / batch⌉ (paper profile 5,000 / 16 = 313), a last
        batch of one left out (``downstream.training.fit`` skips it: the heads' BatchNorm needs two samples)."""
        full, rest = divmod(self.finetune_subset, self.finetune_batch_size)
        return full + (rest >= 2)

    def finetune_draws(self, dataset: str | None = None) -> int:
        """Balanced draws per downstream epoch on ``dataset`` (paper, Methods: 5,000; 500 on CQ500)."""
        return self.finetune_subset_by_dataset.get(dataset, self.finetune_subset)

    def epochs_for(self, method: str) -> int:
        """Pretraining epochs of ``method`` in this profile."""
        return self.pretrain_epochs_by_method.get(method, self.pretrain_epochs)

    def replace(self, **changes) -> "Profile":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_size"] = self.input_size
        return d

    def pretraining_dict(self) -> dict:
        """``to_dict`` without :data:`DOWNSTREAM_FIELDS`: what a pretraining run records and is checked against, so
        that a downstream setting (e.g. the patience) leaves pretraining runs and released encoders valid."""
        return {k: v for k, v in self.to_dict().items() if k not in DOWNSTREAM_FIELDS}


# the fields no pretraining run reads: downstream training, the notebooks' defaults and the statistics
DOWNSTREAM_FIELDS = frozenset({
    "finetune_max_epochs", "finetune_patience", "finetune_batch_size", "finetune_subset", "finetune_subset_by_dataset",
    "finetune_lr_encoder",
    "scratch_grid", "finetune_seeds", "pretrain_method", "fewshot_shots", "fewshot_resamples", "n_bootstrap",
    "n_permutations", "max_tasks"})


PROFILES: dict[str, Profile] = {
    "paper": Profile(
        name="paper",
        spacing_mm=1.0, canvas=224, eval_crop=192, global_crop=(112, 224), local_crop=(64, 112), local_input_size=96,
        model=ModelConfig(img_size=96, patch_size=12, embed_dim=768, depth=12, num_heads=12),
        dino_out_dim=65536, dino_hidden_dim=2048, dino_bottleneck_dim=256,
        mae_decoder_dim=768, mae_decoder_depth=8, mae_decoder_heads=16,
        # paper, Methods: DINO 1,000 epochs, warm-up 5 epochs; MAE 400 epochs (its warm-up: 5% of steps, mae.py);
        # the paper saw downstream performance converge at ~300 (DINO) and ~250 (MAE) epochs
        pretrain_epochs=1000, pretrain_batch_size=64, pretrain_warmup_epochs=5,
        pretrain_epochs_by_method={"mae": 400},
        # 5,000 balanced draws per epoch, 500 on CQ500 (paper, Methods); batch 16 is ours (the paper gives none;
        # the authors' code uses 64)
        finetune_max_epochs=50, finetune_patience=5, finetune_batch_size=16, finetune_subset=5000,
        finetune_subset_by_dataset={"cq500": 500},
        # the paper's scratch sweep (Methods); its grid over epochs {10, 15, 30, 50} is the convergence rule here
        scratch_grid={"lr": [1e-3, 1e-4, 1e-5], "weight_decay": [0.01, 0.05, 1e-4, 1e-5],
                      "optimizer": ["sgd", "adam", "adamw"]},
        synth_grid_mm=1.0, synth_internal=2000, synth_external=800, synth_pretrain=8000,
    ),
    "demo": Profile(
        name="demo",
        # local crops at 16³ and DINO's peak LR 5e-4 (base 8e-3): the small-batch recipe, tried on validation;
        # DINO still goes uniform at this scale (docs/experiments.md)
        spacing_mm=3.0, canvas=75, eval_crop=64, global_crop=(38, 75), local_crop=(22, 38), local_input_size=16,
        model=ModelConfig(img_size=32, patch_size=8, embed_dim=96, depth=4, num_heads=4),
        dino_out_dim=1024, dino_hidden_dim=256, dino_bottleneck_dim=64,
        mae_decoder_dim=96, mae_decoder_depth=2, mae_decoder_heads=4,
        pretrain_epochs=2, pretrain_batch_size=16, pretrain_warmup_epochs=1,
        # VICReg, the control: the one method whose frozen features beat the random encoder's on validation
        # (kNN 0.47 -> 0.61; DINO stays uniform, MAE 0.49); base LR 8e-3 (peak 5e-4) of 2e-3/8e-3/3.2e-2, and 3
        # epochs: the validation kNN stopped improving after epoch 2 of an 8-epoch run (docs/experiments.md)
        pretrain_method="vicreg", pretrain_epochs_by_method={"mae": 9, "vicreg": 3},
        pretrain_base_lr={"mae": 0.016, "vicreg": 8e-3, "dino": 8e-3},
        pretrain_options={"dino": {"warmup_teacher_temp_epochs": 1.0, "freeze_last_layer_epochs": 0.5},
                          "vicreg": {"expander_dim": 512}},
        # the rule: an epoch is 800 draws (50 steps); stop 15 epochs after the best validation AUROC, cap 80.
        # Patience 15, not 10: on nine 80-epoch scratch curves 10 gave up 0.030 AUROC on average (0.183 at most:
        # a late riser), 15 gave up none (docs/measurements/convergence_demo_scratch3_rule.csv)
        finetune_max_epochs=80, finetune_patience=15, finetune_batch_size=16, finetune_subset=800,
        finetune_lr_encoder=1e-4,
        scratch_grid={"lr": [1e-3], "weight_decay": [0.05], "optimizer": ["adamw"]},
        # few-shot K = 32 and 128 (K = 8 is chance for every model here), 5 draws per K as in the paper
        finetune_seeds=3, fewshot_shots=(32, 128), fewshot_resamples=5,
        # 1,500 internal scans: a ~150-scan test split (why not 500: docs/experiments.md)
        # the unlabelled pool: 6,000 scans, 5× the ~1,200-scan internal training split (issue 24; paper: 14×)
        synth_grid_mm=3.0, synth_internal=1500, synth_external=150, synth_pretrain=6000, max_tasks=3,
    ),
    "toy": Profile(
        name="toy",
        spacing_mm=6.0, canvas=37, eval_crop=32, global_crop=(19, 37), local_crop=(11, 19), local_input_size=16,
        model=ModelConfig(img_size=16, patch_size=4, embed_dim=48, depth=2, num_heads=2),
        dino_out_dim=64, dino_hidden_dim=64, dino_bottleneck_dim=16,
        mae_decoder_dim=24, mae_decoder_depth=1, mae_decoder_heads=2,
        pretrain_epochs=2, pretrain_batch_size=4, pretrain_warmup_epochs=1,
        pretrain_options={"dino": {"warmup_teacher_temp_epochs": 0.6}, "vicreg": {"expander_dim": 64}},
        finetune_max_epochs=4, finetune_patience=2, finetune_batch_size=4, finetune_subset=32,
        finetune_lr_encoder=1e-4,
        scratch_grid={"lr": [1e-3], "weight_decay": [0.05], "optimizer": ["adamw"]},
        finetune_seeds=2, fewshot_shots=(2, 4), fewshot_resamples=2, n_bootstrap=20, n_permutations=50,
        synth_grid_mm=3.0, synth_internal=80, synth_external=40, synth_pretrain=60, max_tasks=2,
    ),
}


def is_whole_number(value, least: int = 1) -> bool:
    """Whether a parameter's ``value`` is a whole number (an int, or a float or NumPy number without a fraction;
    not a bool) of at least ``least``: what every count and rank a notebook takes must be."""
    return (not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
            and value == int(value) and value >= least)


def get_profile(profile: "str | Profile") -> Profile:
    """Return a profile by name (``toy`` | ``demo`` | ``paper``, or ``<name>-p<patch>``: :func:`patch_variant`);
    a ``Profile`` passes through."""
    if isinstance(profile, Profile):
        return profile
    if profile in PROFILES:
        return PROFILES[profile]
    variant = re.fullmatch(r"(?P<base>.+)-p(?P<patch>\d+)", str(profile))
    if variant and variant["base"] in PROFILES:
        return patch_variant(PROFILES[variant["base"]], int(variant["patch"]))
    raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)} (or <profile>-p<patch>)")


def patch_variant(profile: "str | Profile", patch_size: int | None = None) -> Profile:
    """``profile`` with another patch size, named ``<name>-p<patch>`` so that its pretraining and downstream runs
    never share a folder with the profile's (Supplementary Fig. 2: 512 patches of 12³ against 216 of 16³).

    ``patch_size`` defaults to the paper's ratio: the patch grid 3/4 of the profile's per side (paper 8 → 6: patch
    16; demo 4 → 3; toy 4 → 3), so that the token counts compare as 512 to 216. A patch that does not divide the
    input runs on the smallest input it divides that is at least as large (demo: 32³ → 33³ with patch 11; toy:
    16³ → 18³ with patch 6): the same field of view, never fewer voxels for the coarser patches. The local crops
    keep their size relative to the input, rounded up to whole patches. The profile itself when nothing changes."""
    p = get_profile(profile)
    m = p.model
    if patch_size is None:
        grid = max(1, round(m.img_size // m.patch_size * 3 / 4))
        patch_size = math.ceil(m.img_size / grid)
    if int(patch_size) != patch_size or patch_size < 1:
        raise ValueError(f"patch_size must be a positive whole number, got {patch_size!r}")
    patch_size = int(patch_size)
    if patch_size == m.patch_size:
        return p
    img = patch_size * math.ceil(m.img_size / patch_size)
    local = patch_size * math.ceil(p.local_input_size * img / (m.img_size * patch_size))
    return p.replace(name=f"{p.name}-p{patch_size}", model=replace(m, img_size=img, patch_size=patch_size),
                     local_input_size=local)


def coarser_variant(profile: "str | Profile", patch_size: int | None = None) -> Profile:
    """``patch_variant`` for a comparison with the profile's own encoder (Supp. Fig. 2: the coarser patch, fewer
    tokens): a ``patch_size`` whose grid has as many tokens as the profile's or more is refused, naming the
    grids, where the comparison would otherwise report the finer encoder as the paper's coarser p16 model."""
    p = get_profile(profile)
    q = patch_variant(p, patch_size)
    grid, coarse = p.model.img_size // p.model.patch_size, q.model.img_size // q.model.patch_size
    if coarse >= grid:
        raise ValueError(f"patch_size {q.model.patch_size} gives {coarse}³ patch tokens against the profile's "
                         f"{grid}³ (patch {p.model.patch_size}): the comparison needs a coarser patch, fewer tokens "
                         f"(default: {patch_variant(p).model.patch_size})")
    return q
