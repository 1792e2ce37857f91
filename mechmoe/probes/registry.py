"""Find probe sets by name: the bundled relations, or any LRE file or folder."""

from __future__ import annotations

import difflib
from pathlib import Path

from mechmoe.core.errors import InvalidInputError
from mechmoe.probes.lre import read_lre
from mechmoe.probes.probeset import ALL, ProbeSet

DATA_DIR = Path(__file__).resolve().parent / "data"


def list_probes() -> tuple[str, ...]:
    """Names of the bundled relations, sorted.

    Examples
    --------
    >>> from mechmoe.probes import list_probes
    >>> "country_capital_city" in list_probes()
    True
    """
    return tuple(sorted(p.stem for p in DATA_DIR.glob("*.json")))


def bundled_path(name: str) -> Path:
    """Path of the bundled relation file ``name``; unknown names suggest close matches."""
    names = list_probes()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise InvalidInputError(
            f"unknown probe {name!r}{hint} (bundled: {', '.join(names)}; or give a path to an "
            "LRE .json file or folder)"
        )
    return DATA_DIR / f"{name}.json"


def _looks_like_path(spec: str) -> bool:
    return spec.lower().endswith(".json") or "/" in spec or "\\" in spec or Path(spec).exists()


def load_probe(spec: str | Path, *, template: int | str = 0, zero_shot: bool = False) -> ProbeSet:
    """Load a probe set by name or path.

    Parameters
    ----------
    spec
        A bundled relation name (see :func:`list_probes`), a comma-separated list of
        names, ``"all"`` for every bundled relation, or a path to an LRE ``.json`` file
        or a folder of them.
    template, zero_shot
        Template choice, as in :func:`mechmoe.probes.lre.read_lre` (default: the first
        ``prompt_templates`` entry).

    Returns
    -------
    ProbeSet
        Relations in the order named (``"all"``: name order).

    Raises
    ------
    InvalidInputError
        For an unknown name (with "did you mean"), a missing path, or a bad file.

    Examples
    --------
    >>> from mechmoe.probes import load_probe
    >>> probe = load_probe("adj_antonym,noun_plural")
    >>> probe.relation_names
    ('adj_antonym', 'noun_plural')
    """
    if isinstance(spec, Path) or _looks_like_path(spec):
        return read_lre(spec, template=template, zero_shot=zero_shot)
    names = [part.strip() for part in spec.split(",") if part.strip()]
    if not names:
        raise InvalidInputError("no probe name given; see `mechmoe probes list`")
    if ALL in names:
        if len(names) > 1:
            raise InvalidInputError(f"{ALL!r} cannot be combined with other probe names")
        names = list(list_probes())
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InvalidInputError(f"probe {dup[0]!r} is named twice")
    paths = [bundled_path(n) for n in names]  # validate every name before reading any
    out = ProbeSet(())
    for path in paths:
        out = out + read_lre(path, template=template, zero_shot=zero_shot)
    return out


__all__ = ["DATA_DIR", "bundled_path", "list_probes", "load_probe"]
