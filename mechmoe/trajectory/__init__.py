"""Training trajectories: measures over a model's checkpoints, in one resumable store.

- :mod:`~mechmoe.trajectory.sources`: where checkpoints come from (hub revisions, local
  folders, manifests) and the selection grammar (``every:5000``, ``log:15``, …);
- :mod:`~mechmoe.trajectory.measures`: the measure protocol and the built-in measures;
- :mod:`~mechmoe.trajectory.sweep`: run measures over checkpoints, locally or on Dask;
- :mod:`~mechmoe.trajectory.store`: the store's layout, :func:`open_store` and netCDF export.
"""

from __future__ import annotations

from mechmoe.trajectory.measures import DEFAULT_MEASURES as DEFAULT_MEASURES
from mechmoe.trajectory.measures import Measure as Measure
from mechmoe.trajectory.measures import get_measure as get_measure
from mechmoe.trajectory.measures import list_measures as list_measures
from mechmoe.trajectory.measures import register_measure as register_measure
from mechmoe.trajectory.measures import unregister_measure as unregister_measure
from mechmoe.trajectory.sources import Checkpoint as Checkpoint
from mechmoe.trajectory.sources import CheckpointSource as CheckpointSource
from mechmoe.trajectory.sources import HubRevisions as HubRevisions
from mechmoe.trajectory.sources import LocalCheckpoints as LocalCheckpoints
from mechmoe.trajectory.sources import parse_selection as parse_selection
from mechmoe.trajectory.store import Damage as Damage
from mechmoe.trajectory.store import Status as Status
from mechmoe.trajectory.store import TrajectoryStore as TrajectoryStore
from mechmoe.trajectory.store import export_netcdf as export_netcdf
from mechmoe.trajectory.store import open_store as open_store
from mechmoe.trajectory.sweep import SweepSummary as SweepSummary
from mechmoe.trajectory.sweep import sweep as sweep

__all__ = [
    "DEFAULT_MEASURES",
    "Checkpoint",
    "CheckpointSource",
    "Damage",
    "HubRevisions",
    "LocalCheckpoints",
    "Measure",
    "Status",
    "SweepSummary",
    "TrajectoryStore",
    "export_netcdf",
    "get_measure",
    "list_measures",
    "open_store",
    "parse_selection",
    "register_measure",
    "sweep",
    "unregister_measure",
]
