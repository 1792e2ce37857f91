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
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mechmoe.errors import InvalidInputError
from mechmoe.probes.probeset import ProbeItem, ProbeSet, RelationMeta

PLACEHOLDER = "{}"


def fill(template: str, subject: str) -> str:
    """Put ``subject`` in place of the template's ``{}`` (other braces are left alone)."""
    return template.replace(PLACEHOLDER, subject, 1)


def read_lre(path: str | Path, *, template: int | str = 0, zero_shot: bool = False) -> ProbeSet:
    """Read an LRE file or a folder of them into a :class:`ProbeSet`.

    See :meth:`ProbeSet.from_lre` for the parameters.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.glob("*.json") if p.is_file())
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
    if not -len(pool) <= template < len(pool):
        raise InvalidInputError(
            f"{file}: template index {template} is out of range; {key} has {len(pool)} entries"
        )
    return pool[template]


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

    items: list[ProbeItem] = []
    first_seen: dict[str, int] = {}
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
        if subject in first_seen:
            raise InvalidInputError(
                f"{file}: samples[{i}] repeats subject {subject!r} "
                f"(first at samples[{first_seen[subject]}])"
            )
        first_seen[subject] = i
        items.append(ProbeItem(name, subject, obj, fill(chosen, subject)))

    meta = RelationMeta(
        name=name,
        relation_type=relation_type,
        templates=templates,
        templates_zs=zs,
        template=chosen,
        source=str(file),
    )
    return ProbeSet(tuple(items), (meta,))


__all__ = ["PLACEHOLDER", "fill", "read_lre"]
