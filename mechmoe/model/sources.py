"""Named model sources: ``load("NAME")`` and ``load("NAME:ARG")``, a registry.

A named source is a callable given what follows ``NAME:`` in the model name and returning
a model path (a folder or ``.gguf`` file, loaded as usual) or a ``(hf_model, tokenizer)``
pair. mechmoe's own (``tiny:FAMILY``, ``smollm2``, in :mod:`mechmoe.zoo`) and third
parties' are declared in the entry-point group ``mechmoe.sources``, so nothing is
imported before a source is asked for; :func:`register_source` adds one in this process.
The same names are accepted wherever a tokenizer can be named.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mechmoe.core.checks import entry_point
from mechmoe.core.errors import InvalidNameError, UnknownSourceError
from mechmoe.core.registry import Registry, deprecated_alias

SOURCE_GROUP = "mechmoe.sources"

#: A named source is called with what follows ``NAME:`` in the model name (``""`` for a bare
#: ``NAME``) and returns a model path (a folder or ``.gguf`` file, loaded as usual) or a
#: ``(hf_model, tokenizer)`` pair.
Source = Callable[[str], Any]


def _source_name(name: str) -> None:
    if ":" in name or "/" in name:
        raise InvalidNameError(f"a source name cannot contain ':' or '/', got {name!r}")


SOURCES: Registry[Source] = Registry(
    "model source",
    group=SOURCE_GROUP,
    check=callable,
    expected="a callable taking what follows 'NAME:' in the model name",
    unknown=UnknownSourceError,
    validate_name=_source_name,
    how_to_add="register one with mechmoe.register_source or the 'mechmoe.sources' "
    "entry-point group (if tiny or smollm2 is missing from an editable install of mechmoe, "
    "reinstall it: pip install -e .)",
)


@entry_point
def register_source(name: str, source: Source | str, *, replace: bool = False) -> None:
    """Make ``load("NAME")`` / ``load("NAME:ARG")`` call ``source(ARG)``.

    ``source`` is a callable or a ``"module:attr"`` string imported on first use.
    mechmoe's own sources (``tiny:FAMILY``, ``smollm2``) and third parties' register
    through the entry-point group ``mechmoe.sources`` instead, so nothing is imported
    before a source is asked for.
    """
    SOURCES.register(name, source, replace=replace)


def unregister_source(name: str) -> None:
    """Forget a registered source (an entry point of that name comes back)."""
    SOURCES.unregister(name)


def list_sources() -> list[str]:
    """Names of every named source (nothing is imported)."""
    return SOURCES.names()


@entry_point
def get_source(name: str) -> Source:
    """The source registered as ``name`` (``"tiny"``, ``"smollm2"``, …)."""
    return SOURCES.get(name)


available_sources = deprecated_alias(list_sources, "available_sources")


def resolve_source(name: str) -> Any:
    """What the named source in ``name`` gives (a path, or a model and its tokenizer), or
    ``None`` when ``name`` names no source (a hub id, a path).

    ``"NAME:…"`` with an unknown ``NAME`` (and no such file) is an
    :class:`~mechmoe.core.errors.UnknownSourceError` naming the closest known source.
    """
    key, sep, arg = name.partition(":")
    if not key or "/" in key or os.sep in key:
        return None
    if key in SOURCES:
        return SOURCES.get(key)(arg)
    if sep and not Path(name).exists():
        raise SOURCES.unknown_error(key)
    return None


__all__ = [
    "SOURCES",
    "SOURCE_GROUP",
    "Source",
    "available_sources",
    "get_source",
    "list_sources",
    "register_source",
    "resolve_source",
    "unregister_source",
]
