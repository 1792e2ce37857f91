"""The one registry, checked the same way for each of the four kinds that use it.

Adapters, backends, model sources and measures each have ``list_*``, ``get_*``,
``register_*`` and ``unregister_*`` over a :class:`mechmoe.core.registry.Registry`: lazy
``"module:attr"`` built-ins, entry points found by name (here from a fake distribution put
on ``sys.path``, found by ``importlib.metadata`` as any installed package), duplicates
refused, unknown names answered with the closest one, entries of the wrong type refused,
every failure a :class:`~mechmoe.core.errors.RegistryError` that is also the error class
each kind raised before.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

import mechmoe
from mechmoe.adapters import registry as adapters
from mechmoe.backends import base as backends
from mechmoe.core.errors import (
    DuplicateNameError,
    InvalidInputError,
    MechmoeError,
    MissingDependencyError,
    ModelNotFoundError,
    RegistryError,
    RegistryTypeError,
    UnknownNameError,
    UnknownSourceError,
    UnsupportedArchitectureError,
)
from mechmoe.core.registry import Lazy, Registry
from mechmoe.model import sources
from mechmoe.trajectory import measures


@dataclass(frozen=True)
class Kind:
    """One kind of registry entry, seen through its public functions."""

    id: str
    registry: Registry[Any]
    list: Callable[[], list[str]]
    get: Callable[[str], Any]  # the entry (for measures: the class of the measure built)
    register: Callable[..., Any]  # (name, obj, replace=...)
    unregister: Callable[[str], None]
    getter: str  # the name of get_* in the module of list_*
    lazy_name: str  # a name mechmoe ships that is imported only when asked for
    lazy_module: str  # where it lives
    near_miss: str  # a typo of lazy_name
    unknown_error: type[UnknownNameError]
    old_error: type[MechmoeError]  # what an unknown name raised before the one registry
    source: str  # a module defining OBJ, an entry named {name}
    wrong: Any  # an object of the wrong type
    plugin_name: str  # a valid new name
    deprecated: Callable[[], list[str]] | None


def _obj(kind: Kind, name: str) -> Any:
    namespace: dict[str, Any] = {}
    exec(kind.source.format(name=name), namespace)
    return namespace["OBJ"]


KINDS = [
    Kind(
        id="adapters",
        registry=adapters.ADAPTERS,
        list=adapters.list_adapters,
        get=adapters.get_adapter,
        register=lambda name, obj, replace=False: adapters.register_adapter(obj, replace=replace),
        unregister=adapters.unregister_adapter,
        getter="get_adapter",
        lazy_name="MixtralForCausalLM",
        lazy_module="mechmoe.adapters.mixtral",
        near_miss="MixtralForCausalLm",
        unknown_error=UnsupportedArchitectureError,
        old_error=UnsupportedArchitectureError,
        source=(
            "from mechmoe.adapters import AdapterSpec, DenseMLPSpec\n"
            "OBJ = AdapterSpec(name='plugin', architectures=({name!r},), dense=DenseMLPSpec())\n"
        ),
        wrong=object(),
        plugin_name="PluginForCausalLM",
        deprecated=adapters.supported_architectures,
    ),
    Kind(
        id="backends",
        registry=backends.BACKENDS,
        list=backends.list_backends,
        get=backends.get_backend,
        register=backends.register_backend,
        unregister=backends.unregister_backend,
        getter="get_backend",
        lazy_name="nnsight",
        lazy_module="mechmoe.backends.nnsight",
        near_miss="nnsigth",
        unknown_error=UnknownNameError,
        old_error=InvalidInputError,
        source=(
            "from mechmoe.backends import Backend\n"
            "class OBJ(Backend):\n"
            "    name = {name!r}\n"
            "    def run(self, batch, edits, ctx):\n"
            "        raise NotImplementedError\n"
        ),
        wrong=int,
        plugin_name="plugin_backend",
        deprecated=backends.available_backends,
    ),
    Kind(
        id="sources",
        registry=sources.SOURCES,
        list=sources.list_sources,
        get=sources.get_source,
        register=sources.register_source,
        unregister=sources.unregister_source,
        getter="get_source",
        lazy_name="tiny",  # mechmoe's own entry point (pyproject.toml)
        lazy_module="mechmoe.zoo.tiny",
        near_miss="tinny",
        unknown_error=UnknownSourceError,
        old_error=ModelNotFoundError,
        source="def OBJ(arg):\n    return ('made by', {name!r}, arg)\n",
        wrong=42,
        plugin_name="plugin_source",
        deprecated=sources.available_sources,
    ),
    Kind(
        id="measures",
        registry=measures.MEASURES,
        list=measures.list_measures,
        get=lambda name: type(measures.get_measure(name)),
        register=measures.register_measure,
        unregister=measures.unregister_measure,
        getter="get_measure",
        lazy_name="hit",
        lazy_module="mechmoe.trajectory.builtin_measures",
        near_miss="hitt",
        unknown_error=UnknownNameError,
        old_error=InvalidInputError,
        source=(
            "class OBJ:\n"
            "    name = {name!r}\n"
            "    variables = ('x',)\n"
            "    def applies_to(self, model):\n"
            "        return True\n"
            "    def config(self):\n"
            "        return {{}}\n"
            "    def __call__(self, model, probe):\n"
            "        return None\n"
        ),
        wrong=42,
        plugin_name="plugin_measure",
        deprecated=None,  # list_measures was already the uniform name
    ),
]

ids = [k.id for k in KINDS]


@pytest.mark.parametrize("kind", KINDS, ids=ids)
def test_builtins_are_lazy_module_attr_targets(kind):
    for name, entry in kind.registry.builtin_entries():
        assert isinstance(entry, Lazy) and ":" in entry.target, name
    # a fresh interpreter: listing names imports nothing; asking for one imports its module
    code = (
        f"import sys, {kind.list.__module__} as m\n"
        f"assert {kind.lazy_name!r} in m.{kind.list.__name__}()\n"
        f"assert {kind.lazy_module!r} not in sys.modules, 'imported by listing'\n"
        f"m.{kind.getter}({kind.lazy_name!r})\n"
        f"assert {kind.lazy_module!r} in sys.modules\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]


@pytest.mark.parametrize("kind", KINDS, ids=ids)
def test_entry_point_is_found_by_name_and_imported_when_asked_for(kind, installed):
    module = f"mechmoe_plugin_{kind.id}"
    installed(
        {kind.registry.group: {kind.plugin_name: f"{module}:OBJ"}},
        {module: kind.source.format(name=kind.plugin_name)},
    )
    listed = kind.list()
    assert kind.plugin_name in listed
    if kind.registry is not adapters.ADAPTERS:  # adapters' names come from the spec
        assert module not in sys.modules, "the entry point was imported to list it"
    got = kind.get(kind.plugin_name)
    assert got is sys.modules[module].OBJ
    # a name taken by an installed entry point is refused like any other
    with pytest.raises(DuplicateNameError, match="already registered"):
        kind.register(kind.plugin_name, _obj(kind, kind.plugin_name))


@pytest.mark.parametrize("kind", KINDS, ids=ids)
def test_register_duplicate_replace_unregister(kind):
    name = kind.plugin_name + "2"
    first, second = _obj(kind, name), _obj(kind, name)
    try:
        kind.register(name, first)
        assert kind.get(name) is first and name in kind.list()
        with pytest.raises(DuplicateNameError, match="already registered") as err:
            kind.register(name, second)
        assert isinstance(err.value, ValueError)  # what adapters and measures raised before
        assert kind.get(name) is first
        kind.register(name, second, replace=True)
        assert kind.get(name) is second
    finally:
        kind.unregister(name)
    assert name not in kind.list()
    with pytest.raises(kind.unknown_error):
        kind.get(name)
    kind.unregister(name)  # a no-op now


@pytest.mark.parametrize("kind", KINDS, ids=ids)
def test_replacing_a_shipped_entry_and_unregistering_brings_it_back(kind):
    shipped = kind.get(kind.lazy_name)
    with pytest.raises(DuplicateNameError):
        kind.register(kind.lazy_name, _obj(kind, kind.lazy_name))
    mine = _obj(kind, kind.lazy_name)
    try:
        kind.register(kind.lazy_name, mine, replace=True)
        assert kind.get(kind.lazy_name) is mine
    finally:
        kind.unregister(kind.lazy_name)
    assert kind.get(kind.lazy_name) is shipped


@pytest.mark.parametrize("kind", KINDS, ids=ids)
def test_unknown_name_says_did_you_mean(kind):
    with pytest.raises(kind.unknown_error, match=rf"did you mean '{kind.lazy_name}'") as err:
        kind.get(kind.near_miss)
    message = str(err.value)
    assert isinstance(err.value, kind.old_error) and isinstance(err.value, RegistryError)
    assert isinstance(err.value, LookupError) and "\n" not in message
    assert kind.lazy_name in message.split("known:")[1]  # the known names are listed


@pytest.mark.parametrize("kind", KINDS, ids=ids)
def test_wrong_type_is_refused(kind, installed):
    with pytest.raises(RegistryTypeError, match="not an? ") as err:
        kind.register(kind.plugin_name + "3", kind.wrong)
    assert isinstance(err.value, TypeError) and isinstance(err.value, MechmoeError)
    assert kind.plugin_name + "3" not in kind.list()
    # the same, lazily: an entry point that gives the wrong type fails when asked for
    module = f"mechmoe_wrong_{kind.id}"
    installed({kind.registry.group: {kind.plugin_name: f"{module}:OBJ"}}, {module: "OBJ = 42\n"})
    if kind.registry is adapters.ADAPTERS:
        with pytest.raises(RegistryTypeError, match="is an int, not an AdapterSpec"):
            kind.list()  # an adapter's names come from its spec, so listing imports it
    else:
        with pytest.raises(RegistryTypeError, match=rf"{module}:OBJ\) is an int"):
            kind.get(kind.plugin_name)


@pytest.mark.parametrize("kind", [k for k in KINDS if k.deprecated is not None], ids=str)
def test_old_listing_names_still_work_with_a_warning(kind):
    with pytest.warns(DeprecationWarning, match=r"use list_"):
        old = kind.deprecated()
    assert sorted(old) == sorted(kind.list())


def test_public_namespace_has_the_uniform_verbs():
    for noun in ("adapter", "backend", "source", "measure"):
        for verb in ("list", "get", "register"):
            plural = "s" if verb == "list" else ""
            assert callable(getattr(mechmoe, f"{verb}_{noun}{plural}")), (verb, noun)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mechmoe.list_backends() == mechmoe.backends.list_backends()


# ---- the Registry itself ---------------------------------------------------------------
def _ints() -> Registry[int]:
    return Registry(
        "size", group="mechmoe.test_sizes", check=lambda o: isinstance(o, int), expected="an int"
    )


def test_lazy_targets_that_do_not_resolve_say_so():
    reg = _ints()
    reg.register("gone", "no_such_module_xyz:SIZE")
    with pytest.raises(
        MissingDependencyError, match="points to 'no_such_module_xyz:SIZE', which does not exist"
    ):
        reg.get("gone")
    reg.register("noattr", "json:NO_SUCH_NAME")
    with pytest.raises(MissingDependencyError, match="json has no 'NO_SUCH_NAME'"):
        reg.get("noattr")
    reg.register("wrong", "json:dumps")
    with pytest.raises(
        RegistryTypeError, match=r"size 'wrong' \(json:dumps\) is a function, not an int"
    ):
        reg.get("wrong")
    with pytest.raises(RegistryTypeError, match="not a 'package.module:attr' target"):
        reg.register("bad", "json")
    needs = Registry(
        "size",
        group="mechmoe.test_sizes",
        check=lambda o: isinstance(o, int),
        expected="an int",
        builtins={
            "big": Lazy("json:NOPE", requires="no_such_library_xyz", install="pip install xyz")
        },
    )
    with pytest.raises(
        MissingDependencyError,
        match="needs no_such_library_xyz, which is not installed: pip install xyz",
    ):
        needs.get("big")


def test_two_packages_declaring_one_name_are_refused(installed):
    installed({"mechmoe.test_sizes": {"big": "json:x"}})
    installed({"mechmoe.test_sizes": {"big": "os:y"}})
    with pytest.raises(
        DuplicateNameError, match="two installed packages declare a size named 'big'"
    ):
        _ints().get("big")


def test_names_and_types_are_checked():
    reg = _ints()
    with pytest.raises(MechmoeError, match="named by a string, got int"):
        reg.get(3)  # type: ignore[arg-type]
    with pytest.raises(MechmoeError, match="cannot be empty"):
        reg.register("", 1)
    with pytest.raises(MechmoeError, match="must be a Python identifier"):
        measures.register_measure("not an identifier", lambda: None)
    with pytest.raises(MechmoeError, match="cannot contain ':' or '/'"):
        mechmoe.register_source("a:b", lambda arg: None)
    assert reg.names() == [] and "anything" not in reg and 3 not in reg
