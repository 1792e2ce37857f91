from __future__ import annotations

import json

import pytest

from mechmoe.core.errors import InvalidInputError, ModelNotFoundError
from mechmoe.trajectory.sources import (
    Checkpoint,
    HubRevisions,
    LocalCheckpoints,
    parse_selection,
    parse_step_name,
)

OLMOE_LIKE = [
    "main",
    "step0-tokens0B",
    "step1000-tokens4B",
    "step5000-tokens20B",
    "step10000-tokens41B",
    "step15000-tokens62.9B",
    "step50000-tokens209B",
    "step100000-tokens419B",
    "step1220000-tokens5114B",
    "my-experiment",
]


def _ckpts(steps):
    return [Checkpoint(step=s, label=f"step{s}", revision=f"step{s}-tokens1B") for s in steps]


def _steps(ckpts):
    return [c.step for c in ckpts]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("step1000-tokens4B", (1000, 4e9)),
        ("step15000-tokens62.9B", (15000, 62.9e9)),
        ("step5-tokens4.19B", (5, 4190000000.0)),
        ("step7-tokens10M", (7, 10e6)),
        ("step0", (0, None)),
        ("main", None),
        ("step10-tokens", None),
        ("stepx-tokens4B", None),
    ],
)
def test_parse_hub_names(name, expected):
    assert parse_step_name(name) == expected


def test_tokens_are_exact_decimals():
    # 4.19 * 1e9 in floating point is not 4190000000.0; the parser must be exact.
    assert parse_step_name("step1-tokens4.19B")[1] == 4_190_000_000.0
    assert parse_step_name("step1-tokens0.1B")[1] == 100_000_000.0


def test_selection_terms():
    ckpts = _ckpts([0, 1000, 5000, 10000, 15000, 50000, 100000])
    assert _steps(parse_selection("all").apply(ckpts)) == [
        0,
        1000,
        5000,
        10000,
        15000,
        50000,
        100000,
    ]
    assert _steps(parse_selection(None).apply(ckpts)) == _steps(ckpts)
    assert _steps(parse_selection("5000,10000").apply(ckpts)) == [5000, 10000]
    assert _steps(parse_selection("10000,5000,5000").apply(ckpts)) == [5000, 10000]
    assert _steps(parse_selection("step5000-tokens1B").apply(ckpts)) == [5000]
    assert _steps(parse_selection("every:5000").apply(ckpts)) == [
        0,
        5000,
        10000,
        15000,
        50000,
        100000,
    ]
    assert _steps(parse_selection("every:10000").apply(ckpts)) == [0, 10000, 50000, 100000]
    assert _steps(parse_selection("range:1000-15000").apply(ckpts)) == [1000, 5000, 10000, 15000]
    assert _steps(parse_selection("range:50000-").apply(ckpts)) == [50000, 100000]
    assert _steps(parse_selection("range:-1000").apply(ckpts)) == [0, 1000]
    assert _steps(parse_selection("first:2").apply(ckpts)) == [0, 1000]
    assert _steps(parse_selection("last:2").apply(ckpts)) == [50000, 100000]
    assert _steps(parse_selection("every:5000+range:1-20000+last:1").apply(ckpts)) == [15000]


def test_log_selection_is_log_spaced_with_endpoints():
    steps = list(range(0, 100001, 1000))  # 0, 1000, …, 100000
    picked = _steps(parse_selection("range:1000-+log:3").apply(_ckpts(steps)))
    # log-spaced between 1000 and 100000: the middle target is 10000.
    assert picked == [1000, 10000, 100000]
    picked5 = _steps(parse_selection("range:1000-+log:5").apply(_ckpts(steps)))
    # targets 10^3, 10^3.5≈3162, 10^4, 10^4.5≈31623, 10^5 → nearest in log space
    assert picked5 == [1000, 3000, 10000, 32000, 100000]
    # asking for more than exist gives all, and never a duplicate
    small = _ckpts([1, 2, 3])
    assert _steps(parse_selection("log:10").apply(small)) == [1, 2, 3]
    # a crowded low end still yields n distinct checkpoints
    crowded = _ckpts([1, 2, 3, 4, 1000])
    assert len(parse_selection("log:4").apply(crowded)) == 4


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("lg:3", "unknown selection term"),
        ("every:0", "integer >= 1"),
        ("every:x", "not an integer"),
        ("range:5-1", "range is empty"),
        ("range:5", "range:A-B"),
        ("all+", "empty term"),
    ],
)
def test_bad_selection_specs(spec, message):
    with pytest.raises(InvalidInputError, match=message):
        parse_selection(spec)


def test_selection_naming_a_missing_step_suggests_neighbours():
    with pytest.raises(InvalidInputError, match="no checkpoint '5001'.*nearest steps: 5000"):
        parse_selection("5001").apply(_ckpts([1000, 5000]))
    with pytest.raises(InvalidInputError, match="matches none of the 2 checkpoints"):
        parse_selection("range:7000-9000").apply(_ckpts([1000, 5000]))


# ---- hub ------------------------------------------------------------------------------


class _Ref:
    def __init__(self, name):
        self.name = name


class _Refs:
    def __init__(self, names):
        self.branches = [_Ref(n) for n in names]


@pytest.fixture
def fake_hub(monkeypatch):
    import huggingface_hub

    calls = []

    def list_repo_refs(repo_id, **kwargs):
        calls.append(repo_id)
        if repo_id != "allenai/OLMoE-fake":
            import httpx
            from huggingface_hub.errors import RepositoryNotFoundError

            request = httpx.Request("GET", f"https://huggingface.co/api/models/{repo_id}/refs")
            raise RepositoryNotFoundError("nope", response=httpx.Response(404, request=request))
        return _Refs(OLMOE_LIKE)

    monkeypatch.setattr(huggingface_hub, "list_repo_refs", list_repo_refs)
    monkeypatch.setattr(huggingface_hub.constants, "is_offline_mode", lambda: False)
    return calls


def test_hub_listing_parses_and_ignores(fake_hub):
    src = HubRevisions("allenai/OLMoE-fake")
    ckpts = src.checkpoints()
    assert fake_hub == ["allenai/OLMoE-fake"]
    assert _steps(ckpts) == [0, 1000, 5000, 10000, 15000, 50000, 100000, 1220000]
    assert sorted(src.ignored) == ["main", "my-experiment"]
    assert src.listed_from == "hub"
    c = ckpts[4]
    assert (c.revision, c.repo, c.tokens, c.path) == (
        "step15000-tokens62.9B",
        "allenai/OLMoE-fake",
        62.9e9,
        None,
    )
    sel = HubRevisions("allenai/OLMoE-fake", select="range:1000-100000+every:5000").checkpoints()
    assert _steps(sel) == [5000, 10000, 15000, 50000, 100000]
    assert src.describe() == {"kind": "hub", "repo": "allenai/OLMoE-fake"}


def test_hub_unknown_repo_is_one_error(fake_hub):
    with pytest.raises(ModelNotFoundError, match="not found on the hub"):
        HubRevisions("someone/missing").checkpoints()


def test_hub_duplicate_steps_named(monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(
        huggingface_hub,
        "list_repo_refs",
        lambda repo, **kw: _Refs(["step10-tokens1B", "step10-tokens2B"]),
    )
    monkeypatch.setattr(huggingface_hub.constants, "is_offline_mode", lambda: False)
    with pytest.raises(
        InvalidInputError, match="'step10-tokens1B' and 'step10-tokens2B' are both step 10"
    ):
        HubRevisions("x/y").checkpoints()


def test_hub_without_step_branches(monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(
        huggingface_hub, "list_repo_refs", lambda repo, **kw: _Refs(["main", "dev"])
    )
    monkeypatch.setattr(huggingface_hub.constants, "is_offline_mode", lambda: False)
    with pytest.raises(ModelNotFoundError, match="no branch named like"):
        HubRevisions("x/y").checkpoints()


def test_offline_hub_lists_and_loads_from_the_cache(tmp_path, monkeypatch, tiny_checkpoints):
    import huggingface_hub

    from mechmoe.core.provenance import weights_hash
    from mechmoe.testing import make_hub_cache

    folders = tiny_checkpoints
    cache = tmp_path / "hub"
    make_hub_cache(
        cache,
        "org/tiny-olmoe",
        {
            "main": folders[-1],
            "step100-tokens0.4B": folders[0],
            "step200-tokens0.8B": folders[1],
        },
    )
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "is_offline_mode", lambda: True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))

    def no_network(*a, **k):  # listing must not try the network when offline
        raise AssertionError("list_repo_refs called offline")

    monkeypatch.setattr(huggingface_hub, "list_repo_refs", no_network)
    src = HubRevisions("org/tiny-olmoe")
    ckpts = src.checkpoints()
    assert src.listed_from == "cache"
    assert [(c.step, c.tokens) for c in ckpts] == [(100, 0.4e9), (200, 0.8e9)]
    assert src.ignored == ["main"]
    model = src.load(ckpts[1])
    assert model.revision == "step200-tokens0.8B"
    from mechmoe.model import load

    assert weights_hash(model) == weights_hash(load(str(folders[1])))
    assert weights_hash(model) != weights_hash(load(str(folders[0])))
    # a whole sweep over the cached branches
    from mechmoe.trajectory import open_store, sweep
    from mechmoe.trajectory.sweep import ParameterNorm

    summary = sweep(
        src, probe=["The capital of France is"], measures=[ParameterNorm()], out=tmp_path / "r.zarr"
    )
    assert summary.done == [100, 200]
    ds = open_store(tmp_path / "r.zarr")
    assert ds["revision"].values.tolist() == ["step100-tokens0.4B", "step200-tokens0.8B"]
    assert ds["tokens"].values.tolist() == [0.4e9, 0.8e9]
    assert ds.attrs["model"] == "org/tiny-olmoe"
    assert json.loads(ds.attrs["source"]) == {"kind": "hub", "repo": "org/tiny-olmoe"}


def test_offline_hub_not_cached(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "is_offline_mode", lambda: True)
    with pytest.raises(ModelNotFoundError, match="not in the local hub cache"):
        HubRevisions("org/absent").checkpoints()


# ---- local ----------------------------------------------------------------------------


def _dirs(root, names, *, config=True):
    for n in names:
        (root / n).mkdir(parents=True)
        if config:
            (root / n / "config.json").write_text("{}")


def test_local_folder_mixed_names(tmp_path):
    _dirs(
        tmp_path,
        [
            "step_000100",
            "step200",
            "checkpoint-300",
            "step400-tokens1.5B",
            "step-500",
            "runs",
            "logs",
        ],
    )
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "step600").write_text("a file, not a folder")
    src = LocalCheckpoints(tmp_path)
    ckpts = src.checkpoints()
    assert _steps(ckpts) == [100, 200, 300, 400, 500]
    assert sorted(src.ignored) == ["logs", "notes.txt", "runs", "step600"]
    assert ckpts[3].tokens == 1.5e9 and ckpts[0].tokens is None
    assert ckpts[0].label == "step_000100"
    assert ckpts[0].path == str((tmp_path / "step_000100").resolve())
    assert all(c.revision is None and c.repo is None for c in ckpts)
    assert _steps(LocalCheckpoints(tmp_path, select="every:200").checkpoints()) == [200, 400]
    assert _steps(LocalCheckpoints(tmp_path, select="step_000100,300").checkpoints()) == [100, 300]


def test_local_duplicate_steps_name_both(tmp_path):
    _dirs(tmp_path, ["step_000100", "checkpoint-100"])
    with pytest.raises(
        InvalidInputError, match="'checkpoint-100' and 'step_000100' are both step 100"
    ):
        LocalCheckpoints(tmp_path).checkpoints()


def test_local_empty_and_missing(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no checkpoint folders"):
        LocalCheckpoints(tmp_path).checkpoints()
    _dirs(tmp_path, ["misc"])
    with pytest.raises(ModelNotFoundError, match=r"\(1 other entries\)"):
        LocalCheckpoints(tmp_path).checkpoints()
    with pytest.raises(ModelNotFoundError, match="no such checkpoint folder"):
        LocalCheckpoints(tmp_path / "absent").checkpoints()
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(InvalidInputError, match="not a .json or .csv manifest"):
        LocalCheckpoints(tmp_path / "x.txt").checkpoints()


def test_local_folder_without_config_is_listed(tmp_path):
    # an incomplete checkpoint is listed; loading it fails and the sweep records that
    _dirs(tmp_path, ["step1"], config=False)
    assert _steps(LocalCheckpoints(tmp_path).checkpoints()) == [1]


def test_json_and_csv_manifests(tmp_path):
    _dirs(tmp_path, ["a", "b", "c"])
    (tmp_path / "m.json").write_text(
        json.dumps(
            {
                "checkpoints": [
                    {"step": 30, "path": "c", "tokens": "2B"},
                    {"step": 10, "path": "a", "tokens": 1e9, "label": "first"},
                    {"step": 20, "path": "b"},
                ]
            }
        )
    )
    ckpts = LocalCheckpoints(tmp_path / "m.json").checkpoints()
    assert [(c.step, c.tokens, c.label) for c in ckpts] == [
        (10, 1e9, "first"),
        (20, None, "b"),
        (30, 2e9, "c"),
    ]
    assert ckpts[0].path == str((tmp_path / "a").resolve())
    (tmp_path / "m.csv").write_text("step,path,tokens\n10,a,1B\n20,b,\n")
    ckpts = LocalCheckpoints(tmp_path / "m.csv").checkpoints()
    assert [(c.step, c.tokens) for c in ckpts] == [(10, 1e9), (20, None)]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('[{"step": 1}]', "needs both 'step' and 'path'"),
        ('[{"step": -1, "path": "a"}]', "not an integer >= 0"),
        ('[{"step": 1, "path": "zz"}]', "no such checkpoint folder"),
        ('[{"step": 1, "path": "a"}, {"step": 1, "path": "b"}]', "'a' and 'b' are both step 1"),
        ('[{"step": 1, "path": "a", "tokens": "lots"}]', "not a number"),
        ("{bad json", "not valid JSON"),
        ('{"x": 1}', "must be a list"),
        ("[]", "lists no checkpoints"),
    ],
)
def test_bad_manifests(tmp_path, content, message):
    _dirs(tmp_path, ["a", "b"])
    (tmp_path / "m.json").write_text(content)
    with pytest.raises((InvalidInputError, ModelNotFoundError), match=message):
        LocalCheckpoints(tmp_path / "m.json").checkpoints()
