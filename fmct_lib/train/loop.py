"""The one training loop of every pretraining method (DINO, MAE, VICReg): optimiser, schedules, AMP, accumulation,
checkpoints, resume.

Paper, Methods: AdamW (β = 0.9, 0.95; weight decay 0.05), base LR 3e-4 (DINO) or 1.5e-3 (MAE) scaled by
global batch / 256, linear warm-up then cosine. Weight decay, constant as the paper states it, skips biases,
norms, tokens and position tables (MAE's and timm's practice; DINO's code spares only biases and norms).
bf16 autocast where the GPU supports it, else fp16 with loss scaling; fp32 on the CPU.

Data order: a seeded permutation of the scans per epoch (shuffled, as the paper); a global batch of
``batch_size × world × accum_steps`` scans per optimiser step, the tail of each epoch dropped. Process
``r`` reads rows ``[r·b, (r+1)·b)`` of each micro-batch; view and masking randomness is drawn for the
whole micro-batch (see ``data/augment.py``), so results do not depend on the number of processes.

Resume state (``state_last.pt``, atomic, loadable with ``torch.load(weights_only=True)``): models,
teacher, centre, optimiser, loss scaler, step, and the torch / numpy / python / view-generator RNG
states. Everything else is a function of the step, so a resumed run retraces the uninterrupted one.
It is read onto the CPU (the RNG states must stay there; ``load_state_dict`` copies the rest to the device);
a damaged one is an error naming it.
"""
from __future__ import annotations

import contextlib
import csv
import json
import random
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from ..data.shared_memory import check_room_for_batches
from ..io import atomic_path, atomic_write_text
from ..models.checkpoints import CheckpointError, load_state_dict_file
from ..precision import autocast_for
from ..progress import tqdm
from .distributed import DistInfo, all_reduce_mean, barrier
from .schedules import warmup_cosine

__all__ = ["train", "epoch_permutation", "micro_batches", "make_optimizer", "TrainingDiverged", "STATE_FILE",
           "DONE_FILE"]

STATE_FILE = "state_last.pt"
DONE_FILE = "done"
# one row per step; a method logs the columns it has (DINO: teacher signals, KoLeo where weighted; VICReg: its
# three terms), and the rows at epoch ends carry the validation kNN score of the frozen encoder (``train/monitor.py``)
METRIC_COLUMNS = ["step", "epoch", "loss", "lr", "momentum", "teacher_temp", "teacher_entropy", "kl_to_uniform",
                  "centre_norm", "feature_std", "effective_rank", "koleo", "invariance", "variance", "covariance",
                  "knn_auroc", "throughput"]


class TrainingDiverged(ValueError):
    """The loss of a step is not finite: the run stops before that step changes the weights or is saved (a
    ValueError: the settings given cannot train on this data; the command line says it in one line)."""


# ------------------------------------------------------------------------------------------- data order
def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The scan order of one epoch: a permutation seeded by (seed, epoch), the same on every process."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def micro_batches(n: int, seed: int, epoch: int, first_step: int, steps_per_epoch: int, batch_size: int,
                  world_size: int, rank: int, accum_steps: int) -> list[list[int]]:
    """This process's index lists for steps ``first_step .. steps_per_epoch − 1`` of an epoch (in order)."""
    perm = epoch_permutation(n, seed, epoch).tolist()
    per_micro = batch_size * world_size
    out = []
    for step in range(first_step, steps_per_epoch):
        for m in range(accum_steps):
            start = (step * accum_steps + m) * per_micro + rank * batch_size
            out.append(perm[start:start + batch_size])
    return out


def _collate(items: list[dict]) -> torch.Tensor:
    return torch.stack([torch.as_tensor(it["volume"]) for it in items])


# ---------------------------------------------------------------------------------------------- optimiser
def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.95)) -> torch.optim.AdamW:
    """AdamW with two groups: decayed matrices, and undecayed biases / norms / tokens / position tables."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or "token" in name or "pos_embed" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=tuple(betas))


# ------------------------------------------------------------------------------------------- state files
def _rng_state(generator: torch.Generator) -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "augment": generator.get_state(),
    }


def _set_rng_state(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():  # as many GPUs as both machines have (the views draw on the CPU)
        for index, cuda_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    v, key, gauss = state["python"]
    random.setstate((v, tuple(key), gauss))
    generator.set_state(state["augment"])


def _atomic_torch_save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _load_state(path: Path) -> dict:
    """The resume state, on the CPU, never executing code; a damaged file raises ``CheckpointError`` naming it."""
    try:
        return load_state_dict_file(path)
    except CheckpointError as e:
        raise CheckpointError(f"{e}; the run cannot resume from it: delete it, or start the run over "
                              f"(fmct pretrain --restart, resume=False)") from None


def _read_rows(path: Path) -> list[dict]:
    """The rows of a metrics log. A last line cut short (a kill mid-append, past the last checkpoint) is
    dropped with a warning; a bad line before it is an error naming the file and the line."""
    lines = [(i, line) for i, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    rows = []
    for i, line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
        elif i == lines[-1][0]:
            warnings.warn(f"{path}: dropped line {i}, the last, cut short by an interrupted write ({line[:60]!r})",
                          stacklevel=3)
        else:
            raise ValueError(f"{path}, line {i}: not a metrics row ({line[:60]!r}); the log is damaged")
    return rows


class MetricsLog:
    """``metrics.jsonl`` and ``metrics.csv``, one row per step; rows after a resumed step are dropped."""

    def __init__(self, run_dir: Path, keep_until_step: int):
        self.jsonl, self.csv = run_dir / "metrics.jsonl", run_dir / "metrics.csv"
        rows = []
        if self.jsonl.exists() and keep_until_step > 0:
            rows = [r for r in _read_rows(self.jsonl) if r["step"] <= keep_until_step]
        atomic_write_text(self.jsonl, "".join(json.dumps(r) + "\n" for r in rows))
        with open(self.csv, "w", newline="") as f:
            w = csv.DictWriter(f, METRIC_COLUMNS, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)

    def append(self, row: dict) -> None:
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        with open(self.csv, "a", newline="") as f:
            csv.DictWriter(f, METRIC_COLUMNS, extrasaction="ignore").writerow(row)


# ------------------------------------------------------------------------------------------------ loop
def train(task, dataset: Dataset, config: dict, run_dir: Path, dist_info: DistInfo, *, resume: bool = True,
          num_workers: int = 0, progress: bool = True, on_step=None, monitor=None,
          stop_after: int | None = None) -> int:
    """Run (or continue) the optimisation described by ``config`` until ``config["total_steps"]``.

    ``config`` holds ``seed, total_steps, steps_per_epoch, batch_size, accum_steps, lr, min_lr,
    warmup_steps, weight_decay, betas, checkpoint_every`` (see ``trainer.run_config``). ``on_step(step,
    metrics)`` is called on the main process after every step (live plots; tests use it to interrupt).
    ``monitor(encoder, device) -> dict`` (``train/monitor.py``) scores the exported encoder on the main
    process before the first step (row ``step 0``) and at the end of every epoch; its values join that
    step's row. ``stop_after``: end this call once the run has done that many steps (its state saved, so a
    later call continues it); the schedules still follow ``total_steps``. Returns the number of steps done.
    """
    run_dir = Path(run_dir)
    rank, world, device = dist_info.rank, dist_info.world_size, dist_info.device
    b, accum = config["batch_size"], config["accum_steps"]
    global_batch, steps_per_epoch, total = b * world * accum, config["steps_per_epoch"], config["total_steps"]
    end = total if stop_after is None else min(total, stop_after)
    if world != config["world_size"]:
        raise ValueError(f"config was made for {config['world_size']} processes, running with {world}")
    check_room_for_batches(dataset, b, num_workers, f"pretrain {task.name} ({run_dir})")

    task.to(device)
    model = task.model
    if world > 1:
        if device.type == "cuda":  # BatchNorm (VICReg's expander) over the global batch, as one process has it
            torch.nn.SyncBatchNorm.convert_sync_batchnorm(task.model)
        elif any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in task.model.modules()):
            warnings.warn(f"{task.name}: BatchNorm statistics are per process on CPUs (torch's SyncBatchNorm needs "
                          f"GPUs), so this {world}-process run differs from a one-process run", stacklevel=2)
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = make_optimizer(task.model, config["lr"], config["weight_decay"], config["betas"])
    autocast, needs_scaler = autocast_for(device)
    scaler = torch.amp.GradScaler(device.type, enabled=needs_scaler)
    generator = torch.Generator().manual_seed(config["seed"])

    step = 0
    state_path = run_dir / STATE_FILE
    if resume and state_path.exists():
        state = _load_state(state_path)
        task.load_state_dict(state["task"])
        optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:  # empty where the run was saved without loss scaling (CPU, bf16), as a fresh scaler
            scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"], generator)
        step = int(state["step"])
    log = MetricsLog(run_dir, step) if dist_info.is_main else None
    watching = monitor is not None and dist_info.is_main
    if watching and step == 0:
        log.append({"step": 0, "epoch": 0, **monitor(task.encoder(), device)})

    saved_step = step if state_path.exists() and resume else None  # the step the resume state on disk holds

    def save_state() -> None:
        nonlocal saved_step
        if dist_info.is_main:
            _atomic_torch_save({"step": step, "task": task.state_dict(), "optimizer": optimizer.state_dict(),
                                "scaler": scaler.state_dict(), "rng": _rng_state(generator)}, state_path)
        saved_step = step
        barrier()

    bar = tqdm(total=total, initial=step, disable=not (progress and dist_info.is_main), unit="step",
               desc=f"pretrain {task.name}")
    if step and progress and dist_info.is_main:
        bar.write(f"pretrain {task.name}: resumed at step {step} of {total} from {state_path}")
    n = len(dataset)
    while step < end:
        epoch, first = divmod(step, steps_per_epoch)
        batches = micro_batches(n, config["seed"], epoch, first, steps_per_epoch, b, world, rank, accum)
        loader = DataLoader(dataset, batch_sampler=batches, num_workers=num_workers, collate_fn=_collate,
                            pin_memory=device.type == "cuda")
        micro = iter(loader)
        for _ in range(first, steps_per_epoch):
            if step >= end:
                break
            t0 = time.perf_counter()
            lr = _lr(config, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = torch.zeros((), device=device)  # summed on the device: no host sync per micro-batch
            for m in range(accum):
                canvases = next(micro).to(device, non_blocking=True)
                sync = contextlib.nullcontext() if (m == accum - 1 or world == 1) else model.no_sync()
                with sync:
                    loss = task.micro_step(model, canvases, generator, slice(rank * b, (rank + 1) * b),
                                           b * world, step, autocast)
                    scaler.scale(loss / accum).backward()
                loss_sum += loss.detach().float() / accum
            loss_mean = float(all_reduce_mean(loss_sum.reshape(1))[0])  # one sync a step: the divergence check
            if not np.isfinite(loss_mean):  # every process sees the same mean, so all stop here together
                bar.close()
                raise TrainingDiverged(_diverged_message(loss_mean, step + 1, run_dir, saved_step))
            scaler.unscale_(optimizer)
            task.before_optimizer(step)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            extra = task.after_step(step)
            step += 1
            dt = time.perf_counter() - t0
            row = {"step": step, "epoch": epoch, "loss": loss_mean, "lr": lr, **extra,
                   "throughput": global_batch / dt}
            if watching and (step % steps_per_epoch == 0 or step == total):
                row.update(monitor(task.encoder(), device))
                if np.isfinite(row["knn_auroc"]):  # NaN: no task can be scored (``pretrain`` said why, once)
                    bar.write(f"step {step} (epoch {epoch + 1}): validation kNN AUROC {row['knn_auroc']:.3f}")
            if dist_info.is_main:
                log.append(row)
                bar.update(1)
                bar.set_postfix(loss=f"{loss_mean:.4f}", scans_s=f"{global_batch / dt:.1f}")
            if config["checkpoint_every"] and step % config["checkpoint_every"] == 0 and step < total:
                save_state()
            if on_step is not None and dist_info.is_main:
                on_step(step, row)
    bar.close()
    save_state()
    return step


def _diverged_message(loss: float, step: int, run_dir: Path, saved_step: int | None) -> str:
    saved = (f"its resume state {run_dir / STATE_FILE} holds step {saved_step}, before it, but resuming would take "
             f"the same steps again" if saved_step is not None else "no resume state was written")
    return (f"{run_dir}: pretraining diverged: the loss of step {step} is {loss} (not finite); nothing of that step "
            f"was applied or saved and no encoder was exported ({saved}). Lower the learning rate (--batch-size sets "
            f"it by the global batch) or change the method's options, then start over (--restart, or another "
            f"--run-dir); the run's metrics.csv shows the steps before it.")


def _lr(config: dict, step: int) -> float:
    return warmup_cosine(step, config["total_steps"], config["warmup_steps"], config["lr"], config["min_lr"])
