"""Export a synthetic scan as a DICOM series in the RSNA or CQ500 layout (for ingestion tests and demos)."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ["write_phantom_dicom"]


def write_phantom_dicom(scan, out_dir, flavour: str = "rsna", **quirks) -> list[Path]:
    """Write one synthetic scan as a DICOM series; returns the files written.

    ``scan`` is a scan-table row (``path`` resolved by ``load_scans``; ``patient_id``, ``manufacturer``,
    ``kvp``, ``slice_thickness_mm`` are used when present), a NIfTI path, a nibabel image, or a
    ``(hu, affine)`` pair. ``quirks`` pass through to ``fmct_lib.data.dicom_write.write_dicom_series``
    (``tilt_deg``, ``j2k``, ``wrong_intercept``, ``drop_slices``, ...).
    """
    from ..dicom_write import write_dicom_series

    options: dict = {}
    if isinstance(scan, Mapping) or hasattr(scan, "to_dict"):
        row = dict(scan.to_dict() if hasattr(scan, "to_dict") else scan)
        img = nib.load(row["path"])
        hu, affine = np.asarray(img.dataobj), img.affine
        if flavour == "cq500":
            options.update(manufacturer={"A": "SYNTH VENDOR A", "B": "SYNTH VENDOR B"}.get(row.get("manufacturer"),
                                                                                         "SYNTH"),
                           kvp=float(row.get("kvp", 120)),
                           series_description=f"{float(row.get('slice_thickness_mm', 5)):g}mm Plain")
    elif isinstance(scan, (str, Path)):
        img = nib.load(scan)
        hu, affine = np.asarray(img.dataobj), img.affine
    elif isinstance(scan, nib.spatialimages.SpatialImage):
        hu, affine = np.asarray(scan.dataobj), scan.affine
    else:
        hu, affine = scan
    options.update(quirks)
    return write_dicom_series(np.asarray(hu), np.asarray(affine, float), out_dir, flavour=flavour, **options)
