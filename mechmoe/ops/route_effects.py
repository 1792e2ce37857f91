"""What an intervention does to the next-token prediction: :func:`route_effects`.

Made for routing changes (``mechmoe route``: banned, forced, silenced or scaled experts,
another top-k), it measures any edits: each prompt is run with and without them and the
two next-token distributions at the last token are compared.

Examples
--------
>>> from mechmoe.testing import tiny_model
>>> from mechmoe.core.interventions import BanExperts
>>> ds = route_effects(tiny_model("olmoe"), ["The capital of France is"], BanExperts({0: [1]}))
>>> dict(ds["top_token"].sizes)
{'condition': 2, 'prompt': 1, 'top': 5}
>>> bool(ds["kl"] >= 0)
True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mechmoe._types import PROMPT
from mechmoe.core.checks import check_number, entry_point
from mechmoe.core.errors import InvalidInputError, InvalidTypeError
from mechmoe.core.interventions import compose
from mechmoe.core.progress import task
from mechmoe.core.provenance import provenance
from mechmoe.probes.metrics import degenerate_rows, warn_degenerate

if TYPE_CHECKING:
    import xarray as xr

    from mechmoe.model import Model

#: The two conditions compared, in order along the ``condition`` dim.
CONDITIONS = ("base", "routed")


@entry_point
def route_effects(
    model: Model,
    prompts: Sequence[str],
    interventions: Any,
    *,
    n_top: int = 5,
    batch_size: int = 32,
    progress: bool = False,
) -> xr.Dataset:
    """Next-token predictions at each prompt's last token, without and with ``interventions``.

    Parameters
    ----------
    model, prompts
        A :class:`mechmoe.Model` and the prompts to run.
    interventions
        An edit, a list of edits or a composed plan (:func:`mechmoe.compose`); it is
        validated against the model before any pass.
    n_top
        Top predictions kept per prompt and condition (at most the vocabulary).
    batch_size
        Prompts per forward pass.
    progress
        Report progress (:mod:`mechmoe.core.progress`).

    Returns
    -------
    xarray.Dataset
        Over ``(condition, prompt, top)`` (conditions ``"base"``, ``"routed"``):
        ``top_token``, ``top_logprob``, ``top_text`` (decoded). Over ``prompt``:
        ``kl`` = KL(base ‖ routed) of the next-token distributions (nats, ≥ 0),
        ``top1_kept`` (the routed top-1 is the base top-1), ``delta_logprob_top1`` (the
        change of the base top-1 token's log-probability), ``routing_changed`` (the
        fraction of MoE layers whose set of chosen experts at the last token differs; 0
        on a dense model). Attrs record the model, prompts, options and edits.

    Warns
    -----
    UserWarning
        When the edited model's logits are all equal or not finite for some prompts (the
        routed predictions then mean nothing).
    """
    import xarray as xr

    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, Sequence) or not all(isinstance(p, str) for p in prompts):
        raise InvalidTypeError("prompts= takes a list of strings")
    texts = list(prompts)
    if not texts:
        raise InvalidInputError("no prompts given")
    n_top = int(check_number(n_top, name="n_top", integer=True, minimum=1))
    batch_size = int(check_number(batch_size, name="batch_size", integer=True, minimum=1))
    plan = compose(interventions)
    if not len(plan):
        raise InvalidInputError("no interventions given; there is nothing to compare")
    plan.validate(model)

    logp: dict[str, list[torch.Tensor]] = {name: [] for name in CONDITIONS}
    changed: list[torch.Tensor] = []
    with torch.no_grad(), task("route effects", total=len(texts), show=progress) as bar:
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            base = model.capture(chunk)
            edited = model.capture(chunk, interventions=plan)
            logp["base"].append(torch.log_softmax(base.logits[:, -1].double(), -1))
            logp["routed"].append(torch.log_softmax(edited.logits[:, -1].double(), -1))
            changed.append(_rerouted(base, edited, len(chunk)))
            bar.advance(len(chunk))
    lp = {name: torch.cat(v).cpu() for name, v in logp.items()}
    warn_degenerate(int(degenerate_rows(lp["routed"]).sum()), len(texts))

    n = min(n_top, lp["base"].shape[-1])
    tok_ids, tok_lp, tok_text = [], [], []
    for name in CONDITIONS:
        vals, ids = lp[name].topk(n, dim=-1)
        tok_ids.append(ids.numpy())
        tok_lp.append(vals.float().numpy())
        tok_text.append(
            np.array([[model.tokenizer.decode([int(i)]) for i in row] for row in ids], dtype=object)
        )
    base_lp, routed_lp = lp["base"], lp["routed"]
    # KL(p‖q) = Σ p (log p − log q); tokens the base gives probability 0 add nothing.
    p = base_lp.exp()
    kl = torch.where(p > 0, p * (base_lp - routed_lp), torch.zeros((), dtype=p.dtype)).sum(-1)
    top1 = base_lp.argmax(-1)
    d_top1 = routed_lp.gather(-1, top1[:, None])[:, 0] - base_lp.gather(-1, top1[:, None])[:, 0]
    return xr.Dataset(
        {
            "top_token": (("condition", PROMPT, "top"), np.stack(tok_ids)),
            "top_logprob": (("condition", PROMPT, "top"), np.stack(tok_lp)),
            "top_text": (("condition", PROMPT, "top"), np.stack(tok_text)),
            "kl": ((PROMPT,), kl.clamp_min(0).float().numpy()),
            "top1_kept": ((PROMPT,), (routed_lp.argmax(-1) == top1).numpy()),
            "delta_logprob_top1": ((PROMPT,), d_top1.float().numpy()),
            "routing_changed": ((PROMPT,), torch.cat(changed).numpy()),
        },
        coords={
            "condition": list(CONDITIONS),
            PROMPT: np.array(texts, dtype=object),
            "top": np.arange(1, n + 1),
        },
        attrs=provenance(
            model,
            probe=texts,
            options={"n_top": n_top, "batch_size": batch_size, "interventions": repr(plan)},
            kl="KL(base || routed) of the next-token distribution at the last token",
            routing_changed="fraction of MoE layers whose chosen experts at the last token differ",
        ),
    )


def _rerouted(base: Any, edited: Any, n: int) -> torch.Tensor:
    """Per prompt, the fraction of MoE layers whose expert set at the last token changed."""
    moe = [la for la, lc in enumerate(base.layers) if lc.kind == "moe"]
    diff = torch.zeros(n, dtype=torch.float64)
    for la in moe:
        a = base.layers[la].expert_idx[:, -1].sort(-1).values
        b = edited.layers[la].expert_idx[:, -1].sort(-1).values
        # another top-k changes the set's size: every prompt is rerouted there
        diff += 1.0 if a.shape != b.shape else (a != b).any(-1).double().cpu()
    return diff / max(len(moe), 1)


__all__ = ["CONDITIONS", "route_effects"]
