"""How captures and interventions reach a model. Only ``backends.nnsight`` imports nnsight."""

from mechmoe.backends.base import SITES as SITES
from mechmoe.backends.base import Batch as Batch
from mechmoe.backends.base import Capture as Capture
from mechmoe.backends.base import Edit as Edit
from mechmoe.backends.base import EditContext as EditContext
from mechmoe.backends.base import LayerCapture as LayerCapture

__all__ = ["SITES", "Batch", "Capture", "Edit", "EditContext", "LayerCapture"]
