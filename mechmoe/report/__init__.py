"""Reports: figures and a self-contained HTML page from trajectory stores.

:func:`build_report` draws every trajectory figure (Lorenz curves, backbone share,
consolidation, HIT@k, robustness, Gated-LPI heatmaps, expert load and router saturation,
expert co-activation) for one run or two side by side, each with a caption saying what
was measured and how, under a headline table (:func:`headline_rows`, the same rows
``mechmoe demo`` prints). matplotlib is imported only when a report is built.
"""

from __future__ import annotations

from mechmoe.report.build import build_report as build_report
from mechmoe.report.build import pattern_checks as pattern_checks
from mechmoe.report.headline import headline_rows as headline_rows

__all__ = ["build_report", "headline_rows", "pattern_checks"]
