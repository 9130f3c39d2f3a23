"""Metrics. Knows nothing of models or the engine."""

from .boundary import (
    BoundaryConfusion,
    BoundaryFScore,
    boundary_band,
    boundary_fscore,
    boundary_mask,
    fscore_from_counts,
)
from .instance import InstanceMetrics, image_metrics
from .report import format_instance_table, format_table, render_table, save_instance_metrics, save_metrics
from .segmentation import ConfusionMatrix, confusion_counts, metrics_from_confusion

__all__ = [
    "BoundaryConfusion",
    "BoundaryFScore",
    "ConfusionMatrix",
    "InstanceMetrics",
    "boundary_band",
    "boundary_fscore",
    "boundary_mask",
    "confusion_counts",
    "format_instance_table",
    "format_table",
    "fscore_from_counts",
    "image_metrics",
    "metrics_from_confusion",
    "render_table",
    "save_instance_metrics",
    "save_metrics",
]
