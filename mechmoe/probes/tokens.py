"""Which token stands for an object: its first token, as it would follow the prompt.

Objects are scored by their first token only. The object is read as the continuation
of the prompt after one space (``"The capital of France is" + " " + "Paris"``), or
directly when the prompt already ends with whitespace. Tokenizers differ in how they
mark that space (GPT-2's ``Ġ``, SentencePiece's ``▁``, a separate space token), so we do
not guess: we tokenize the prompt alone and the prompt joined with the object, and take
the first token after the prompt's own tokens. Only when the two tokenizations disagree
on the prompt part (a merge across the boundary) do we fall back to tokenizing the
separator and object on their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mechmoe.core.errors import InvalidInputError


def separator(prompt: str) -> str:
    """``" "`` unless ``prompt`` is empty or already ends with whitespace."""
    return "" if not prompt or prompt[-1].isspace() else " "


def first_token_ids(tokenizer: Any, objects: Sequence[str], prompts: Sequence[str]) -> list[int]:
    """The id of each object's first token as it would follow its prompt.

    Parameters
    ----------
    tokenizer
        A Hugging Face tokenizer (anything callable like one, returning
        ``input_ids``). Special tokens are not added.
    objects
        The gold objects, e.g. ``["Paris", "cold"]``.
    prompts
        The prompt each object follows, same length as ``objects``.

    Returns
    -------
    list of int
        One token id per object.

    Raises
    ------
    InvalidInputError
        If the lengths differ, or an object yields no tokens.

    Notes
    -----
    For each pair, with ``sep = separator(prompt)``: let ``p`` be the ids of ``prompt``
    and ``f`` the ids of ``prompt + sep + object``. When ``f`` starts with ``p`` and is
    longer, the answer is ``f[len(p)]`` — exactly the token the model has to predict
    after the prompt. Otherwise (the tokenizer merged across the boundary) the answer is
    the first id of ``sep + object`` tokenized alone.

    Examples
    --------
    >>> from mechmoe.testing import tiny_tokenizer
    >>> tok = tiny_tokenizer()
    >>> [tid] = first_token_ids(tok, ["Paris"], ["The capital of France is"])
    >>> tok.decode([tid])
    ' Paris'
    """
    if len(objects) != len(prompts):
        raise InvalidInputError(
            f"got {len(objects)} objects but {len(prompts)} prompts; give one prompt per object"
        )
    seps = [separator(p) for p in prompts]
    joined = [p + s + o for p, s, o in zip(prompts, seps, objects, strict=True)]
    prompt_ids = _ids(tokenizer, list(prompts))
    joined_ids = _ids(tokenizer, joined)
    out: list[int] = []
    for i, (obj, sep, p, f) in enumerate(zip(objects, seps, prompt_ids, joined_ids, strict=True)):
        if not obj.strip():
            raise InvalidInputError(f"object {i} is empty (prompt {prompts[i]!r})")
        if len(f) > len(p) and f[: len(p)] == p:
            out.append(f[len(p)])
            continue
        alone = _ids(tokenizer, [sep + obj])[0]
        if not alone:
            raise InvalidInputError(f"object {i} ({obj!r}) yields no tokens with this tokenizer")
        out.append(alone[0])
    return out


def gold_token_ids(
    tokenizer: Any, object_sets: Sequence[Sequence[str]], prompts: Sequence[str]
) -> list[tuple[int, ...]]:
    """The first-token id of every gold object of every item, as :func:`first_token_ids`.

    Parameters
    ----------
    tokenizer
        A Hugging Face tokenizer.
    object_sets
        Each item's gold objects (e.g. :attr:`ProbeSet.object_sets`).
    prompts
        Each item's prompt.

    Returns
    -------
    list of tuple of int
        One tuple per item, one id per object, in the objects' order (two objects may
        share a first token).

    Examples
    --------
    >>> from mechmoe.testing import tiny_tokenizer
    >>> tok = tiny_tokenizer()
    >>> [ids] = gold_token_ids(tok, [["cold", "hot"]], ["The opposite of warm is"])
    >>> [tok.decode([i]) for i in ids]
    [' cold', ' hot']
    """
    if len(object_sets) != len(prompts):
        raise InvalidInputError(
            f"got {len(object_sets)} object sets but {len(prompts)} prompts; give one per prompt"
        )
    flat_objects = [o for objs in object_sets for o in objs]
    flat_prompts = [p for objs, p in zip(object_sets, prompts, strict=True) for _ in objs]
    for i, objs in enumerate(object_sets):
        if not len(objs):
            raise InvalidInputError(f"item {i} (prompt {prompts[i]!r}) has no gold object")
    ids = first_token_ids(tokenizer, flat_objects, flat_prompts)
    out: list[tuple[int, ...]] = []
    start = 0
    for objs in object_sets:
        out.append(tuple(ids[start : start + len(objs)]))
        start += len(objs)
    return out


def _ids(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    enc = tokenizer(texts, add_special_tokens=False)
    return [list(ids) for ids in enc["input_ids"]]


__all__ = ["first_token_ids", "gold_token_ids", "separator"]
