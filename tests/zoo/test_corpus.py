"""The training corpus: deterministic, Zipf-spread, held-out probe templates never trained on."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from mechmoe.errors import InvalidInputError
from mechmoe.zoo._cities import PER_COUNTRY
from mechmoe.zoo.corpus import (
    CITY_FILE,
    FEW_ANSWER_RELATIONS,
    MAIN_RELATION,
    PROBE_TEMPLATES,
    TRAIN_TEMPLATES,
    Corpus,
    CorpusConfig,
    build_corpus,
    check_held_out,
    held_out_fragments,
    load_relation_facts,
    token_stream,
    train_tokenizer,
    zipf_counts,
)

SMALL = CorpusConfig(scale=0.05)


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return build_corpus(SMALL)


def test_same_config_same_text_and_other_seed_differs(corpus):
    again = build_corpus(SMALL)
    assert again.sentences == corpus.sentences
    assert again.digest == corpus.digest
    other = build_corpus(CorpusConfig(scale=0.05, seed=1))
    assert other.sentences != corpus.sentences
    assert other.digest != corpus.digest


def test_template_counts():
    for name in TRAIN_TEMPLATES:
        assert 15 <= len(TRAIN_TEMPLATES[name]) <= 20
        assert len(set(TRAIN_TEMPLATES[name])) == len(TRAIN_TEMPLATES[name])
        assert len(PROBE_TEMPLATES[name]) >= 4
        for t in TRAIN_TEMPLATES[name]:
            assert t.count("{s}") == 1 and t.count("{o}") == 1
        for t in PROBE_TEMPLATES[name]:
            assert t.count("{}") == 1 and not t.endswith(" ")


def test_held_out_templates_never_in_training_text():
    # The full default corpus, not a small one: every sentence the models are trained on.
    full = build_corpus(CorpusConfig())
    text = full.text
    for name, templates in PROBE_TEMPLATES.items():
        facts = full.facts_of(name)
        for template in templates:
            for frag in held_out_fragments(template):
                assert frag not in text, (name, template, frag)
            # no filled probe prompt appears either (checked by hand, not via the helper)
            for fact in facts[:50]:
                assert template.replace("{}", fact.subject) not in text


def test_check_held_out_catches_a_leak(corpus):
    leaked = Corpus(
        corpus.config,
        corpus.facts,
        (*corpus.sentences, "Reporters wrote about Paris, a town in France."),
    )
    with pytest.raises(AssertionError, match="occurs in training text"):
        check_held_out(leaked)


def test_every_fact_is_stated_exactly_count_times(corpus):
    # Count by hand: a sentence states a fact when it is one of the relation's templates filled
    # with that subject and object.
    rendered = Counter(corpus.sentences)
    for fact in corpus.facts[::37]:
        n = sum(
            rendered[t.format(s=fact.subject, o=fact.object)]
            for t in TRAIN_TEMPLATES[fact.relation]
        )
        assert n >= fact.count  # another fact could render to the same text only by accident
        assert n <= fact.count + 2


def test_zipf_spread_default_config():
    cfg = CorpusConfig()
    assert 1.3 <= cfg.zipf_exponent <= 1.5
    full = build_corpus(cfg)
    for name in cfg.relations:
        counts = sorted((f.count for f in full.facts_of(name)), reverse=True)
        assert counts[-1] < 10  # tail facts seen fewer than 10 times
        assert counts[0] >= 20 * counts[-1]
        # counts fall with rank
        by_rank = [f.count for f in sorted(full.facts_of(name), key=lambda f: f.rank)]
        assert by_rank == sorted(by_rank, reverse=True)


def test_zipf_counts_by_hand():
    cfg = CorpusConfig(zipf_exponent=1.5, zipf_offset=0.0, head_count=64, tail_count=1)
    # 64 * r^-1.5 for r = 1..4 is 64, 22.6, 12.3, 8
    assert zipf_counts(4, cfg) == [64, 23, 12, 8]


def test_filler_share(corpus):
    facts_total = sum(f.count for f in corpus.facts)
    filler = len(corpus.sentences) - facts_total
    share = filler / len(corpus.sentences)
    assert abs(share - SMALL.filler_fraction) < 0.01


def test_probe_set_uses_held_out_templates(corpus):
    probe = corpus.probe_set(per_relation=10)
    assert probe.relation_names[0] == MAIN_RELATION
    for item in probe:
        assert item.prompt in [
            t.replace("{}", item.subject) for t in PROBE_TEMPLATES[item.relation]
        ]
        assert item.prompt not in corpus.text
    counts = probe.counts()
    assert all(c == 10 for c in counts.values())
    # the subset spreads over frequency ranks: the most and the least frequent fact are in it
    ranks = sorted(f.rank for f in corpus.facts_of(MAIN_RELATION))
    chosen = {it.subject for it in probe.select(MAIN_RELATION)}
    by_rank = {f.rank: f.subject for f in corpus.facts_of(MAIN_RELATION)}
    assert by_rank[ranks[0]] in chosen and by_rank[ranks[-1]] in chosen
    other = corpus.probe_set([MAIN_RELATION], template=3)
    assert other[0].prompt == PROBE_TEMPLATES[MAIN_RELATION][3].replace("{}", other[0].subject)


def test_bad_options(corpus):
    with pytest.raises(InvalidInputError, match="unknown relation"):
        CorpusConfig(relations=("nope",))
    with pytest.raises(InvalidInputError, match="template 9"):
        corpus.probe_set(template=9)
    with pytest.raises(InvalidInputError, match="not in this corpus"):
        build_corpus(CorpusConfig(scale=0.05, relations=("city_country",))).probe_set(
            ["country_currency"]
        )


def test_city_table_is_spread_over_countries():
    data = json.loads(CITY_FILE.read_text(encoding="utf-8"))
    pairs = load_relation_facts("city_country")
    assert len(pairs) == len(data["samples"]) >= 700
    by_country = Counter(o for _, o in pairs)
    assert len(by_country) >= 150
    assert max(by_country.values()) <= PER_COUNTRY
    assert len({s for s, _ in pairs}) == len(pairs)


def test_answer_prior(corpus):
    # city → country: the 10 commonest answers cover few facts; continents: all of them
    assert corpus.answer_prior_hit(MAIN_RELATION) < 0.15
    assert corpus.answer_prior_hit("country_continent") == 1.0
    assert "country_continent" in FEW_ANSWER_RELATIONS
    # by hand on the main relation
    facts = corpus.facts_of(MAIN_RELATION)
    mentions = Counter()
    for f in facts:
        mentions[f.object] += f.count
    top = {o for o, _ in sorted(mentions.items(), key=lambda kv: (-kv[1], kv[0]))[:10]}
    assert corpus.answer_prior_hit(MAIN_RELATION) == sum(f.object in top for f in facts) / len(
        facts
    )


def test_tokenizer_round_trip_and_bos(corpus):
    tok = train_tokenizer(corpus, vocab_size=600)
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    ids = tok("Paris lies in France.")["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == "Paris lies in France."
    stream = token_stream(corpus, tok)
    assert stream.count(tok.eos_token_id) == len(corpus.sentences)
    assert stream.count(tok.bos_token_id) == len(corpus.sentences)
    assert train_tokenizer(corpus, vocab_size=600).get_vocab() == tok.get_vocab()


def test_check_held_out_catches_a_template_inside_a_training_template(corpus, monkeypatch):
    import mechmoe.zoo.corpus as mod

    leaky = dict(PROBE_TEMPLATES, city_country=("{} lies", *PROBE_TEMPLATES["city_country"]))
    monkeypatch.setattr(mod, "PROBE_TEMPLATES", leaky)
    with pytest.raises(AssertionError, match="part of a training template"):
        check_held_out(corpus)
