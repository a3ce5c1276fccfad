"""Interactive attention viewer for JupyterLab (paper, "Visual interpretation", Fig. 5).

Shows a slice of the model input with the attention map or the attention-distance map on top, for several
encoders side by side (pretrained vs fine-tuned). The attention of every layer and head is computed once,
at construction (:func:`~fmct_lib.interpret.attention.compute_attention`); moving a control only slices,
colours and encodes a PNG (about 40 ms for two 96³ panels on a busy 2-core CPU).

Display conventions
- The volume is the model input, (3, D0, D1, D2) in RAS voxel order, one window per channel; the window
  preset picks the channel: brain (40, 80), subdural (80, 200), bone (600, 2800) — each already scaled to
  [0, 1] by preprocessing.
- Slices are shown radiologically: patient's right on the image's left; anterior up in axial slices,
  superior up in coronal and sagittal slices; anterior on the left in sagittal slices.
- Attention maps are divided by their own 3-D maximum (each panel spans 0 → its max, so where a model looks
  is comparable, not how peaked it is; the maxima are printed). Distance maps share one mm range across
  the panels so the colours compare directly.
- The overlay is blended uniformly with the chosen opacity; opacity 0 shows the image alone.
"""
from __future__ import annotations

import io
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.image import imsave

from ..data.preprocess import PAPER_WINDOWS
from .attention import AttentionResult, compute_attention

__all__ = ["WINDOW_CHANNELS", "AXES", "display_slice", "AttentionViewer"]

# window preset -> (channel of the model input, (level, width) in HU it holds), in preprocessing's order
WINDOW_CHANNELS: dict[str, tuple[int, tuple[float, float]]] = {
    name: (channel, window) for channel, (name, window) in enumerate(zip(("brain", "subdural", "bone"), PAPER_WINDOWS))
}
# view -> the RAS axis held fixed
AXES: dict[str, int] = {"sagittal": 0, "coronal": 1, "axial": 2}
COLORMAPS = {"attention": "jet", "distance": "viridis"}


def display_slice(volume: np.ndarray, axis: str, index: int) -> np.ndarray:
    """Slice ``index`` of a RAS-ordered 3-D array along view ``axis``, oriented for display (module doc)."""
    plane = np.take(volume, index, axis=AXES[axis])  # the two remaining axes, in RAS order
    return np.flip(plane.T, axis=(0, 1))


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    imsave(buffer, image, format="png")
    return buffer.getvalue()


class AttentionViewer:
    """Side-by-side attention viewer. ``results`` maps a panel name (``pretrained``, ``finetuned``…) to the
    :class:`AttentionResult` of that encoder on ``volume``. Display it as the last expression of a cell;
    :meth:`render` returns the image currently shown (for tests and for saving figures)."""

    def __init__(self, volume, results: Mapping[str, AttentionResult], interpolation: str = "nearest",
                 panel_pixels: int = 256, cache_size: int = 16):
        volume = volume.detach().cpu().numpy() if torch.is_tensor(volume) else volume
        self.volume = np.asarray(volume, dtype=np.float32)
        if self.volume.ndim != 4 or self.volume.shape[0] != len(WINDOW_CHANNELS):
            raise ValueError(f"expected the model input (3, D0, D1, D2), got shape {self.volume.shape}")
        if not results:
            raise ValueError("no attention results to show")
        shapes = {(r.num_layers, r.num_heads) for r in results.values()}
        if len(shapes) > 1:
            raise ValueError(f"the panels' encoders differ in (layers, heads): {sorted(shapes)}")
        for name, result in results.items():
            if result.volume_shape != self.volume.shape[1:]:
                raise ValueError(f"attention of {name!r} covers {result.volume_shape}, the volume is "
                                 f"{self.volume.shape[1:]}")
        self.results = dict(results)
        self.interpolation = interpolation
        self.zoom = max(1, math.ceil(panel_pixels / max(self.volume.shape[1:])))
        self._maps: OrderedDict = OrderedDict()  # (name, show, layer, head) -> full-resolution map
        self._cache_size = cache_size
        self._ranges: dict = {}  # (show, layer, head) -> {name: colour range}, tiny, never evicted
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
        self.axis = widgets.ToggleButtons(options=list(AXES)[::-1], value="axial", description="view")
        self.slice = widgets.IntSlider(value=size // 2, min=0, max=size - 1, description="slice",
                                       continuous_update=True)
        self.window = widgets.ToggleButtons(options=list(WINDOW_CHANNELS), value="brain", description="window")
        self.show = widgets.ToggleButtons(options=["attention", "distance"], value="attention",
                                          description="show")
        self.layer = widgets.Dropdown(options=layers, value=first.num_layers - 1, description="layer")
        self.head = widgets.Dropdown(options=heads, value="mean", description="head")
        self.opacity = widgets.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.05, description="opacity")
        self.images = {name: widgets.Image(format="png") for name in self.results}
        self.info = widgets.HTML()
        self.slice.add_class("fmct-slice")
        for image in self.images.values():
            image.add_class("fmct-panel")
        self.axis.observe(self._on_axis, names="value")
        for control in (self.slice, self.window, self.show, self.layer, self.head, self.opacity):
            control.observe(lambda change: self.refresh(), names="value")
        panels = [widgets.VBox([widgets.HTML(f"<b>{name}</b>"), image]) for name, image in self.images.items()]
        self.widget = widgets.VBox([
            widgets.HBox([self.axis, self.window]), widgets.HBox([self.show, self.layer, self.head]),
            widgets.HBox([self.slice, self.opacity]), widgets.HBox(panels), self.info,
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
        """The full-resolution map (attention probabilities or mm) behind panel ``name`` right now."""
        key = (name, self.show.value, self.selected_layer, self.selected_head)
        if key not in self._maps:
            result = self.results[name]
            make = result.attention_map if self.show.value == "attention" else result.distance_map
            self._maps[key] = make(self.selected_layer, self.selected_head, mode=self.interpolation)
            while len(self._maps) > self._cache_size:
                self._maps.popitem(last=False)
        self._maps.move_to_end(key)
        return self._maps[key]

    def _colour_ranges(self) -> dict[str, tuple[float, float]]:
        key = (self.show.value, self.selected_layer, self.selected_head)
        if key not in self._ranges:
            maps = {name: self.overlay_volume(name) for name in self.results}
            if self.show.value == "attention":
                self._ranges[key] = {name: (0.0, float(m.max())) for name, m in maps.items()}
            else:
                low, high = min(float(m.min()) for m in maps.values()), max(float(m.max()) for m in maps.values())
                self._ranges[key] = {name: (low, high) for name in maps}
        return self._ranges[key]

    # -- rendering --------------------------------------------------------------------------------
    def render_panel(self, name: str, colour_range: tuple[float, float] | None = None) -> np.ndarray:
        """The RGB uint8 image of panel ``name`` for the current controls."""
        low, high = colour_range or self._colour_ranges()[name]
        channel = WINDOW_CHANNELS[self.window.value][0]
        gray = np.clip(display_slice(self.volume[channel], self.axis.value, self.slice.value), 0.0, 1.0)
        values = display_slice(self.overlay_volume(name), self.axis.value, self.slice.value)
        scaled = np.clip((values - low) / (high - low), 0.0, 1.0) if high > low else np.zeros_like(values)
        colour = colormaps[COLORMAPS[self.show.value]](scaled)[..., :3]
        alpha = self.opacity.value
        rgb = (1.0 - alpha) * gray[..., None] + alpha * colour
        rgb = np.repeat(np.repeat(rgb, self.zoom, axis=0), self.zoom, axis=1)
        return np.round(rgb * 255).astype(np.uint8)

    def render(self) -> np.ndarray:
        """All panels side by side (in ``results`` order, 4 white pixels apart), RGB uint8."""
        ranges = self._colour_ranges()
        panels = [self.render_panel(name, ranges[name]) for name in self.results]
        gap = np.full((panels[0].shape[0], 4, 3), 255, dtype=np.uint8)
        out = [panels[0]]
        for panel in panels[1:]:
            out += [gap, panel]
        return np.concatenate(out, axis=1)

    def refresh(self) -> None:
        """Redraw every panel and the caption from the current controls."""
        ranges = self._colour_ranges()
        for name, image in self.images.items():
            image.value = _png(self.render_panel(name, ranges[name]))
        layer = "mean of layers" if self.selected_layer is None else f"layer {self.selected_layer + 1}"
        head = "mean of heads" if self.selected_head is None else f"head {self.selected_head + 1}"
        if self.show.value == "attention":
            scale = ", ".join(f"{name}: 0 → {high:.3g}" for name, (_, high) in ranges.items())
            what = f"cls-to-patch attention ({COLORMAPS['attention']}, each panel 0 → its max: {scale})"
        else:
            low, high = next(iter(ranges.values()))
            what = f"attention distance, Eq. 1 ({COLORMAPS['distance']}, {low:.1f} → {high:.1f} mm)"
        self.info.value = (f"{what}; {layer}, {head}; {self.axis.value} slice {self.slice.value}"
                           f"/{self.slice.max}; window {self.window.value} {WINDOW_CHANNELS[self.window.value][1]}")
