"""Two CPU processes (gloo, DDP) agree with one process on the same global batch, with gradient accumulation:
two micro-batches per optimiser step, the first under DDP's ``no_sync``."""
import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fmct_lib.train import pretrain_on
from fmct_lib.train.loop import STATE_FILE
from _support import InMemoryVolumes


RUN = dict(profile="toy", seed=3, max_steps=3, accum_steps=2, progress=False, device="cpu")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


METHODS = ("dino", "mae")  # VICReg's expander has BatchNorm, per process on CPUs (SyncBatchNorm needs GPUs)


def _worker(rank: int, world: int, port: int, root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        for method in METHODS:
            pretrain_on(InMemoryVolumes(), method=method, run_dir=f"{root}/{method}", batch_size=1, **RUN)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each method run by one process (micro-batches of 2) and by two (of 1 each): the same global batch of 4."""
    root = tmp_path_factory.mktemp("ddp")
    saved = {v: os.environ.pop(v) for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK") if v in os.environ}
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for method in METHODS:
            pretrain_on(InMemoryVolumes(), method=method, run_dir=root / "one" / method, batch_size=2, **RUN)
    finally:
        torch.set_num_threads(n_threads)
        os.environ.update(saved)
    mp.spawn(_worker, args=(2, _free_port(), str(root / "two")), nprocs=2, join=True)
    return root


def _rows(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", METHODS)
def test_two_processes_match_one(runs, method):
    one, two = runs / "one" / method, runs / "two" / method
    a = torch.load(one / STATE_FILE, weights_only=True)["task"]
    b = torch.load(two / STATE_FILE, weights_only=True)["task"]
    assert a.keys() == b.keys()
    for part in a:
        tensors = a[part].items() if isinstance(a[part], dict) else [("", a[part])]
        for k, v in tensors:
            w = b[part][k] if k else b[part]
            assert torch.allclose(v, w, atol=1e-5, rtol=1e-4), (part, k, (v - w).abs().max())
    # per-step losses, loss terms and health signals (of the global batch: all-reduced or gathered) agree too
    for r1, r2 in zip(_rows(one), _rows(two), strict=True):
        for key in ("loss", "teacher_entropy", "kl_to_uniform", "centre_norm", "feature_std", "effective_rank"):
            if key in r1:
                assert r1[key] == pytest.approx(r2[key], rel=1e-4), (r1["step"], key)
    assert json.loads((two / "config.json").read_text())["run"]["world_size"] == 2
