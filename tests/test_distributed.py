"""Choosing a process's device, on a machine without a GPU: CUDA is simulated below ``torch.cuda.set_device``."""
import pytest
import torch

from fmct_lib.train.distributed import setup


@pytest.fixture()
def two_gpus(monkeypatch):
    """Two visible GPUs; ``torch.cuda.set_device`` runs for real down to the driver call, which records the
    index it was given. Launched as torchrun's process of local rank 1, alone (no process group)."""
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch._C, "_cuda_setDevice", chosen.append, raising=False)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    return chosen


@pytest.mark.parametrize("device", ["cuda", torch.device("cuda"), None])
def test_a_bare_cuda_device_is_this_processs_gpu(two_gpus, device):
    """``--device cuda`` (no index) once reached ``set_device``, which refuses a device without an index."""
    info = setup(device)
    assert info.device == torch.device("cuda", 1) and two_gpus == [1]


def test_an_explicit_device_is_kept(two_gpus):
    assert setup("cuda:0").device == torch.device("cuda", 0) and two_gpus == [0]
    assert setup("cpu").device == torch.device("cpu") and two_gpus == [0]  # no GPU chosen for the CPU


@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_a_visible_gpu_is_a_clear_error(two_gpus, monkeypatch, device):
    """A ValueError, so ``fmct pretrain --device cuda`` on a CPU machine is one line and exit status 2."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ValueError, match="no CUDA GPU is visible"):
        setup(device)


def test_a_gpu_index_past_the_visible_ones_and_a_bad_name_are_clear_errors(two_gpus):
    with pytest.raises(ValueError, match=r"'cuda:2' asked for, but this process sees 2 GPU\(s\) \(cuda:0 to cuda:1\)"):
        setup("cuda:2")
    with pytest.raises(ValueError, match="'gpu': not a device name"):
        setup("gpu")
    assert two_gpus == []  # refused before any device was chosen


def test_a_group_waits_an_hour_at_a_collective_and_a_command_line_run_leaves_it(tmp_path, monkeypatch):
    """Rank 0 alone scores the validation monitor while the others wait (NCCL's default 10 minutes could end a
    healthy run on slow storage); ``teardown`` leaves the group (torch warns at exit otherwise), once."""
    import datetime

    import torch.distributed as dist

    from fmct_lib.train import distributed
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it; the group joined is a real gloo group of one
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    joined = []
    real = dist.init_process_group
    monkeypatch.setattr(dist, "init_process_group",
                        lambda **kw: joined.append(kw) or real(init_method=f"file://{tmp_path / 'store'}",
                                                               world_size=1, rank=0, **kw))
    try:
        assert setup("cpu").world_size == 1  # the group's own size
        assert joined == [{"backend": "gloo", "timeout": datetime.timedelta(minutes=60)}]
        assert dist.is_initialized()
    finally:
        distributed.teardown()
    assert not dist.is_initialized()
    distributed.teardown()  # no group: nothing to leave
