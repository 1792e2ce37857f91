"""Reader for relation files in the LRE format (Hernandez et al., *Linearity of Relation
Decoding in Transformer Language Models*).

A relation file is one JSON object::

    {
      "name": "country_capital_city",
      "prompt_templates": ["The capital city of {} is"],
      "prompt_templates_zs": ["Q: What is the capital city of {}? A:"],
      "properties": {"relation_type": "factual", ...},
      "samples": [{"subject": "France", "object": "Paris"}, ...]
    }

``name``, ``prompt_templates`` and ``samples`` are required; ``prompt_templates_zs`` is
needed only for ``zero_shot=True``; a missing ``properties.relation_type`` reads as
``"unknown"``. Every other key is ignored.

The field's files often repeat a subject: several valid objects for one subject (the
antonyms of one adjective, the companies behind one product) or the same pair twice.
A repeated subject becomes one item whose gold answer is the set of its objects, in
file order; an exact duplicate pair is kept once, with a warning and a note in
``RelationMeta.notes``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from mechmoe.core.errors import InvalidInputError
from mechmoe.probes.probeset import OBJECT_SEP, ProbeItem, ProbeSet, RelationMeta

PLACEHOLDER = "{}"


def fill(template: str, subject: str) -> str:
    """Put ``subject`` in place of the template's ``{}`` (other braces are left alone)."""
    return template.replace(PLACEHOLDER, subject, 1)


def read_lre(path: str | Path, *, template: int | str = 0, zero_shot: bool = False) -> ProbeSet:
    """Read one LRE relation file, or every ``*.json`` file of a folder, as a :class:`ProbeSet`.

    Users reach this through :func:`mechmoe.probes.load_probe`, which takes a path as well
    as a bundled relation's name.

    Parameters
    ----------
    path
        A ``.json`` file in the LRE format, or a folder of them (read in name order,
        not recursively).
    template
        Which template builds the prompts: an index into ``prompt_templates`` (or
        ``prompt_templates_zs``), default the first; or a template string with one
        ``{}``, used for every relation.
    zero_shot
        Index into ``prompt_templates_zs`` instead of ``prompt_templates``.

    Notes
    -----
    A subject listed with several objects becomes one item whose gold answer is
    the set of those objects (``ProbeItem.objects``, in file order). An exact
    duplicate ``(subject, object)`` pair is kept once; the loader warns (one
    :class:`UserWarning` per file, with the count) and records it in the
    relation's ``RelationMeta.notes``.

    Raises
    ------
    InvalidInputError
        On malformed JSON, a missing key, or an empty subject or object; the
        message names the file and the item.
    """
    _check_template(template)
    path = Path(path)
    if path.is_dir():
        # dot-names are mechmoe's markers and temporaries, never relations
        files = sorted(
            p
            for p in path.iterdir()
            if p.suffix.lower() == ".json" and p.is_file() and not p.name.startswith(".")
        )
        if not files:
            raise InvalidInputError(f"{path}: folder has no *.json relation files")
    elif path.is_file():
        files = [path]
    else:
        raise InvalidInputError(f"{path}: no such file or folder")
    out = ProbeSet(())
    seen: dict[str, Path] = {}
    for file in files:
        part = _read_one(file, template=template, zero_shot=zero_shot)
        name = part.relations[0].name
        if name in seen:
            raise InvalidInputError(
                f"{file}: relation {name!r} is also defined in {seen[name]}; names must be unique"
            )
        seen[name] = file
        out = out + part
    return out


def _load_json(file: Path) -> Any:
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InvalidInputError(f"{file}: not UTF-8 text ({err.reason})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InvalidInputError(
            f"{file}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})"
        ) from None
    except RecursionError:
        raise InvalidInputError(
            f"{file}: JSON nested too deeply to be a relation file (a relation is one "
            "object holding a list of samples)"
        ) from None


def _require(obj: dict[str, Any], key: str, kind: type, file: Path, where: str = "") -> Any:
    label = f"{where}{key}"
    if key not in obj:
        raise InvalidInputError(f"{file}: missing key {label!r}")
    value = obj[key]
    if not isinstance(value, kind):
        raise InvalidInputError(
            f"{file}: key {label!r} should be a {kind.__name__}, got {type(value).__name__}"
        )
    return value


def _templates(obj: dict[str, Any], key: str, file: Path, *, required: bool) -> tuple[str, ...]:
    if key not in obj and not required:
        return ()
    values = _require(obj, key, list, file)
    for i, t in enumerate(values):
        if not isinstance(t, str) or t.count(PLACEHOLDER) != 1:
            raise InvalidInputError(f"{file}: {key}[{i}] must be a string with exactly one '{{}}'")
    return tuple(values)


def _choose(
    templates: tuple[str, ...],
    zs: tuple[str, ...],
    template: int | str,
    zero_shot: bool,
    file: Path,
) -> str:
    if isinstance(template, str):
        if template.count(PLACEHOLDER) != 1:
            raise InvalidInputError(f"template {template!r} must contain exactly one '{{}}'")
        return template
    key = "prompt_templates_zs" if zero_shot else "prompt_templates"
    pool = zs if zero_shot else templates
    if not pool:
        raise InvalidInputError(f"{file}: missing key {key!r} (or it is empty)")
    if not 0 <= template < len(pool):
        raise InvalidInputError(
            f"{file}: template index {template} is out of range; {key} has {len(pool)} "
            f"entries (0–{len(pool) - 1})"
        )
    return pool[template]


def _check_template(template: Any) -> None:
    """Refuse a template that is neither a string nor a non-negative index."""
    if isinstance(template, str):
        return
    if isinstance(template, bool) or not isinstance(template, int):
        raise InvalidInputError(
            f"template {template!r} must be an index (0, 1, …) or a string with one '{{}}'"
        )
    if template < 0:
        raise InvalidInputError(
            f"template index {template} is negative; give 0 for the first template, 1 for "
            "the second, … (negative indices are not counted from the end)"
        )


def _read_one(file: Path, *, template: int | str, zero_shot: bool) -> ProbeSet:
    data = _load_json(file)
    if not isinstance(data, dict):
        raise InvalidInputError(f"{file}: expected a JSON object, got {type(data).__name__}")
    name = _require(data, "name", str, file).strip()
    if not name:
        raise InvalidInputError(f"{file}: key 'name' is empty")
    templates = _templates(data, "prompt_templates", file, required=True)
    zs = _templates(data, "prompt_templates_zs", file, required=False)
    props = data.get("properties") or {}
    if not isinstance(props, dict):
        raise InvalidInputError(f"{file}: key 'properties' should be an object")
    relation_type = str(props.get("relation_type") or "unknown")
    chosen = _choose(templates, zs, template, zero_shot, file)
    samples = _require(data, "samples", list, file)

    # subject -> its objects in file order, and where each pair was first seen
    grouped: dict[str, dict[str, int]] = {}
    duplicates: list[tuple[int, int]] = []
    for i, sample in enumerate(samples):
        where = f"samples[{i}]."
        if not isinstance(sample, dict):
            raise InvalidInputError(f"{file}: samples[{i}] should be an object")
        subject = _require(sample, "subject", str, file, where).strip()
        obj = _require(sample, "object", str, file, where).strip()
        if not subject:
            raise InvalidInputError(f"{file}: samples[{i}] has an empty subject")
        if not obj:
            raise InvalidInputError(
                f"{file}: samples[{i}] (subject {subject!r}) has an empty object"
            )
        if OBJECT_SEP in obj:
            raise InvalidInputError(
                f"{file}: samples[{i}] (subject {subject!r}) has object {obj!r} with "
                f"{OBJECT_SEP!r}, which mechmoe uses to join several objects; remove it"
            )
        objects = grouped.setdefault(subject, {})
        if obj in objects:
            duplicates.append((i, objects[obj]))
        else:
            objects[obj] = i

    items = [
        ProbeItem(name, subject, next(iter(objs)), fill(chosen, subject), objects=tuple(objs))
        for subject, objs in grouped.items()
    ]
    notes: list[str] = []
    multi = sum(1 for objs in grouped.values() if len(objs) > 1)
    if multi:
        notes.append(
            f"{multi} subject(s) have several objects; each is one item scored by its "
            "best-ranked object"
        )
    if duplicates:
        i, first = duplicates[0]
        note = (
            f"{len(duplicates)} exact duplicate (subject, object) pair(s) collapsed "
            f"(first: samples[{i}] repeats samples[{first}])"
        )
        notes.append(note)
        warnings.warn(f"{file}: {note}", UserWarning, stacklevel=4)

    meta = RelationMeta(
        name=name,
        relation_type=relation_type,
        templates=templates,
        templates_zs=zs,
        template=chosen,
        source=str(file),
        notes=tuple(notes),
    )
    return ProbeSet(tuple(items), (meta,))


__all__ = ["PLACEHOLDER", "fill", "read_lre"]
