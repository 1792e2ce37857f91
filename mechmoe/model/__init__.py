"""The model handle (:mod:`mechmoe.model.handle`), how handles are built
(:mod:`mechmoe.model.loading`), the options they are built with
(:mod:`mechmoe.model.options`) and the named model sources (:mod:`mechmoe.model.sources`).

The names below are imported on first use, so importing :mod:`mechmoe.model.options`
(the CLI and the sweep do, to build a :class:`LoadOptions`) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mechmoe.core.lazy import lazy_getattr

if TYPE_CHECKING:
    from mechmoe.core.types import FFNWeights as FFNWeights
    from mechmoe.core.types import ModelDims as ModelDims
    from mechmoe.core.types import NormParams as NormParams
    from mechmoe.model.handle import Model as Model
    from mechmoe.model.handle import architecture_of as architecture_of
    from mechmoe.model.loading import load as load
    from mechmoe.model.loading import quiet_hf_progress as quiet_hf_progress
    from mechmoe.model.loading import wrap as wrap
    from mechmoe.model.options import LoadKeywords as LoadKeywords
    from mechmoe.model.options import LoadOptions as LoadOptions
    from mechmoe.model.sources import available_sources as available_sources
    from mechmoe.model.sources import get_source as get_source
    from mechmoe.model.sources import list_sources as list_sources
    from mechmoe.model.sources import register_source as register_source
    from mechmoe.model.sources import unregister_source as unregister_source

_WHERE: dict[str, tuple[str, str]] = {
    name: (module, name)
    for module, names in (
        ("mechmoe.core.types", ("FFNWeights", "ModelDims", "NormParams")),
        ("mechmoe.model.handle", ("Model", "architecture_of")),
        ("mechmoe.model.loading", ("load", "quiet_hf_progress", "wrap")),
        ("mechmoe.model.options", ("LoadKeywords", "LoadOptions")),
        (
            "mechmoe.model.sources",
            (
                "available_sources",
                "get_source",
                "list_sources",
                "register_source",
                "unregister_source",
            ),
        ),
    )
    for name in names
}

__getattr__ = lazy_getattr(__name__, _WHERE)


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = sorted(_WHERE)
