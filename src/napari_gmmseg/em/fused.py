"""The fused E-step on the CPU: every pixel read once, one compiled loop (numba).

The torch E-step (:class:`napari_gmmseg.em.estep.EStep`) runs a tile as about ten
separate operations, each reading and writing the tile's ``(K, c)`` values. This kernel
computes, per pixel and in registers, the log joint of every component, its per-pixel
maximum, ``exp``, the sum, ``log``, the responsibilities and the sufficient statistics,
in blocks of :data:`BLOCK_PIXELS` pixels so that the block's responsibilities stay in
the L1 cache while the statistics are summed. ``exp`` and ``log`` are the Cephes
single-precision polynomials (errors below 5e-7 relative and 3e-7 absolute, tested), written out
so the compiler vectorises the pixel loop (libm's functions are not vectorised).

The loop is generated for a given number of components ``K``, channels ``M``, covariance
type and mixture (with or without the per-pixel prior ``log Pi`` of the SVGMM): the
per-pixel values are then scalars the compiler keeps in vector registers. Each
generated kernel is written once as a module under :func:`kernel_dir` so numba caches
its machine code there across processes (compiling takes 3.5-5 s once per machine;
loading a cached kernel, numba's import included, ~0.7 s per process).

Statistics are summed in float32 within a block and in float64 across blocks.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import sys
import tempfile
import threading
from collections.abc import Callable
from functools import cache, lru_cache
from pathlib import Path
from types import ModuleType

import numpy as np

__all__ = ["BLOCK_PIXELS", "available", "exp_log_loop", "kernel", "kernel_dir", "prefetch"]

#: Pixels per block: the block's responsibilities ``(K, BLOCK_PIXELS)`` float32 stay in L1.
BLOCK_PIXELS = 1024

#: Environment variable naming the folder of the generated kernels (and numba's cache).
KERNEL_DIR_ENV = "NAPARI_GMMSEG_KERNEL_DIR"

# e = exp(a - mx) clamped at >= -87 (e^-87 is ~0 next to the largest term, 1): Cody-Waite
# reduction by ln 2 and the Cephes expf polynomial, 2^n built in the exponent bits. Written
# out in the loop (a numba function there, even inlined, stops its vectorisation).
_EXP = """\
x = max({a} - mx, np.float32(-87.0))
fx = np.floor(x * np.float32(1.4426950408889634) + np.float32(0.5))
x = x - fx * np.float32(0.693359375) - fx * np.float32(-2.12194440e-4)
z = x * x
y = np.float32(1.9875691500e-4)
y = y * x + np.float32(1.3981999507e-3)
y = y * x + np.float32(8.3334519073e-3)
y = y * x + np.float32(4.1665795894e-2)
y = y * x + np.float32(1.6666665459e-1)
y = y * x + np.float32(5.0000001201e-1)
{e} = (y * z + x + np.float32(1.0)) * _i2f((np.int32(fx) + np.int32(127)) << np.int32(23))
"""

# ls = log(s) for a normal float32 s > 0: exponent and mantissa from the bits, the
# Cephes logf polynomial on the mantissa reduced to [sqrt(1/2), sqrt(2)). Both templates
# assign x, y, z, fx, e, m, lo, bits: the loop that holds them must not use these names.
_LOG = """\
bits = _f2i(s)
e = np.float32(((bits >> np.int32(23)) & np.int32(0xFF)) - np.int32(126))
m = _i2f((bits & np.int32(-2139095041)) | np.int32(0x3F000000))  # sign, mantissa; 2^-1
lo = m < np.float32(0.707106781186547524)
e = e - np.float32(1.0) if lo else e
x = (m + m - np.float32(1.0)) if lo else (m - np.float32(1.0))
z = x * x
y = np.float32(7.0376836292e-2)
y = y * x - np.float32(1.1514610310e-1)
y = y * x + np.float32(1.1676998740e-1)
y = y * x - np.float32(1.2420140846e-1)
y = y * x + np.float32(1.4249322787e-1)
y = y * x - np.float32(1.6668057665e-1)
y = y * x + np.float32(2.0000714765e-1)
y = y * x - np.float32(2.4999993993e-1)
y = y * x + np.float32(3.3333331174e-1)
y = y * x * z
y += np.float32(-2.12194440e-4) * e
y += np.float32(-0.5) * z
ls = x + y + np.float32(0.693359375) * e
"""

_BITCASTS = '''\
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic


@intrinsic
def _i2f(typingctx, x):
    """float32 with the bits of int32 ``x``."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@intrinsic
def _f2i(typingctx, x):
    """int32 with the bits of float32 ``x``."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.int32(types.float32), codegen
'''


@lru_cache(maxsize=1)
def exp_log_loop() -> Callable[..., None]:
    """The kernel's own ``exp`` and ``log`` as a compiled loop, for tests and the floor.

    ``exp_log(a, out, s, log_s)`` writes ``out = exp(max(a, -87))`` and ``log_s = log(s)``
    for 1-D float32 arrays, with the same source lines as the fused kernel.
    """
    import numba

    exp_lines = _EXP.format(a="a[j]", e="out[j]").replace(" - mx", "").splitlines()
    src = "\n".join(
        [
            "import numpy as np",
            _BITCASTS,
            "def exp_log(a, out, sv, log_s):",
            "    for j in range(a.shape[0]):",
            _indent(exp_lines, 8),
            "    for j in range(sv.shape[0]):",
            "        s = sv[j]",
            _indent(_LOG.splitlines(), 8),
            "        log_s[j] = ls",
        ]
    )
    namespace: dict[str, object] = {}
    exec(compile(src, "<napari_gmmseg.em.fused.exp_log>", "exec"), namespace)  # our own text
    return numba.njit(fastmath=True, nogil=True, error_model="numpy")(namespace["exp_log"])


@lru_cache(maxsize=1)
def available() -> bool:
    """Whether numba can be imported (the fused kernel's compiler)."""
    return importlib.util.find_spec("numba") is not None


def kernel_dir() -> Path:
    """The folder of the generated kernel modules and their numba cache.

    ``$NAPARI_GMMSEG_KERNEL_DIR``, else ``$XDG_CACHE_HOME/napari-gmmseg/kernels``
    (``~/.cache`` when unset), else a folder in the system's temporary directory when
    that is not writable.
    """
    env = os.environ.get(KERNEL_DIR_ENV)
    if env:
        return Path(env)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "napari-gmmseg" / "kernels"


def _indent(lines: list[str], spaces: int) -> str:
    """``lines`` (each possibly several lines) as one block indented by ``spaces``."""
    pad = " " * spaces
    flat = [line for item in lines for line in item.splitlines()]
    return "\n".join(pad + line if line else line for line in flat)


def _log_joint_lines(k: int, m: int, covariance_type: str, svgmm: bool) -> list[str]:
    """Per-pixel ``a{k}``: the log joint of component k minus the row's bound."""
    # The constant column multiplies the valid flag, as in the torch kernel: padding
    # pixels (all features 0) get the same log joint there and here.
    lines = [f"x{d} = f{d}[b]" for d in range(m)] + ["v = fv[b]"]
    if covariance_type == "diag":
        # C_k . [x, x^2, 1]: the squares are computed here, not read from the features.
        lines += [f"q{d} = x{d} * x{d}" for d in range(m)]
        for c in range(k):
            terms = [f"c{c}_{d} * x{d}" for d in range(m)]
            terms += [f"c{c}_{m + d} * q{d}" for d in range(m)]
            lines.append(f"a{c} = " + " + ".join(terms) + f" + c{c}_{2 * m} * v")
    else:
        # -0.5 |G_k [x, 1]|^2 + const_k
        for c in range(k):
            rows = []
            for i in range(m):
                g = [f"c{c * m + i}_{j} * x{j}" for j in range(m)]
                lines.append(f"y{i} = " + " + ".join(g) + f" + c{c * m + i}_{m} * v")
                rows.append(f"y{i} * y{i}")
            lines.append(f"a{c} = h{c} - np.float32(0.5) * (" + " + ".join(rows) + ")")
    if svgmm:
        lines += [f"a{c} += lp{c}[b]" for c in range(k)]
    return lines


def _pixel_loop(k: int, m: int, covariance_type: str, svgmm: bool) -> list[str]:
    """The body of the per-pixel loop: log joint to responsibilities and NLL."""
    lines = _log_joint_lines(k, m, covariance_type, svgmm)
    lines.append("mx = a0")
    lines += [f"mx = max(mx, a{c})" for c in range(1, k)]
    for c in range(k):
        lines += _EXP.format(a=f"a{c}", e=f"e{c}").splitlines()
    lines.append("s = " + " + ".join(f"e{c}" for c in range(k)))
    lines += _LOG.splitlines()
    lines.append("lse = ls + mx + bnd")
    lines.append("ll += lse * v")
    lines.append("inv = np.float32(1.0) / s")
    lines += [f"r[{c}, b] = e{c} * inv" for c in range(k)]
    if svgmm:  # log r = a - max - log s (the shift by the bound cancels)
        lines += [f"lr[{c}, b] = a{c} - mx - ls" for c in range(k)]
    return lines


def _statistics_loops(k: int, d_rows: int) -> list[str]:
    """Sums of ``F[d] * r[k]`` over the block, K accumulators per feature row."""
    lines = []
    for d in range(d_rows):
        fd = "fv" if d == d_rows - 1 else f"f{d}"
        lines += [f"t{c} = np.float32(0.0)" for c in range(k)]
        lines += ["for b in range(width):", f"    u = {fd}[b]"]
        lines += [f"    t{c} += u * r[{c}, b]" for c in range(k)]
        lines += [f"st[si - s0, {d}, {c}] += t{c}" for c in range(k)]
    return lines


def _block_lines(k: int, m: int, covariance_type: str, svgmm: bool, d_rows: int) -> list[str]:
    """One block of pixels ``n0:n0 + width``: pixel loop, statistics, outputs.

    Every array is indexed through a view starting at the block, by ``b`` from 0: a
    signed index the compiler cannot prove non-negative gets a wrap-around check per
    load, which stops the vectorisation."""
    views = [f"f{d} = fs[{d}, n0:n1]" for d in range(d_rows - 1)] + ["fv = fs[VALID, n0:n1]"]
    if svgmm:
        views += [f"lp{c} = lp[{c}, n0:n1]" for c in range(k)]
    lines = ["n1 = min(n_stop, n0 + BLOCK)", "width = n1 - n0", *views]
    lines += ["ll = np.float32(0.0)", "for b in range(width):"]
    lines += [_indent(_pixel_loop(k, m, covariance_type, svgmm), 4), "llacc += ll"]
    lines += ["if want_stats:", _indent(_statistics_loops(k, d_rows), 4)]
    lines += [
        "if write_resp and upd[si]:",
        f"    for c in range({k}):",
        "        out = resp[si, c, n0:n1]",
        "        for b in range(width):",
        "            out[b] = r[c, b] * fv[b]",
    ]
    if svgmm:
        lines += ["if write_log_r and upd[si]:"]
        lines += [f"    for b in range(width):\n        lp{c}[b] = lr[{c}, b]" for c in range(k)]
    return lines


def kernel_source(k: int, m: int, covariance_type: str, svgmm: bool) -> str:
    """Python source of the fused kernel for ``K``, ``M``, the covariance type, the mixture.

    The kernel ``estep(f, coef, const, bound, s0, s1, n_start, n_stop, log_pi, upd, resp,
    want_stats, write_log_r, write_resp)`` processes rows ``s0:s1`` and pixels
    ``n_start:n_stop`` of the features ``f`` ``(S, D, N)`` float32 (C order): ``coef``,
    ``const`` and ``bound`` as :meth:`EStep.terms` returns them, ``log_pi`` ``(S, K, N)``
    (SVGMM; rows with ``upd`` get ``log r`` when ``write_log_r``), ``resp`` ``(S, K, N)``
    (rows with ``upd`` get ``r`` when ``write_resp``). It returns the tile's float64
    log-likelihood per row ``(s1 - s0,)`` and statistics ``(s1 - s0, D, K)``.
    """
    d_rows = _feature_rows(m, covariance_type)
    n_coef_rows = k if covariance_type == "diag" else k * m
    n_coef_cols = 2 * m + 1 if covariance_type == "diag" else m + 1
    coefs = [
        f"c{i}_{j} = coef[si, {i}, {j}]" for i in range(n_coef_rows) for j in range(n_coef_cols)
    ]
    if covariance_type == "full":
        coefs += [f"h{c} = const[si, {c}, 0]" for c in range(k)]
    lp = ["lp = log_pi[si]"] if svgmm else []
    block = _block_lines(k, m, covariance_type, svgmm, d_rows)
    body = [
        "def estep(f, coef, const, bound, s0, s1, n_start, n_stop, log_pi, upd, resp,",
        "          want_stats, write_log_r, write_resp):",
        f"    r = np.empty(({k}, BLOCK), np.float32)",
        f"    lr = np.empty(({k if svgmm else 1}, BLOCK), np.float32)",
        "    ll_out = np.zeros(s1 - s0)",
        f"    st = np.zeros((s1 - s0, {d_rows}, {k}))",
        "    for si in range(s0, s1):",
        "        fs = f[si]",
        "        bnd = bound[si]",
        _indent(coefs + lp, 8),
        "        llacc = 0.0",
        "        for n0 in range(n_start, n_stop, BLOCK):",
        _indent(block, 12),
        "        ll_out[si - s0] = llacc",
        "    return ll_out, st",
    ]
    header = [
        f'"""Generated by napari_gmmseg.em.fused: K={k}, M={m}, {covariance_type}, '
        f'{"SVGMM" if svgmm else "GMM"}."""',
        "import numba",
        "import numpy as np",
        "",
        _BITCASTS,
        f"BLOCK = {BLOCK_PIXELS}",
        f"VALID = {d_rows - 1}",
        "",
        "",
        "@numba.njit(fastmath=True, nogil=True, cache=True, boundscheck=False, "
        'error_model="numpy")',
    ]
    return _hoist_constants("\n".join(header + body) + "\n")


def _feature_rows(m: int, covariance_type: str) -> int:
    """``D``, the rows of :func:`napari_gmmseg.em.estep.features`: x, second moments, valid."""
    return m + (m if covariance_type == "diag" else m * (m + 1) // 2) + 1


def _hoist_constants(source: str) -> str:
    """``np.float32(c)``/``np.int32(c)`` literals as module constants: numba types a
    global constant once, a call per occurrence (which triples the compile time)."""
    names: dict[str, str] = {}

    def name_of(match: re.Match[str]) -> str:
        lit = match.group(0)
        if lit not in names:
            names[lit] = f"_C{len(names)}"
        return names[lit]

    body = re.sub(r"np\.(?:float32|int32)\(-?[0-9][0-9a-fA-FxX.eE+-]*\)", name_of, source)
    consts = "\n".join(f"{n} = {lit}" for lit, n in names.items())
    head, sep, rest = body.partition("\n\n\n@numba.njit")
    return f"{head}\n{consts}{sep}{rest}"


def _write_module(source: str, name: str) -> Path:
    """``source`` as ``name.py`` in :func:`kernel_dir` (atomic; the temp dir if unwritable)."""
    for folder in (kernel_dir(), Path(tempfile.gettempdir()) / "napari-gmmseg-kernels"):
        path = folder / f"{name}.py"
        try:
            if path.is_file() and path.read_text(encoding="utf-8") == source:
                return path
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        except OSError:
            continue
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(source)
            os.replace(tmp, path)
            return path
        except OSError:
            Path(tmp).unlink(missing_ok=True)
    raise OSError("no writable folder for the fused E-step kernels")


_KERNEL_LOCK = threading.Lock()


def kernel(k: int, m: int, covariance_type: str, svgmm: bool) -> Callable[..., tuple]:
    """The compiled fused kernel (see :func:`kernel_source`); compiled or loaded once per
    process (thread-safe: :func:`prefetch` may be loading it in the background)."""
    with _KERNEL_LOCK:
        return _kernel(k, m, covariance_type, svgmm)


def prefetch(k: int, m: int, covariance_type: str, svgmm: bool) -> threading.Thread:
    """Import numba and load (or compile) a kernel's machine code in a background thread,
    while the caller packs the pixels: ~0.7 s of a fresh process's start-up (a first
    compile, seconds) overlapped. A later :func:`kernel` call waits for it."""

    def load() -> None:
        fn = kernel(k, m, covariance_type, svgmm)
        f3 = np.zeros((1, _feature_rows(m, covariance_type), 1), dtype=np.float32)
        none = np.zeros((1, 1, 1), dtype=np.float32)
        # zero pixels, the argument types of EStep's calls: the specialisation is loaded
        fn(f3, none, none, np.zeros(1, np.float32), 0, 0, 0, 0, none, np.ones(1, np.bool_),
           none, True, False, False)  # fmt: skip

    thread = threading.Thread(target=load, name="gmmseg-kernel-prefetch", daemon=True)
    thread.start()
    return thread


@cache
def _kernel(k: int, m: int, covariance_type: str, svgmm: bool) -> Callable[..., tuple]:
    source = kernel_source(k, m, covariance_type, svgmm)
    digest = hashlib.sha256(source.encode()).hexdigest()[:12]
    name = f"estep_{covariance_type}_k{k}_m{m}_{'sv' if svgmm else 'g'}_{digest}"
    path = _write_module(source, name)
    spec = importlib.util.spec_from_file_location(f"napari_gmmseg_kernels.{name}", path)
    assert spec is not None and spec.loader is not None
    module: ModuleType = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.estep
