"""Interactive attention viewer for JupyterLab (paper, "Visual interpretation", Fig. 5).

Shows a slice of the model input with the attention map or the attention-distance map on top, for several
encoders side by side (pretrained vs fine-tuned), with a colour bar and, where a lesion mask is given, the
lesion's outline. The attention of every layer and head is computed once, at construction
(:func:`~fmct_lib.interpret.attention.compute_attention`); moving a control only slices, colours and encodes a
PNG (about 40 ms for two 96³ panels on a busy 2-core CPU). :func:`viewer_from_files` builds one from a NIfTI
file and an encoder checkpoint (ours or the authors').

Display conventions (the same as Fig. 5, ``figure.py``)
- The volume is the model input, (3, D0, D1, D2) in RAS voxel order, one window per channel; the window
  preset picks the channel: brain (40, 80), subdural (80, 200), bone (600, 2800) — each already scaled to
  [0, 1] by preprocessing.
- Slices are shown radiologically (``figure.display_slice``): patient's right on the image's left; anterior
  up in axial slices, superior up in coronal and sagittal slices; anterior on the left in sagittal slices.
- Attention is shown as enrichment (multiples of a uniform map, ``attention.enrichment``) on one fixed
  logarithmic scale for every panel, ``1/N … N`` for N patches, in magma: a near-uniform map looks uniform.
  Distance maps share one mm range across the panels (viridis). Both colour maps are perceptually uniform.
- The overlay is blended uniformly with the chosen opacity; opacity 0 shows the image alone. The lesion
  outline (cyan) is drawn on top, whatever the opacity.
"""
from __future__ import annotations

import io
import math
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize, to_rgb
from matplotlib.figure import Figure
from matplotlib.image import imsave
from scipy.ndimage import binary_erosion

from ..data.preprocess import PAPER_WINDOWS
from .attention import AttentionResult, compute_attention
from .figure import (AXES, DISTANCE_CMAP, ENRICHMENT_CMAP, OUTLINE_COLOUR, display_slice, enrichment_norm,
                     enrichment_ticks, lesion_enrichment)
from .lesion import head_mask

__all__ = ["WINDOW_CHANNELS", "AXES", "COLORMAPS", "display_slice", "AttentionViewer", "viewer_from_files"]

# window preset -> (channel of the model input, (level, width) in HU it holds), in preprocessing's order
WINDOW_CHANNELS: dict[str, tuple[int, tuple[float, float]]] = {
    name: (channel, window) for channel, (name, window) in enumerate(zip(("brain", "subdural", "bone"), PAPER_WINDOWS))
}
COLORMAPS = {"attention": ENRICHMENT_CMAP, "distance": DISTANCE_CMAP}


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    imsave(buffer, image, format="png")
    return buffer.getvalue()


def _outline(mask: np.ndarray) -> np.ndarray:
    """The boundary pixels of a 2-D boolean mask (inside the mask, next to the outside)."""
    return mask & ~binary_erosion(mask, border_value=0)


class AttentionViewer:
    """Side-by-side attention viewer. ``results`` maps a panel name (``pretrained``, ``finetuned``…) to the
    :class:`AttentionResult` of that encoder on ``volume``; ``mask`` (optional) is a lesion mask on the same grid,
    boolean or the fraction of each voxel in the lesion (``lesion.mask_to_model_input``), outlined where non-zero on
    every panel; the caption gives its enrichment within the head (``figure.lesion_enrichment``; a mask partly in
    the air, drawn loosely, is outlined but not measured, and the caption says why), under ``mask_name``. Display it as the
    last expression of a cell; :meth:`render` returns the panels currently shown and :meth:`render_colour_bar`
    their colour bar."""

    def __init__(self, volume, results: Mapping[str, AttentionResult], mask=None, interpolation: str = "nearest",
                 panel_pixels: int = 256, cache_size: int = 16, mask_name: str = "lesion"):
        volume = volume.detach().cpu().numpy() if torch.is_tensor(volume) else volume
        self.volume = np.asarray(volume, dtype=np.float32)
        if self.volume.ndim != 4 or self.volume.shape[0] != len(WINDOW_CHANNELS):
            raise ValueError(f"expected the model input (3, D0, D1, D2), got shape {self.volume.shape}")
        if not results:
            raise ValueError("no attention results to show")
        shapes = {(r.num_layers, r.num_heads) for r in results.values()}
        if len(shapes) > 1:
            raise ValueError(f"the panels' encoders differ in (layers, heads): {sorted(shapes)}")
        patches = {r.num_patches for r in results.values()}
        if len(patches) > 1:
            raise ValueError(f"the panels' encoders have different patch grids ({sorted(patches)} patches): their "
                             "enrichment scales (1/N … N) would differ under one colour bar")
        for name, result in results.items():
            if result.volume_shape != self.volume.shape[1:]:
                raise ValueError(f"attention of {name!r} covers {result.volume_shape}, the volume is "
                                 f"{self.volume.shape[1:]}")
        if mask is not None and np.shape(mask) != self.volume.shape[1:]:
            raise ValueError(f"the lesion mask has shape {np.shape(mask)}, the volume {self.volume.shape[1:]}")
        if mask is not None and not 0 <= np.min(mask) <= np.max(mask) <= 1:
            raise ValueError("the lesion mask must be boolean or voxel fractions in [0, 1], not a label map: select "
                             "the lesion with lesion.task_mask and lesion.mask_to_model_input")
        self.results = dict(results)
        self.lesion = None if mask is None else np.asarray(mask, dtype=np.float32)  # weights of lesion_enrichment
        self.mask = None if mask is None else self.lesion != 0                     # outlined
        self.mask_name = mask_name  # what the mask holds, in the caption ("lesions (edema+ich)")
        self.head_mask = head_mask(self.volume)  # the anatomical head, against which the lesion is measured
        self.interpolation = interpolation
        self.zoom = max(1, math.ceil(panel_pixels / max(self.volume.shape[1:])))
        self.num_patches = next(iter(self.results.values())).num_patches
        self._maps: OrderedDict = OrderedDict()  # (name, show, layer, head) -> full-resolution map
        self._cache_size = cache_size
        self._ranges: dict = {}  # (show, layer, head) -> the shared colour range, tiny, never evicted
        self._bars: dict = {}    # (show, range) -> colour-bar PNG
        self._build_widgets()
        self.refresh()

    @classmethod
    def from_encoders(cls, volume, encoders: Mapping[str, torch.nn.Module], voxel_mm: float | Sequence[float],
                      **kwargs) -> "AttentionViewer":
        """Compute every encoder's attention on ``volume`` once, then build the viewer."""
        results = {name: compute_attention(encoder, volume, voxel_mm) for name, encoder in encoders.items()}
        return cls(volume, results, **kwargs)

    # -- widgets ----------------------------------------------------------------------------------
    def _build_widgets(self) -> None:
        first = next(iter(self.results.values()))
        layers = [("mean", "mean")] + [(str(i + 1), i) for i in range(first.num_layers)]
        heads = [("mean", "mean")] + [(str(i + 1), i) for i in range(first.num_heads)]
        size = self.volume.shape[1 + AXES["axial"]]
        start = int(np.argmax(self.mask.sum(axis=(0, 1)))) if self.mask is not None and self.mask.any() else size // 2
        self.axis = widgets.ToggleButtons(options=list(AXES)[::-1], value="axial", description="view")
        self.slice = widgets.IntSlider(value=start, min=0, max=size - 1, description="slice",
                                       continuous_update=True)
        self.window = widgets.ToggleButtons(options=list(WINDOW_CHANNELS), value="brain", description="window")
        self.show = widgets.ToggleButtons(options=["attention", "distance"], value="attention",
                                          description="show")
        self.layer = widgets.Dropdown(options=layers, value=first.num_layers - 1, description="layer")
        self.head = widgets.Dropdown(options=heads, value="mean", description="head")
        self.opacity = widgets.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.05, description="opacity")
        self.outline = widgets.Checkbox(value=self.mask is not None, description="lesion outline",
                                        disabled=self.mask is None)
        self.images = {name: widgets.Image(format="png") for name in self.results}
        self.colour_bar = widgets.Image(format="png", layout=widgets.Layout(width=f"{self._bar_pixels()}px"))
        self.info = widgets.HTML()
        self.slice.add_class("fmct-slice")
        self.colour_bar.add_class("fmct-colour-bar")
        for image in self.images.values():
            image.add_class("fmct-panel")
        self.axis.observe(self._on_axis, names="value")
        for control in (self.slice, self.window, self.show, self.layer, self.head, self.opacity, self.outline):
            control.observe(lambda change: self.refresh(), names="value")
        panels = [widgets.VBox([widgets.HTML(f"<b>{name}</b>"), image]) for name, image in self.images.items()]
        self.widget = widgets.VBox([
            widgets.HBox([self.axis, self.window]), widgets.HBox([self.show, self.layer, self.head]),
            widgets.HBox([self.slice, self.opacity, self.outline]), widgets.HBox(panels), self.colour_bar, self.info,
        ])

    def _on_axis(self, change) -> None:
        size = self.volume.shape[1 + AXES[change["new"]]]
        self.slice.max = size - 1  # clamps the value if needed
        self.refresh()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    # -- state ------------------------------------------------------------------------------------
    @property
    def selected_layer(self) -> int | None:
        return None if self.layer.value == "mean" else self.layer.value

    @property
    def selected_head(self) -> int | None:
        return None if self.head.value == "mean" else self.head.value

    def overlay_volume(self, name: str) -> np.ndarray:
        """The full-resolution map behind panel ``name`` right now: attention as enrichment (1 = uniform) or
        attention distance in mm."""
        key = (name, self.show.value, self.selected_layer, self.selected_head)
        if key not in self._maps:
            result = self.results[name]
            make = result.enrichment_map if self.show.value == "attention" else result.distance_map
            self._maps[key] = make(self.selected_layer, self.selected_head, mode=self.interpolation)
            while len(self._maps) > self._cache_size:
                self._maps.popitem(last=False)
        self._maps.move_to_end(key)
        return self._maps[key]

    def colour_range(self) -> tuple[float, float]:
        """The range every panel shares: ``1/N … N`` (log) for attention, the panels' min … max mm for distance."""
        if self.show.value == "attention":
            norm = enrichment_norm(self.num_patches)
            return norm.vmin, norm.vmax
        key = (self.show.value, self.selected_layer, self.selected_head)
        if key not in self._ranges:
            maps = [self.overlay_volume(name) for name in self.results]
            self._ranges[key] = (min(float(m.min()) for m in maps), max(float(m.max()) for m in maps))
        return self._ranges[key]

    def _scaled(self, values: np.ndarray) -> np.ndarray:
        """Values → [0, 1] on the shared scale (logarithmic for attention)."""
        low, high = self.colour_range()
        if self.show.value == "attention":
            values, low, high = np.log(np.clip(values, low, high)), math.log(low), math.log(high)
        return np.clip((values - low) / (high - low), 0.0, 1.0) if high > low else np.zeros_like(values)

    # -- rendering --------------------------------------------------------------------------------
    def render_panel(self, name: str) -> np.ndarray:
        """The RGB uint8 image of panel ``name`` for the current controls."""
        channel = WINDOW_CHANNELS[self.window.value][0]
        gray = np.clip(display_slice(self.volume[channel], self.axis.value, self.slice.value), 0.0, 1.0)
        values = display_slice(self.overlay_volume(name), self.axis.value, self.slice.value)
        colour = colormaps[COLORMAPS[self.show.value]](self._scaled(values))[..., :3]
        alpha = self.opacity.value
        rgb = (1.0 - alpha) * gray[..., None] + alpha * colour
        rgb = np.repeat(np.repeat(rgb, self.zoom, axis=0), self.zoom, axis=1)
        if self.mask is not None and self.outline.value:
            lesion = display_slice(self.mask, self.axis.value, self.slice.value)
            rgb[_outline(np.repeat(np.repeat(lesion, self.zoom, axis=0), self.zoom, axis=1))] = to_rgb(OUTLINE_COLOUR)
        return np.round(rgb * 255).astype(np.uint8)

    def render(self) -> np.ndarray:
        """All panels side by side (in ``results`` order, 4 white pixels apart), RGB uint8."""
        panels = [self.render_panel(name) for name in self.results]
        gap = np.full((panels[0].shape[0], 4, 3), 255, dtype=np.uint8)
        out = [panels[0]]
        for panel in panels[1:]:
            out += [gap, panel]
        return np.concatenate(out, axis=1)

    def _bar_pixels(self) -> int:
        """Width of the colour bar: the panels' (at least 320 pixels, room for its label)."""
        panel = self.zoom * max(self.volume.shape[1:])
        return max(320, len(self.results) * (panel + 4) - 4)

    def render_colour_bar(self) -> bytes:
        """The PNG of the colour bar of the current map type and range (cached)."""
        key = (self.show.value, self.colour_range())
        if key not in self._bars:
            low, high = key[1]
            fig = Figure(figsize=(self._bar_pixels() / 100, 0.9), dpi=100, layout="constrained")
            ax = fig.add_subplot()
            if self.show.value == "attention":
                bar = fig.colorbar(ScalarMappable(enrichment_norm(self.num_patches), ENRICHMENT_CMAP), cax=ax,
                                   orientation="horizontal")
                ticks, tick_labels = enrichment_ticks(self.num_patches)
                bar.set_ticks(ticks, labels=tick_labels)
                bar.set_label(f"attention ÷ uniform, log scale\n(1 = uniform, {self.num_patches} = all on one patch)",
                              fontsize=8)
            else:
                bar = fig.colorbar(ScalarMappable(Normalize(low, high), DISTANCE_CMAP), cax=ax,
                                   orientation="horizontal")
                bar.set_label("attention distance (mm), Eq. 1", fontsize=8)
            ax.tick_params(labelsize=7)
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=100)  # its pixel size, whatever savefig.dpi says
            self._bars[key] = buffer.getvalue()
        return self._bars[key]

    def refresh(self) -> None:
        """Redraw every panel, the colour bar and the caption from the current controls."""
        for name, image in self.images.items():
            image.value = _png(self.render_panel(name))
        self.colour_bar.value = self.render_colour_bar()
        layer = "mean of layers" if self.selected_layer is None else f"layer {self.selected_layer + 1}"
        head = "mean of heads" if self.selected_head is None else f"head {self.selected_head + 1}"
        low, high = self.colour_range()
        if self.show.value == "attention":
            what = (f"cls-to-patch attention ÷ uniform ({COLORMAPS['attention']}, log scale 1/{self.num_patches} → "
                    f"{self.num_patches}, the same for every panel)")
            if self.mask is not None and self.mask.any():
                try:
                    values = {name: lesion_enrichment(result, self.lesion, self.head_mask, self.selected_layer,
                                                      self.selected_head)
                              for name, result in self.results.items()}
                    what += f"; {self.mask_name} enrichment " + ", ".join(f"{name} {v:.2f}×"
                                                                          for name, v in values.items())
                except ValueError as e:  # a mask partly in air (drawn loosely): outlined, but not measured
                    what += f"; {self.mask_name} enrichment not measured ({e})"
        else:
            what = f"attention distance, Eq. 1 ({COLORMAPS['distance']}, {low:.1f} → {high:.1f} mm)"
        self.info.value = (f"{what}; {layer}, {head}; {self.axis.value} slice {self.slice.value}"
                           f"/{self.slice.max}; window {self.window.value} {WINDOW_CHANNELS[self.window.value][1]}")


def viewer_from_files(nifti_path: str | os.PathLike, checkpoint_path: str | os.PathLike, preset: str = "paper", *,
                      mask_path: str | os.PathLike | None = None, profile=None, **kwargs) -> AttentionViewer:
    """The viewer of one encoder on one scan, straight from files.

    ``nifti_path`` is a CT volume in HU (NIfTI); ``checkpoint_path`` an encoder checkpoint, ours or the authors'
    ``.pth`` layouts (``models.checkpoints.load_encoder``). The scan goes through the ``preset`` chain (``paper``,
    or the authors' ``reference``) at the geometry of ``profile``, by default the profile whose input size is the
    encoder's. ``mask_path`` is an optional lesion mask on the scan's grid (``paper`` chain only), outlined on
    the panel. ``kwargs`` go to :class:`AttentionViewer`. A missing or unreadable file raises an error naming it.
    """
    from ..config import PROFILES, get_profile
    from ..data.preprocess import load_volume, model_input, preset_spec, to_canvas_with_affine
    if preset not in ("paper", "reference"):  # other presets are external encoders' (other orientation, channels)
        raise ValueError(f"preset {preset!r}: the viewer shows this library's ViT on the paper chain or the authors' "
                         f"reference chain; choose 'paper' or 'reference'")
    from ..models.checkpoints import load_encoder
    from .distance import model_voxel_mm
    from .lesion import load_scan_with_mask, mask_to_model_input

    nifti_path, checkpoint_path = Path(nifti_path), Path(checkpoint_path)
    encoder = load_encoder(checkpoint_path)  # FileNotFoundError / CheckpointError naming the file
    size = encoder.config.img_size
    if profile is None:
        matching = [p for p in PROFILES.values() if p.input_size == size]
        if not matching:
            raise ValueError(f"{checkpoint_path}: the encoder takes {size}³ inputs and no profile makes that size "
                             f"({', '.join(f'{p.name} {p.input_size}³' for p in PROFILES.values())}); pass profile=")
        profile = matching[0]
    profile = get_profile(profile)
    if profile.input_size != size:
        raise ValueError(f"{checkpoint_path}: the encoder takes {size}³ inputs, profile {profile.name!r} makes "
                         f"{profile.input_size}³")
    spec = preset_spec(preset, profile)
    if not nifti_path.is_file():
        raise FileNotFoundError(f"{nifti_path}: CT volume not found")
    mask = None
    if mask_path is not None:
        if spec.canvas is None:
            raise ValueError(f"{mask_path}: a lesion mask needs the paper chain (preset 'paper'); the reference "
                             "chain stretches the head's bounding box")
        volume, labels = load_scan_with_mask(nifti_path, mask_path, spec)
        mask = mask_to_model_input(labels, spec)
        voxel_mm = model_voxel_mm(profile)
    else:
        hu, affine = load_volume(nifti_path)  # PreprocessError naming the file
        canvas, canvas_affine = to_canvas_with_affine(hu, affine, spec, str(nifti_path))
        volume = model_input(canvas[None], spec)[0]
        # paper: the eval crop resized to the input; reference: the head's box stretched to it, per axis
        voxel_mm = (model_voxel_mm(profile) if spec.canvas is not None
                    else tuple(float(v) for v in np.linalg.norm(canvas_affine[:3, :3], axis=0)))
    return AttentionViewer.from_encoders(volume, {checkpoint_path.name: encoder}, voxel_mm, mask=mask, **kwargs)
