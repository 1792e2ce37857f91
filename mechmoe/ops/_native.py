"""The compiled exp-accumulate kernel of the exact path, and its torch fallback switch.

``_lpi_native.c`` (beside this file) is compiled on first use with the platform's C
compiler (``$CC``, else the compiler Python was built with, else ``cc``), for this CPU
(``-march=native``), into the cache (``$MECHMOE_CACHE/kernels``, see
:func:`mechmoe.core.cache.cache_root`), and loaded with :mod:`ctypes`. The file name
carries a hash of the source, the flags, the compiler's version and the CPU's feature
flags, so a changed kernel, compiler or machine builds a new one, and ends in the
SHA-256 of the library's own content, recorded when it was built. Compilation writes a
temporary file, test-loads it in a child process (it must load and sum two known terms
right) and renames it into place, so two processes building at once cannot load a
half-written library. Before every load the content is checked against that hash: a
damaged library (truncated, garbage) would kill the process outright (SIGBUS) when
mapped, so it is removed and rebuilt instead, with one line saying so.

Where no compiler exists, compilation fails, the tensors are not fp32 on the CPU, or
``MECHMOE_NATIVE=0`` is set, callers use the torch path (three eager ops per block)
instead; :func:`status` says which and why. Both compute the same sums (tested).

Threads: ctypes releases the GIL for the call, so :func:`shifted_sums` runs disjoint
direction ranges on ``torch.get_num_threads()`` threads.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import sysconfig
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

from mechmoe.core.cache import cache_root, file_digest, note_rebuild

SOURCE = Path(__file__).with_name("_lpi_native.c")
#: Optimisation flags; the two ``-fno-…`` let the compiler vectorise the kernel's
#: clamps and floor without assuming anything else (no ``-ffast-math``).
FLAGS = ("-O3", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd", "-fPIC", "-shared")
#: Tried in order: the first that builds is used.
ARCH_FLAGS = (("-march=native", "-mprefer-vector-width=512"), ("-march=native",), ())

_lock = threading.Lock()
_state: dict[str, object] = {}


def _compiler() -> list[str] | None:
    for cand in (os.environ.get("CC"), sysconfig.get_config_var("CC"), "cc", "gcc", "clang"):
        if not cand:
            continue
        argv = shlex.split(str(cand))
        if argv and shutil.which(argv[0]):
            return argv
    return None


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _version_of(cc: list[str]) -> str:
    try:
        out = subprocess.run([*cc, "--version"], capture_output=True, text=True, timeout=30)
        return out.stdout.splitlines()[0] if out.stdout else ""
    except (OSError, subprocess.SubprocessError):
        return ""


#: Checks a freshly built library in a child process: it loads, reports its version and
#: sums two known terms right. Run before the library is renamed into the cache, so a
#: file that would crash the loading process (a bad build, a full disk) never gets there.
_PROBE = """
import ctypes, math, sys
h = ctypes.CDLL(sys.argv[1])
assert h.lpi_native_version() == %d
F, D, I = ctypes.c_float * 2, ctypes.c_double * 1, ctypes.c_int64 * 1
out = D(0.0)
h.lpi_pair_sums(F(0.5, -0.25), F(math.log(0.25), math.log(0.75)), I(0), I(0), F(1.0, 0.0),
                F(0.0, 0.0), out, ctypes.c_int64(2), ctypes.c_int64(0), ctypes.c_int64(1))
want = 0.25 * math.exp(0.5) + 0.75 * math.exp(-0.25)
assert abs(out[0] - want) < 1e-5 * want, out[0]
"""
#: The kernel's ABI version (``lpi_native_version`` in the C source).
_VERSION = 2


def _cache_key(src: bytes, flags: list[str], version: str) -> str:
    return hashlib.sha256(
        b"\0".join(
            [
                src,
                " ".join(flags).encode(),
                version.encode(),
                _cpu_flags().encode(),
                platform.machine().encode(),
            ]
        )
    ).hexdigest()[:16]


def _cached(folder: Path, key: str) -> Path | None:
    """The verified library of ``key`` in the cache, or ``None``.

    A library's file name ends in the SHA-256 of its content, recorded when it was built
    (``lpi-KEY-SHA.so``). One whose content no longer matches its name (truncated,
    overwritten, garbage) is never loaded: mapping a truncated shared object kills the
    process with SIGBUS. It is removed, and the caller rebuilds it, saying so in one line.
    """
    found = None
    for lib in sorted(folder.glob(f"lpi-{key}-*.so")):
        expected = lib.stem.rsplit("-", 1)[-1]
        try:
            actual = file_digest(lib)[: len(expected)]
        except OSError as exc:
            actual = f"unreadable: {exc.strerror}"
        if actual == expected and len(expected) == 16:
            found = found or lib
            continue
        note_rebuild("attribution kernel", lib, "its content does not match its hash")
        with contextlib.suppress(OSError):
            lib.unlink()
    return found


def _compile(cc: list[str], flags: list[str], folder: Path, key: str) -> Path | str:
    """Build, test-load in a child process and rename into the cache; the path or an error."""
    tmp = folder / f".lpi-{key}.{os.getpid()}.{threading.get_ident()}.tmp"
    cmd = [*cc, *flags, str(SOURCE), "-o", str(tmp)]
    try:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as exc:
            return str(exc)
        if proc.returncode != 0 or not tmp.exists():
            return proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"
        try:
            probe = subprocess.run(
                [sys.executable, "-c", _PROBE % _VERSION, str(tmp)],
                capture_output=True,
                text=True,
                timeout=120,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            return f"test load: {exc}"
        if probe.returncode != 0:
            last = probe.stderr.strip().splitlines()[-1:] or [f"exit {probe.returncode}"]
            return f"test load failed: {last[0]}"
        lib = folder / f"lpi-{key}-{file_digest(tmp)[:16]}.so"
        os.replace(tmp, lib)
        return lib
    finally:
        tmp.unlink(missing_ok=True)


def _build(cc: list[str]) -> tuple[ctypes.CDLL | None, str]:
    src = SOURCE.read_bytes()
    version = _version_of(cc)
    folder = cache_root() / "kernels"
    errors = []
    for arch in ARCH_FLAGS:
        flags = [*FLAGS, *arch]
        key = _cache_key(src, flags, version)
        lib = _cached(folder, key) if folder.is_dir() else None
        if lib is None:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                return None, f"cannot create the kernel cache {folder}: {exc.strerror}"
            built = _compile(cc, flags, folder, key)
            if isinstance(built, str):
                errors.append(built)
                continue
            lib = built
        try:
            handle = ctypes.CDLL(str(lib))
            if handle.lpi_native_version() != _VERSION:
                raise OSError("kernel version mismatch")
        except (OSError, AttributeError) as exc:
            errors.append(str(exc))
            continue
        f = handle.lpi_shifted_sums
        f.restype = None
        f.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 5
        f = handle.lpi_pair_sums
        f.restype = None
        f.argtypes = [ctypes.c_void_p] * 7 + [ctypes.c_int64] * 3
        return handle, f"native ({cc[0]}, {' '.join(arch) or 'generic'}; {lib})"
    return None, "torch (the C kernel did not build: " + "; ".join(errors)[-300:] + ")"


def library() -> ctypes.CDLL | None:
    """The loaded kernel library, building it on first use; ``None`` if unavailable."""
    with _lock:
        if "lib" not in _state:
            if os.environ.get("MECHMOE_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
                _state["lib"], _state["status"] = None, "torch (MECHMOE_NATIVE=0)"
            else:
                cc = _compiler()
                if cc is None:
                    _state["lib"], _state["status"] = None, "torch (no C compiler found)"
                else:
                    _state["lib"], _state["status"] = _build(cc)
        return _state["lib"]  # type: ignore[return-value]


def status() -> str:
    """Which exp-accumulate kernel the exact path uses here, and why."""
    library()
    return str(_state["status"])


def reset() -> None:
    """Forget the loaded state (tests switch ``MECHMOE_NATIVE`` or the compiler)."""
    with _lock:
        _state.clear()


def usable(*tensors: Tensor) -> bool:
    """Whether the native kernel can take these tensors (fp32, CPU) and is available."""
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return False
    return library() is not None


_pool: ThreadPoolExecutor | None = None


def _executor(n: int) -> ThreadPoolExecutor:
    global _pool
    if _pool is None or _pool._max_workers != n:  # noqa: SLF001 - resize on a changed thread count
        _pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="mechmoe-lpi")
    return _pool


def shifted_sums(P: Tensor, logp: Tensor, c: Tensor, shift: Tensor) -> Tensor:
    """``Σ_v exp(logp[b, v] + c[b, j] · P[j, v] − shift[b, j])`` as float64 ``(n, k)``.

    ``P`` is ``(k, vocab)``, ``logp`` ``(n, vocab)``, ``c`` and ``shift`` ``(n, k)``, all
    fp32 on the CPU; :func:`usable` must have said yes.
    """
    lib = library()
    assert lib is not None
    P, logp, c, shift = (t.contiguous() for t in (P, logp, c, shift))
    n, k = c.shape
    vocab = P.shape[1]
    out = torch.zeros((n, k), dtype=torch.float64)
    threads = max(1, min(torch.get_num_threads(), -(-k // 8)))
    # Direction ranges in multiples of the kernel's tile, one per thread.
    step = -(-k // threads)
    step = -(-step // 8) * 8
    ptrs = [ctypes.c_void_p(t.data_ptr()) for t in (P, logp, c, shift, out)]

    def run(j0: int) -> None:
        lib.lpi_shifted_sums(*ptrs, n, k, vocab, j0, min(k, j0 + step))

    starts = list(range(0, k, step))
    if len(starts) == 1:
        run(0)
    else:
        for fut in [_executor(threads).submit(run, j0) for j0 in starts]:
            fut.result()
    return out


def pair_sums(
    P: Tensor, logp: Tensor, rows: Tensor, dirs: Tensor, c: Tensor, shift: Tensor
) -> Tensor:
    """``Σ_v exp(logp[rows[i], v] + c[i] · P[dirs[i], v] − shift[i])`` as float64 ``(m,)``.

    The exact sums of listed (prompt, direction) pairs; :func:`usable` must have said yes.
    """
    lib = library()
    assert lib is not None
    P, logp, c, shift = (t.contiguous() for t in (P, logp, c, shift))
    rows, dirs = rows.to(torch.int64).contiguous(), dirs.to(torch.int64).contiguous()
    m = c.numel()
    vocab = P.shape[1]
    out = torch.empty(m, dtype=torch.float64)
    ptrs = [ctypes.c_void_p(t.data_ptr()) for t in (P, logp, rows, dirs, c, shift, out)]
    threads = max(1, min(torch.get_num_threads(), m))
    step = -(-m // threads) if m else 1

    def run(i0: int) -> None:
        lib.lpi_pair_sums(*ptrs, vocab, i0, min(m, i0 + step))

    starts = list(range(0, m, step))
    if len(starts) <= 1:
        if m:
            run(0)
    else:
        for fut in [_executor(threads).submit(run, i0) for i0 in starts]:
            fut.result()
    return out


__all__ = ["library", "pair_sums", "reset", "shifted_sums", "status", "usable"]
