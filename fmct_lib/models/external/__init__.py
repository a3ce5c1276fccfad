"""Other foundation models standing in for the 3-D ViT downstream (paper, Methods "Baseline comparisons";
Results "Comparison to alternative modelling choices"): one adapter per file, each keeping the contract of
``base.ExternalEncoder``, and ``registry.ENCODERS``, name → builder. A builder takes the local weights (a file or a
model folder; None: randomly initialised, with a warning) and ``strict``; docs/other_encoders.md says where
each model's weights are published. Google's CT Foundation model is reachable only through a web API and has
no adapter. ``reference.ExternalRef`` names one for the downstream runs; ``SMALL_ARCHITECTURES`` sizes a
randomly initialised one to the small profiles.
"""
from __future__ import annotations

from .base import EncoderDescription, ExternalEncoder, LoadReport
from .reference import ExternalRef
from .registry import ADAPTERS, ENCODERS, SMALL_ARCHITECTURES, build_encoder

__all__ = ["ENCODERS", "ADAPTERS", "SMALL_ARCHITECTURES", "build_encoder", "ExternalEncoder", "EncoderDescription",
           "LoadReport", "ExternalRef"]
