"""DINO self-distillation: loss with centring and sharpening, the EMA teacher, health signals.

Paper, Methods "Self-distillation modelling (DINO)", following Caron et al. (2021). With student logits
``s`` for every crop, teacher logits ``t`` for the global crops, centre ``c``, temperatures ``τs``, ``τt``:

    P_t = softmax((t − c) / τt)          (centring, then sharpening: τt < τs)
    L   = mean over pairs (i ≠ j) of  − Σ_k P_t[i, k] · log softmax(s_j / τs)[k]

where ``i`` runs over the global crops (teacher views) and ``j`` over all crops, skipping the pair made of
the same view (2 × n_crops − 2 pairs). Each pair's cross-entropy is averaged over the batch.
The centre is an EMA of the teacher's batch-mean logits, all-reduced across processes:
``c ← m_c · c + (1 − m_c) · mean(t)``. The teacher is an EMA of the student:
``θ_t ← m · θ_t + (1 − m) · θ_s`` with ``m`` on a cosine schedule over global steps (``train/schedules``).

Health signals (collapse shows in them, DINO §5.3): the mean entropy of the teacher distribution
(→ 0 when one prototype dominates every sample) and the KL of the batch-mean teacher distribution to the
uniform one (→ 0 when the teacher outputs the same flat distribution for everything), and ``‖c‖``.

Values the paper does not state are DINO's published defaults (``DINOConfig``). Two DINOv2 additions (Oquab
et al., 2023; not in the paper) are options, off by default: Sinkhorn-Knopp centring of the teacher
(``centring="sinkhorn"``: the batch's assignment to the K prototypes made doubly stochastic, so no teacher
distribution can drift to uniform for every scan while the batch is spread evenly over the prototypes) and the
KoLeo term (``koleo_weight``), which spreads the student's features over the sphere: −mean log of each scan's
distance to its nearest neighbour in the batch.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["DINOConfig", "dino_loss", "dino_cross_entropy", "teacher_targets", "sinkhorn_knopp", "koleo_loss",
           "update_centre", "ema_update", "teacher_health", "distribution_health", "cancel_last_layer_grads",
           "clip_gradients"]

CENTRINGS = ("ema", "sinkhorn")


@dataclass(frozen=True)
class DINOConfig:
    """DINO hyper-parameters. The paper gives crops and optimiser; the rest are DINO's ViT defaults."""

    n_global_crops: int = 2
    n_local_crops: int = 3             # paper: three local augmentations
    student_temp: float = 0.1
    warmup_teacher_temp: float = 0.04
    teacher_temp: float = 0.07         # DINO ViT-B; reached after the warm-up below
    warmup_teacher_temp_epochs: float = 30.0   # DINO: linear over the first 30 epochs
    centre_momentum: float = 0.9
    momentum_teacher: float = 0.996    # start of the cosine ramp to 1
    clip_grad: float = 3.0             # per-parameter gradient-norm clip
    freeze_last_layer_epochs: float = 1.0  # prototypes frozen for the first epoch
    centring: str = "ema"              # "ema" (DINO, the paper) or "sinkhorn" (Sinkhorn-Knopp, DINOv2)
    koleo_weight: float = 0.0          # KoLeo term on the student's cls features (DINOv2: 0.1); 0: off

    def __post_init__(self):
        if self.centring not in CENTRINGS:
            raise ValueError(f"centring must be one of {CENTRINGS}, got {self.centring!r}")
        # a value outside its range trains on NaN or nothing (a temperature of 0 divides by 0): refused up front
        ranges = {"n_global_crops": (2, None), "n_local_crops": (0, None), "student_temp": (0, None),
                  "warmup_teacher_temp": (0, None), "teacher_temp": (0, None), "warmup_teacher_temp_epochs": (0, None),
                  "centre_momentum": (0, 1), "momentum_teacher": (0, 1), "clip_grad": (0, None),
                  "freeze_last_layer_epochs": (0, None), "koleo_weight": (0, None)}
        positive = {"student_temp", "warmup_teacher_temp", "teacher_temp"}
        for name, (low, high) in ranges.items():
            value = getattr(self, name)
            if value < low or (name in positive and value == 0) or (high is not None and value > high):
                bound = f"above {low}" if name in positive else f"at least {low}"
                raise ValueError(f"DINO option {name} must be {bound}" + (f" and at most {high}" if high else "")
                                 + f", got {value!r}")

    def to_dict(self) -> dict:
        """The fields, less the DINOv2 options where they are off: a run that does not use them records what it
        recorded before they existed, so its configuration (and a released encoder's) stays the same."""
        d = asdict(self)
        for name in ("centring", "koleo_weight"):
            if d[name] == DINOConfig.__dataclass_fields__[name].default:
                del d[name]
        return d


def dino_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, centre: torch.Tensor,
              student_temp: float, teacher_temp: float, n_global: int = 2) -> torch.Tensor:
    """The DINO cross-entropy against the centred, sharpened teacher, in one call (training calls its two parts,
    ``teacher_targets`` and ``dino_cross_entropy``, to watch the targets between them).

    ``student_logits`` is (n_crops · B, K), crops stacked crop-major (all samples of crop 0, then crop 1,
    …), the global crops first; ``teacher_logits`` is (n_global · B, K) in the same order. Computed in
    float32 whatever the autocast dtype.
    """
    return dino_cross_entropy(student_logits, teacher_targets(teacher_logits, centre, teacher_temp), student_temp,
                              n_global)


def teacher_targets(teacher_logits: torch.Tensor, centre: torch.Tensor, teacher_temp: float,
                    centring: str = "ema") -> torch.Tensor:
    """The teacher's target distributions (n_global · B, K): ``softmax((t − c) / τt)`` (DINO), or the
    Sinkhorn-Knopp assignment (``centring="sinkhorn"``, DINOv2), which ignores the centre."""
    if centring == "sinkhorn":
        return sinkhorn_knopp(teacher_logits, teacher_temp)
    return F.softmax((teacher_logits.float() - centre) / teacher_temp, dim=-1).detach()


@torch.no_grad()
def sinkhorn_knopp(teacher_logits: torch.Tensor, teacher_temp: float, iterations: int = 3) -> torch.Tensor:
    """Sinkhorn-Knopp targets (SwAV; DINOv2): ``Q = exp(t / τt)`` scaled, ``iterations`` times, so that each
    prototype holds 1/K of the batch and then each scan 1/B; returned per scan, each row summing to 1.
    The sums run over every process's batch."""
    logits = teacher_logits.float() / teacher_temp
    top = logits.max().reshape(1)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(top, op=dist.ReduceOp.MAX)
    q = torch.exp(logits - top).t()  # K × B; the common factor cancels in the scalings below
    k = q.shape[0]
    n = _all_reduce_sum(torch.tensor(float(q.shape[1]), device=q.device))
    q /= _all_reduce_sum(q.sum())
    for _ in range(iterations):
        q /= _all_reduce_sum(q.sum(dim=1, keepdim=True)) * k  # each prototype: 1/K of the mass
        q /= q.sum(dim=0, keepdim=True) * n                    # each scan: 1/B of the mass
    return (q * n).t()


def koleo_loss(features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """The KoLeo term (Sablayrolles et al., 2019; DINOv2): ``−mean_i log(min_{j≠i} ‖z_i − z_j‖ + eps)`` for
    the L2-normalised rows ``z`` of ``features`` (B, D); it falls as the batch spreads over the sphere."""
    z = F.normalize(features.float(), dim=-1, eps=eps)
    # exact distances: cdist's matrix-product shortcut (taken above 25 rows) errs by ~1e-3, 60x the distance of
    # two nearly equal rows, which is where the term matters (a collapsing batch)
    distances = torch.cdist(z, z, compute_mode="donot_use_mm_for_euclid_dist")
    distances = distances + torch.diag(torch.full((len(z),), float("inf"), device=z.device))
    return -torch.log(distances.min(dim=1).values + eps).mean()


def dino_cross_entropy(student_logits: torch.Tensor, p_teacher: torch.Tensor, student_temp: float,
                       n_global: int = 2) -> torch.Tensor:
    """Mean over (teacher view i, student view j ≠ i) of the batch-mean ``−Σ_k P_t[i, k] · log softmax(s_j/τs)``;
    shapes as ``dino_loss`` (``p_teacher``: the targets, (n_global · B, K))."""
    n_crops = student_logits.shape[0] // (p_teacher.shape[0] // n_global)
    if p_teacher.shape[0] % n_global or student_logits.shape[0] % n_crops:
        raise ValueError(f"logit rows do not split into crops: student {tuple(student_logits.shape)}, "
                         f"teacher {tuple(p_teacher.shape)}, n_global {n_global}")
    log_p_student = F.log_softmax(student_logits.float() / student_temp, dim=-1).chunk(n_crops)
    p_teacher = p_teacher.detach().chunk(n_global)
    total, n_pairs = 0.0, 0
    for i, p_t in enumerate(p_teacher):
        for j, log_p_s in enumerate(log_p_student):
            if i == j:
                continue
            total = total + (-(p_t * log_p_s).sum(dim=-1)).mean()
            n_pairs += 1
    return total / n_pairs


def _all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(x)
    return x


@torch.no_grad()
def update_centre(centre: torch.Tensor, teacher_logit_sum: torch.Tensor, count: int, momentum: float) -> None:
    """In place: ``c ← m · c + (1 − m) · Σt / n``, the sum and the count all-reduced over processes."""
    total = _all_reduce_sum(teacher_logit_sum.float().clone())
    n = _all_reduce_sum(torch.tensor(float(count), device=total.device))
    centre.mul_(momentum).add_(total / n, alpha=1 - momentum)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """In place: ``θ_t ← m · θ_t + (1 − m) · θ_s`` for parameters; buffers are copied."""
    t_params = list(teacher.parameters())
    s_params = [p.detach() for p in student.parameters()]
    if len(t_params) != len(s_params):
        raise ValueError("teacher and student have different parameter lists")
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, s_params, alpha=1 - momentum)
    for tb, sb in zip(teacher.buffers(), student.buffers()):
        tb.copy_(sb)


@torch.no_grad()
def teacher_health(teacher_logits: torch.Tensor, centre: torch.Tensor, teacher_temp: float) -> dict[str, float]:
    """``teacher_entropy`` (mean per-sample entropy, nats) and ``kl_to_uniform`` (of the batch-mean
    distribution), over all processes; the centre used is the one the loss used."""
    return distribution_health(teacher_targets(teacher_logits, centre, teacher_temp))


@torch.no_grad()
def distribution_health(p: torch.Tensor) -> dict[str, float]:
    """``teacher_health`` of target distributions ``p`` (B, K) themselves, over all processes."""
    p = p.float()
    entropy_sum = -(p * torch.log(p.clamp_min(1e-30))).sum()
    stats = torch.cat([entropy_sum.reshape(1), torch.tensor([float(p.shape[0])], device=p.device), p.sum(0)])
    stats = _all_reduce_sum(stats)
    n, mean_p = stats[1], stats[2:] / stats[1]
    k = p.shape[-1]
    kl = (mean_p * torch.log(mean_p.clamp_min(1e-30) * k)).sum()
    return {"teacher_entropy": float(stats[0] / n), "kl_to_uniform": float(kl)}


def cancel_last_layer_grads(head: nn.Module) -> None:
    """Drop the prototype layer's gradients (DINO freezes it during the first epoch)."""
    for p in head.last_layer.parameters():
        p.grad = None


@torch.no_grad()
def clip_gradients(module: nn.Module, max_norm: float) -> None:
    """DINO-style clipping: each parameter's gradient is scaled to norm ≤ ``max_norm`` on its own."""
    for p in module.parameters():
        if p.grad is not None:
            norm = p.grad.norm(2)
            p.grad.mul_(torch.clamp(max_norm / (norm + 1e-6), max=1.0))
