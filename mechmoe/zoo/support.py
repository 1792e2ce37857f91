"""The support table: what mechmoe does on each registered family, read from the registry.

One row per architecture in the adapter registry (:func:`mechmoe.adapters.list_adapters`):
the router and layer schedule as the spec states them, the attribution levels and routing
edits that apply, where heads exist, and whether the TransformerLens backend runs the
family: found out as ``load`` does, by building the backend on a weightless copy of the
family's tiny checkpoint config, before any weight, or by loading the tiny checkpoint
where the bridge cannot boot without weights (``"not checked"`` for a family without a
tiny checkpoint). docs/adapters.md holds the table as :func:`support_markdown`
writes it (a test keeps it from drifting) and ``mechmoe adapters list`` prints it.

Examples
--------
>>> from mechmoe.zoo.support import router_summary
>>> from mechmoe.adapters import get_adapter
>>> router_summary(get_adapter("DeepseekV3ForCausalLM").moe.routing)
'sigmoid + bias (choosing only) → top-k in groups (top-2 sum); renormalised if `norm_topk_prob`; × `routed_scaling_factor`'
"""

from __future__ import annotations

import functools
import importlib.util
import re
from dataclasses import dataclass

from mechmoe.adapters import get_adapter, list_adapters
from mechmoe.adapters.registry import NOT_EXPRESSIBLE
from mechmoe.adapters.spec import AdapterSpec, ConfigKeys, LayerSchedule, RouterSpec
from mechmoe.core.errors import MechmoeError
from mechmoe.zoo.tiny import TINY_FAMILIES, tiny_config

#: The table's columns, in order.
COLUMNS: tuple[str, ...] = (
    "architecture",
    "adapter",
    "router",
    "MoE layers",
    "shared experts",
    "heads",
    "Gated-LPI levels",
    "routing edits",
    "TransformerLens",
    "notes",
)
ROUTING_EDITS = "Ban, Force, SetTopK, ScaleGates, ZeroExperts"


@dataclass(frozen=True)
class SupportRow:
    """One family's row (:data:`COLUMNS`)."""

    architecture: str
    adapter: str
    router: str
    moe_layers: str
    shared: str
    heads: str
    levels: str
    routing_edits: str
    transformerlens: str
    notes: str

    def cells(self) -> tuple[str, ...]:
        return (
            self.architecture,
            self.adapter,
            self.router,
            self.moe_layers,
            self.shared,
            self.heads,
            self.levels,
            self.routing_edits,
            self.transformerlens,
            self.notes,
        )


def _keys(value: ConfigKeys | float | int) -> str:
    return f"`{value[0]}`" if isinstance(value, tuple) else f"{value:g}"


def router_summary(r: RouterSpec) -> str:
    """A router description in one line (config values named, not read)."""
    if r.select == "sparsemixer":
        parts = ["SparseMixer (named selector)"]
    elif r.select == "logits":
        parts = [f"top-k of the logits → {r.score} over the k"]
    else:
        head = r.score + (" + bias (choosing only)" if r.selection_bias else "") + " → top-k"
        if r.groups is not None:
            kind = "max" if r.groups.score == "max" else "top-2 sum"
            when = f" if `{r.groups.method[0]}`" if r.groups.method else ""
            head += f" in groups ({kind}{when})"
        parts = [head]
    if r.renormalize is True:
        parts.append("renormalised" + (" (sum clamped)" if r.renorm_min is not None else ""))
    elif isinstance(r.renormalize, tuple):
        parts.append(f"renormalised if `{r.renormalize[0]}`")
    if r.scale is not None:
        parts.append(f"× {_keys(r.scale)}")
    if r.expert_scale:
        parts.append("× per-expert scale")
    if r.apply_to == "input":
        parts.append("weight on the expert input")
    return "; ".join(parts)


def schedule_summary(s: LayerSchedule | None) -> str:
    """Which layers a schedule selects, in words."""
    if s is None:
        return "all"
    parts = []
    if s.start != 0:
        parts.append(f"from {_keys(s.start)}")
    if s.end is not None:
        parts.append(f"to {_keys(s.end)}")
    if s.period is not None:
        parts.append(f"every {_keys(s.period)}")
    if s.listed is not None:
        parts.append(f"listed in `{s.listed[0]}`")
    if s.unlisted is not None:
        parts.append(f"not in `{s.unlisted[0]}`")
    if s.types is not None:
        parts.append(f"`{s.types[0]}` = {'/'.join(s.type_is)}")
    return ", ".join(parts) or "all"


def _shared(spec: AdapterSpec) -> str:
    moe = spec.moe
    if moe is None or moe.shared is None:
        return "—"
    text = "sigmoid-gated" if moe.shared_gate else "ungated"
    return text if moe.shared_in_ffn else text + ", beside the block"


def _transformerlens(spec: AdapterSpec, architecture: str) -> str:
    if importlib.util.find_spec("transformer_lens") is None:
        return "not installed"
    if spec.name not in TINY_FAMILIES:
        return "not checked"
    from mechmoe.model import Model

    try:
        decided = Model.check_backend(
            tiny_config(spec.name), spec, name=architecture, backend="transformerlens"
        )
        if not decided:  # the bridge needs real weights to boot: load the tiny checkpoint
            from mechmoe.model.loading import load

            load(f"tiny:{spec.name}", backend="transformerlens")
    except MechmoeError as err:
        text = str(err)
        hook = re.search(r"no hook on (\S+)", text)
        if hook:
            return f"refused: no hook on `{hook[1]}`"
        if "Unsupported architecture" in text or "cannot bridge" in text:
            return "refused: no bridge"
        return "refused: router output not read"
    return "yes"


def support_row(architecture: str, *, backends: bool = True) -> SupportRow:
    """The support row of one registered architecture."""
    spec = get_adapter(architecture)
    moe = spec.moe
    hybrid = spec.other_mixer is not None
    return SupportRow(
        architecture=architecture,
        adapter=spec.name,
        router=router_summary(moe.routing) if moe else "— (dense)",
        moe_layers=schedule_summary(moe.layers) if moe else "—",
        shared=_shared(spec),
        heads="attention layers (hybrid)" if hybrid else "every layer",
        levels="neuron, expert, head, layer" if moe else "neuron, head, layer",
        routing_edits=ROUTING_EDITS if moe else "—",
        transformerlens=_transformerlens(spec, architecture) if backends else "not checked",
        notes=spec.description.replace("|", "/"),
    )


@functools.cache
def support_rows(*, backends: bool = True) -> tuple[SupportRow, ...]:
    """Every registered architecture's row, in the registry's order."""
    return tuple(support_row(a, backends=backends) for a in list_adapters())


def support_markdown(*, backends: bool = True) -> str:
    """The support table and the refused families as markdown (docs/adapters.md)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in support_rows(backends=backends):
        lines.append("| " + " | ".join(row.cells()) + " |")
    lines += ["", "Refused, with what the description cannot state yet:", ""]
    lines += ["| architecture | missing |", "|---|---|"]
    lines += [f"| {a} | {why} |" for a, why in NOT_EXPRESSIBLE.items()]
    return "\n".join(lines) + "\n"


__all__ = [
    "COLUMNS",
    "SupportRow",
    "router_summary",
    "schedule_summary",
    "support_markdown",
    "support_row",
    "support_rows",
]
