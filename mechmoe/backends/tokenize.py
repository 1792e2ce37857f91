"""Prompts → left-padded batch, with prompt-level validation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from mechmoe._types import Positions
from mechmoe.core.checks import check_choice
from mechmoe.core.errors import InvalidInputError
from mechmoe.core.types import Batch

if TYPE_CHECKING:
    from mechmoe.core.types import ModelView as Model


def _pad_id(tokenizer: Any) -> int:
    for attr in ("pad_token_id", "eos_token_id", "bos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


def check_utf8(text: str, what: str) -> None:
    """Refuse text holding undecodable bytes (non-UTF-8 command-line arguments arrive as
    lone surrogates) with one line naming ``what``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InvalidInputError(
            f"{what} holds bytes that are not UTF-8 (at character {err.start}); pass UTF-8 text"
        ) from None


def make_batch(model: Model, prompts: Sequence[str], *, positions: Any = "last") -> Batch:
    """Tokenize ``prompts`` one by one and left-pad them into a :class:`Batch`.

    Position ids count only real tokens, so a padded prompt sees exactly the positions
    it would see alone.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = tuple(prompts)
    if not prompts:
        raise InvalidInputError("no prompts given")
    ids: list[list[int]] = []
    max_pos = model.dims.max_positions
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidInputError(f"prompt {i} is empty; every prompt needs at least one token")
        check_utf8(prompt, f"prompt {i}")
        toks = list(model.tokenizer(prompt, add_special_tokens=True)["input_ids"])
        if not toks:
            raise InvalidInputError(f"prompt {i} ({prompt[:40]!r}) tokenizes to nothing")
        if max_pos is not None and len(toks) > max_pos:
            raise InvalidInputError(
                f"prompt {i} ({prompt[:40]!r}…) has {len(toks)} tokens, more than the model's "
                f"context of {max_pos}; shorten it"
            )
        ids.append(toks)
    lengths = [len(t) for t in ids]
    seq = max(lengths)
    pad = _pad_id(model.tokenizer)
    input_ids = torch.full((len(ids), seq), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), seq), dtype=torch.long)
    for b, toks in enumerate(ids):
        input_ids[b, seq - len(toks) :] = torch.tensor(toks)
        mask[b, seq - len(toks) :] = 1
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    pos, valid = _positions(positions, lengths, seq)
    dev = model.device
    return Batch(
        prompts=prompts,
        input_ids=input_ids.to(dev),
        attention_mask=mask.to(dev),
        position_ids=position_ids.to(dev),
        positions=pos.to(dev),
        valid=valid.to(dev),
    )


def _positions(positions: Any, lengths: list[int], seq: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = len(lengths)
    if isinstance(positions, str):
        check_choice(positions, Positions, name="positions", note="or a list of token indices")
        if positions == "last":
            return torch.full((n, 1), seq - 1, dtype=torch.long), torch.ones(
                (n, 1), dtype=torch.bool
            )
        if positions == "all":
            pos = torch.arange(seq).expand(n, seq).clone()
            valid = torch.stack([torch.arange(seq) >= seq - length for length in lengths])
            return pos, valid
    try:
        idx = [int(p) for p in positions]
    except (TypeError, ValueError):
        raise InvalidInputError(
            f"positions={positions!r}: use 'last', 'all' or a list of token indices"
        ) from None
    if not idx:
        raise InvalidInputError("positions is an empty list")
    out = torch.empty((n, len(idx)), dtype=torch.long)
    for b, length in enumerate(lengths):
        for j, p in enumerate(idx):
            q = p + length if p < 0 else p
            if not 0 <= q < length:
                raise InvalidInputError(
                    f"position {p} is outside prompt {b}, which has {length} tokens"
                )
            out[b, j] = seq - length + q
    return out, torch.ones_like(out, dtype=torch.bool)


__all__ = ["make_batch"]
