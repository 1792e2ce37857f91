"""The compiled exp-accumulate kernel: same sums as a float64 reference and as the torch
path, built once into the cache, and a clean fallback where it cannot be built."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechmoe.ops import _native
from mechmoe.ops._lpi_kernels import log_shifted_sum, shared_direction_lpi
from mechmoe.ops.attribution import attribute
from mechmoe.testing import tiny_model

PROMPTS = ["The capital of France is", "Water is made of", "One two three four"]


@pytest.fixture
def kernel_cache(tmp_path, monkeypatch):
    """A fresh cache folder and a fresh loader state; restored afterwards."""
    monkeypatch.setenv("MECHMOE_CACHE", str(tmp_path))
    _native.reset()
    yield tmp_path / "kernels"
    _native.reset()


def _reference(P, logp, c, shift):
    z = logp.double()[:, None, :] + c.double()[:, :, None] * P.double()[None]
    return torch.exp(z - shift.double()[:, :, None]).sum(-1)


def _inputs(seed, n, k, vocab, c_scale=1.0, logit_scale=3.0):
    g = torch.Generator().manual_seed(seed)
    P = torch.randn(k, vocab, generator=g) * 0.05
    logp = torch.log_softmax(torch.randn(n, vocab, generator=g) * logit_scale, -1)
    c = torch.randn(n, k, generator=g) * c_scale
    lo, hi = torch.aminmax(P, dim=1)
    shift = torch.maximum(c * hi, c * lo)
    return P, logp, c, shift


@pytest.fixture
def native(kernel_cache):
    """The kernel built into a fresh cache; skips where this machine cannot build it."""
    if _native.library() is None:
        pytest.skip(f"no native kernel here: {_native.status()}")
    return kernel_cache


@pytest.mark.parametrize(
    ("n", "k", "vocab"),
    [(1, 1, 1), (3, 7, 513), (5, 17, 3001), (33, 9, 1024)],  # ragged tiles and blocks
)
@pytest.mark.parametrize("c_scale", [0.01, 1.0, 40.0])
def test_native_sums_match_float64(native, n, k, vocab, c_scale):
    P, logp, c, shift = _inputs(0, n, k, vocab, c_scale)
    got = _native.shifted_sums(P, logp, c, shift)
    want = _reference(P, logp, c, shift)
    assert got.dtype == torch.float64 and got.shape == (n, k)
    # fp32 exponent arguments (|logp| up to ~20) and the polynomial exp: ~1e-6 relative
    torch.testing.assert_close(got, want, rtol=3e-6, atol=0.0)


def test_native_handles_probabilities_below_fp32_range(native):
    # log p far below -87 (p underflows fp32): the torch path needs its max-shift
    # fallback there, the log-space kernel does not.
    P, logp, c, shift = _inputs(1, 4, 5, 2000)
    logits = torch.randn(4, 2000) * 3
    logits[:, 0] += 150.0
    logp = torch.log_softmax(logits, -1)
    got = _native.shifted_sums(P, logp, c, shift)
    torch.testing.assert_close(got, _reference(P, logp, c, shift), rtol=3e-6, atol=0.0)


def test_native_equals_torch_path(native):
    P, logp, c, shift = _inputs(2, 6, 40, 5000)
    native = _native.shifted_sums(P, logp, c, shift).log()
    torch_path = log_shifted_sum(P, c, logp.exp(), shift, budget=2**26).double()
    torch.testing.assert_close(native, torch_path, atol=1e-6, rtol=0.0)


def test_attribute_same_with_and_without_native(native, monkeypatch):
    model = tiny_model("olmoe")
    fast = attribute(model, PROMPTS, level="neuron", per_prompt=True)
    assert fast.attrs["kernel"] == "native"
    monkeypatch.setenv("MECHMOE_NATIVE", "0")
    _native.reset()
    slow = attribute(model, PROMPTS, level="neuron", per_prompt=True)
    assert slow.attrs["kernel"] == "torch"
    np.testing.assert_allclose(
        fast["score_per_prompt"].values, slow["score_per_prompt"].values, atol=2e-6, rtol=0
    )


def test_built_once_into_the_cache(native):
    built = sorted(native.glob("lpi-*.so"))
    assert len(built) == 1
    assert not list(native.glob(".*.tmp"))  # no half-written library left
    mtime = built[0].stat().st_mtime_ns
    _native.reset()
    assert _native.library() is not None  # a new process state loads the cached file
    assert built[0].stat().st_mtime_ns == mtime
    assert str(built[0]) in _native.status()


def test_no_compiler_falls_back_to_torch(kernel_cache, monkeypatch):
    monkeypatch.setattr(_native, "_compiler", lambda: None)
    assert _native.library() is None
    assert _native.status() == "torch (no C compiler found)"
    P, logp, c, shift = _inputs(3, 2, 3, 100)
    assert not _native.usable(P, logp, c, shift)
    model = tiny_model("llama")
    ds = attribute(model, PROMPTS[:2], level="neuron")
    assert ds.attrs["kernel"] == "torch"


def test_failing_compiler_leaves_nothing_and_falls_back(kernel_cache, monkeypatch):
    monkeypatch.setattr(_native, "_compiler", lambda: ["false"])
    assert _native.library() is None
    assert _native.status().startswith("torch (the C kernel did not build")
    assert not kernel_cache.exists() or not any(kernel_cache.iterdir())


def test_switched_off_by_environment(kernel_cache, monkeypatch):
    monkeypatch.setenv("MECHMOE_NATIVE", "0")
    assert _native.library() is None
    assert _native.status() == "torch (MECHMOE_NATIVE=0)"


def test_not_used_for_other_dtypes(native):
    P, logp, c, shift = _inputs(4, 2, 3, 100)
    assert _native.usable(P, logp, c, shift)
    assert not _native.usable(P.double(), logp, c, shift)


def test_exact_scores_through_native_match_reference(native):
    g = torch.Generator().manual_seed(5)
    U = torch.randn(30, 16, generator=g)
    W_U = torch.randn(1500, 16, generator=g) / 4
    c = torch.randn(4, 30, generator=g) * 0.5
    logp = torch.log_softmax(torch.randn(4, 1500, generator=g) * 2, -1)
    target = torch.randint(0, 1500, (4,), generator=g)
    got, bound = shared_direction_lpi(U, W_U, c, logp, target)
    P = U.double() @ W_U.double().T
    z = torch.log_softmax(logp.double()[:, None, :] + c.double()[:, :, None] * P[None], -1)
    want = z.gather(2, target[:, None, None].expand(-1, 30, 1))[..., 0] - logp.double().gather(
        1, target[:, None]
    )
    torch.testing.assert_close(got.double(), want, atol=2e-6, rtol=0)
    assert (bound == 0).all()


def test_pair_sums_match_float64(native):
    P, logp, c, shift = _inputs(6, 5, 9, 2049, c_scale=3.0)
    rows = torch.tensor([0, 4, 4, 2, 1])
    dirs = torch.tensor([8, 0, 3, 3, 5])
    cp = torch.tensor([0.5, -2.0, 7.0, 0.0, 30.0])
    sh = torch.maximum(cp * P[dirs].max(1).values, cp * P[dirs].min(1).values)
    got = _native.pair_sums(P, logp, rows, dirs, cp, sh)
    z = logp.double()[rows] + cp.double()[:, None] * P.double()[dirs] - sh.double()[:, None]
    torch.testing.assert_close(got, z.exp().sum(-1), rtol=3e-6, atol=0.0)


# ---- the cached library is verified before it is loaded -----------------------------------
def _replace(path, data: bytes) -> None:
    # A new file under the same name: this test process has the old one mapped (the
    # fixture loaded it), and truncating a mapped file in place kills the mapper with
    # SIGBUS when it next touches a page, here at interpreter exit.
    path.unlink()
    path.write_bytes(data)


def _truncate_to_1000(path):
    _replace(path, path.read_bytes()[:1000])


def _garbage(path):
    _replace(path, np.random.default_rng(0).bytes(path.stat().st_size))


def _delete(path):
    path.unlink()


_STATUS = "from mechmoe.ops import _native; print(_native.status())"


@pytest.mark.parametrize("damage", [_truncate_to_1000, _garbage, _delete])
def test_a_damaged_cached_kernel_is_rebuilt_not_loaded(native, damage):
    # Mapping a truncated shared object kills the process with SIGBUS (exit -7, no
    # message): the library is checked against the hash in its name first, in a fresh
    # process as a user's next command would be.
    import subprocess
    import sys

    (lib,) = native.glob("lpi-*.so")
    good = lib.read_bytes()
    damage(lib)
    run = subprocess.run([sys.executable, "-c", _STATUS], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith("native (") and str(lib) in run.stdout
    notes = [ln for ln in run.stderr.splitlines() if "attribution kernel" in ln]
    if damage is _delete:
        assert notes == []  # nothing was damaged: built anew, silently, as on first use
    else:
        assert len(notes) == 1 and "damaged" in notes[0] and "rebuilding" in notes[0]
    assert lib.read_bytes() == good  # rebuilt under the same verified name
    assert not list(native.glob(".*.tmp"))


def test_a_library_that_fails_its_test_load_never_enters_the_cache(kernel_cache, monkeypatch):
    # A "compiler" that writes garbage where the library should go: the child process
    # that test-loads each build refuses it, so the cache stays empty and the torch
    # path runs.
    fake = kernel_cache.parent / "fakecc"
    fake.write_text(
        "#!/bin/sh\n"
        'while [ $# -gt 0 ]; do if [ "$1" = "-o" ]; then shift; head -c 1000 /dev/urandom'
        ' > "$1"; fi; shift; done\n'
    )
    fake.chmod(0o755)
    monkeypatch.setattr(_native, "_compiler", lambda: [str(fake)])
    assert _native.library() is None
    assert "test load failed" in _native.status()
    assert not any(kernel_cache.iterdir())  # no library, no temporary


def test_the_cached_library_name_carries_its_content_hash(native):
    from mechmoe.core.cache import file_digest

    (lib,) = native.glob("lpi-*.so")
    assert lib.stem.rsplit("-", 1)[1] == file_digest(lib)[:16]
