"""Two CPU processes (gloo, DDP) agree with one process on the same global batch, with gradient accumulation:
two micro-batches per optimiser step, the first under DDP's ``no_sync``.

Plain DINO and MAE, VICReg (its loss over every process's rows, gathered with gradients), and DINO with the two
DINOv2 options (Sinkhorn-Knopp centring, normalised over every process's batch; KoLeo, per process by design).
Where a method computes a part per process by design (VICReg's batch normalisation on CPUs, DINO's KoLeo as
DINOv2 does it), the one-process run computes that part per process's rows (``_per_process``, written out here),
the rest over the global batch, and the two-process run, unpatched, must match it.

The learning rate is raised (``PROFILE``: at the toy profile's own, 5e-6 a step after a warm-up from 0, the weights
moved about as far as the tolerance) so that each step moves nearly every weight by ~``lr`` (1.6e-3 to 3.1e-3; Adam's
first steps are about ``lr`` whatever the gradient's scale): a wrong gradient (the local batch where the global
one is meant, a gradient lost in the gather, a per-process normalisation) turns the updates, 100x the tolerance
of ``_assert_weights_match``."""
import json
import os
import socket
from contextlib import ExitStack

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

from fmct_lib.config import get_profile
from fmct_lib.train import pretrain_on
from fmct_lib.train.loop import STATE_FILE
from _support import InMemoryVolumes


WORLD = 2
RUN = dict(seed=3, max_steps=3, accum_steps=2, progress=False, device="cpu")
# the toy model; no warm-up and a base learning rate at which three steps move the weights far past the tolerance
PROFILE = get_profile("toy").replace(pretrain_warmup_epochs=0,
                                     pretrain_base_lr={m: 0.1 for m in ("dino", "mae", "vicreg")})
# name: method, options, scans per process and micro-batch, scans in the data set (KoLeo needs two rows per process)
RUNS = {
    "dino": ("dino", None, 1, 8),
    "mae": ("mae", None, 1, 8),
    "vicreg": ("vicreg", None, 2, 16),
    "dino_sinkhorn_koleo": ("dino", {"centring": "sinkhorn", "koleo_weight": 0.1}, 2, 16),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pretrain(name: str, run_dir, world: int) -> None:
    method, options, per_process, n_scans = RUNS[name]
    pretrain_on(InMemoryVolumes(n=n_scans), method=method, profile=PROFILE, run_dir=run_dir, options=options,
                batch_size=per_process * (WORLD // world), **RUN)


def _worker(rank: int, world: int, port: int, root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        for name in RUNS:
            _pretrain(name, f"{root}/{name}", world)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


# --------------------------------------------- the parts computed per process by design, for the one-process run
# Process r holds rows [r·b, (r+1)·b) of each micro-batch (loop.py), so in the one-process run of the same global
# micro-batch (W·b scans) its rows are the r-th of W equal blocks of each view's rows.

class _PerProcessBatchNorm1d(nn.BatchNorm1d):
    """VICReg's expander normalises each process's rows on CPUs (``methods/vicreg.py``; torch's SyncBatchNorm needs
    GPUs): here the one process's (2 views · W·b, D) rows are normalised per block of W, each block the rows of both
    views that process r holds. The running statistics are process 0's: DDP broadcasts process 0's buffers before
    every forward and process 0 saves the state (they do not enter a training step)."""

    def forward(self, x):
        blocks = x.unflatten(0, (2, WORLD, -1))  # (view, process, b, D)
        out = [F.batch_norm(blocks[:, r].flatten(0, 1), self.running_mean if r == 0 else None,
                            self.running_var if r == 0 else None, self.weight, self.bias, True, self.momentum, self.eps)
               for r in range(WORLD)]
        self.num_batches_tracked.add_(1)
        return torch.stack([o.unflatten(0, (2, -1)) for o in out], dim=1).flatten(0, 2)


def _koleo_per_process(features, eps=1e-8):
    """DINO's KoLeo term (DINOv2's ``KoLeoLoss``: −mean log nearest-neighbour distance of the L2-normalised rows) the
    way DINOv2 computes it under DDP: on each process's batch (its own rows of one global crop), the processes' terms
    averaged by DDP's gradient mean and the all-reduced loss. Written out here, independent of ``ssl.koleo_loss``."""
    terms = []
    for z in F.normalize(features.float(), dim=-1, eps=eps).chunk(WORLD):
        squared = ((z[:, None] - z[None]) ** 2).sum(-1) + torch.diag(torch.full((len(z),), float("inf")))
        terms.append(-torch.log(squared.min(dim=1).values.sqrt() + eps).mean())
    return sum(terms) / WORLD


def _per_process(name: str, stack: ExitStack) -> None:
    """Patch the one-process run ``name`` so that the parts computed per process by design are computed per process."""
    from fmct_lib.train.methods import dino, vicreg
    mp_ = stack.enter_context(pytest.MonkeyPatch.context())
    if RUNS[name][0] == "vicreg":
        real = vicreg.Expander

        def expander(in_dim, dim):
            e = real(in_dim, dim)
            for m in e:
                if type(m) is nn.BatchNorm1d:
                    m.__class__ = _PerProcessBatchNorm1d
            return e
        mp_.setattr(vicreg, "Expander", expander)
    if (RUNS[name][1] or {}).get("koleo_weight"):
        mp_.setattr(dino, "koleo_loss", _koleo_per_process)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each run by one process (micro-batches of W·b scans) and by two (of b each): the same global batches."""
    root = tmp_path_factory.mktemp("ddp")
    saved = {v: os.environ.pop(v) for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK") if v in os.environ}
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name in RUNS:
            with ExitStack() as stack:
                _per_process(name, stack)
                _pretrain(name, root / "one" / name, 1)
    finally:
        torch.set_num_threads(n_threads)
        os.environ.update(saved)
    mp.spawn(_worker, args=(WORLD, _free_port(), str(root / "two")), nprocs=WORLD, join=True)
    return root


def _rows(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


# the logged signals of the global batch (all-reduced or gathered); VICReg's invariance and DINO's KoLeo, means over
# the processes of terms each computes on its own rows, are compared in test_logged_loss_terms_are_of_the_global_batch
GLOBAL_SIGNALS = ("loss", "teacher_entropy", "kl_to_uniform", "centre_norm", "feature_std", "effective_rank",
                  "variance", "covariance")
# VICReg's tensors whose gradient is zero in exact arithmetic: a constant they add to every row is removed by the
# batch norm after them (the backbone's last norm's bias, through the expander's first linear layer; the biases of
# the linear layers 0 and 3) or by the loss (its three terms do not change when z shifts: the last layer's bias).
# Their float-noise gradients (1e-5 of the others') become Adam steps of ±lr, different in each run. The batch
# norms' running means carry the biases 0 and 3 (and enter no training step), and the health signals of the
# backbone's features (of the L2-normalised, uncentred rows) the last norm's bias: compared at step 1 only, before
# any update.
NO_GRADIENT = {"vicreg": {"net.backbone.norm.bias", "net.expander.0.bias", "net.expander.3.bias",
                          "net.expander.6.bias", "net.expander.1.running_mean", "net.expander.4.running_mean"}}
FIRST_STEP_ONLY = {"vicreg": {"feature_std", "effective_rank"}}


def _assert_weights_match(a: torch.Tensor, b: torch.Tensor, where) -> None:
    """Within float32 noise: float32 sums taken in another order (the gradient all-reduce, the gathered rows) differ
    by ~1e-7 relative in the gradients, ~1e-5 after VICReg's batch-norm backward (a small difference of large terms);
    after three Adam steps the weights differ by at most 1e-6 root-mean-square per tensor (measured), a few elements
    with a near-zero gradient (where Adam's ``g / √v`` is ill-conditioned) by up to 5e-5. A wrong gradient turns
    the updates of nearly every weight, each ~``lr`` = 1.6e-3 to 3.1e-3: 100× the bounds."""
    d = (a.double() - b.double()).abs()
    rms, largest = float(d.pow(2).mean().sqrt()), float(d.max())
    assert rms <= 1e-5 and largest <= 1e-4, (where, f"rms {rms:.2e}, max {largest:.2e}")


@pytest.mark.parametrize("name", RUNS)
def test_two_processes_match_one(runs, name):
    one, two = runs / "one" / name, runs / "two" / name
    a = torch.load(one / STATE_FILE, weights_only=True)["task"]
    b = torch.load(two / STATE_FILE, weights_only=True)["task"]
    assert a.keys() == b.keys()
    for part in a:
        tensors = a[part].items() if isinstance(a[part], dict) else [("", a[part])]
        for k, v in tensors:
            w = b[part][k] if k else b[part]
            if f"{part}.{k}" not in NO_GRADIENT.get(name, ()):
                _assert_weights_match(v, w, (part, k))
    # per-step losses, loss terms and health signals (of the global batch: all-reduced or gathered) agree too;
    # abs: Sinkhorn's targets are near uniform over the prototypes, their KL to it 1e-8 to 1e-5 and differing by 1e-8
    rows_one, rows_two = _rows(one), _rows(two)
    for r1, r2 in zip(rows_one, rows_two, strict=True):
        for key in GLOBAL_SIGNALS:
            if key in r1 and (r1["step"] == 1 or key not in FIRST_STEP_ONLY.get(name, ())):
                assert r1[key] == pytest.approx(r2[key], rel=1e-4, abs=1e-7), (r1["step"], key)
    expected = {"vicreg": {"variance", "covariance"}, "dino_sinkhorn_koleo": {"teacher_entropy", "koleo"}}
    assert expected.get(name, set()) <= rows_one[0].keys()  # the method and its options ran
    config = json.loads((two / "config.json").read_text())["run"]
    assert config["world_size"] == 2 and config["warmup_steps"] == 0
    assert all(config["dino"][k] == v for k, v in (RUNS[name][1] or {}).items())


@pytest.mark.parametrize("name, term", [("vicreg", "invariance"), ("dino_sinkhorn_koleo", "koleo")])
def test_logged_loss_terms_are_of_the_global_batch(runs, name, term):
    """VICReg's invariance (a mean over the local rows) and DINO's KoLeo (per process, by design) enter the loss
    per process, and DDP averages them; the log shows that average, as the loss's (an audit: process 0 logged its
    own term, so in a two-process run the logged terms did not add up to the logged loss)."""
    for r1, r2 in zip(_rows(runs / "one" / name), _rows(runs / "two" / name), strict=True):
        assert r1[term] == pytest.approx(r2[term], rel=1e-4), r1["step"]
