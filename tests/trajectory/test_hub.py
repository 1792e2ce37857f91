"""Hub listing and downloads against a local server laid out as the hub serves it.

Nothing leaves this machine: :func:`mechmoe.testing.serve_hub` answers on 127.0.0.1,
and ``HF_ENDPOINT`` (or, in this process, the endpoint huggingface_hub read when it was
imported) points at it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from mechmoe.core.errors import HubError, ModelNotFoundError
from mechmoe.testing import make_hub_cache, serve_hub
from mechmoe.trajectory import HubRevisions

REPO = "org/tiny-olmoe"


def _branches(folders):
    return {
        "main": folders[-1],
        "step100-tokens0.4B": folders[0],
        "step200-tokens0.8B": folders[1],
    }


@pytest.fixture
def hub(tiny_checkpoints, monkeypatch, tmp_path):
    """A fake hub serving REPO, with this process's huggingface_hub pointed at it online
    and an empty hub cache."""
    import huggingface_hub.hf_api
    from huggingface_hub import constants

    with serve_hub({REPO: _branches(tiny_checkpoints)}) as served:
        _point_at(monkeypatch, served.endpoint)
        monkeypatch.setattr(constants, "is_offline_mode", lambda: False)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
        assert huggingface_hub.hf_api.api.endpoint == served.endpoint
        yield served


def _point_at(monkeypatch, endpoint):
    import huggingface_hub.hf_api
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(
        constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        endpoint + "/{repo_id}/resolve/{revision}/{filename}",
    )
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", endpoint)


def test_branches_are_listed_by_the_hub(hub):
    src = HubRevisions(REPO)
    ckpts = src.checkpoints()
    assert hub.api_calls(f"/api/models/{REPO}/refs")  # list_repo_refs really asked
    assert src.listed_from == "hub"
    assert [(c.step, c.revision, c.tokens) for c in ckpts] == [
        (100, "step100-tokens0.4B", 0.4e9),
        (200, "step200-tokens0.8B", 0.8e9),
    ]
    assert src.ignored == ["main"]


def test_branch_downloaded_from_the_hub_is_the_branch(hub, tiny_checkpoints):
    from mechmoe.core.provenance import weights_hash
    from mechmoe.model import load

    src = HubRevisions(REPO)
    model = src.load(src.checkpoints()[1])
    assert model.revision == "step200-tokens0.8B"
    assert any(p.endswith("/model.safetensors") for _, p in hub.requests)
    assert weights_hash(model) == weights_hash(load(str(tiny_checkpoints[1])))


def test_unknown_repo_and_revision(hub):
    with pytest.raises(ModelNotFoundError, match="'org/absent' not found on the hub"):
        HubRevisions("org/absent").checkpoints()
    from mechmoe.model import load

    with pytest.raises(ModelNotFoundError, match="revision 'step999' of 'org/tiny-olmoe' does not"):
        load(REPO, revision="step999")


def test_hub_error_is_reported_not_replaced_by_the_cache(hub, tmp_path, tiny_checkpoints):
    from huggingface_hub import constants

    make_hub_cache(tmp_path / "cache", REPO, {"step100-tokens0.4B": tiny_checkpoints[0]})
    hub.fail_api = 500
    with pytest.raises(HubError, match="500") as err:
        HubRevisions(REPO).checkpoints()
    message = str(err.value)
    assert "\n" not in message and hub.endpoint in message
    assert "set HF_HUB_OFFLINE=1" in message
    # the advice works: offline, the cached branch is listed
    constants.is_offline_mode = lambda: True  # monkeypatched by the fixture, restored after
    src = HubRevisions(REPO)
    assert [c.step for c in src.checkpoints()] == [100] and src.listed_from == "cache"
    assert len(hub.api_calls("/refs")) == 1  # offline: the hub is not asked again


def test_hub_error_without_cache_has_no_cache_advice(hub):
    hub.fail_api = 503
    with pytest.raises(HubError, match="503") as err:
        HubRevisions(REPO).checkpoints()
    assert "HF_HUB_OFFLINE" not in str(err.value)


def test_unreachable_hub_falls_back_to_the_cache(monkeypatch, tmp_path, tiny_checkpoints):
    from huggingface_hub import constants

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _point_at(monkeypatch, f"http://127.0.0.1:{port}")
    monkeypatch.setattr(constants, "is_offline_mode", lambda: False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelNotFoundError, match="the hub cannot be reached.*not in the local"):
        HubRevisions(REPO).checkpoints()
    make_hub_cache(tmp_path / "cache", REPO, _branches(tiny_checkpoints))
    src = HubRevisions(REPO)
    assert [c.step for c in src.checkpoints()] == [100, 200] and src.listed_from == "cache"


def test_cli_sweep_over_hub_branches(tmp_path, tiny_checkpoints):
    """The whole path a user takes, in a fresh process with HF_ENDPOINT set: list the
    branches with list_repo_refs, download each, measure; the same numbers as a sweep
    over the local folders."""
    import numpy as np
    from typer.testing import CliRunner

    from mechmoe.cli import app
    from mechmoe.core.provenance import weights_hash
    from mechmoe.model import load
    from mechmoe.trajectory import open_store

    out = tmp_path / "hub.zarr"
    args = [
        "--probe",
        "country_capital_city",
        "--probe-items",
        "2",
        "--measures",
        "hit,expert_load",
    ]
    with serve_hub({REPO: _branches(tiny_checkpoints)}) as served:
        env = {
            **os.environ,
            "HF_ENDPOINT": served.endpoint,
            "HF_HUB_CACHE": str(tmp_path / "cache"),
            "HF_HOME": str(tmp_path / "home"),
        }
        env.pop("HF_HUB_OFFLINE", None)
        code = "from mechmoe.cli import main; main()"
        cmd = [sys.executable, "-c", code, "trajectory", REPO, "--revisions", "all"]
        run = subprocess.run(
            [*cmd, *args, "--out", str(out)], env=env, capture_output=True, text=True, timeout=600
        )
    assert run.returncode == 0, run.stdout + run.stderr
    assert served.api_calls(f"/api/models/{REPO}/refs")
    assert "offline" not in run.stdout
    ds = open_store(out)
    assert ds["revision"].values.tolist() == ["step100-tokens0.4B", "step200-tokens0.8B"]
    assert ds["weights_hash"].values.tolist() == [
        weights_hash(load(str(f))) for f in tiny_checkpoints[:2]
    ]
    local = tmp_path / "ckpts"
    local.mkdir()
    for f in tiny_checkpoints[:2]:
        os.symlink(f, local / f.name)
    result = CliRunner().invoke(
        app,
        ["trajectory", REPO, "--checkpoints", str(local), *args, "--out", str(tmp_path / "l.zarr")],
    )
    assert result.exit_code == 0, result.output
    ref = open_store(tmp_path / "l.zarr")
    assert set(ds.data_vars) == set(ref.data_vars) and len(ds.data_vars) > 2
    for var in ds.data_vars:
        np.testing.assert_array_equal(ds[var].values, ref[var].values)
