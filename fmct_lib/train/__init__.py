"""Self-supervised pretraining: one resumable, distributed training loop; the methods (DINO, MAE, VICReg, ...) in a
registry."""
from .methods import METHODS, get_method
from .trainer import pretrain, pretrain_on, pretraining_scan_ids, run_config

__all__ = ["METHODS", "get_method", "pretrain", "pretrain_on", "pretraining_scan_ids", "run_config"]
