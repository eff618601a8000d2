"""Analysis of competitive layers: submasks, flip rate, kNN on submasks, Hoyer sparsity,
dead units (Srivastava et al. 2015; Hoyer 2004); effective rank (Kumar et al. 2021), tau-dormant
units (Sokar et al. 2023), drift and task overlap (:mod:`.representation`), and the run-time
monitor that measures them at every evaluation (:mod:`.monitor`)."""

from .knn import knn_accuracy, knn_predict, pairwise_distance
from .representation import (
    dormant_share,
    dormant_units,
    drift,
    effective_rank,
    feature_change,
    jaccard,
    overlap_matrix,
    unit_flip_rate,
)
from .sparsity import hoyer_per_sample, hoyer_sparsity
from .submasks import Capture, capture_layer, dead_unit_share, flip_rate, submask

__all__ = [
    "Capture",
    "capture_layer",
    "dead_unit_share",
    "dormant_share",
    "dormant_units",
    "drift",
    "effective_rank",
    "feature_change",
    "jaccard",
    "overlap_matrix",
    "unit_flip_rate",
    "flip_rate",
    "hoyer_per_sample",
    "hoyer_sparsity",
    "knn_accuracy",
    "knn_predict",
    "pairwise_distance",
    "submask",
]
