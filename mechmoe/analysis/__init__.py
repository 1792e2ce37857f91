"""Trajectory statistics: pure functions from a sweep's Dataset to labeled results.

Definitions follow the method's "Trajectory statistics" (docs/analysis.md gives each one as
implemented, with its edge cases). Nothing here imports torch.
"""

from __future__ import annotations

from mechmoe.analysis._common import NotApplicableError as NotApplicableError
from mechmoe.analysis.consolidation import consolidation as consolidation
from mechmoe.analysis.distribution import backbone_curve as backbone_curve
from mechmoe.analysis.distribution import backbone_share as backbone_share
from mechmoe.analysis.distribution import gini as gini
from mechmoe.analysis.distribution import lorenz as lorenz
from mechmoe.analysis.distribution import normalized_entropy as normalized_entropy
from mechmoe.analysis.distribution import positive_updates as positive_updates
from mechmoe.analysis.robustness import robustness_curves as robustness_curves
from mechmoe.analysis.routing import coactivation as coactivation
from mechmoe.analysis.routing import router_saturation as router_saturation
from mechmoe.analysis.routing import specialization as specialization
from mechmoe.analysis.summary import compare as compare
from mechmoe.analysis.summary import headline as headline
from mechmoe.analysis.summary import summarize_run as summarize_run

__all__ = [
    "NotApplicableError",
    "backbone_curve",
    "backbone_share",
    "coactivation",
    "compare",
    "consolidation",
    "gini",
    "headline",
    "lorenz",
    "normalized_entropy",
    "positive_updates",
    "robustness_curves",
    "router_saturation",
    "specialization",
    "summarize_run",
]
