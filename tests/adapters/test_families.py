"""The families of issue 24, each checked against computations that know no routing rule.

A neuron's Gated-LPI is the LPI of what it adds to the residual stream. Here that vector
is measured, not derived: on a float64 copy of the model, zero the neuron's
down-projection column and take what the decoder layer's output loses (the router reads
the layer's input, so routing is untouched, whatever the rule). Experts (their whole
down projection and bias) and heads (their output-projection columns; the loss is read
at the residual after attention) likewise. The LPI of that vector through the frozen
final norm, ``W_U`` and the family's logit scale must equal the engine's score to 1e-5.
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch
import transformers as tf

import mechmoe
from mechmoe.adapters import (
    AdapterSpec,
    DenseMLPSpec,
    GroupSpec,
    LayerSchedule,
    MoESpec,
    NormSpec,
    RouterSpec,
)
from mechmoe.adapters.routing import route
from mechmoe.core.errors import InvalidInputError, MechmoeError, SpecMismatchError
from mechmoe.model import Model
from mechmoe.ops.attribution import attribute
from mechmoe.ops.conformance import check_model
from mechmoe.testing import DEFAULT_PROMPTS, tiny_model, tiny_tokenizer
from mechmoe.zoo.tiny import random_weights, save_tiny

NEW = (
    "deepseek_v3",
    "glm4_moe",
    "gpt_oss",
    "llama4",
    "granitemoe",
    "granitemoeshared",
    "jamba",
    "phimoe",
    "deepseek_v2",
    "glm4_moe_lite",
    "dots1",
    "ernie4_5_moe",
    "minimax_m2",
    "hunyuan_v1_moe",
    "flex_olmo",
    "afmoe",
    "exaone_moe",
    "lfm2_moe",
    "granitemoehybrid",
)
PROMPTS = list(DEFAULT_PROMPTS)
TOL = 1e-5

#: A family described in this file as a user would (before mechmoe shipped its own
#: ``deepseek_v2`` spec, which reads the selection method from the config): DeepSeek-V2
#: (softmax scores, group-limited greedy with the group's best score, × scale, no
#: renormalisation, latent attention, dense first layers, shared experts).
DEEPSEEK_V2 = AdapterSpec(
    name="deepseek_v2_user",
    architectures=("DeepseekV2ForCausalLM",),
    norm=NormSpec(kind="rmsnorm", eps=("rms_norm_eps",)),
    moe=MoESpec(
        routing=RouterSpec(
            score="softmax",
            groups=GroupSpec(score="max"),
            renormalize=False,
            scale=("routed_scaling_factor",),
            weights_dtype="float32",
            sorted=False,
        ),
        layers=LayerSchedule(start=("first_k_dense_replace",)),
        shared=DenseMLPSpec(
            gate="mlp.shared_experts.gate_proj",
            up="mlp.shared_experts.up_proj",
            down="mlp.shared_experts.down_proj",
            act="mlp.shared_experts.act_fn",
        ),
    ),
    dense=DenseMLPSpec(),
    head_dim=("v_head_dim",),
)


def _deepseek_v2() -> Model:
    tok = tiny_tokenizer()
    cfg = tf.DeepseekV2Config(
        vocab_size=len(tok),
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=48,
        moe_intermediate_size=24,
        n_routed_experts=9,
        num_experts_per_tok=2,
        n_group=3,
        topk_group=2,
        topk_method="group_limited_greedy",
        routed_scaling_factor=1.7,
        n_shared_experts=1,
        first_k_dense_replace=1,
        q_lora_rank=None,
        kv_lora_rank=16,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=12,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    hf = random_weights(tf.AutoModelForCausalLM.from_config(cfg), seed=1)
    return Model.from_hf(hf, tok, spec=DEEPSEEK_V2, name="tiny:deepseek_v2 (user spec)")


@functools.cache
def _model(family: str) -> Model:
    return _deepseek_v2() if family == "deepseek_v2_user" else tiny_model(family)


@functools.cache
def _surgery(family: str) -> Surgery:
    return Surgery(_model(family), PROMPTS)


# ---- the independent reference: weight surgery on a float64 copy ----------------------------
class Surgery:
    """What a unit adds to the residual stream, measured by removing it from a float64 copy.

    One forward pass records every decoder layer's inputs; a surgery then reruns only the
    layer concerned on those inputs, with and without the unit."""

    def __init__(self, model: Model, prompts: list[str]) -> None:
        hf = copy.deepcopy(model.hf).double()
        hf.config._experts_implementation = "eager"  # grouped_mm has no float64 kernel
        self.m = Model.from_hf(hf, model.tokenizer, spec=model.spec, name="f64")
        self.batch = self.m.tokenize(prompts)
        self.cap = self.m.capture(self.batch)
        self.rows = torch.arange(self.batch.size)
        self.last = self.batch.positions[:, 0]
        self.calls: dict[int, tuple] = {}
        handles = [
            self.m.layer(i).register_forward_pre_hook(
                lambda mod, args, kwargs, i=i: self.calls.__setitem__(i, (args, kwargs)),
                with_kwargs=True,
            )
            for i in range(self.m.dims.n_layers)
        ]
        try:
            with torch.no_grad():
                self.m.hf(
                    input_ids=self.batch.input_ids,
                    attention_mask=self.batch.attention_mask,
                    position_ids=self.batch.position_ids,
                    use_cache=False,
                )
        finally:
            for h in handles:
                h.remove()
        self._full: dict[tuple[int, bool], torch.Tensor] = {}

    def _post_norm(self, layer: int, at_attention: bool):
        """The norm a sub-layer's output passes before it is added (post-norm families:
        OLMo-2's layout in FlexOlmo, AFMoE), or ``None``."""
        return self.m.attn_out_norm(layer) if at_attention else self.m.ffn_out_norm(layer)

    def _run(self, layer: int, at_attention: bool) -> torch.Tensor:
        args, kwargs = self.calls[layer]
        got = {}
        handle = None
        spec = self.m.spec
        post = spec.attn_out_norm if at_attention else spec.ffn_out_norm
        if post is not None:  # the sub-layer's raw output: the post-norm's input
            where = post
        elif at_attention:  # the residual after attention: the FFN input norm's input
            where = spec.ffn_in_norm
        else:
            where = None
        if where is not None:
            handle = self.m.module(layer, where).register_forward_pre_hook(
                lambda mod, a: got.__setitem__("v", a[0])
            )
        try:
            with torch.no_grad():
                out = self.m.layer(layer)(*args, **kwargs)
        finally:
            if handle is not None:
                handle.remove()
        value = got["v"] if where is not None else (out[0] if isinstance(out, tuple) else out)
        return value.reshape(self.batch.size, self.batch.seq_len, -1)[self.rows, self.last]

    def loss(self, layer: int, tensors: list[torch.Tensor], *, at_attention: bool = False):
        """What layer ``layer``'s output (or its residual after attention) loses when the
        given weight slices are zeroed, at each prompt's last token. Where the sub-layer's
        output passes a norm before it is added, the loss of that raw output goes through
        the norm frozen at the actual output's statistics (method.md, post-norm families)
        and the residual multiplier."""
        key = (layer, at_attention)
        if key not in self._full:
            self._full[key] = self._run(layer, at_attention)
        saved = [t.detach().clone() for t in tensors]
        with torch.no_grad():
            for t in tensors:
                t.zero_()
        try:
            cut = self._run(layer, at_attention)
        finally:
            with torch.no_grad():
                for t, s in zip(tensors, saved, strict=True):
                    t.copy_(s)
        delta = self._full[key] - cut
        norm = self._post_norm(layer, at_attention)
        if norm is None:
            return delta
        raw = self._full[key]
        if norm.kind == "layernorm":
            delta = delta - delta.mean(-1, keepdim=True)
            sigma = torch.sqrt(
                ((raw - raw.mean(-1, keepdim=True)) ** 2).mean(-1, keepdim=True) + norm.eps
            )
        else:
            sigma = torch.sqrt((raw**2).mean(-1, keepdim=True) + norm.eps)
        delta = delta / sigma
        if norm.weight is not None:
            delta = delta * norm.weight.double()
        return self.m.scale_residual(delta)

    def lpi(self, v: torch.Tensor, base: torch.Tensor, targets) -> np.ndarray:
        """LPI(v | base) per prompt: frozen final norm, W_U, unembedding bias, logit scale."""
        norm, h = self.m.final_norm, self.cap.final_resid[:, 0].double()

        def z(x):
            if norm.kind == "layernorm":
                sigma = torch.sqrt(
                    ((h - h.mean(-1, keepdim=True)) ** 2).mean(-1, keepdim=True) + norm.eps
                )
                y = (x - x.mean(-1, keepdim=True)) / sigma
            else:
                y = x / torch.sqrt((h**2).mean(-1, keepdim=True) + norm.eps)
            if norm.weight is not None:
                y = y * norm.weight.double()
            if norm.bias is not None:
                y = y + norm.bias.double()
            out = y @ self.m.W_U.double().T
            if self.m.b_U is not None:
                out = out + self.m.b_U.double()
            return self.m.scale_logits(out)

        w = torch.as_tensor(np.asarray(targets))[:, None]
        v, base = v.detach(), base.detach()
        with_v = torch.log_softmax(z(base + v), -1).gather(1, w)[:, 0]
        without = torch.log_softmax(z(base), -1).gather(1, w)[:, 0]
        return (with_v - without).detach().numpy()


def _compare(engine: np.ndarray, ref: np.ndarray, v: torch.Tensor, what: str) -> None:
    scored = ~np.isnan(engine)
    # a prompt that did not route to the unit: zeroing it changes nothing at all
    assert (v[torch.as_tensor(~scored)] == 0).all(), f"{what}: unscored unit changed the output"
    err = np.abs(engine[scored] - ref[scored]).max(initial=0.0)
    assert err <= TOL, f"{what}: engine vs surgery {err:.2e}"


def _neurons_to_check(ds, li: int, width: int, n: int = 2) -> list[tuple[int, int]]:
    """A few neurons of every expert some prompt chose: the largest |score| and others."""
    rows = ds["score_per_prompt"].values[:, li, :, :width]  # (prompt, expert, neuron)
    out = []
    for e in range(rows.shape[1]):
        if np.isnan(rows[:, e]).all():
            continue
        mag = np.nan_to_num(np.abs(rows[:, e]), nan=0.0).max(0)
        ks = [int(mag.argmax()), rows.shape[2] // 2][:n]
        out += [(e, k) for k in dict.fromkeys(ks)]
    return out


@pytest.mark.parametrize("family", [*NEW, "deepseek_v2_user"])
def test_gated_lpi_equals_weight_surgery(family):
    model = _model(family)
    surgery = _surgery(family)
    ds = attribute(model, PROMPTS, level="neuron", per_prompt=True)
    targets = ds["target"].values
    n_checked = 0
    for li in range(model.dims.n_layers):
        base = surgery.cap.layers[li].resid_mid[:, 0].double()
        W = surgery.m.ffn_weights(li)
        for e, k in _neurons_to_check(ds, li, model.dims.d_ffn[li]):
            v = surgery.loss(li, [W.w_down[e][:, k]])
            ref = surgery.lpi(v, base, targets)
            _compare(
                ds["score_per_prompt"].values[:, li, e, k], ref, v, f"{family} L{li} e{e} n{k}"
            )
            n_checked += 1
        shared = surgery.m.shared_weights(li)
        if shared is not None:
            for k in (0, 5):
                v = surgery.loss(li, [shared[0].w_down[0][:, k]])
                ref = surgery.lpi(v, base, targets)
                got = ds["shared_score_per_prompt"].values[:, li, k]
                _compare(got, ref, v, f"{family} L{li} shared n{k}")
    assert n_checked >= 6


@pytest.mark.parametrize("family", [*NEW, "deepseek_v2_user"])
def test_expert_and_head_lpi_equal_weight_surgery(family):
    model = _model(family)
    surgery = _surgery(family)
    experts = attribute(model, PROMPTS, level="expert", per_prompt=True)
    targets = experts["target"].values
    for li, kind in enumerate(model.dims.layer_kinds):
        if kind != "moe":
            continue
        base = surgery.cap.layers[li].resid_mid[:, 0].double()
        W = surgery.m.ffn_weights(li)
        for e in range(model.dims.n_experts[li]):
            cut = [W.w_down[e]] + ([W.b_down[e]] if W.b_down is not None else [])
            v = surgery.loss(li, cut)
            ref = surgery.lpi(v, base, targets)
            _compare(experts["score_per_prompt"].values[:, li, e], ref, v, f"{family} L{li} e{e}")
    heads = attribute(model, PROMPTS, level="head", per_prompt=True)
    assert (heads["target"].values == targets).all()
    D = model.dims.head_dim
    for li in range(model.dims.n_layers):
        got = heads["score_per_prompt"].values[:, li]
        if not model.dims.has_heads(li):
            assert np.isnan(got).all()
            assert heads["mixer_kind"].values[li] == "recurrent"
            continue
        base = surgery.cap.layers[li].resid_pre[:, 0].double()
        W_O = surgery.m.W_O(li)
        for h in range(model.dims.n_heads):
            v = surgery.loss(li, [W_O[:, h * D : (h + 1) * D]], at_attention=True)
            ref = surgery.lpi(v, base, targets)
            _compare(got[:, h], ref, v, f"{family} L{li} head {h}")


# ---- the description's other parts ------------------------------------------------------------
def test_a_user_written_spec_passes_every_identity():
    model = _model("deepseek_v2_user")
    assert model.dims.layer_kinds == ("dense", "moe", "moe")
    report = check_model(model)
    assert report.passed, [(r.identity, r.max_abs_error) for r in report.results]
    assert report["routing"].max_abs_error == 0.0
    # the router module itself, on random inputs: bit for bit
    router = model.module(1, "mlp.gate")
    x = torch.randn(64, model.dims.d_model, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits, weights, index = router(x)
    got_w, got_i = route(logits, model.routing_rule(1), k=model.dims.top_k[1])
    assert torch.equal(got_i, index) and torch.equal(got_w, weights)


@pytest.mark.parametrize("family", NEW)
def test_capture_is_exact_under_transformers_default_experts_dispatch(family):
    """The capture recomputes the chosen experts' neurons from the weights, so it needs no
    particular experts implementation: transformers' default (grouped_mm) passes too."""
    hf = copy.deepcopy(_model(family).hf)
    hf.config._experts_implementation = "grouped_mm"
    model = Model.from_hf(hf, tiny_tokenizer(), name=family)
    assert model.experts_implementation == "grouped_mm"
    assert check_model(model).passed


def test_dense_prefix_layers_are_dense():
    model = _model("deepseek_v3")
    assert model.dims.layer_kinds == ("dense", "moe", "moe")
    cap = model.capture(PROMPTS[:1])
    dense = cap.layers[0]
    assert dense.kind == "dense" and dense.router_logits is None and dense.selection_scores is None
    assert dense.acts.shape[2] == 1 and torch.equal(
        dense.expert_gate, torch.ones_like(dense.expert_gate)
    )
    moe = cap.layers[1]
    assert moe.selection_scores is not None and moe.expert_weight is not None
    # a spec whose schedule calls a router-holding layer dense is refused at load, by layer
    import dataclasses

    wrong = dataclasses.replace(
        model.spec, moe=dataclasses.replace(model.spec.moe, layers=LayerSchedule(start=2))
    )
    with pytest.raises(SpecMismatchError, match="layer 1 dense, but it holds a router"):
        Model.from_hf(model.hf, tiny_tokenizer(), spec=wrong)


def test_the_capture_keeps_logits_selection_scores_and_weights_apart():
    model = _model("deepseek_v3")
    lc = model.capture(PROMPTS).layers[2]
    bias = model.selection_bias(2)
    torch.testing.assert_close(lc.selection_scores, torch.sigmoid(lc.router_logits) + bias)
    chosen = lc.selection_scores.gather(-1, lc.expert_idx)
    unbiased = torch.sigmoid(lc.router_logits).gather(-1, lc.expert_idx)
    rule = model.routing_rule(2)
    want = unbiased / (unbiased.sum(-1, keepdim=True) + 1e-20) * rule.scale
    torch.testing.assert_close(lc.expert_weight, want, atol=1e-6, rtol=0)
    assert not torch.allclose(chosen, unbiased)  # the bias is there, and not in the weights
    # Llama-4: the weight scales the expert's input, so the gate on its output is 1
    ll = _model("llama4").capture(PROMPTS).layers[1]
    assert torch.equal(ll.expert_gate, torch.ones_like(ll.expert_gate))
    torch.testing.assert_close(
        ll.expert_weight, torch.sigmoid(ll.router_logits.gather(-1, ll.expert_idx))
    )


def test_hybrid_layers_without_heads():
    model = _model("jamba")
    assert model.dims.mixer_kinds == ("recurrent", "attention", "recurrent", "attention")
    assert model.dims.attention_layers == (1, 3)
    cap = model.capture(PROMPTS[:2])
    assert cap.layers[0].heads.shape[2] == 0 and cap.layers[0].mixer == "recurrent"
    assert cap.layers[1].heads.shape[2] == model.dims.n_heads
    with pytest.raises(InvalidInputError, match="layer 0 has no attention heads"):
        model.W_O(0)


# ---- TransformerLens: where its bridge reaches the family, else refused before weights ----------
TL_OK = ("glm4_moe", "gpt_oss", "glm4_moe_lite", "minimax_m2", "lfm2_moe")
TL_REFUSED = {
    "deepseek_v3": "no hook on mlp.gate",
    "llama4": "returns table, logits",
    "granitemoe": "does not match this transformers version's router",
    "granitemoeshared": "Unsupported architecture",
    "jamba": "no hook on feed_forward.router",
    "phimoe": "Unsupported architecture",
    "deepseek_v2": "no hook on mlp.gate",
    "dots1": "Unsupported architecture",
    "ernie4_5_moe": "no hook on mlp.gate",
    "hunyuan_v1_moe": "Unsupported architecture",
    "flex_olmo": "no hook on mlp.gate",
    "afmoe": "no hook on mlp.router",
    "exaone_moe": "Unsupported architecture",
}
#: families whose bridge cannot boot on a weightless copy (Mamba-2): refused when they load
TL_REFUSED_AT_LOAD = {"granitemoehybrid": "does not match this transformers version's router"}


@pytest.mark.parametrize("family", TL_OK)
def test_transformerlens_runs_the_families_its_bridge_reaches(family):
    pytest.importorskip("transformer_lens")
    tl = mechmoe.load(f"tiny:{family}", backend="transformerlens")
    assert check_model(tl).passed
    a = _model(family).capture(PROMPTS, positions="all")
    b = tl.capture(PROMPTS, positions="all")
    real = a.batch.valid  # padding rows differ between attention kernels
    for la, lb in zip(a.layers, b.layers, strict=True):
        assert torch.equal(la.expert_idx[real], lb.expert_idx[real])
        torch.testing.assert_close(la.acts[real], lb.acts[real], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", sorted(TL_REFUSED))
def test_transformerlens_refuses_the_others_before_reading_weights(family, tmp_path, monkeypatch):
    pytest.importorskip("transformer_lens")
    folder = save_tiny(family, tmp_path / family)

    def no_weights(*args, **kwargs):
        raise AssertionError("weights were read")

    monkeypatch.setattr(tf.AutoModelForCausalLM, "from_pretrained", no_weights)
    with pytest.raises(MechmoeError, match=TL_REFUSED[family]) as err:
        mechmoe.load(str(folder), backend="transformerlens")
    assert "use backend='nnsight'" in str(err.value)


@pytest.mark.parametrize("family", sorted(TL_REFUSED_AT_LOAD))
def test_transformerlens_refuses_at_load_where_a_weightless_check_cannot_decide(family):
    pytest.importorskip("transformer_lens")
    from mechmoe.zoo.tiny import tiny_config

    spec = _model(family).spec
    assert not Model.check_backend(
        tiny_config(family), spec, name=family, backend="transformerlens"
    )
    with pytest.raises(MechmoeError, match=TL_REFUSED_AT_LOAD[family]) as err:
        mechmoe.load(f"tiny:{family}", backend="transformerlens")
    assert "use backend='nnsight'" in str(err.value)


@pytest.mark.parametrize("family", ["llama4", "gpt_oss", "deepseek_v3"])
def test_coefficients_are_what_multiplies_each_down_column(family):
    """FFNWeights.coefficients (for edits that scale neurons) equals the capture's
    expert_gate · acts, wherever the family applies its routing weight."""
    model = _model(family)
    cap = model.capture(PROMPTS)
    li = model.dims.layer_kinds.index("moe")
    lc = cap.layers[li]
    W = model.ffn_weights(li)
    x = lc.ffn_in[:, 0]
    for s in range(lc.expert_idx.shape[-1]):
        for b in range(x.shape[0]):
            e = int(lc.expert_idx[b, 0, s])
            got = W.coefficients(x[b : b + 1], e, lc.expert_weight[b, 0, s : s + 1])
            want = lc.expert_gate[b, 0, s] * lc.acts[b, 0, s]
            torch.testing.assert_close(got[0], want, atol=1e-6, rtol=1e-6)


class _AddToExperts:
    """An edit at the experts_out site that adds a fixed vector to the routed sum."""

    sites = frozenset({"experts_out"})
    needs = frozenset()

    def __init__(self, layer: int, delta: torch.Tensor) -> None:
        self.layer, self.delta = layer, delta

    def validate(self, model) -> None:
        pass

    def apply(self, site, layer, value, ctx):
        return value + self.delta.to(value.dtype) if layer == self.layer else None


@pytest.mark.parametrize("family", ["llama4", "deepseek_v3", "gpt_oss"])
def test_the_experts_out_site_edits_the_routed_sum(family):
    """Llama-4's experts return every expert's output stacked for the block to sum: an
    edit there still sees, and changes, the routed sum alone."""
    model = _model(family)
    li = model.dims.layer_kinds.index("moe")
    delta = torch.linspace(-1, 1, model.dims.d_model)
    base = model.capture(PROMPTS)
    edited = model.capture(PROMPTS, interventions=_AddToExperts(li, delta))
    change = edited.layers[li].ffn_raw - base.layers[li].ffn_raw
    torch.testing.assert_close(change, delta.expand_as(change), atol=1e-5, rtol=0)
