"""The built-in measures (see :mod:`mechmoe.trajectory.measures` for the protocol, the
registry and the table of what each one stores).

Each wraps an existing operation and re-implements none of its math. The registry
imports this module the first time a built-in measure is asked for.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from mechmoe._types import (
    EXPERT,
    HEAD,
    LAYER,
    N_MASKED,
    NEURON,
    RELATION,
    SEED,
    SLOT,
    TOKEN,
    K,
    MaskMode,
    Target,
)
from mechmoe.core import progress
from mechmoe.core.checks import check_choice
from mechmoe.core.errors import InvalidInputError
from mechmoe.core.provenance import provenance

if TYPE_CHECKING:
    import xarray as xr

    from mechmoe.model import Model
    from mechmoe.probes import ProbeSet


# ---- shared helpers ---------------------------------------------------------------------------
def _fail(measure: str, message: str) -> InvalidInputError:
    return InvalidInputError(f"measure {measure!r}: {message}")


def _positive_ints(measure: str, option: str, values: Any) -> tuple[int, ...]:
    if isinstance(values, (int, np.integer)) and not isinstance(values, bool):
        values = (values,)
    try:
        out = tuple(int(v) for v in values)
    except (TypeError, ValueError):
        raise _fail(measure, f"{option}={values!r} must be positive integers") from None
    if not out or any(v < 1 for v in out) or any(isinstance(v, bool) for v in values):
        raise _fail(measure, f"{option}={values!r} must be one or more positive integers")
    return out


def _check_choice(measure: str, option: str, value: Any, choices: Any) -> None:
    check_choice(value, choices, name=option, where=f"measure {measure!r}")


def _config(obj: Any) -> dict[str, Any]:
    """A dataclass measure's fields as JSON-able options (tuples as lists)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def _attrs(measure: Any, model: Model, probe: Any, **extra: Any) -> dict[str, Any]:
    return provenance(model, probe=probe, options=measure.config(), measure=measure.name, **extra)


def _targets(model: Model, probe: ProbeSet, target: str) -> list[int] | None:
    if target != "gold":
        return None
    from mechmoe.probes import first_token_ids

    return first_token_ids(model.tokenizer, probe.objects, probe.prompts)


def _check_probe(name: str, probe: Any) -> None:
    if len(probe) == 0:
        raise _fail(name, "the probe set is empty; nothing to measure")


@dataclasses.dataclass(frozen=True)
class _LPIMeasure:
    """Options shared by the Gated-LPI measures (see :func:`mechmoe.ops.attribution.attribute`)."""

    target: str = "top1"
    precision: str = "exact"
    tolerance: float | int = 1e-4
    batch_size: int = 16
    reference_compat: bool = False

    name = "lpi"

    def __post_init__(self) -> None:
        _check_choice(self.name, "target", self.target, Target)
        _check_choice(self.name, "precision", self.precision, ("exact", "bounded"))
        if not (isinstance(self.tolerance, (int, float)) and self.tolerance > 0):
            raise _fail(self.name, f"tolerance={self.tolerance!r} must be a positive number")
        _positive_ints(self.name, "batch_size", self.batch_size)

    def config(self) -> dict[str, Any]:
        return _config(self)

    def applies_to(self, model: Model) -> bool:
        return True

    def _attribute(self, model: Model, probe: ProbeSet, level: str) -> xr.Dataset:
        from mechmoe.ops.attribution import attribute

        _check_probe(self.name, probe)
        return attribute(
            model,
            list(probe.prompts),
            level=level,  # type: ignore[arg-type]
            target=self.target,  # type: ignore[arg-type]
            targets=_targets(model, probe, self.target),
            precision=self.precision,
            tolerance=float(self.tolerance),
            reference_compat=bool(self.reference_compat),
            batch_size=int(self.batch_size),
            progress=progress.active(),
        )


def _index(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64)


# ---- the LPI measures ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class NeuronLPI(_LPIMeasure):
    """``S_t(n)``: each neuron's Gated-LPI averaged over the probe prompts, 0 where its
    expert was not chosen (never NaN), and how many prompts chose each expert.

    A dense model has one expert (expert 0) chosen by every prompt.
    """

    name = "neuron_lpi"
    variables = ("neuron_score", "neuron_n_chosen")

    def __call__(self, model: Model, probe: ProbeSet) -> xr.Dataset:
        import xarray as xr

        ds = self._attribute(model, probe, "neuron")
        score = ds["score"].fillna(0.0).transpose(LAYER, EXPERT, NEURON).values
        L, E, N = score.shape
        return xr.Dataset(
            {
                "neuron_score": ((LAYER, EXPERT, NEURON), score.astype(np.float64)),
                "neuron_n_chosen": (
                    (LAYER, EXPERT),
                    ds["n_chosen"].transpose(LAYER, EXPERT).values.astype(np.int64),
                ),
            },
            coords={LAYER: _index(L), EXPERT: _index(E), NEURON: _index(N)},
            attrs=_attrs(self, model, probe),
        )


@dataclasses.dataclass(frozen=True)
class ExpertLPI(_LPIMeasure):
    """Each expert's LPI (``g_e · E_e(x)``) averaged over the probe prompts, 0 where not
    chosen, and how many prompts chose it.

    A dense model's single "expert" is its whole MLP: its score is the FFN layer's LPI
    (``attribute(level="ffn")``) and every prompt chooses it.
    """

    name = "expert_lpi"
    variables = ("expert_score", "expert_n_chosen")

    def __call__(self, model: Model, probe: ProbeSet) -> xr.Dataset:
        import xarray as xr

        if model.dims.is_moe:
            ds = self._attribute(model, probe, "expert")
            score = ds["score"].fillna(0.0).transpose(LAYER, EXPERT).values
            n_chosen = ds["n_chosen"].transpose(LAYER, EXPERT).values
        else:
            ds = self._attribute(model, probe, "ffn")
            score = ds["score"].transpose(LAYER).values[:, None]
            n_chosen = np.full(score.shape, len(probe))
        L, E = score.shape
        return xr.Dataset(
            {
                "expert_score": ((LAYER, EXPERT), score.astype(np.float64)),
                "expert_n_chosen": ((LAYER, EXPERT), n_chosen.astype(np.int64)),
            },
            coords={LAYER: _index(L), EXPERT: _index(E)},
            attrs=_attrs(self, model, probe),
        )


@dataclasses.dataclass(frozen=True)
class HeadLPI(_LPIMeasure):
    """Each attention head's LPI averaged over the probe prompts."""

    name = "head_lpi"
    variables = ("head_score",)

    def __call__(self, model: Model, probe: ProbeSet) -> xr.Dataset:
        import xarray as xr

        ds = self._attribute(model, probe, "head")
        score = ds["score"].fillna(0.0).transpose(LAYER, HEAD).values
        L, H = score.shape
        return xr.Dataset(
            {"head_score": ((LAYER, HEAD), score.astype(np.float64))},
            coords={LAYER: _index(L), HEAD: _index(H)},
            attrs=_attrs(self, model, probe),
        )


@dataclasses.dataclass(frozen=True)
class LayerLPI(_LPIMeasure):
    """Each layer's attention and FFN sub-layer LPI averaged over the probe prompts."""

    name = "layer_lpi"
    variables = ("attn_score", "ffn_score")

    def __call__(self, model: Model, probe: ProbeSet) -> xr.Dataset:
        import xarray as xr

        attn = self._attribute(model, probe, "attn")["score"].transpose(LAYER).values
        ffn = self._attribute(model, probe, "ffn")["score"].transpose(LAYER).values
        return xr.Dataset(
            {
                "attn_score": ((LAYER,), attn.astype(np.float64)),
                "ffn_score": ((LAYER,), ffn.astype(np.float64)),
            },
            coords={LAYER: _index(len(attn))},
            attrs=_attrs(self, model, probe),
        )


# ---- recall ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Hit:
    """HIT@k for each k of ``ks`` and MRR, per relation of the probe set.

    Wraps :func:`mechmoe.probes.evaluate` (one pass) and :func:`mechmoe.probes.summarize`
    (once per k). The overall row of ``summarize`` is left out; the coord ``n_items``
    (items per relation) weighs relations for an overall figure.
    """

    ks: Sequence[int] | int = (1, 10)
    batch_size: int = 32

    name = "hit"
    variables = ("hit", "mrr")

    def __post_init__(self) -> None:
        object.__setattr__(self, "ks", tuple(sorted(set(_positive_ints(self.name, "ks", self.ks)))))
        _positive_ints(self.name, "batch_size", self.batch_size)

    def config(self) -> dict[str, Any]:
        return _config(self)

    def applies_to(self, model: Model) -> bool:
        return True

    def __call__(self, model: Model, probe: ProbeSet) -> xr.Dataset:
        import xarray as xr

        from mechmoe.probes import evaluate, summarize

        _check_probe(self.name, probe)
        items = evaluate(
            model,
            probe,
            k=max(self.ks),
            batch_size=int(self.batch_size),
            progress=progress.active(),
        )
        relations = list(probe.relation_names)
        present = list(dict.fromkeys(items["relation"].values.tolist()))
        relations = [r for r in relations if r in present]
        hit = np.zeros((len(relations), len(self.ks)))
        summary = None
        for j, k in enumerate(self.ks):
            at_k = items.assign(hit=items["rank"] <= k)
            at_k.attrs["k"] = k
            summary = summarize(at_k)
            hit[:, j] = summary["hit"].sel({RELATION: relations}).values
        assert summary is not None
        rows = summary.sel({RELATION: relations})
        return xr.Dataset(
            {
                "hit": ((RELATION, K), hit.astype(np.float64)),
                "mrr": ((RELATION,), rows["mrr"].values.astype(np.float64)),
            },
            coords={
                RELATION: np.array(relations, dtype=object),
                K: np.array(self.ks, dtype=np.int64),
                "n_items": ((RELATION,), rows["count"].values.astype(np.int64)),
            },
            attrs=_attrs(self, model, probe),
        )


@dataclasses.dataclass(frozen=True)
class Robustness:
    """HIT@k with the top-n heads by head LPI masked, against n random heads.

    Wraps :func:`mechmoe.ops.robustness.head_robustness`; ``drop = 1 − hit/hit_base``
    (NaN where ``hit_base`` is 0). Values of ``ns`` above the model's head count are
    capped at it.
    """

    ns: Sequence[int] | int = (1, 2, 5, 10)
    seeds: int | Sequence[int] = 3
    k: int = 10
    target: str = "top1"
    mode: str = "zero"
    batch_size: int = 32

    name = "robustness"
    variables = (
        "robust_hit_base",
        "robust_hit_top",
        "robust_hit_random",
        "robust_drop_top",
        "robust_drop_random",
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "ns", tuple(sorted(set(_positive_ints(self.name, "ns", self.ns)))))
        if isinstance(self.seeds, (int, np.integer)) and not isinstance(self.seeds, bool):
            _positive_ints(self.name, "seeds", self.seeds)
            object.__setattr__(self, "seeds", int(self.seeds))
        else:
            try:
                seeds = tuple(int(s) for s in self.seeds)  # type: ignore[union-attr]
            except (TypeError, ValueError):
                raise _fail(
                    self.name, f"seeds={self.seeds!r}: a count or a list of seeds"
                ) from None
            if not seeds or len(set(seeds)) != len(seeds):
                raise _fail(self.name, f"seeds={self.seeds!r}: give distinct seeds, at least one")
            object.__setattr__(self, "seeds", seeds)
        _positive_ints(self.name, "k", self.k)
        _positive_ints(self.name, "batch_size", self.batch_size)
        _check_choice(self.name, "target", self.target, Target)
        _check_choice(self.name, "mode", self.mode, MaskMode)

    def config(self) -> dict[str, Any]:
        return _config(self)

    def applies_to(self, model: Model) -> bool:
        return True

    def __call__(self, model: Model, probe: ProbeSet) -> xr.Dataset:
        import xarray as xr

        from mechmoe.ops.robustness import head_robustness

        _check_probe(self.name, probe)
        ds = head_robustness(
            model,
            probe,
            ns=self.ns,
            seeds=self.seeds,
            k=int(self.k),
            target=self.target,
            mode=self.mode,
            batch_size=int(self.batch_size),
            progress=progress.active(),
        )
        out = xr.Dataset(
            {
                "robust_hit_base": ((), float(ds["hit_base"])),
                "robust_hit_top": ((N_MASKED,), ds["hit_top"].values.astype(np.float64)),
                "robust_hit_random": (
                    (N_MASKED, SEED),
                    ds["hit_random"].transpose("n", "seed").values.astype(np.float64),
                ),
                "robust_drop_top": ((N_MASKED,), ds["drop_top"].values.astype(np.float64)),
                "robust_drop_random": (
                    (N_MASKED, SEED),
                    ds["drop_random"].transpose("n", "seed").values.astype(np.float64),
                ),
            },
            coords={
                N_MASKED: ds["n"].values.astype(np.int64),
                SEED: ds["seed"].values.astype(np.int64),
            },
            attrs=_attrs(self, model, probe, ranking=ds.attrs.get("ranking", "")),
        )
        for name in self.variables:
            out[name].attrs["k"] = int(self.k)
        return out


# ---- routing ---------------------------------------------------------------------------------------
def _batches(probe: ProbeSet, batch_size: int) -> list[tuple[list[str], np.ndarray]]:
    """The probe's prompts in batches, each with the prompt indices it covers."""
    prompts = list(probe.prompts)
    return [
        (prompts[start : start + batch_size], _index(len(prompts))[start : start + batch_size])
        for start in range(0, len(prompts), batch_size)
    ]


@dataclasses.dataclass(frozen=True)
class ExpertLoad:
    """Share of each layer's routing slots that went to each expert on the probe tokens.

    Every token of every probe prompt counts (padding excluded); a token's top-k choices
    fill k slots, so each layer's shares sum to 1. A dense layer sends everything to its
    single expert 0 (load 1.0).
    """

    batch_size: int = 32

    name = "expert_load"
    variables = ("expert_load",)

    def __post_init__(self) -> None:
        _positive_ints(self.name, "batch_size", self.batch_size)

    def config(self) -> dict[str, Any]:
        return _config(self)

    def applies_to(self, model: Model) -> bool:
        return True

    def __call__(self, model: Model, probe: ProbeSet) -> xr.Dataset:
        import xarray as xr

        _check_probe(self.name, probe)
        d = model.dims
        E = max(d.n_experts)
        counts = np.zeros((d.n_layers, E), dtype=np.int64)
        batches = _batches(probe, int(self.batch_size))
        with progress.task("expert load", total=len(batches)) as bar:
            for prompts, _ in batches:
                cap = model.capture(prompts, positions="all")
                valid = cap.batch.valid.cpu().numpy()
                for li, lc in enumerate(cap.layers):
                    chosen = lc.expert_idx.cpu().numpy()[valid]  # (token, slot)
                    counts[li] += np.bincount(chosen.reshape(-1), minlength=E)[:E]
                bar.advance()
        load = counts / counts.sum(axis=1, keepdims=True)
        return xr.Dataset(
            {"expert_load": ((LAYER, EXPERT), load.astype(np.float64))},
            coords={LAYER: _index(d.n_layers), EXPERT: _index(E)},
            attrs=_attrs(self, model, probe),
        )


@dataclasses.dataclass(frozen=True)
class Routing:
    """The experts each probe token chose, per layer: ``routing_choice`` (token, layer, slot).

    Tokens are every position of every probe prompt (padding excluded), prompt by prompt;
    coords ``token_id`` (vocabulary id), ``token_relation`` and ``token_prompt`` (prompt
    index) label them. Slots hold the top-k choices in the router's order; a dense layer
    of a mixed stack fills slot 0 with expert 0 and the rest with -1. MoE models only.
    """

    batch_size: int = 32

    name = "routing"
    variables = ("routing_choice",)

    def __post_init__(self) -> None:
        _positive_ints(self.name, "batch_size", self.batch_size)

    def config(self) -> dict[str, Any]:
        return _config(self)

    def applies_to(self, model: Model) -> bool:
        return bool(model.dims.is_moe)

    def __call__(self, model: Model, probe: ProbeSet) -> xr.Dataset:
        import xarray as xr

        _check_probe(self.name, probe)
        if not model.dims.is_moe:
            raise _fail(self.name, f"{model.name} is dense: it has no routing to record")
        d = model.dims
        slots = max(d.top_k)
        choices, token_ids, prompt_idx = [], [], []
        batches = _batches(probe, int(self.batch_size))
        with progress.task("routing", total=len(batches)) as bar:
            for prompts, index in batches:
                cap = model.capture(prompts, positions="all")
                valid = cap.batch.valid.cpu().numpy()
                ids = cap.batch.input_ids.gather(1, cap.batch.positions).cpu().numpy()
                rows = np.full((int(valid.sum()), d.n_layers, slots), -1, dtype=np.int64)
                for li, lc in enumerate(cap.layers):
                    chosen = lc.expert_idx.cpu().numpy()[valid]
                    rows[:, li, : chosen.shape[1]] = chosen
                choices.append(rows)
                token_ids.append(ids[valid])
                prompt_idx.append(np.broadcast_to(index[:, None], valid.shape)[valid])
                bar.advance()
        choice = np.concatenate(choices)
        token_prompt = np.concatenate(prompt_idx).astype(np.int64)
        relations = np.array([it.relation for it in probe.items], dtype=object)
        return xr.Dataset(
            {"routing_choice": ((TOKEN, LAYER, SLOT), choice)},
            coords={
                TOKEN: _index(choice.shape[0]),
                LAYER: _index(d.n_layers),
                SLOT: _index(slots),
                "token_id": ((TOKEN,), np.concatenate(token_ids).astype(np.int64)),
                "token_relation": ((TOKEN,), relations[token_prompt]),
                "token_prompt": ((TOKEN,), token_prompt),
            },
            attrs=_attrs(self, model, probe),
        )


__all__ = [
    "ExpertLPI",
    "ExpertLoad",
    "HeadLPI",
    "Hit",
    "LayerLPI",
    "NeuronLPI",
    "Robustness",
    "Routing",
]
