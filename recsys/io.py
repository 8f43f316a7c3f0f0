"""Safe file writes for everything the project stores: atomic writes (content goes to a temporary file
beside the destination and replaces it with ``os.replace`` only once complete and checked, so a killed run
never leaves a half-written file that a later run would trust) and an exclusive file lock (so concurrent
processes, e.g. DDP ranks, download or parse a file once)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(dest: str | os.PathLike, check: Callable[[Path], None] | None = None) -> Iterator[BinaryIO]:
    """A binary handle whose content becomes ``dest`` when the block ends without error.

    ``check(tmp_path)`` runs on the complete temporary file before it is moved into place; if it (or
    the block) raises, the temporary file is removed and ``dest`` is left as it was.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
        if check is not None:
            check(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the file gets what a plain open() would give
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write_bytes(dest: str | os.PathLike, data: bytes) -> None:
    with atomic_file(dest) as out:
        out.write(data)


def _finite(value, where: str, dropped: list[str]):
    """``value`` without NaN or infinite floats (anywhere inside), naming what was left out."""
    if isinstance(value, float) and not math.isfinite(value):
        dropped.append(f"{where}={value}")
        return None
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            v = _finite(v, f"{where}.{k}" if where else str(k), dropped)
            if v is not None or value[k] is None:
                out[k] = v
        return out
    if isinstance(value, (list, tuple)):
        return [_finite(v, f"{where}[{i}]", dropped) for i, v in enumerate(value)]
    return value


def atomic_write_json(dest: str | os.PathLike, data: dict) -> None:
    """Strict JSON (no NaN or Infinity, which other tools refuse), written atomically.

    A value that could not be computed (a non-finite float) is left out, and the log says which and why.
    """
    dropped: list[str] = []
    clean = _finite(data, "", dropped)
    if dropped:
        log.warning("%s: left out values that could not be computed (not finite): %s", dest, ", ".join(dropped))
    atomic_write_bytes(dest, (json.dumps(clean, indent=2, sort_keys=True, allow_nan=False) + "\n").encode())


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the duration of the block."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
