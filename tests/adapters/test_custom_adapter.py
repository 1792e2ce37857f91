"""The worked example of docs/adapters.md: a new family is one spec."""

from __future__ import annotations

import transformers as tf

import mechmoe
from mechmoe.adapters import AdapterSpec, DenseMLPSpec, NormSpec, registry
from mechmoe.testing import tiny_tokenizer


def test_qwen3_dense_from_a_ten_line_spec():
    spec = AdapterSpec(
        name="qwen3",
        architectures=("Qwen3ForCausalLM",),
        norm=NormSpec(kind="rmsnorm", eps=("rms_norm_eps",)),
        dense=DenseMLPSpec(),
    )
    mechmoe.register_adapter(spec)
    try:
        tok = tiny_tokenizer()
        cfg = tf.Qwen3Config(
            vocab_size=len(tok),
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            intermediate_size=48,
            max_position_embeddings=128,
        )
        model = mechmoe.load(tf.AutoModelForCausalLM.from_config(cfg).eval(), tokenizer=tok)
        assert model.spec is spec
        assert mechmoe.check_model(model).passed
    finally:
        registry.unregister_adapter("Qwen3ForCausalLM")
