"""Analysis of competitive layers: submasks, flip rate, kNN on submasks, Hoyer sparsity,
dead units (Srivastava et al. 2015; Hoyer 2004)."""

from .knn import knn_accuracy, knn_predict, pairwise_distance
from .sparsity import hoyer_per_sample, hoyer_sparsity
from .submasks import Capture, capture_layer, dead_unit_share, flip_rate, submask

__all__ = [
    "Capture",
    "capture_layer",
    "dead_unit_share",
    "flip_rate",
    "hoyer_per_sample",
    "hoyer_sparsity",
    "knn_accuracy",
    "knn_predict",
    "pairwise_distance",
    "submask",
]
