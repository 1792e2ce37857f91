"""One registry for everything mechmoe finds by name.

Four kinds of things are looked up by name, each in one :class:`Registry`: model-family
adapters (by HF architecture name, :mod:`mechmoe.adapters.registry`), capture backends
(:mod:`mechmoe.backends.base`), named model sources (``load("tiny:olmoe")``,
:mod:`mechmoe.model.loading`) and trajectory measures (:mod:`mechmoe.trajectory.measures`).
Each kind offers the same verbs: ``list_*``, ``get_*``, ``register_*``, ``unregister_*``.

A name is found, in this order, among

1. entries registered in this process (``register_*``), which may replace a built-in
   with ``replace=True``;
2. mechmoe's built-ins, written as ``"module:attr"`` and imported when first asked for;
3. the entry points of the kind's group (``mechmoe.adapters``, ``mechmoe.backends``,
   ``mechmoe.sources``, ``mechmoe.measures``): a third-party package declares
   ``name = "package.module:attr"`` and is imported only when that name is asked for
   (or, for kinds whose names come from the object, such as adapters, when the names
   are listed).

Every failure is one :class:`~mechmoe.core.errors.RegistryError`: an unknown name
(:class:`~mechmoe.core.errors.UnknownNameError`, with the closest known name), a name
already taken (:class:`~mechmoe.core.errors.DuplicateNameError`), an object of the
wrong kind (:class:`~mechmoe.core.errors.RegistryTypeError`), an entry whose module is
missing or whose library is not installed
(:class:`~mechmoe.core.errors.MissingDependencyError`).

Examples
--------
>>> sizes = Registry("size", group="example.sizes", check=lambda o: isinstance(o, int), expected="an int")
>>> _ = sizes.register("large", 3)
>>> sizes.get("large"), sizes.names()
(3, ['large'])
>>> sizes.get("lareg")
Traceback (most recent call last):
...
mechmoe.core.errors.UnknownNameError: unknown size 'lareg' (did you mean 'large'?); known: large
"""

from __future__ import annotations

import importlib
import importlib.util
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from mechmoe.core.checks import closest, entry_point
from mechmoe.core.errors import (
    DuplicateNameError,
    InvalidNameError,
    InvalidTypeError,
    MissingDependencyError,
    RegistryTypeError,
    UnknownNameError,
)

T = TypeVar("T")


@dataclass(frozen=True)
class Lazy:
    """An entry imported on first use: ``target`` is ``"module:attr"``.

    ``requires`` names a library the module imports (checked before importing, so a
    missing one is reported with ``install``, the command that installs it).
    """

    target: str
    requires: str | None = None
    install: str = ""

    def __post_init__(self) -> None:
        module, sep, attr = self.target.partition(":")
        if not (module and sep and attr) or ":" in attr:
            raise RegistryTypeError(
                f"{self.target!r} is not a 'package.module:attr' target; "
                "write the module, a colon and the attribute"
            )


class Registry(Generic[T]):
    """Named entries of one kind: registered objects, lazy built-ins and entry points.

    Parameters
    ----------
    kind
        What an entry is, for messages (``"backend"``, ``"measure"``).
    group
        The entry-point group third-party packages declare entries in.
    check, expected
        ``check(obj)`` says whether ``obj`` is an entry of this kind; ``expected`` says
        what one is (``"a Backend subclass"``) in the error when it is not.
    builtins
        Name → ``"module:attr"`` (or :class:`Lazy`); listed first, in this order.
    keys
        For kinds whose object carries its names (an adapter spec its architectures):
        the names an object answers to. Entry points are then imported to list them.
    noun
        What a name is, for messages (default ``kind``; adapters: ``"architecture"``).
    unknown
        The :class:`~mechmoe.core.errors.UnknownNameError` subclass raised for a name
        no entry has.
    how_to_add
        A sentence appended to the unknown-name error.
    validate_name
        Raises :class:`~mechmoe.core.errors.InvalidNameError` for a name the kind cannot
        hold.
    """

    def __init__(
        self,
        kind: str,
        *,
        group: str,
        check: Callable[[Any], bool],
        expected: str,
        builtins: Mapping[str, str | Lazy] | None = None,
        keys: Callable[[Any], Iterable[str]] | None = None,
        noun: str | None = None,
        unknown: type[UnknownNameError] = UnknownNameError,
        how_to_add: str = "",
        validate_name: Callable[[str], None] | None = None,
    ) -> None:
        self.kind = kind
        self.group = group
        self.noun = noun or kind
        self.expected = expected
        self._check = check
        self._keys = keys
        self._unknown = unknown
        self._how_to_add = how_to_add
        self._validate_name = validate_name
        self._builtins: dict[str, Lazy] = {
            name: _lazy(target) for name, target in (builtins or {}).items()
        }
        self._registered: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, group={self.group!r})"

    # ---- listing ------------------------------------------------------------------
    def builtin_entries(self) -> list[tuple[str, Lazy]]:
        """The built-ins, ``(name, Lazy)`` in their declared order (nothing is imported)."""
        return list(self._builtins.items())

    def names(self) -> list[str]:
        """Every known name: built-ins in their order, then the others sorted.

        Entry points are listed by name without importing them, except for kinds whose
        names come from the object (``keys``), where each is imported to learn them.
        """
        others = set(self._registered) | set(self._entry_point_names())
        return [*self._builtins, *sorted(others - set(self._builtins))]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        if name in self._registered or name in self._builtins:
            return True
        return name in self._entry_point_names()

    def items(self) -> list[tuple[str, T]]:
        """``(name, entry)`` for every known name, importing each."""
        return [(name, self.get(name)) for name in self.names()]

    # ---- registering --------------------------------------------------------------
    @entry_point
    def register(
        self, names: str | Sequence[str] | None, obj: T | str, *, replace: bool = False
    ) -> T | str:
        """Register ``obj`` (or a ``"module:attr"`` string, imported on first use) under
        ``names`` (``None``: the names the object carries, for kinds with ``keys``).

        A name already known (built-ins and installed entry points included) raises
        :class:`~mechmoe.core.errors.DuplicateNameError` unless ``replace=True``; nothing
        is registered unless every name can be. A registered entry takes precedence over
        a built-in or an entry point of the same name.
        """
        entry: Any = _lazy(obj) if isinstance(obj, str) else obj
        if not isinstance(entry, Lazy):
            self._check_type(
                entry, f"the {self.kind}" if names is None else f"{self.kind} {names!r}"
            )
        if names is None:
            if self._keys is None or isinstance(entry, Lazy):
                raise InvalidNameError(f"name the {self.kind} to register")
            names = list(self._keys(entry))
        all_names = [names] if isinstance(names, str) else list(names)
        for name in all_names:
            self._check_name(name)
        if not replace:
            for name in all_names:
                if name in self:
                    raise DuplicateNameError(
                        f"a {self.kind} named {name!r} is already registered; pass "
                        "replace=True to override it"
                    )
        for name in all_names:
            self._registered[name] = entry
        return obj

    @entry_point
    def unregister(self, name: str) -> None:
        """Forget a registered entry (a built-in it replaced comes back); a no-op for
        names that were not registered."""
        self._registered.pop(name, None)

    # ---- looking up ---------------------------------------------------------------
    @entry_point
    def get(self, name: str) -> T:
        """The entry named ``name``, imported now if it is lazy."""
        self._check_name(name, registering=False)
        if name in self._registered:
            found = self._registered[name]
            return self._resolve(name, found) if isinstance(found, Lazy) else found
        if name in self._builtins:
            return self._resolve(name, self._builtins[name])
        found = self._from_entry_points(name)
        if found is not None:
            return found
        raise self.unknown_error(name)

    def unknown_error(self, name: str) -> UnknownNameError:
        """The error for a name no entry has: the closest known name and the known ones."""
        known = self.names()
        close = closest(name, known)
        hint = f" (did you mean {close!r}?)" if close else ""
        tail = f"; {self._how_to_add}" if self._how_to_add else ""
        return self._unknown(
            f"unknown {self.noun} {name!r}{hint}; known: {', '.join(known) or 'none'}{tail}"
        )

    # ---- internals ----------------------------------------------------------------
    def _check_name(self, name: Any, *, registering: bool = True) -> None:
        if not isinstance(name, str):
            raise InvalidTypeError(f"a {self.kind} is named by a string, got {type(name).__name__}")
        if registering:
            if not name:
                raise InvalidNameError(f"a {self.kind} name cannot be empty")
            if self._validate_name is not None:
                self._validate_name(name)

    def _check_type(self, obj: Any, where: str) -> T:
        if not self._check(obj):
            what = f"the class {obj.__name__}" if isinstance(obj, type) else _a(type(obj).__name__)
            raise RegistryTypeError(f"{where} is {what}, not {self.expected}")
        return obj

    def _resolve(self, name: str, lazy: Lazy, *, origin: str = "") -> T:
        if lazy.requires is not None and importlib.util.find_spec(lazy.requires) is None:
            raise MissingDependencyError(
                f"the {name!r} {self.kind} needs {lazy.requires}, which is not installed: "
                f"{lazy.install or 'pip install ' + lazy.requires}"
            )
        module_name, _, attr = lazy.target.partition(":")
        where = f"{self.kind} {name!r}{origin}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            missing = err.name or module_name
            if module_name == missing or module_name.startswith(missing + "."):
                raise MissingDependencyError(
                    f"{where} points to {lazy.target!r}, which does not exist; "
                    "reinstall the package that provides it"
                ) from None
            raise MissingDependencyError(
                f"{where} needs {missing!r}, which is not installed: install the package "
                f"that provides {missing!r}"
            ) from None
        try:
            obj = getattr(module, attr)
        except AttributeError:
            raise MissingDependencyError(
                f"{where} points to {lazy.target!r}, which does not exist ({module_name} "
                f"has no {attr!r}); reinstall the package that provides it"
            ) from None
        return self._check_type(obj, f"{where} ({lazy.target})")

    def _entry_points(self) -> list[Any]:
        from importlib.metadata import entry_points

        return list(entry_points(group=self.group))

    def _entry_point_names(self) -> list[str]:
        if self._keys is None:
            return [ep.name for ep in self._entry_points()]
        return [key for key, _ in self._keyed_entry_points()]

    def _keyed_entry_points(self) -> list[tuple[str, T]]:
        out: list[tuple[str, T]] = []
        for ep in self._entry_points():
            obj = self._load_entry_point(ep.name, ep)
            for key in self._keys(obj):  # type: ignore[misc]
                if key not in self._builtins and key not in self._registered:  # shadowed
                    out.append((key, obj))
        return out

    def _load_entry_point(self, name: str, ep: Any) -> T:
        try:
            lazy = Lazy(ep.value)
        except RegistryTypeError:
            raise RegistryTypeError(
                f"the entry point {ep.name!r} in group {self.group!r} is {ep.value!r}, not "
                "'package.module:attr'"
            ) from None
        return self._resolve(name, lazy, origin=f" (entry point in group {self.group!r})")

    def _from_entry_points(self, name: str) -> T | None:
        if self._keys is not None:
            matches = [obj for key, obj in self._keyed_entry_points() if key == name]
        else:
            eps = [ep for ep in self._entry_points() if ep.name == name]
            if len({ep.value for ep in eps}) > 1:
                raise DuplicateNameError(
                    f"two installed packages declare a {self.kind} named {name!r} in group "
                    f"{self.group!r} ({', '.join(sorted({ep.value for ep in eps}))}); "
                    "uninstall one of them"
                )
            matches = [self._load_entry_point(name, eps[0])] if eps else []
        if len({id(m) for m in matches}) > 1:
            raise DuplicateNameError(
                f"two entry points in group {self.group!r} give a {self.kind} for {name!r}; "
                "uninstall one of the packages that declare them"
            )
        return matches[0] if matches else None


def deprecated_alias(new: Callable[[], list[str]], old_name: str) -> Callable[[], list[str]]:
    """``new`` (a ``list_*`` function) under the name it had before, warning with a
    ``DeprecationWarning`` when called; kept for one release."""

    def alias() -> list[str]:
        warnings.warn(
            f"{old_name}() is deprecated; use {new.__name__}()", DeprecationWarning, stacklevel=2
        )
        return new()

    alias.__name__ = alias.__qualname__ = old_name
    alias.__doc__ = f"Deprecated name of :func:`{new.__name__}`, kept for one release."
    return alias


def _a(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def _lazy(target: str | Lazy) -> Lazy:
    return target if isinstance(target, Lazy) else Lazy(target)


__all__ = ["Lazy", "Registry", "deprecated_alias"]
