"""Downstream protocols (paper, Methods "Fine tuning and probing", "Few-shot"; Fig. 1e–g, Fig. 2, Fig. 3).

- ``protocols``: the registry, one entry per protocol (finetune, linear, attentive, abmil, scratch, histogram);
- ``training``: ``fit``, supervised training of one classifier on cached inputs (``HParams``, draws, augmentation);
- ``runs``: one run (``run_protocol``): its identity, resume, kept classifiers, predictions;
- ``sweeps``: many runs (``run_sweep``, ``fewshot_sweep``);
- ``histogram``: the reference without a deep model;
- ``embeddings``: frozen-encoder embeddings as a table (retrieval, t-SNE/UMAP).
"""
from ..data.inputs import ProtocolSkipped, VolumeSource
from ..models.checkpoints import load_encoder
from .embeddings import embed, read_embeddings, write_embeddings
from .training import HParams, augment_batch, balanced_draw, fewshot_draw, fit, predict
from .protocols import PROTOCOLS, Protocol, get_protocol
from .runs import default_run_name, read_predictions, run_protocol, trained_model_path, training_signature
from .sweeps import fewshot_sweep, run_sweep

__all__ = [
    "HParams", "VolumeSource", "ProtocolSkipped", "PROTOCOLS", "Protocol", "get_protocol", "fit", "predict",
    "augment_batch", "balanced_draw", "fewshot_draw", "load_encoder", "run_protocol", "run_sweep", "fewshot_sweep",
    "read_predictions", "default_run_name", "training_signature", "trained_model_path", "embed", "write_embeddings",
    "read_embeddings",
]
