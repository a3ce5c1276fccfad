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


def tiny_nifti_folder(folder, n_patients: int = 4, shape=(20, 20, 10)):
    """A hospital's NIfTI export in miniature: two LAS volumes per patient (int16 HU, 1 x 1 x 3 mm) under
    ``folder/volumes`` and ``folder/labels.csv`` (path, patient_id, ich alternating by patient). Returns the
    labels CSV's path."""
    from pathlib import Path

    import nibabel as nib
    import numpy as np

    folder = Path(folder)
    rows = ["path,patient_id,ich"]
    for p in range(n_patients):
        for s in range(2):
            hu = np.random.default_rng(10 * p + s).integers(-1000, 1000, shape).astype(np.int16)
            path = folder / "volumes" / f"p{p}_s{s}.nii.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(hu, np.diag([-1.0, 1.0, 3.0, 1.0])), path)
            rows.append(f"p{p}_s{s}.nii.gz,P{p},{p % 2}")
    labels = folder / "labels.csv"
    labels.write_text("\n".join(rows) + "\n")
    return labels
