"""Self-supervised pretraining: one resumable, distributed training loop for DINO and MAE."""
from .trainer import pretrain, pretrain_on, pretraining_scan_ids, run_config

__all__ = ["pretrain", "pretrain_on", "pretraining_scan_ids", "run_config"]
