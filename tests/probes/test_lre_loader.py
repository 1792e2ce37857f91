from __future__ import annotations

import json
from pathlib import Path

import pytest

from mechmoe.core.errors import InvalidInputError
from mechmoe.probes import ProbeItem, ProbeSet, list_probes, load_probe


def relation(name: str = "toy", samples: list | None = None, **extra: object) -> dict:
    base = {
        "name": name,
        "prompt_templates": ["The capital of {} is", "{} has its capital in"],
        "prompt_templates_zs": ["Q: capital of {}? A:"],
        "properties": {"relation_type": "factual"},
        "samples": samples
        if samples is not None
        else [{"subject": "France", "object": "Paris"}, {"subject": "Japan", "object": "Tokyo"}],
    }
    base.update(extra)
    return base


def write(path: Path, obj: object) -> Path:
    path.write_text(json.dumps(obj) if not isinstance(obj, str) else obj, encoding="utf-8")
    return path


def test_reads_one_file(tmp_path: Path) -> None:
    probe = load_probe(write(tmp_path / "toy.json", relation()))
    assert len(probe) == 2
    assert list(probe)[0] == ProbeItem("toy", "France", "Paris", "The capital of France is")
    meta = probe.meta("toy")
    assert meta.relation_type == "factual"
    assert meta.template == "The capital of {} is"
    assert meta.templates_zs == ("Q: capital of {}? A:",)
    assert meta.source == str(tmp_path / "toy.json")


@pytest.mark.parametrize(
    ("kwargs", "prompt"),
    [
        ({"template": 1}, "France has its capital in"),
        ({"zero_shot": True}, "Q: capital of France? A:"),
        ({"template": "Capital of {}:"}, "Capital of France:"),
    ],
)
def test_template_choice(tmp_path: Path, kwargs: dict, prompt: str) -> None:
    probe = load_probe(write(tmp_path / "toy.json", relation()), **kwargs)
    assert probe[0].prompt == prompt


def test_other_braces_in_template_survive(tmp_path: Path) -> None:
    rel = relation(prompt_templates=["{{json}} {} is"])
    assert load_probe(write(tmp_path / "t.json", rel))[0].prompt == "{{json}} France is"


def test_reads_folder_in_name_order(tmp_path: Path) -> None:
    write(tmp_path / "b.json", relation("beta"))
    write(tmp_path / "a.json", relation("alpha"))
    (tmp_path / "notes.txt").write_text("ignored")
    probe = load_probe(tmp_path)
    assert probe.relation_names == ("alpha", "beta")
    assert probe.counts() == {"alpha": 2, "beta": 2}
    assert probe.select("beta").relation_names == ("beta",)
    assert len(probe.filter(lambda it: it.object == "Paris")) == 2
    assert probe.head(1, per_relation=True).subjects == ("France", "France")
    assert load_probe(tmp_path) == probe
    assert load_probe(str(tmp_path / "a.json")).relation_names == ("alpha",)


def test_negative_template_index_is_refused(tmp_path: Path) -> None:
    """-1 is not 'the last template': it is refused, naming the first valid index."""
    path = write(tmp_path / "toy.json", relation())
    with pytest.raises(InvalidInputError, match=r"template index -1 is negative; give 0"):
        load_probe(path, template=-1)
    with pytest.raises(InvalidInputError, match=r"template index -1 is negative"):
        load_probe("adj_antonym", template=-1)


def test_repeated_subject_is_one_item_with_several_objects(tmp_path: Path) -> None:
    samples = [{"subject": "France", "object": "Paris"}, {"subject": "France", "object": "Lyon"}]
    probe = load_probe(write(tmp_path / "dup.json", relation(samples=samples)))
    assert len(probe) == 1
    assert probe[0].object == "Paris" and probe[0].objects == ("Paris", "Lyon")
    assert probe.object_sets == (("Paris", "Lyon"),)
    assert probe.meta("toy").notes == (
        "1 subject(s) have several objects; each is one item scored by its best-ranked object",
    )


def test_empty_object_names_file_and_item(tmp_path: Path) -> None:
    samples = [{"subject": "France", "object": "Paris"}, {"subject": "Japan", "object": "  "}]
    path = write(tmp_path / "empty.json", relation(samples=samples))
    with pytest.raises(
        InvalidInputError,
        match=r"empty\.json: samples\[1\] \(subject 'Japan'\) has an empty object",
    ):
        load_probe(path)


def test_empty_subject(tmp_path: Path) -> None:
    path = write(tmp_path / "e.json", relation(samples=[{"subject": "", "object": "x"}]))
    with pytest.raises(InvalidInputError, match=r"e\.json: samples\[0\] has an empty subject"):
        load_probe(path)


@pytest.mark.parametrize("key", ["name", "prompt_templates", "samples"])
def test_missing_top_level_key(tmp_path: Path, key: str) -> None:
    rel = relation()
    del rel[key]
    path = write(tmp_path / "missing.json", rel)
    with pytest.raises(InvalidInputError, match=rf"missing\.json: missing key '{key}'"):
        load_probe(path)


def test_missing_sample_key(tmp_path: Path) -> None:
    path = write(tmp_path / "m.json", relation(samples=[{"subject": "France"}]))
    with pytest.raises(InvalidInputError, match=r"m\.json: missing key 'samples\[0\]\.object'"):
        load_probe(path)


def test_missing_zero_shot_templates(tmp_path: Path) -> None:
    rel = relation()
    del rel["prompt_templates_zs"]
    path = write(tmp_path / "zs.json", rel)
    assert len(load_probe(path)) == 2  # optional unless asked for
    with pytest.raises(InvalidInputError, match=r"zs\.json: missing key 'prompt_templates_zs'"):
        load_probe(path, zero_shot=True)


def test_missing_relation_type_reads_unknown(tmp_path: Path) -> None:
    rel = relation()
    del rel["properties"]
    assert load_probe(write(tmp_path / "p.json", rel)).relations[0].relation_type == "unknown"


def test_malformed_json(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.json", '{"name": "x",\n "samples": [}')
    with pytest.raises(InvalidInputError, match=r"bad\.json: not valid JSON \(.* line 2"):
        load_probe(path)


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        (
            {"prompt_templates": ["no placeholder"]},
            r"prompt_templates\[0\] must be a string with exactly one",
        ),
        ({"samples": {"France": "Paris"}}, r"key 'samples' should be a list, got dict"),
        ({"name": 3}, r"key 'name' should be a str"),
    ],
)
def test_wrong_shapes(tmp_path: Path, patch: dict, message: str) -> None:
    path = write(tmp_path / "shape.json", relation(**patch))
    with pytest.raises(InvalidInputError, match=r"shape\.json: .*" + message):
        load_probe(path)


def test_bad_template_index(tmp_path: Path) -> None:
    path = write(tmp_path / "t.json", relation())
    with pytest.raises(InvalidInputError, match="template index 5 is out of range"):
        load_probe(path, template=5)


def test_not_an_object_and_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"list\.json: expected a JSON object"):
        load_probe(write(tmp_path / "list.json", []))
    with pytest.raises(InvalidInputError, match="no such file or folder"):
        load_probe(tmp_path / "nope.json")
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(InvalidInputError, match="no \\*.json relation files"):
        load_probe(empty)


def test_same_relation_name_in_two_files(tmp_path: Path) -> None:
    write(tmp_path / "a.json", relation("same"))
    write(tmp_path / "b.json", relation("same"))
    with pytest.raises(
        InvalidInputError, match=r"b\.json: relation 'same' is also defined in .*a\.json"
    ):
        load_probe(tmp_path)


def test_probeset_rejects_reserved_and_unknown_relations() -> None:
    from mechmoe.probes import RelationMeta

    with pytest.raises(InvalidInputError, match="reserved"):
        ProbeSet((), (RelationMeta("all", "factual", ("{}",)),))
    with pytest.raises(InvalidInputError, match="no RelationMeta"):
        ProbeSet((ProbeItem("r", "s", "o", "p"),))


# -- registry ----------------------------------------------------------------------


def test_bundled_names() -> None:
    names = list_probes()
    assert {
        "country_capital_city",
        "country_continent",
        "country_currency",
        "country_language",
        "city_country",
        "adj_antonym",
        "word_first_letter",
        "noun_plural",
    } <= set(names)


def test_load_all_and_comma_list() -> None:
    everything = load_probe("all")
    assert everything.relation_names == list_probes()
    both = load_probe("noun_plural, adj_antonym")
    assert both.relation_names == ("noun_plural", "adj_antonym")
    assert len(both) == len(load_probe("noun_plural")) + len(load_probe("adj_antonym"))
    for name in list_probes():
        probe = everything.select(name)
        assert 30 <= len(probe) <= 250, name
        assert all(it.prompt == probe.meta(name).template.replace("{}", it.subject) for it in probe)


def test_unknown_name_suggests() -> None:
    with pytest.raises(InvalidInputError, match="did you mean 'country_capital_city'"):
        load_probe("country_capitol_city")
    with pytest.raises(InvalidInputError, match="named twice"):
        load_probe("adj_antonym,adj_antonym")
    with pytest.raises(InvalidInputError, match="cannot be combined"):
        load_probe("all,adj_antonym")


def test_select_unknown_relation() -> None:
    with pytest.raises(InvalidInputError, match="no relation 'nope'"):
        load_probe("adj_antonym").select("nope")
