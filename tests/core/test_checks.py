"""Option checks (mechmoe/core/checks.py): one message for a wrong word, mechmoe's errors for
a wrong type, at every public entry point, also under the test-time type checker."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import pytest

from mechmoe import _types
from mechmoe.core.checks import check_choice, check_number, choice_values, closest, entry_point
from mechmoe.core.errors import InvalidInputError, InvalidTypeError

Colour = Literal["red", "green"]


def test_choice_values_of_literals_nested_and_sequences():
    assert choice_values(Colour) == ("red", "green")
    assert choice_values(Literal[Colour, "blue", "red"]) == ("red", "green", "blue")
    assert choice_values(("a", "b", "a")) == ("a", "b")


def test_check_choice_messages():
    assert check_choice("red", Colour, name="colour") == "red"
    with pytest.raises(InvalidInputError) as info:
        check_choice("gren", Colour, name="colour")
    assert str(info.value) == "colour='gren': use one of 'red', 'green' (did you mean 'green'?)"
    with pytest.raises(InvalidInputError) as info:
        check_choice("RED", Colour, name="--colour")
    assert str(info.value) == "--colour 'RED': use one of red, green (did you mean 'red'?)"
    with pytest.raises(InvalidInputError) as info:
        check_choice("purple", Colour, name="colour", where="measure 'm'", note="or a number")
    assert str(info.value) == "measure 'm': colour='purple': use one of 'red', 'green'; or a number"
    assert type(info.value) is InvalidInputError


@pytest.mark.parametrize("value", [3, None, b"red", ["red"], 1.5])
def test_check_choice_wrong_type_is_a_type_error(value):
    with pytest.raises(InvalidTypeError) as info:
        check_choice(value, Colour, name="colour")
    assert str(info.value) == (
        f"colour= takes one of 'red', 'green', got {type(value).__name__} {value!r}"
    )
    assert isinstance(info.value, TypeError)  # as Python would have it


def test_closest_ignores_case_and_needs_a_near_word():
    assert closest("NEURON", choice_values(_types.Level)) == "neuron"
    assert closest("atn", choice_values(_types.Level)) == "attn"
    assert closest("zzz", choice_values(_types.Level)) is None


@pytest.mark.parametrize(
    ("value", "kwargs", "error", "message"),
    [
        ("1", {}, InvalidTypeError, "x= takes a number, got str '1'"),
        (True, {}, InvalidTypeError, "x= takes a number, got bool True"),
        (1.5, {"integer": True}, InvalidTypeError, "x= takes an integer, got float 1.5"),
        (math.inf, {}, InvalidInputError, "x=inf must be a finite number"),
        (math.nan, {}, InvalidInputError, "x=nan must be a finite number"),
        (0, {"positive": True}, InvalidInputError, "x=0 must be positive"),
        (0, {"minimum": 1}, InvalidInputError, "x=0 must be at least 1"),
    ],
)
def test_check_number(value, kwargs, error, message):
    with pytest.raises(error) as info:
        check_number(value, name="x", **kwargs)
    assert str(info.value) == message and type(info.value) is error


def test_check_number_takes_numpy_numbers():
    assert check_number(np.int64(3), name="x", integer=True, minimum=1) == 3
    assert check_number(np.float32(0.5), name="x", positive=True) == np.float32(0.5)


def test_every_option_word_list_is_a_literal_of_strings():
    """The vocabulary: each option type in _types is a Literal of distinct strings."""
    names = [
        "Level",
        "Target",
        "Precision",
        "MaskMode",
        "Executor",
        "ModelKind",
        "ExpertsImplementation",
        "SaturationReference",
        "CoactivationNorm",
        "Positions",
    ]
    for name in names:
        words = choice_values(getattr(_types, name))
        assert words and all(isinstance(w, str) for w in words), name
        assert len(set(words)) == len(words), name


# ---- the test-time type checker and the entry points ---------------------------------------
def test_the_suite_runs_under_the_type_checker():
    """The premise of entry_point: an annotated internal rejects a wrong type with the
    checker's own error (so these tests would fail if the checker were off)."""
    import jaxtyping

    from mechmoe.probes.registry import bundled_path  # annotated, not an entry point

    with pytest.raises(jaxtyping.TypeCheckError):
        bundled_path(3)  # type: ignore[arg-type]


def test_entry_point_marks_and_keeps_the_function():
    def f(x: int) -> int:
        return x

    assert entry_point(f) is f and f.__no_type_check__ is True  # type: ignore[attr-defined]
    assert f("not an int") == "not an int"  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def tiny():
    from mechmoe.testing import tiny_model

    return tiny_model("olmoe")


@pytest.fixture(scope="module")
def probe():
    from mechmoe.probes import load_probe

    return load_probe("adj_antonym").head(2)


def _calls(tiny, probe):
    from mechmoe.analysis import coactivation, router_saturation
    from mechmoe.analysis.testing import toy_store
    from mechmoe.core.interventions import BanExperts
    from mechmoe.ops.attribution import attribute
    from mechmoe.ops.robustness import head_ranking, head_robustness
    from mechmoe.ops.route_effects import route_effects

    prompts = ["The capital of France is"]
    store = toy_store()
    return {
        "attribute level": lambda v: attribute(tiny, prompts, level=v),
        "attribute target": lambda v: attribute(tiny, prompts, level="head", target=v),
        "attribute precision": lambda v: attribute(tiny, prompts, level="head", precision=v),
        "head_ranking target": lambda v: head_ranking(tiny, probe, target=v),
        "head_robustness mode": lambda v: head_robustness(
            tiny, probe, ranking=[(0, 0)], ns=(1,), mode=v
        ),
        "head_robustness target": lambda v: head_robustness(
            tiny, probe, ranking=[(0, 0)], ns=(1,), target=v
        ),
        "route_effects n_top": lambda v: route_effects(
            tiny, prompts, BanExperts({0: [1]}), n_top=v
        ),
        "router_saturation reference": lambda v: router_saturation(store, reference=v),
        "coactivation normalize": lambda v: coactivation(store, normalize=v),
    }


CALLS = [
    "attribute level",
    "attribute target",
    "attribute precision",
    "head_ranking target",
    "head_robustness mode",
    "head_robustness target",
    "route_effects n_top",
    "router_saturation reference",
    "coactivation normalize",
]


@pytest.mark.parametrize("call", CALLS)
def test_entry_points_raise_mechmoe_errors_for_wrong_words_and_types(tiny, probe, call):
    run = _calls(tiny, probe)[call]
    option = call.split()[1]
    if option == "n_top":
        bad_word, bad_type = 0, "5"
    elif option == "reference":
        bad_word, bad_type = "fnal", 2.5j
    else:
        bad_word, bad_type = "zzz", 3
    with pytest.raises(InvalidInputError) as info:
        run(bad_word)
    assert type(info.value) is InvalidInputError and option in str(info.value)
    with pytest.raises(InvalidTypeError if option != "reference" else InvalidInputError) as info:
        run(bad_type)
    assert option in str(info.value)
