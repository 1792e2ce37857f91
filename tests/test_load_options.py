"""LoadOptions: one value for every way of loading a model."""

from __future__ import annotations

import pytest
import torch

import mechmoe
from mechmoe.core.errors import InvalidInputError, InvalidTypeError
from mechmoe.model import LoadOptions


def test_keywords_build_the_same_value_as_options() -> None:
    opts = LoadOptions(dtype="bfloat16", revision="step1")
    assert LoadOptions.build(None, dtype="bfloat16", revision="step1") == opts
    assert LoadOptions.build(opts, revision="step2").revision == "step2"
    assert opts.revision == "step1"  # immutable: build returns a copy


def test_describe_is_json_able() -> None:
    import json

    d = LoadOptions(dtype=torch.bfloat16, device=torch.device("cpu"), tokenizer="tok/").describe()
    assert d["dtype"] == "bfloat16" and d["device"] == "cpu" and d["tokenizer"] == "tok/"
    json.dumps(d)


@pytest.mark.parametrize(
    ("kw", "err", "fragment"),
    [
        ({"tokenizer": 42}, InvalidTypeError, "tokenizer= takes"),
        ({"backend": 3}, InvalidTypeError, "backend= takes"),
        ({"dtype": 1.5}, InvalidTypeError, "dtype= takes"),
        ({"revision": 5}, InvalidTypeError, "revision= takes a string"),
        ({"nonsense": 1}, InvalidTypeError, "unknown load option 'nonsense'"),
        ({"tokenizer": " "}, InvalidInputError, "empty name"),
    ],
)
def test_wrong_options_are_one_clear_error(kw: dict, err: type, fragment: str) -> None:
    with pytest.raises(err, match=fragment):
        mechmoe.load("tiny:olmoe", **kw)


def test_integer_dtype_is_refused_before_loading() -> None:
    with pytest.raises(InvalidInputError, match="cannot hold a model's weights"):
        mechmoe.load("tiny:olmoe", dtype=torch.int8)


def test_options_value_and_keywords_load_the_same_model() -> None:
    a = mechmoe.load("tiny:olmoe", LoadOptions(dtype="float32"))
    b = mechmoe.load("tiny:olmoe", dtype="float32")
    assert a.backend == b.backend == mechmoe.LoadOptions().backend
    for (n, p), (_, q) in zip(a.hf.named_parameters(), b.hf.named_parameters(), strict=True):
        assert torch.equal(p, q), n
