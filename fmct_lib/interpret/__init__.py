"""Interpretation (paper, "Visual interpretation"): attention maps, attention distance (Eq. 1), lesion overlap of
attention on the synthetic cohort, Fig. 5 on a shared enrichment scale, the parts of notebooks 06 and 07 a
dataset allows, and an interactive viewer for JupyterLab.

The viewer (``fmct_lib.interpret.viewer``) imports ipywidgets, so it is not imported here.
"""
from .attention import AttentionResult, compute_attention, enrichment, reduce_layers_heads, upsample_to_volume
from .distance import (attention_distance, model_voxel_mm, patch_attention_rows, patch_centres_mm,
                       patch_distance_matrix, uniform_attention_distance)
from .figure import attention_figure, display_slice, enrichment_norm, lesion_enrichment
from .lesion import (MASKED_TASKS, head_mask, lesion_attention_table, lesion_shares, load_case, load_scan_with_mask,
                     mask_to_canvas, mask_to_model_input, summarize_lesion_attention, task_mask)
from .parts import Parts, attention_parts, embedding_parts

__all__ = [
    "AttentionResult", "compute_attention", "enrichment", "reduce_layers_heads", "upsample_to_volume",
    "attention_distance", "model_voxel_mm", "patch_attention_rows", "patch_centres_mm", "patch_distance_matrix",
    "uniform_attention_distance", "attention_figure", "display_slice", "enrichment_norm", "lesion_enrichment",
    "MASKED_TASKS", "head_mask", "lesion_shares", "lesion_attention_table", "load_case", "load_scan_with_mask",
    "mask_to_canvas", "mask_to_model_input", "summarize_lesion_attention", "task_mask",
    "Parts", "attention_parts", "embedding_parts",
]
