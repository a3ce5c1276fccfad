"""Small helpers shared by several test modules (importable from spawned DDP workers too)."""
import torch


class InMemoryVolumes(torch.utils.data.Dataset):
    """Random int16 HU canvases, the item form the preprocessing cache yields."""

    def __init__(self, n: int = 8, canvas: int = 37, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.volumes = (torch.rand(n, canvas, canvas, canvas, generator=g) * 1600 - 1000).to(torch.int16)

    def __len__(self):
        return len(self.volumes)

    def __getitem__(self, i):
        return {"scan_id": f"s{i}", "volume": self.volumes[i]}
