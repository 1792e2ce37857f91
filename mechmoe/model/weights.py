"""Is a loaded model the checkpoint it claims to be? Weights that match the config, and
weights that are finite.

transformers loads a checkpoint whose file lacks tensors the config implies (a config
from another checkpoint, a truncated download) with those parameters freshly *random*,
drops tensors the model has no place for, and prints a report; mechmoe refuses such a
model with one line naming the tensors (:func:`check_load_report`) unless the caller
allows it. A checkpoint holding NaN or infinite weights is refused naming the first such
tensor (:func:`check_finite_weights`): every number computed from it would be garbage.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

from mechmoe.core.errors import DamagedFileError

#: Names grouped per layer in messages: ``model.layers.1.*`` for every tensor of layer 1.
_LAYER = re.compile(r"^(?P<layer>.*?\.(?:layers|layer|h|blocks)\.\d+)\.")


def _natural(key: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def name_tensors(keys: Iterable[str], *, limit: int = 4) -> str:
    """A short phrase naming ``keys``: one name, or ``LAYER.* (N tensors)`` for several
    of one layer; ``limit`` groups at most, then ``and N more``.

    Examples
    --------
    >>> name_tensors(["model.layers.0.mlp.gate.weight"])
    'model.layers.0.mlp.gate.weight'
    >>> name_tensors([f"model.layers.1.{n}.weight" for n in "abcd"] + ["lm_head.weight"])
    'lm_head.weight, model.layers.1.* (4 tensors)'
    """
    groups: dict[str, list[str]] = {}
    for key in sorted(keys, key=_natural):
        m = _LAYER.match(key)
        groups.setdefault(f"{m['layer']}.*" if m else key, []).append(key)
    parts = [
        members[0] if len(members) == 1 else f"{group} ({len(members)} tensors)"
        for group, members in groups.items()
    ]
    if len(parts) > limit:
        parts = [*parts[:limit], f"and {len(parts) - limit} more"]
    return ", ".join(parts)


def _shape(shape: Any) -> str:
    return "×".join(str(int(d)) for d in shape) or "scalar"


def load_report(info: Any) -> dict[str, list[str]]:
    """The missing, unexpected and mismatched tensors of transformers' loading info
    (``from_pretrained(..., output_loading_info=True)``), sorted; mismatched ones as
    ``"name (file A×B, model C×D)"``."""
    get = info.get if isinstance(info, dict) else lambda k, d=None: getattr(info, k, d)
    mismatched = []
    for item in get("mismatched_keys", None) or ():
        key, file_shape, model_shape = (tuple(item) + (None, None))[:3]
        if file_shape is None:
            mismatched.append(str(key))
        else:
            mismatched.append(f"{key} (file {_shape(file_shape)}, model {_shape(model_shape)})")
    return {
        "missing": sorted(map(str, get("missing_keys", None) or ()), key=_natural),
        "unexpected": sorted(map(str, get("unexpected_keys", None) or ()), key=_natural),
        "mismatched": sorted(mismatched, key=_natural),
    }


def check_load_report(report: dict[str, list[str]], name: str, *, allow: bool) -> None:
    """Refuse a model whose weights did not match its config, in one line: which tensors
    are missing from the file, unexpected in it or of another shape, the likely cause and
    what to do. With ``allow``, warn in one line instead.
    """
    if not any(report.values()):
        return
    found = []
    if report["missing"]:
        found.append(f"missing from the file: {name_tensors(report['missing'])}")
    if report["unexpected"]:
        found.append(f"in the file but not in the model: {name_tensors(report['unexpected'])}")
    if report["mismatched"]:
        shown = ", ".join(report["mismatched"][:2])
        more = len(report["mismatched"]) - 2
        found.append(f"of another shape: {shown}" + (f" and {more} more" if more > 0 else ""))
    what = "; ".join(found)
    if allow:
        warnings.warn(
            f"{name!r} loaded with weights that do not match its config ({what}); as "
            "allow_missing_weights asks, those parameters are random or dropped, and every "
            "result records it",
            UserWarning,
            stacklevel=4,
        )
        return
    raise DamagedFileError(
        f"refusing {name!r}: its weights do not match its config ({what}); likely a "
        "config.json from another checkpoint or an incomplete download: put the config and "
        "weights of one checkpoint together (or download it again), or pass "
        "--allow-missing-weights (allow_missing_weights=True) to run with those parameters "
        "random"
    )


def check_finite_weights(module: Any, name: str) -> None:
    """Refuse a model with a NaN or infinite parameter, naming the first (in the model's
    order, so the earliest layer) and how many more there are.

    Reads each floating-point parameter once (its minimum and maximum, which NaN and
    infinities propagate to) without copying it; parameters on the ``meta`` device
    (offloaded) are skipped.
    """
    import torch

    bad: list[tuple[str, str]] = []
    with torch.no_grad():
        for pname, p in module.named_parameters():
            if p.device.type == "meta" or not p.is_floating_point() or p.numel() == 0:
                continue
            lo, hi = torch.aminmax(p.detach())
            if bool(torch.isfinite(lo)) and bool(torch.isfinite(hi)):
                continue
            kind = "NaN" if bool(torch.isnan(lo) | torch.isnan(hi)) else "infinite values"
            bad.append((pname, kind))
    if not bad:
        return
    (first, kind), more = bad[0], len(bad) - 1
    others = (
        f" (and {more} more tensor{'s' if more > 1 else ''}: "
        + name_tensors(n for n, _ in bad[1:])
        + ")"
        if more
        else ""
    )
    raise DamagedFileError(
        f"refusing {name!r}: its weights hold {kind} in {first}{others}; the checkpoint is "
        "damaged (a diverged training run or a corrupted file) and every result computed "
        "from it would be NaN or garbage; load another checkpoint"
    )


@contextlib.contextmanager
def quiet_load_report() -> Iterator[None]:
    """Keep transformers from printing its own load report: mechmoe says it in one line."""
    logger = logging.getLogger("transformers.modeling_utils")
    # a filter, not a level: transformers runs extra checks (and logs them) at some levels
    logger.addFilter(_no_load_report)
    try:
        yield
    finally:
        logger.removeFilter(_no_load_report)


def _no_load_report(record: logging.LogRecord) -> bool:
    return "LOAD REPORT" not in str(record.msg)


__all__ = [
    "check_finite_weights",
    "check_load_report",
    "load_report",
    "name_tensors",
    "quiet_load_report",
]
