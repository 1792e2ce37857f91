"""Studies: whole experiments that put the layers below together.

A study trains or finds its models, sweeps measures over their checkpoints, summarises
the stores and writes a report. :mod:`mechmoe.study.demo` is the paper's study in
miniature (``mechmoe demo``, ``make demo``). This layer sits between the report and the
command line: it may use everything below it, and only the CLI uses it.
"""

from mechmoe.study.demo import DemoConfig as DemoConfig
from mechmoe.study.demo import DemoResult as DemoResult
from mechmoe.study.demo import run_demo as run_demo

__all__ = ["DemoConfig", "DemoResult", "run_demo"]
