"""Interpretation (paper, "Visual interpretation"): attention maps, attention distance (Eq. 1), lesion
overlap of attention on the synthetic cohort, and an interactive viewer for JupyterLab.

The viewer (``fmct_lib.interpret.viewer``) imports ipywidgets, so it is not imported here.
"""
from .attention import AttentionResult, compute_attention, reduce_layers_heads, upsample_to_volume
from .distance import (attention_distance, model_voxel_mm, patch_attention_rows, patch_centres_mm,
                       patch_distance_matrix)
from .lesion import (attention_share_in_mask, lesion_attention_table, load_scan_with_mask, mask_to_canvas,
                     mask_to_model_input, summarize_lesion_attention)

__all__ = [
    "AttentionResult", "compute_attention", "reduce_layers_heads", "upsample_to_volume",
    "attention_distance", "model_voxel_mm", "patch_attention_rows", "patch_centres_mm", "patch_distance_matrix",
    "attention_share_in_mask", "lesion_attention_table", "load_scan_with_mask", "mask_to_canvas",
    "mask_to_model_input", "summarize_lesion_attention",
]
