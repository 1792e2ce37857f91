from __future__ import annotations

import pytest

from mechmoe.core.errors import InvalidInputError
from mechmoe.probes import first_token_ids
from mechmoe.probes.tokens import separator
from mechmoe.testing import tiny_tokenizer


def test_separator() -> None:
    assert separator("The capital of France is") == " "
    assert separator("Answer: ") == ""
    assert separator("line\n") == ""
    assert separator("") == ""


def test_leading_space_convention() -> None:
    tok = tiny_tokenizer()
    prompts = ["The capital of France is", "The opposite of hot is"]
    ids = first_token_ids(tok, ["Paris", "cold"], prompts)
    for tid, prompt, obj in zip(ids, prompts, ["Paris", "cold"], strict=True):
        full = tok(prompt + " " + obj, add_special_tokens=False)["input_ids"]
        alone = tok(prompt, add_special_tokens=False)["input_ids"]
        assert tid == full[len(alone)]
        assert tok.decode([tid]).startswith(" ")  # byte-level BPE carries the space
    assert tok.decode([ids[0]]) == " Paris"


def test_prompt_ending_in_whitespace_gets_no_extra_space() -> None:
    tok = tiny_tokenizer()
    [with_space] = first_token_ids(tok, ["Paris"], ["The capital of France is "])
    [normal] = first_token_ids(tok, ["Paris"], ["The capital of France is"])
    # Either way the object's first token is looked up as it follows the prompt; with a
    # trailing space the object is glued on, so no second space is introduced.
    assert "  " not in tok.decode([with_space])
    assert tok.decode([normal]) == " Paris"


def test_multi_token_object_uses_first_token_only() -> None:
    tok = tiny_tokenizer()
    [tid] = first_token_ids(tok, ["Zyxwvut"], ["The capital of France is"])
    full = tok("The capital of France is Zyxwvut", add_special_tokens=False)["input_ids"]
    prompt = tok("The capital of France is", add_special_tokens=False)["input_ids"]
    assert len(full) - len(prompt) > 1
    assert tid == full[len(prompt)]


class MergingTokenizer:
    """Tokenizes by characters but merges a trailing ' ' with the next char: forces fallback."""

    def __call__(self, texts: list[str], add_special_tokens: bool = False) -> dict:
        out = []
        for t in texts:
            ids = [ord(c) for c in t]
            if t.startswith("x "):
                ids = [999] + ids[2:]  # the prompt's last token changes when text follows
            out.append(ids)
        return {"input_ids": out}


def test_fallback_when_boundary_merges() -> None:
    [tid] = first_token_ids(MergingTokenizer(), ["ab"], ["x"])
    assert tid == ord(" ")  # " ab" tokenized on its own


def test_errors() -> None:
    tok = tiny_tokenizer()
    with pytest.raises(InvalidInputError, match="2 objects but 1 prompts"):
        first_token_ids(tok, ["a", "b"], ["p"])
    with pytest.raises(InvalidInputError, match="object 0 is empty"):
        first_token_ids(tok, [" "], ["p"])

    class Empty:
        def __call__(self, texts: list[str], add_special_tokens: bool = False) -> dict:
            return {"input_ids": [[] for _ in texts]}

    with pytest.raises(InvalidInputError, match=r"object 0 \('x'\) yields no tokens"):
        first_token_ids(Empty(), ["x"], ["p"])
