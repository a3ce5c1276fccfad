"""A one-glance figure of the synthetic conditions: one axial slice per condition, brain and bone windows.

Each column is one showcase subject (deterministic, clearly visible lesion parameters), acquired on
alternating scanners and slice thicknesses; the slice goes through the lesion's centre (or the lateral
ventricles for global conditions). Displayed in radiological convention (patient's right on the left).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .atlas import load_atlas
from .lesions import LABEL_CODES
from .phantom import render, sample_subject
from .scanner import acquire

__all__ = ["SHOWCASE", "condition_figure"]

# (title, conditions, lesion overrides, label code to centre the slice on)
SHOWCASE = [
    ("normal", (), {}, None),
    ("IPH + IVH", ("iph", "ivh"), {"iph": dict(radius=13.0, hu=72.0)}, "iph"),
    ("SDH (acute)", ("sdh",), {"sdh": dict(stage="acute", hu=68.0, thick=11.0)}, "sdh"),
    ("EDH + fracture", ("edh", "fracture"), {"edh": dict(thick=15.0)}, "fracture"),
    ("SAH", ("sah",), {"sah": dict(diffuse=False, hu=62.0)}, "sah"),
    ("tumour + oedema", ("tumor",), {"tumor": dict(radius=16.0, oedema_mm=18.0)}, "tumor"),
    ("oedema", ("edema",), {"edema": dict(radius=28.0, drop=12.0)}, "edema"),
    ("hydrocephalus", ("hydrocephalus",), {}, None),
    ("ADRD", ("adrd",), {}, None),
]
WINDOWS = {"brain W80/L40": (40, 80), "bone W2800/L600": (600, 2800)}


def _axial_index(labels: np.ndarray, affine: np.ndarray, code: int | None) -> int:
    if code is not None and (labels == code).any():
        return int(round(np.argwhere(labels == code)[:, 2].mean()))
    return int(round((15.0 - affine[2, 3]) / affine[2, 2]))          # z = +15 mm: the lateral ventricles


def condition_figure(out: str | Path | None = None, step: float = 2.0, seed: int = 0) -> Path:
    """Render the showcase subjects on a ``step`` mm grid and save ``<out>.png`` and ``<out>.pdf``.

    ``out`` defaults to ``<figures root>/synthetic_conditions``; returns the PNG path.
    """
    import matplotlib.pyplot as plt

    from ...paths import figures_root

    out = Path(out) if out is not None else figures_root() / "synthetic_conditions"
    out = out.with_suffix("")
    out.parent.mkdir(parents=True, exist_ok=True)
    atlas = load_atlas(step)
    fig, axes = plt.subplots(len(WINDOWS), len(SHOWCASE), figsize=(2.2 * len(SHOWCASE), 2.5 * len(WINDOWS)),
                             facecolor="black", squeeze=False)
    for col, (title, conditions, overrides, focus) in enumerate(SHOWCASE):
        params = sample_subject(1000 * seed + col, conditions, lesion_overrides=overrides)
        ph = render(params, atlas)
        vendor, slice_mm = "AB"[col % 2], (5.0, 2.5, 1.0)[col % 3]
        vol, lab, aff = acquire(ph.hu, ph.labels, ph.affine, vendor, slice_mm, 120,
                                np.random.default_rng(seed + col))
        k = int(np.clip(_axial_index(lab, aff, LABEL_CODES.get(focus)), 0, vol.shape[2] - 1))
        z_mm = aff[2, 3] + k * aff[2, 2]
        image = vol[:, :, k].T[::-1, ::-1]          # rows anterior->posterior, patient right on the left
        for row, (wname, (level, width)) in enumerate(WINDOWS.items()):
            ax = axes[row, col]
            ax.imshow(image, cmap="gray", vmin=level - width / 2, vmax=level + width / 2,
                      interpolation="bilinear", aspect=aff[1, 1] / aff[0, 0])
            ax.set_axis_off()
            if row == 0:
                ax.set_title(f"{title}\n{vendor}, {slice_mm:g} mm, z={z_mm:.0f}", color="w", fontsize=8)
    for row, wname in enumerate(WINDOWS):
        axes[row, 0].text(0.02, 0.02, wname, color="y", fontsize=7, transform=axes[row, 0].transAxes)
    fig.suptitle(f"fmct synthetic head CT: one slice per condition ({step:g} mm phantom grid)", color="w",
                 fontsize=10)
    fig.tight_layout()
    png = out.with_suffix(".png")
    fig.savefig(png, dpi=110, facecolor="black")
    fig.savefig(out.with_suffix(".pdf"), facecolor="black")
    plt.close(fig)
    return png
