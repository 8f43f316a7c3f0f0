"""Native CPU kernels of the row-sparse gradient step, compiled on first use and called through ctypes.

A step of the gradient solver on CPU is otherwise a chain of torch index operations over the batch's rows
(``index_select``, ``index_add_``, ``index_copy_`` and a dozen element-wise passes), each touching the rows again;
on a wide table (hundreds of thousands of rows, megabytes beyond the cache) every pass misses the cache again. The
kernels in ``native.c`` do each part in one pass that prefetches the rows ahead:

- :func:`unique_rows`: the batch's distinct rows (sorted) and each rating's position among them, by a bitmap;
- :func:`dot_rows`: the batch's dot products p_uᵀq_i straight from the tables, with Σ‖p_u‖² and Σ‖q_i‖²;
- :func:`accumulate_rows`: each distinct row's summed gradient d·q + a·p (and d·p + a·q), no B × k temporaries;
- :func:`adam_rows`: :class:`recsys.solvers.sparse.RowAdam`'s update of those rows, in place.

The math is the torch path's (tests hold them equal to float tolerance; only the order of additions differs). They
serve float32 CPU tensors; CUDA tensors, other dtypes and machines without a C compiler take the torch path. The
library is built once per source version with the machine's C compiler (``$CC``, else ``cc``/``gcc``/``clang``)
into ``$RECSYS_NATIVE_CACHE`` (default ``~/.cache/recsys/native``), written atomically (DDP ranks building at once
are safe), and loaded with ctypes; no build step at install time. ``RECSYS_NATIVE=0`` turns the kernels off;
a failed build logs one warning and falls back. Built with OpenMP against torch's own runtime, the kernels split
their work over torch's threads, each thread owning whole rows (the serial result exactly); :class:`RowAdam
<recsys.solvers.sparse.RowAdam>` keeps the tables it updates in huge pages (:func:`huge_page_zeros`).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import mmap
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from recsys.io import atomic_write_bytes

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("native.c")
FLAGS = ("-O3", "-fno-math-errno", "-shared", "-fPIC")  # -O3 vectorizes the row loops; sqrtf needs no errno
OFF = ("0", "false", "off", "no")

_state: dict = {}


def _cache_dir() -> Path:
    return Path(os.environ.get("RECSYS_NATIVE_CACHE", "~/.cache/recsys/native")).expanduser()


def _openmp_flags() -> tuple[str, ...]:
    """Flags that build the kernels against torch's own OpenMP runtime (its threads, its ``set_num_threads``);
    none where torch ships no libgomp (then the kernels are serial)."""
    lib = Path(torch.__file__).with_name("lib")
    if not (lib / "libgomp.so.1").exists():
        return ()
    return ("-fopenmp", f"-L{lib}", f"-Wl,-rpath,{lib}", "-l:libgomp.so.1")


def _compiler() -> str:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    raise RuntimeError("no C compiler found (set $CC, or install cc, gcc or clang)")


def build() -> Path:
    """The compiled library's path, building it first where this source version has none yet: with OpenMP
    (:func:`_openmp_flags`) where the compiler can, else serial (kept: not tried again)."""
    source = SOURCE.read_bytes()
    builds = []
    for flags in dict.fromkeys(((*FLAGS, *_openmp_flags()), FLAGS)):  # (no libgomp: the serial build only)
        key = hashlib.sha256(source + " ".join(flags).encode() + platform.machine().encode()).hexdigest()[:16]
        builds.append((flags, _cache_dir() / f"rows-{key}.so"))
    for _, path in builds:
        if path.exists():
            return path
    errors = []
    for flags, path in builds:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / path.name
            done = subprocess.run([_compiler(), *flags, "-o", str(out), str(SOURCE)], capture_output=True, text=True)
            if done.returncode == 0:
                atomic_write_bytes(path, out.read_bytes())  # another DDP rank sees no file or the whole library
                return path
            errors.append(done.stderr.strip()[-1000:])
    raise RuntimeError(f"compiling {SOURCE} failed: {errors[-1]}")


def _load() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(build()))
    p, i64, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
    lib.rows_dot.argtypes = [p, i64, p, i64, p, p, p, p, i64, i64, p, p]
    lib.rows_accumulate.argtypes = [p, i64, p, i64, p, p, p, p, p, i64, i64, f32, f32, p, i64, p, i64, p, p, p, p]
    lib.rows_adam.argtypes = [p, i64, p, p, p, p, i64, i64, f32, f32, f32, f32, f32]
    lib.rows_unique.argtypes = [p, i64, i64, p, p, p, p, p]
    for fn in (lib.rows_dot, lib.rows_accumulate, lib.rows_adam, lib.rows_unique):
        fn.restype = i64  # -1, or the position of the first index out of its table's range
    lib.rows_threads.argtypes, lib.rows_threads.restype = [], i64
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded kernels, or None where they are off (``RECSYS_NATIVE=0``) or cannot be built (one warning)."""
    if os.environ.get("RECSYS_NATIVE", "1").lower() in OFF:
        return None
    if "lib" not in _state:
        try:
            _state["lib"] = _load()
        except Exception as err:  # noqa: BLE001 - any failure to build or load means the torch path
            log.warning("native CPU kernels unavailable, using the torch path (slower on wide tables): %s", err)
            _state["lib"] = None
    return _state["lib"]


def threads() -> int:
    """Threads the kernels split their work over (torch's ``get_num_threads``: the same OpenMP runtime); 0 where
    they were built serial, or are off."""
    lib = library()
    return int(lib.rows_threads()) if lib is not None else 0


def serves(tables: tuple[torch.Tensor, ...] = (), indices: tuple[torch.Tensor, ...] = ()) -> bool:
    """Whether the kernels take these tensors: every one on CPU and contiguous, the tables (and states) float32,
    the indices int64, and the library available. (Called a few times a step: plain loops, no generators.)"""
    for t in tables:
        if t.dtype is not torch.float32 or not t.is_cpu or not t.is_contiguous():
            return False
    for t in indices:
        if t.dtype is not torch.int64 or not t.is_cpu or not t.is_contiguous():
            return False
    return library() is not None


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()  # ctypes takes the address as an int for a c_void_p argument


def _checked(bad: int, what: str, *indices: torch.Tensor) -> None:
    """The kernels check every index before touching a row; raise as torch's index operations do."""
    if bad >= 0:
        raise IndexError(f"{what}: index out of range at batch position {bad} "
                         f"(values there: {[int(t[bad]) for t in indices if bad < len(t)]})")


def unique_rows(index: torch.Tensor, n: int, bits: torch.Tensor, slot: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.unique(index, return_inverse=True)`` for indices into ``n`` rows, by a bitmap: ``bits`` holds
    ⌈n/64⌉ int64 words, all zero (and left so), ``slot`` n int64 of scratch."""
    rows, pos = torch.empty_like(index), torch.empty_like(index)
    count = torch.zeros(1, dtype=torch.int64)
    _checked(library().rows_unique(_ptr(index), len(index), n, _ptr(bits), _ptr(slot), _ptr(rows), _ptr(pos),
                                   _ptr(count)), "row", index)
    return rows[:int(count)], pos


def dot_rows(P: torch.Tensor, Q: torch.Tensor, users: torch.Tensor, items: torch.Tensor,
             biases: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, tuple[float, ...]]:
    """(p_uᵀq_i [+ b_u + b_i] for each rating, (Σ_b ‖p_u‖², Σ_b ‖q_i‖², Σ_b b_u², Σ_b b_i²)) over the batch, reading
    the rows from the tables (``biases``: the user and item bias tables, one float a row; None: no biases)."""
    score = torch.empty(len(users), dtype=P.dtype)
    sq = torch.zeros(4, dtype=torch.float64)
    bu, bi = (_ptr(b) for b in biases) if biases is not None else (None, None)
    _checked(library().rows_dot(_ptr(P), len(P), _ptr(Q), len(Q), bu, bi, _ptr(users), _ptr(items), len(users),
                                P.shape[1], _ptr(score), _ptr(sq)), "user or item", users, items)
    return score, tuple(sq.tolist())


def accumulate_rows(P: torch.Tensor, Q: torch.Tensor, users: torch.Tensor, items: torch.Tensor, d: torch.Tensor,
                    a: float, user_pos: torch.Tensor, item_pos: torch.Tensor, num_user_rows: int,
                    num_item_rows: int, biases: tuple[torch.Tensor, torch.Tensor] | None = None, a_bias: float = 0.0
                    ) -> tuple[torch.Tensor, ...]:
    """Each distinct row's summed gradient: user row ``user_pos[b]`` gets d_b·q_i + a·p_u, item row ``item_pos[b]``
    gets d_b·p_u + a·q_i (positions as :class:`recsys.solvers.sparse.RowIndex` gives them); with ``biases``, their
    rows get d_b + a_bias·b_u and d_b + a_bias·b_i. Returns the (user, item[, user bias, item bias]) gradients."""
    k = P.shape[1]
    # uninitialized: each thread zeroes the rows it owns (in its cache, not a separate pass)
    grads = [P.new_empty((num_user_rows, k)), Q.new_empty((num_item_rows, k))]
    if biases is not None:
        grads += [P.new_empty((num_user_rows, 1)), Q.new_empty((num_item_rows, 1))]
    bu, bi, gbu, gbi = (*map(_ptr, biases), *map(_ptr, grads[2:])) if biases is not None else (None,) * 4
    d = d.contiguous()
    _checked(library().rows_accumulate(_ptr(P), len(P), _ptr(Q), len(Q), bu, bi, _ptr(users), _ptr(items), _ptr(d),
                                       len(users), k, a, a_bias, _ptr(user_pos), num_user_rows, _ptr(item_pos),
                                       num_item_rows, _ptr(grads[0]), _ptr(grads[1]), gbu, gbi),
             "user, item or row position", users, items, user_pos, item_pos)
    return tuple(grads)


def adam_rows(weight: torch.Tensor, moments: torch.Tensor, steps: torch.Tensor, rows: torch.Tensor,
              grad: torch.Tensor, lr: float, betas: tuple[float, float], eps: float, weight_decay: float) -> None:
    """:class:`recsys.solvers.sparse.RowAdam`'s update of ``rows`` (distinct) in place."""
    grad = grad.contiguous()
    _checked(library().rows_adam(_ptr(weight), len(weight), _ptr(moments), _ptr(steps), _ptr(rows), _ptr(grad),
                                 len(rows), weight.numel() // max(len(weight), 1), lr, betas[0], betas[1], eps,
                                 weight_decay), "row", rows)


#: tensors smaller than this stay in torch's allocator (a huge page is 2 MB)
HUGE_PAGES_FROM = 4 << 20


def huge_page_zeros(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A zeroed CPU tensor in anonymous memory advised for transparent huge pages (``madvise(MADV_HUGEPAGE)``).

    The kernels read and write a few thousand random rows of tables of hundreds of megabytes a step: with 4 kB
    pages nearly every row is a TLB miss as well as a cache miss; with 2 MB pages the translations of a whole
    table fit the TLB (RowAdam's update of 4096 rows of a 340k × 64 table: 1.55 → 1.16 ms). Small tensors, and
    systems without THP, get ``torch.zeros``. The memory is freed with the tensor."""
    count = 1
    for size in shape:
        count *= int(size)
    nbytes = count * dtype.itemsize
    if nbytes < max(HUGE_PAGES_FROM, 1) or not hasattr(mmap, "MADV_HUGEPAGE"):
        return torch.zeros(shape, dtype=dtype)
    buffer = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # zero-filled by the kernel
    with contextlib.suppress(OSError):  # THP off ("never"): plain pages, the same tensor
        buffer.madvise(mmap.MADV_HUGEPAGE)
    return torch.frombuffer(buffer, dtype=dtype, count=count).view(shape)  # keeps the mapping alive


def in_huge_pages(t: torch.Tensor) -> torch.Tensor:
    """``t``'s values in huge-page memory (:func:`huge_page_zeros`); ``t`` itself where it is small or not on the
    CPU."""
    if t.device.type != "cpu" or t.numel() * t.element_size() < HUGE_PAGES_FROM:
        return t
    return huge_page_zeros(tuple(t.shape), t.dtype).copy_(t)


def on_huge_pages(param: torch.Tensor) -> None:
    """Move a CPU parameter's data into huge-page memory, in place of its storage."""
    param.data = in_huge_pages(param.data)
