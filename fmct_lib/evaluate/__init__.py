"""Evaluation: AUROC/AP per task and macro, bootstrap CIs, paired permutation tests, retrieval (paper,
Methods "Statistical analysis" and "Volume-to-volume retrieval evaluation")."""
from .metrics import auroc, average_precision, label_prevalence, predictions_to_wide, task_metrics, weighted_auroc_ap
from .retrieval import (check_ks, neighbour_agreement, retrieval_comparison, retrieval_summary,
                        retrieve_all_vs_all)
from .stats import (bootstrap_ci, bootstrap_replicates, fewshot_summary, holm_adjust, mean_ci, paired_comparison,
                    paired_permutation_test, paired_runs, permutation_null, relative_improvement)

__all__ = [
    "auroc", "average_precision", "task_metrics", "label_prevalence", "weighted_auroc_ap", "predictions_to_wide",
    "bootstrap_ci", "bootstrap_replicates", "paired_permutation_test", "paired_comparison", "permutation_null",
    "relative_improvement", "fewshot_summary", "paired_runs", "mean_ci", "retrieve_all_vs_all", "neighbour_agreement",
    "retrieval_summary", "retrieval_comparison", "holm_adjust", "check_ks",
]
