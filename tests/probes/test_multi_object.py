"""Relation files in the LRE dataset's real shape: repeated subjects and duplicate pairs.

The files below follow the published LRE relations (``name``, templates, ``properties``
with ``relation_type``/``domain_name``/``range_name``/``symmetric``, ``samples``) and
their irregularities: an adjective with two antonyms, a superhero name shared by several
people, a product made by two companies, and the same pair listed twice.
HIT@k and MRR are checked against a hand computation over per-prompt logits.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mechmoe.probes import (
    ProbeItem,
    ProbeSet,
    evaluate,
    first_token_ids,
    gold_token_ids,
    item_metrics,
    load_probe,
    summarize,
)
from mechmoe.testing import tiny_model

ADJ_ANTONYM = {
    "name": "adjective antonym",
    "prompt_templates": ["The opposite of {} is", "{} is the opposite of"],
    "prompt_templates_zs": ["What is the opposite of {}? It is"],
    "properties": {
        "relation_type": "linguistic",
        "domain_name": "adjective",
        "range_name": "adjective",
        "symmetric": True,
    },
    "samples": [
        {"subject": "open", "object": "closed"},
        {"subject": "hot", "object": "cold"},
        {"subject": "up", "object": "down"},
        {"subject": "open", "object": "shut"},
        {"subject": "up", "object": "below"},
        {"subject": "wet", "object": "dry"},
        {"subject": "up", "object": "down"},  # exact duplicate of samples[2]
        {"subject": "inhale", "object": "exhale"},
        {"subject": "inhale", "object": "exhale"},  # exact duplicate of samples[7]
    ],
}

SUPERHERO_PERSON = {
    "name": "superhero person",
    "prompt_templates": ["{} is the superhero name of", "The alter ego of {} is"],
    "properties": {
        "relation_type": "factual",
        "domain_name": "superhero",
        "range_name": "person",
        "symmetric": False,
    },
    "samples": [
        {"subject": "Green Lantern", "object": "Hal Jordan"},
        {"subject": "Batman", "object": "Bruce Wayne"},
        {"subject": "Green Lantern", "object": "Kyle Rayner"},
        {"subject": "The Flash", "object": "Barry Allen"},
        {"subject": "Green Lantern", "object": "Alan Scott"},
        {"subject": "The Flash", "object": "Jay Garrick"},
    ],
}

PRODUCT_BY_COMPANY = {
    "name": "product by company",
    "prompt_templates": ["{} was produced by", "{} is a product of the company"],
    "properties": {
        "relation_type": "factual",
        "domain_name": "product",
        "range_name": "company",
        "symmetric": False,
    },
    "samples": [
        {"subject": "SNES-CD", "object": "Nintendo"},
        {"subject": "iPod", "object": "Apple"},
        {"subject": "Dino", "object": "Ferrari"},
        {"subject": "SNES-CD", "object": "Sony"},
        {"subject": "Dino", "object": "Fiat"},
    ],
}


@pytest.fixture
def lre_dir(tmp_path: Path) -> Path:
    for stem, rel in (
        ("adj_antonym", ADJ_ANTONYM),
        ("superhero_person", SUPERHERO_PERSON),
        ("product_by_company", PRODUCT_BY_COMPANY),
    ):
        (tmp_path / f"{stem}.json").write_text(json.dumps(rel, indent=4), encoding="utf-8")
    return tmp_path


def read(path: Path) -> ProbeSet:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return load_probe(path)


# ---- loader -----------------------------------------------------------------------------


def test_repeated_subjects_become_items_with_object_sets(lre_dir: Path) -> None:
    probe = read(lre_dir)
    assert probe.relation_names == ("adjective antonym", "product by company", "superhero person")
    ant = probe.select("adjective antonym")
    assert ant.subjects == ("open", "hot", "up", "wet", "inhale")  # first-seen order
    assert ant.object_sets == (
        ("closed", "shut"),
        ("cold",),
        ("down", "below"),
        ("dry",),
        ("exhale",),
    )
    assert ant.objects == ("closed", "cold", "down", "dry", "exhale")  # first listed
    assert ant[0].prompt == "The opposite of open is"
    hero = probe.select("superhero person")
    assert hero.object_sets == (
        ("Hal Jordan", "Kyle Rayner", "Alan Scott"),
        ("Bruce Wayne",),
        ("Barry Allen", "Jay Garrick"),
    )
    prod = probe.select("product by company")
    assert dict(zip(prod.subjects, prod.object_sets, strict=True)) == {
        "SNES-CD": ("Nintendo", "Sony"),
        "iPod": ("Apple",),
        "Dino": ("Ferrari", "Fiat"),
    }
    assert probe.counts() == {
        "adjective antonym": 5,
        "product by company": 3,
        "superhero person": 3,
    }


def test_exact_duplicates_collapse_with_one_warning_and_a_note(lre_dir: Path) -> None:
    path = lre_dir / "adj_antonym.json"
    with pytest.warns(UserWarning) as record:
        probe = load_probe(path)
    messages = [str(w.message) for w in record]
    assert messages == [
        f"{path}: 2 exact duplicate (subject, object) pair(s) collapsed "
        "(first: samples[6] repeats samples[2])"
    ]
    notes = probe.meta("adjective antonym").notes
    assert notes == (
        "2 subject(s) have several objects; each is one item scored by its best-ranked object",
        "2 exact duplicate (subject, object) pair(s) collapsed "
        "(first: samples[6] repeats samples[2])",
    )
    # a file without duplicates reads silently
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_probe(lre_dir / "product_by_company.json")


def test_object_with_the_join_character_is_refused(tmp_path: Path) -> None:
    from mechmoe.core.errors import InvalidInputError

    rel = dict(PRODUCT_BY_COMPANY, samples=[{"subject": "x", "object": "A|B"}])
    path = tmp_path / "bar.json"
    path.write_text(json.dumps(rel))
    with pytest.raises(InvalidInputError, match=r"samples\[0\] \(subject 'x'\) has object 'A\|B'"):
        load_probe(path)


# ---- metrics against a hand computation -----------------------------------------------------


def hand_rank(row: list[float], token: int) -> int:
    return 1 + sum(1 for v in row if v > row[token])


def test_item_metrics_counts_the_best_ranked_object_by_hand() -> None:
    items = [
        ProbeItem("r", "open", "closed", "p0", objects=("closed", "shut")),
        ProbeItem("r", "hot", "cold", "p1"),
        ProbeItem("r", "up", "down", "p2", objects=("down", "below", "out")),
    ]
    # vocab of 6; token ids: closed=1 shut=4 | cold=2 | down=0 below=5 out=3
    logits = torch.tensor(
        [
            [0.0, 1.0, 5.0, 3.0, 4.0, 2.0],  # closed rank 5, shut rank 2 -> 2 via "shut"
            [0.0, 1.0, 5.0, 3.0, 4.0, 2.0],  # cold rank 1
            [9.0, 1.0, 5.0, 3.0, 4.0, 2.0],  # down rank 1 (first listed), below 4, out 3
        ]
    )
    ds = item_metrics(logits, [(1, 4), 2, (0, 5, 3)], items, k=1)
    rows = logits.tolist()
    sets = [(1, 4), (2,), (0, 5, 3)]
    best = [min(hand_rank(r, t) for t in s) for r, s in zip(rows, sets, strict=True)]
    assert best == [2, 1, 1]
    assert ds["rank"].values.tolist() == best
    assert ds["hit"].values.tolist() == [b <= 1 for b in best]
    np.testing.assert_allclose(ds["reciprocal_rank"].values, [1 / b for b in best])
    assert ds["best_object"].values.tolist() == ["shut", "cold", "down"]
    assert ds["target_id"].values.tolist() == [4, 2, 0]
    assert ds["objects"].values.tolist() == ["closed|shut", "cold", "down|below|out"]
    assert ds["n_objects"].values.tolist() == [2, 1, 3]
    assert ds["object"].values.tolist() == ["closed", "cold", "down"]
    lp = torch.log_softmax(logits, -1)
    np.testing.assert_allclose(ds["logprob"].values, [lp[0, 4], lp[1, 2], lp[2, 0]], rtol=1e-6)
    s = summarize(ds)
    assert float(s["hit"].sel(relation="all")) == pytest.approx(2 / 3)
    assert float(s["mrr"].sel(relation="all")) == pytest.approx((1 / 2 + 1 + 1) / 3)


def test_equal_first_tokens_tie_to_the_first_listed() -> None:
    item = ProbeItem("r", "Green Lantern", "Hal Jordan", "p", objects=("Hal Jordan", "Hal"))
    ds = item_metrics(torch.tensor([[0.0, 1.0, 2.0]]), [(1, 1)], [item], k=2)
    assert ds["best_object"].item() == "Hal Jordan" and ds["rank"].item() == 2


def test_item_metrics_wants_one_id_per_object() -> None:
    from mechmoe.core.errors import InvalidInputError

    item = ProbeItem("r", "open", "closed", "p", objects=("closed", "shut"))
    with pytest.raises(InvalidInputError, match="has 2 gold object\\(s\\) but 1 target id"):
        item_metrics(torch.zeros(1, 4) + torch.arange(4.0), [1], [item])


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")


def test_evaluate_matches_hand_computation_on_lre_files(model, lre_dir: Path) -> None:
    probe = read(lre_dir)
    k = 40
    ds = evaluate(model, probe, k=k, batch_size=4, progress=False)
    # by hand: one prompt at a time, each object's first token, rank over the full row
    ranks, bests = [], []
    for item in probe:
        row = model.capture([item.prompt]).logits[0, -1].float().tolist()
        ids = first_token_ids(
            model.tokenizer, list(item.objects), [item.prompt] * len(item.objects)
        )
        per_object = [hand_rank(row, t) for t in ids]
        ranks.append(min(per_object))
        bests.append(item.objects[per_object.index(min(per_object))])
    assert ds["rank"].values.tolist() == ranks
    assert ds["best_object"].values.tolist() == bests
    assert ds["objects"].values.tolist() == ["|".join(objs) for objs in probe.object_sets]
    s = summarize(ds)
    rel = np.array([it.relation for it in probe])
    r = np.array(ranks)
    for name in probe.relation_names:
        mine = r[rel == name]
        assert float(s["hit"].sel(relation=name)) == pytest.approx(float(np.mean(mine <= k)))
        assert float(s["mrr"].sel(relation=name)) == pytest.approx(float(np.mean(1.0 / mine)))
        assert int(s["count"].sel(relation=name)) == len(mine)
    assert float(s["mrr"].sel(relation="all")) == pytest.approx(float(np.mean(1.0 / r)))
    # a multi-object item's rank is never worse than its first listed object's rank alone
    first_only = evaluate(
        model,
        ProbeSet(
            tuple(ProbeItem(i.relation, i.subject, i.object, i.prompt) for i in probe),
            probe.relations,
        ),
        k=k,
        progress=False,
    )
    assert (ds["rank"].values <= first_only["rank"].values).all()
    # this tiny model ranks a second-listed object best somewhere: the set rule is exercised
    assert (ds["rank"].values < first_only["rank"].values).any()
    assert (ds["best_object"].values != ds["object"].values).any()


def test_gold_token_ids_is_first_token_ids_per_object(model, lre_dir: Path) -> None:
    probe = read(lre_dir)
    sets = gold_token_ids(model.tokenizer, probe.object_sets, probe.prompts)
    for item, ids in zip(probe, sets, strict=True):
        for obj, tid in zip(item.objects, ids, strict=True):
            assert [tid] == first_token_ids(model.tokenizer, [obj], [item.prompt])


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_multi_object_results_round_trip(model, lre_dir: Path, tmp_path: Path, suffix) -> None:
    from mechmoe.ops.results import open_result, save_result

    ds = evaluate(model, read(lre_dir), k=5, progress=False)
    path = tmp_path / f"out{suffix}"
    save_result(ds, path)
    back = open_result(path)
    for name in ("objects", "object", "best_object"):
        assert back[name].values.tolist() == ds[name].values.tolist()
    assert back["n_objects"].values.tolist() == ds["n_objects"].values.tolist()
    assert back["rank"].values.tolist() == ds["rank"].values.tolist()
    # the joined form splits back into each item's objects
    assert [o.split("|") for o in back["objects"].values.tolist()] == [
        list(objs) for objs in read(lre_dir).object_sets
    ]


# ---- CLI --------------------------------------------------------------------------------------


def test_cli_probe_table_counts_multi_object_items(lre_dir: Path, tmp_path: Path) -> None:
    from mechmoe.cli import app
    from mechmoe.ops.results import open_result

    out = tmp_path / "p.nc"
    res = CliRunner().invoke(
        app,
        ["probe", "tiny:llama", "-r", str(lre_dir), "--k", "5", "--out", str(out)],
        env={"COLUMNS": "250"},
    )
    assert res.exit_code == 0, res.output
    assert "multi-object" in res.output
    rows = {ln.split("│")[1].strip(): ln for ln in res.output.splitlines() if ln.count("│") > 4}
    cells = [c.strip() for c in rows["superhero person"].split("│")]
    assert cells[2:4] == ["3", "2"]  # 3 items, 2 with several objects
    cells = [c.strip() for c in rows["all"].split("│")]
    assert cells[2:4] == ["11", "6"]
    assert "note: adjective antonym: 2 exact duplicate (subject, object) pair(s) collapsed" in (
        res.output
    )
    ds = open_result(out)
    assert ds.sizes["item"] == 11 and "|" in "".join(ds["objects"].values.tolist())


def test_cli_show_lists_all_objects(lre_dir: Path) -> None:
    from mechmoe.cli import app

    res = CliRunner().invoke(
        app, ["probes", "show", str(lre_dir / "superhero_person.json")], env={"COLUMNS": "250"}
    )
    assert res.exit_code == 0, res.output
    assert "Hal Jordan | Kyle Rayner | Alan Scott" in res.output


# ---- --target gold attribution ------------------------------------------------------------


def test_gold_attribution_explains_the_best_ranked_object(model, lre_dir: Path) -> None:
    """With several gold ids, the target is the one with the highest logit (first on ties)."""
    from mechmoe.ops.attribution import attribute

    probe = read(lre_dir)
    prompts = list(probe.prompts)
    sets = gold_token_ids(model.tokenizer, probe.object_sets, prompts)
    ds = attribute(model, prompts, level="attn", target="gold", targets=sets)
    chosen = []
    for prompt, ids in zip(prompts, sets, strict=True):
        row = model.capture([prompt]).logits[0, -1]
        vals = [float(row[t]) for t in ids]
        chosen.append(ids[vals.index(max(vals))])
    assert ds["target"].values.tolist() == chosen
    assert ds.attrs["gold_rule"].startswith("of several gold ids, the one with the highest logit")
    # the same scores as giving the chosen ids one per prompt
    single = attribute(model, prompts, level="attn", target="gold", targets=chosen)
    np.testing.assert_array_equal(ds["score"].values, single["score"].values)
    # and not the first-listed rule: where they differ, the scores differ
    first = [ids[0] for ids in sets]
    assert chosen != first
    other = attribute(model, prompts, level="attn", target="gold", targets=first)
    assert not np.array_equal(ds["score"].values, other["score"].values)


def test_cli_attribute_gold_on_a_multi_object_relation(lre_dir: Path, tmp_path: Path) -> None:
    from mechmoe.cli import app
    from mechmoe.ops.results import open_result

    out = tmp_path / "a.nc"
    path = lre_dir / "superhero_person.json"
    res = CliRunner().invoke(
        app,
        ["attribute", "tiny:llama", "--prompts", str(path), "--level", "attn"]
        + ["--target", "gold", "--out", str(out)],
        env={"COLUMNS": "250"},
    )
    assert res.exit_code == 0, res.output
    ds = open_result(out)
    model = tiny_model("llama")
    probe = read(path)
    sets = gold_token_ids(model.tokenizer, probe.object_sets, probe.prompts)
    for ids, t in zip(sets, ds["target"].values.tolist(), strict=True):
        assert t in ids
    assert ds.attrs["target_mode"] == "gold" and ds.attrs["gold_rule"]
