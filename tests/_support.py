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


def tiny_pretrain_dataset(folder):
    """Six small NIfTI heads (five train, one test) and one unreadable train scan, as dataset ``tiny``."""
    import nibabel as nib
    import numpy as np
    import pandas as pd

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        hu = np.full((24, 24, 12), -1000, np.int16)
        hu[4:20, 4:20, 2:10] = rng.integers(0, 80, (16, 16, 8))  # a "head" of soft tissue
        nib.save(nib.Nifti1Image(hu, np.diag([4.0, 4.0, 8.0, 1.0])), folder / f"s{i}.nii")
        rows.append({"scan_id": f"s{i}", "patient_id": f"p{i}", "path": f"s{i}.nii",
                     "split": "test" if i == 5 else "train", "manufacturer": "A", "slice_thickness_mm": 8.0,
                     "spacing": "4,4,8"})
    rows.append({**rows[0], "scan_id": "broken", "patient_id": "p9", "path": "missing.nii", "split": "train"})
    pd.DataFrame(rows).to_csv(folder / "scans.csv", index=False)
