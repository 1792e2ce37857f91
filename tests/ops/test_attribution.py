"""The attribution engine against a slow reference written straight from method.md.

The reference scores one vector at a time in float64: it builds ``base + v``, applies
the final norm with its statistics frozen at the actual final residual (centring where
the norm is a LayerNorm, γ and β where it has them), unembeds, and takes the full
log-softmax at the target. It never uses the engine's shared projections, chunking or
shifted sums. Inputs (activations, gates, residuals) come from ``Model.capture``.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from mechmoe.core.errors import InvalidInputError, InvalidTypeError
from mechmoe.ops.attribution import attribute
from mechmoe.testing import DEFAULT_PROMPTS, MOE_FAMILIES, TINY_FAMILIES, tiny_model

PROMPTS = list(DEFAULT_PROMPTS)
TOL = 1e-5
GOLD = [5, 100, 200, 7]


@functools.cache
def _model(family: str):
    return tiny_model(family)


def _f64(t):
    return None if t is None else t.detach().double()


class Reference:
    """LPI of single vectors for one captured batch, in float64."""

    def __init__(self, model, prompts, *, compat: bool, targets=None, interventions=None):
        self.model = model
        self.cap = model.capture(prompts, interventions=interventions)
        norm = model.final_norm
        self.kind = "rmsnorm" if compat else norm.kind
        self.eps = 1e-6 if compat else norm.eps
        self.gamma = _f64(norm.weight)
        self.beta = None if compat else _f64(norm.bias)
        self.W_U = _f64(model.W_U)
        self.b_U = None if compat else _f64(model.b_U)
        logits = self.cap.logits[:, 0]
        self.w = logits.argmax(-1).tolist() if targets is None else list(targets)
        self.rm = model.residual_multiplier  # Granite scales what each sub-layer adds

    def _z(self, x, h_final):
        if self.kind == "layernorm":
            sigma = torch.sqrt(((h_final - h_final.mean()) ** 2).mean() + self.eps)
            y = (x - x.mean()) / sigma
        else:
            sigma = torch.sqrt((h_final**2).mean() + self.eps)
            y = x / sigma
        if self.gamma is not None:
            y = y * self.gamma
        if self.beta is not None:
            y = y + self.beta
        z = self.W_U @ y
        z = z if self.b_U is None else z + self.b_U
        return self.model.scale_logits(z)  # the family's logit scale (Granite) is part of z

    def lpi(self, b: int, base, v) -> float:
        h = _f64(self.cap.final_resid[b, 0])
        base = _f64(base)
        with_v = torch.log_softmax(self._z(base + _f64(v), h), -1)[self.w[b]]
        without = torch.log_softmax(self._z(base, h), -1)[self.w[b]]
        return float(with_v - without)

    @staticmethod
    def post(params, v, raw):
        """A vector through a post-norm frozen at the actual sub-layer output ``raw``."""
        if params is None:
            return _f64(v)
        v, raw = _f64(v), _f64(raw)
        if params.kind == "layernorm":
            v = v - v.mean()
            sigma = torch.sqrt(((raw - raw.mean()) ** 2).mean() + params.eps)
        else:
            sigma = torch.sqrt((raw**2).mean() + params.eps)
        out = v / sigma
        return out if params.weight is None else out * _f64(params.weight)

    # ---- per level: arrays shaped like the engine's per-prompt output (NaN = not scored)
    def neuron(self):
        m, d = self.model, self.model.dims
        n = len(self.w)
        out = np.full((n, d.n_layers, max(d.n_experts), max(d.d_ffn)), np.nan)
        shared = np.full((n, d.n_layers, max([s or 0 for s in d.d_shared] + [1])), np.nan)
        for li, lc in enumerate(self.cap.layers):
            W = m.ffn_weights(li)
            post = m.ffn_out_norm(li)
            for b in range(n):
                base, raw = lc.resid_mid[b, 0], lc.ffn_raw[b, 0]
                for s in range(lc.expert_idx.shape[-1]):
                    e = int(lc.expert_idx[b, 0, s])
                    g = _f64(lc.expert_gate[b, 0, s])
                    acts = _f64(lc.acts[b, 0, s])
                    for k in range(acts.shape[0]):
                        v = self.rm * g * acts[k] * _f64(W.w_down[e][:, k])
                        out[b, li, e, k] = self.lpi(b, base, self.post(post, v, raw))
                sh = m.shared_weights(li)
                if sh is not None:
                    sw = sh[0]
                    sg = _f64(lc.shared_gate[b, 0]) if lc.shared_gate is not None else 1.0
                    acts = _f64(lc.shared_acts[b, 0])
                    for k in range(acts.shape[0]):
                        v = self.rm * sg * acts[k] * _f64(sw.w_down[0][:, k])
                        shared[b, li, k] = self.lpi(b, base, self.post(post, v, raw))
        return out, shared

    def expert(self):
        m, d = self.model, self.model.dims
        n = len(self.w)
        out = np.full((n, d.n_layers, max(d.n_experts)), np.nan)
        shared = np.full((n, d.n_layers), np.nan)
        for li, lc in enumerate(self.cap.layers):
            W = m.ffn_weights(li)
            post = m.ffn_out_norm(li)
            for b in range(n):
                base, raw = lc.resid_mid[b, 0], lc.ffn_raw[b, 0]
                for s in range(lc.expert_idx.shape[-1]):
                    e = int(lc.expert_idx[b, 0, s])
                    y = _f64(W.w_down[e]) @ _f64(lc.acts[b, 0, s])
                    if W.b_down is not None:  # the expert's own bias
                        y = y + _f64(W.b_down[e])
                    v = self.rm * _f64(lc.expert_gate[b, 0, s]) * y
                    out[b, li, e] = self.lpi(b, base, self.post(post, v, raw))
                sh = m.shared_weights(li)
                if sh is not None:
                    y = _f64(sh[0].w_down[0]) @ _f64(lc.shared_acts[b, 0])
                    if lc.shared_gate is not None:
                        y = y * _f64(lc.shared_gate[b, 0])
                    shared[b, li] = self.lpi(b, base, self.post(post, self.rm * y, raw))
        return out, shared

    def head(self):
        m, d = self.model, self.model.dims
        n = len(self.w)
        out = np.full((n, d.n_layers, d.n_heads), np.nan)
        for li, lc in enumerate(self.cap.layers):
            post = m.attn_out_norm(li)
            for b in range(n):
                for h in range(lc.heads.shape[2]):  # none on a Mamba layer: NaN
                    v = self.rm * self.post(post, lc.heads[b, 0, h], lc.attn_raw[b, 0])
                    out[b, li, h] = self.lpi(b, lc.resid_pre[b, 0], v)
        return out

    def sublayer(self, which: str):
        n = len(self.w)
        out = np.full((n, len(self.cap.layers)), np.nan)
        for li, lc in enumerate(self.cap.layers):
            for b in range(n):
                if which == "attn":
                    out[b, li] = self.lpi(b, lc.resid_pre[b, 0], lc.attn_out[b, 0])
                else:
                    out[b, li] = self.lpi(b, lc.resid_mid[b, 0], lc.ffn_out[b, 0])
        return out


def _check(engine_rows, ref_rows, mean, *, what: str):
    engine_rows = np.asarray(engine_rows, dtype=np.float64)
    assert np.array_equal(np.isnan(engine_rows), np.isnan(ref_rows)), f"{what}: scored items differ"
    err = np.nanmax(np.abs(engine_rows - ref_rows)) if np.isfinite(ref_rows).any() else 0.0
    assert err <= TOL, f"{what}: max |engine − reference| = {err:.2e}"
    # The mean counts unscored (unchosen) items as 0 but keeps missing items NaN.
    expected = np.nansum(ref_rows, axis=0) / ref_rows.shape[0]
    expected = np.where(np.isnan(mean), np.nan, expected)
    assert np.nanmax(np.abs(np.asarray(mean) - expected)) <= TOL, f"{what}: mean differs"


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize(
    ("target", "compat"),
    [("top1", False), ("gold", False), ("top1", True)],
    ids=["top1", "gold", "compat"],
)
def test_engine_matches_reference_at_every_level(family, target, compat):
    model = _model(family)
    targets = GOLD if target == "gold" else None
    ref = Reference(model, PROMPTS, compat=compat, targets=targets)
    kw = dict(target=target, targets=targets, reference_compat=compat, per_prompt=True)

    ds = attribute(model, PROMPTS, level="neuron", **kw)
    rows, shared = ref.neuron()
    assert ds["target"].values.tolist() == ref.w
    _check(ds["score_per_prompt"].values, rows, ds["score"].values, what=f"{family} neuron")
    if "shared_score" in ds:
        _check(
            ds["shared_score_per_prompt"].values,
            shared,
            ds["shared_score"].values,
            what="shared neurons",
        )

    if model.dims.is_moe:
        ds = attribute(model, PROMPTS, level="expert", **kw)
        rows, shared = ref.expert()
        _check(ds["score_per_prompt"].values, rows, ds["score"].values, what=f"{family} expert")
        if "shared_score" in ds:
            _check(
                ds["shared_score_per_prompt"].values,
                shared,
                ds["shared_score"].values,
                what="shared expert",
            )
        chosen = (~np.isnan(rows)).sum(0)
        assert (ds["n_chosen"].values == chosen).all()

    ds = attribute(model, PROMPTS, level="head", **kw)
    _check(ds["score_per_prompt"].values, ref.head(), ds["score"].values, what=f"{family} head")
    for which in ("attn", "ffn"):
        ds = attribute(model, PROMPTS, level=which, **kw)
        _check(
            ds["score_per_prompt"].values,
            ref.sublayer(which),
            ds["score"].values,
            what=f"{family} {which}",
        )


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_attention_layer_equals_its_summed_heads(family):
    model = _model(family)
    ref = Reference(model, PROMPTS, compat=False)
    ds = attribute(model, PROMPTS, level="attn", per_prompt=True)
    b_O = model.b_O(0)
    for li, lc in enumerate(ref.cap.layers):
        if not model.dims.has_heads(li):
            continue  # a Mamba layer's output is not a sum of heads
        b_O = model.b_O(li)
        for b in range(len(PROMPTS)):
            summed = _f64(lc.heads[b, 0]).sum(0)
            if b_O is not None:
                summed = summed + _f64(b_O)
            v = ref.rm * Reference.post(model.attn_out_norm(li), summed, lc.attn_raw[b, 0])
            got = float(ds["score_per_prompt"].values[b, li])
            assert abs(got - ref.lpi(b, lc.resid_pre[b, 0], v)) <= TOL


@pytest.mark.parametrize("family", ["olmoe", "llama", "olmo", "gpt2", "olmo2"])
def test_planted_neuron_ranks_first(family):
    """A neuron whose W_down column is the target's unembedding direction wins."""
    model = tiny_model(family)  # a private copy: its weights are edited below
    cap = model.capture(PROMPTS[:1])
    li = model.dims.n_layers - 1  # nothing downstream, so activations stay the same
    lc = cap.layers[li]
    coef = lc.expert_gate[0, 0, :, None] * lc.acts[0, 0]  # (slot, neuron)
    slot, k = np.unravel_index(int(coef.argmax()), tuple(coef.shape))
    e = int(lc.expert_idx[0, 0, slot])
    token = 17
    with torch.no_grad():
        w_down = model.ffn_weights(li).w_down
        col = model.W_U[token].detach().clone()
        w_down[e][:, k] = 10.0 * col / col.norm()
    ds = attribute(model, PROMPTS[:1], level="neuron", target="gold", targets=[token])
    score = ds["score"].fillna(-np.inf)
    best = np.unravel_index(int(score.argmax()), score.shape)
    assert best == (li, e, k)


@pytest.mark.parametrize("family", ["olmoe", "qwen2_moe", "gpt2", "olmo2"])
@pytest.mark.parametrize("tolerance", [1e-4, 3e-2])
def test_bounded_mode_within_its_reported_bound(family, tolerance):
    model = _model(family)
    exact = attribute(model, PROMPTS, level="neuron", per_prompt=True)
    bounded = attribute(
        model, PROMPTS, level="neuron", per_prompt=True, precision="bounded", tolerance=tolerance
    )
    bound = bounded.attrs["bound"]
    assert 0.0 <= bound <= tolerance
    diff = np.abs(bounded["score_per_prompt"].values - exact["score_per_prompt"].values)
    assert np.nanmax(diff) <= bound + 2e-6  # plus fp32 rounding of the two paths
    assert np.array_equal(
        np.isnan(bounded["score_per_prompt"]), np.isnan(exact["score_per_prompt"])
    )
    if tolerance > 1e-2:
        assert bound > 0  # the truncation was actually used
    assert bounded.attrs["precision"] == "bounded"


def test_unchosen_is_nan_per_prompt_and_zero_in_the_mean():
    model = _model("olmoe")
    ds = attribute(model, PROMPTS, level="expert", per_prompt=True)
    rows = ds["score_per_prompt"].values
    assert np.isnan(rows).any()  # top-2 of 8: most experts are not chosen
    np.testing.assert_allclose(ds["score"].values, np.nansum(rows, 0) / len(PROMPTS), atol=1e-12)
    assert ds["n_chosen"].sum() == len(PROMPTS) * 2 * model.dims.n_layers


def test_mixed_stack_dense_layer_is_one_expert():
    model = _model("qwen2_moe")  # layer 1 is dense, with a wider MLP than the experts
    ds = attribute(model, PROMPTS, level="neuron")
    score = ds["score"].values
    d = model.dims
    assert ds["layer_kind"].values.tolist() == list(d.layer_kinds)
    assert np.isfinite(score[1, 0, : d.d_ffn[1]]).all()
    assert np.isnan(score[1, 1:]).all()
    assert np.isnan(score[0, :, d.d_ffn[0] :]).all()  # MoE experts are narrower
    assert ds["n_chosen"].values[1].tolist() == [len(PROMPTS)] + [0] * (d.n_experts[0] - 1)
    assert ds["shared_score"].dims == ("layer", "shared_neuron")
    assert np.isnan(ds["shared_score"].values[1]).all()


def test_interventions_reach_the_capture():
    from mechmoe.core.interventions import MaskHeads

    model = _model("olmoe")
    edit = MaskHeads({0: [0, 1]})
    ref = Reference(model, PROMPTS, compat=False, interventions=edit)
    ds = attribute(model, PROMPTS, level="head", per_prompt=True, interventions=edit)
    _check(ds["score_per_prompt"].values, ref.head(), ds["score"].values, what="masked heads")
    assert np.allclose(ds["score_per_prompt"].values[:, 0, :2], 0.0, atol=1e-6)
    assert "MaskHeads" in ds.attrs["interventions"]


def test_batching_and_chunking_do_not_change_scores():
    model = _model("mixtral")
    ds1 = attribute(model, PROMPTS, level="neuron", per_prompt=True)
    ds2 = attribute(
        model, PROMPTS, level="neuron", per_prompt=True, batch_size=1, memory_budget=2**20
    )
    np.testing.assert_allclose(ds1["score_per_prompt"], ds2["score_per_prompt"], atol=2e-6)


def test_attrs_record_provenance():
    model = _model("olmo")
    ds = attribute(model, PROMPTS[:2], level="ffn", reference_compat=True)
    a = ds.attrs
    assert a["model"] == "tiny:olmo" and a["target_mode"] == "top1" and a["precision"] == "exact"
    assert a["reference_compat"] == 1 and "eps=1e-06" in a["norm_treatment"]
    assert a["mechmoe_version"] and a["level"] == "ffn" and a["bound"] == 0.0
    plain = attribute(model, PROMPTS[:2], level="ffn").attrs["norm_treatment"]
    assert "layernorm" in plain and "mean-centred" in plain and "no weight" in plain


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(prompts=["ok", "   "]), "prompt 1 is empty"),
        (dict(prompts=["word " * 200]), "prompt 0 .* more than the model's context"),
        (dict(target="gold", targets=[1, 10**6]), "target 1 .* not a token id"),
        (dict(target="gold", targets=[1, -3]), "target 1"),
        (dict(target="gold"), "needs targets"),
        (dict(target="gold", targets=[1]), "one per prompt"),
        (dict(prompts=[]), "no prompts"),
    ],
)
def test_bad_input_names_the_item(kwargs, match):
    model = _model("olmoe")
    args = dict(prompts=["The capital of France is", "Tokyo is a city in"], level="head")
    args.update(kwargs)
    prompts = args.pop("prompts")
    with pytest.raises(InvalidInputError, match=match):
        attribute(model, prompts, **args)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(level="cells"), InvalidInputError, "level='cells': use one of 'neuron'"),
        (dict(level="Head"), InvalidInputError, "did you mean 'head'"),
        (dict(precision="fast"), InvalidInputError, "precision='fast'"),
        (dict(target="glod"), InvalidInputError, "did you mean 'gold'"),
        # wrong types: mechmoe's own error, also under the test-time type checker
        (dict(level=3), InvalidTypeError, "level= takes one of 'neuron'.*got int 3"),
        (dict(target=None), InvalidTypeError, "target= takes one of 'top1', 'gold'"),
        (dict(tolerance="1e-4"), InvalidTypeError, "tolerance= takes a number, got str"),
        (dict(batch_size=2.5), InvalidTypeError, "batch_size= takes an integer"),
        (dict(batch_size=0), InvalidInputError, "batch_size=0 must be at least 1"),
        (dict(tolerance=float("nan")), InvalidInputError, "tolerance=nan must be a finite"),
    ],
)
def test_unknown_option_values_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match) as info:
        attribute(_model("olmoe"), PROMPTS[:1], **{"level": "head", **kwargs})
    assert type(info.value) is error


def test_expert_level_on_a_dense_model_is_refused():
    with pytest.raises(InvalidInputError, match="level='expert' needs a MoE model"):
        attribute(_model("llama"), PROMPTS, level="expert")


def test_moe_families_have_experts():
    for family in MOE_FAMILIES:
        assert _model(family).dims.is_moe
