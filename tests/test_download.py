"""download_dataset against a loopback HTTP server: offline, small, all-or-nothing."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import socket
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from detr_ft.data import download as dl
from detr_ft.data.download import download_dataset
from detr_ft.errors import UserError

TRAIN = {"images": [{"id": 1, "file_name": "a.png"}], "annotations": [], "categories": []}
TEST = {"images": [{"id": 2, "file_name": "b.png"}], "annotations": [], "categories": []}


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"", **attrs) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    for k, v in attrs.items():
        setattr(info, k, v)
    tar.addfile(info, io.BytesIO(data) if data else None)


def _tarball(prefix: str = "data/", extra=(), with_images: bool = True) -> bytes:
    """A tiny CPPE-5-like tarball; ``extra`` members (name, data, attrs) go last."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        _add(tar, f"{prefix}annotations/train.json", json.dumps(TRAIN).encode())
        _add(tar, f"{prefix}annotations/test.json", json.dumps(TEST).encode())
        if with_images:
            _add(tar, f"{prefix}images/a.png", b"\x89PNG fake a")
            _add(tar, f"{prefix}images/b.png", b"\x89PNG fake b")
        for name, data, attrs in extra:
            _add(tar, name, data, **attrs)
    return buf.getvalue()


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


class _Server:
    """Serves ``files`` (path -> bytes); records every requested path."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                if self.path == "/short":  # promises 1000 bytes, sends 10, hangs up
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    self.wfile.write(b"0123456789")
                    self.close_connection = True
                    return
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def serve(self, name: str, data: bytes) -> str:
        self.files[f"/{name}"] = data
        return self.url(f"/{name}")

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


@pytest.fixture
def work(tmp_path):
    """The parent folder of out_dir, with one bystander file in it."""
    w = tmp_path / "work"
    w.mkdir()
    (w / "keep.txt").write_text("unrelated")
    return w


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _fetch(url, out, md5, **kw):
    return download_dataset(out, url=url, md5=md5, progress=False, timeout=5, **kw)


@pytest.mark.parametrize("prefix", ["data/", "", "./"])
def test_good_tarball_unpacks_cppe5_layout(server, work, prefix):
    data = _tarball(prefix)
    out = work / "cppe5"
    got = _fetch(server.serve("d.tar.gz", data), out, _md5(data))
    assert got == out
    assert json.loads((out / "annotations" / "train.json").read_text()) == TRAIN
    assert json.loads((out / "annotations" / "test.json").read_text()) == TEST
    assert (out / "images" / "a.png").read_bytes() == b"\x89PNG fake a"
    assert (out / "images" / "b.png").read_bytes() == b"\x89PNG fake b"
    assert sorted(p.name for p in work.iterdir()) == ["cppe5", "keep.txt"]  # staging gone


def test_progress_bar_and_missing_parents(server, tmp_path, capsys):
    data = _tarball()
    out = tmp_path / "new" / "deeper" / "cppe5"
    download_dataset(out, url=server.serve("d.tar.gz", data), md5=_md5(data).upper(), timeout=5)
    assert (out / "annotations" / "train.json").is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ["cppe5"]
    bar = capsys.readouterr().err
    assert "d.tar.gz" in bar and "100%" in bar  # tqdm's bar on stderr, named after the file, to the end
    download_dataset(tmp_path / "quiet", url=server.serve("d.tar.gz", data), progress=False, timeout=5, md5=None)
    assert "d.tar.gz" not in capsys.readouterr().err


def test_wrong_checksum_leaves_nothing(server, work):
    before = _tree(work)
    with pytest.raises(UserError, match="MD5.*--data-dir"):
        _fetch(server.serve("d.tar.gz", _tarball()), work / "cppe5", "0" * 32)
    assert _tree(work) == before


def test_md5_is_checked_before_anything_is_unpacked(server, work, monkeypatch):
    """A wrong checksum stops the download before the archive is opened for extraction (a tarball
    is never read unless it is the expected file); with the right one it is opened once."""
    data = _tarball()
    opened = []
    real_open = tarfile.open
    monkeypatch.setattr(dl.tarfile, "open", lambda *a, **k: opened.append((a, k)) or real_open(*a, **k))
    with pytest.raises(UserError, match="MD5"):
        download_dataset(work / "cppe5", url=server.serve("d.tar.gz", data), md5="0" * 32, timeout=5)
    assert opened == [] and not (work / "cppe5").exists()
    download_dataset(work / "cppe5", url=server.serve("d.tar.gz", data), md5=_md5(data), timeout=5)
    assert len(opened) == 1 and (work / "cppe5" / "annotations" / "train.json").is_file()


def test_failure_removes_parents_it_created(server, work):
    with pytest.raises(UserError):
        _fetch(server.serve("d.tar.gz", _tarball()), work / "a" / "b" / "cppe5", "0" * 32)
    assert _tree(work) == ["keep.txt"]


_EVIL = [
    ("dotdot", ("data/../../evil", b"pwned", {})),
    ("absolute", ("{outside}/abs_evil", b"pwned", {})),  # an absolute path under tmp_path
    ("symlink-out", ("data/images/link", b"", {"type": tarfile.SYMTYPE, "linkname": "../../../../evil"})),
    ("symlink-abs", ("data/images/link", b"", {"type": tarfile.SYMTYPE, "linkname": "/etc/passwd"})),
    ("hardlink-out", ("data/images/hard", b"", {"type": tarfile.LNKTYPE, "linkname": "../../evil"})),
    ("device", ("data/images/dev", b"", {"type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3})),
]


@pytest.mark.parametrize("filters", [True, False], ids=["data-filter", "own-checks"])
@pytest.mark.parametrize("member", [m for _, m in _EVIL], ids=[i for i, _ in _EVIL])
def test_unsafe_member_is_refused_and_nothing_written(server, work, tmp_path, monkeypatch, member, filters):
    if filters and not dl._HAS_TAR_FILTERS:
        pytest.skip("this Python's tarfile has no extraction filters")
    monkeypatch.setattr(dl, "_HAS_TAR_FILTERS", filters)
    name, body, attrs = member
    data = _tarball(extra=[(name.format(outside=tmp_path), body, attrs)])  # good members first
    outside = _tree(tmp_path)
    with pytest.raises(UserError, match="unsafe or unreadable tarball.*--data-dir"):
        _fetch(server.serve("evil.tar.gz", data), work / "cppe5", _md5(data))
    assert _tree(tmp_path) == outside


def test_tarball_without_dataset_is_refused(server, work):
    data = _tarball(with_images=False)
    before = _tree(work)
    with pytest.raises(UserError, match="no images/ folder"):
        _fetch(server.serve("d.tar.gz", data), work / "cppe5", _md5(data))
    assert _tree(work) == before


def test_not_a_tarball_is_refused(server, work):
    before = _tree(work)
    with pytest.raises(UserError, match="unreadable tarball"):
        _fetch(server.serve("d.tar.gz", b"<html>not a tarball</html>"), work / "cppe5", None)
    assert _tree(work) == before


def test_unreachable_address_fails_fast(work):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    before = _tree(work)
    start = time.monotonic()
    with pytest.raises(UserError, match=rf"cannot reach http://127.0.0.1:{port}/x.*--url"):
        download_dataset(work / "cppe5", url=f"http://127.0.0.1:{port}/x", progress=False, timeout=2)
    assert time.monotonic() - start < 5
    assert _tree(work) == before


def test_http_404(server, work):
    before = _tree(work)
    with pytest.raises(UserError, match=r"HTTP 404.*--url"):
        _fetch(server.url("/missing.tar.gz"), work / "cppe5", None)
    assert _tree(work) == before


def test_interrupted_download(server, work):
    before = _tree(work)
    with pytest.raises(UserError, match="short|midway"):
        _fetch(server.url("/short"), work / "cppe5", None)
    assert _tree(work) == before


def test_already_present_does_not_download(server, work, caplog):
    out = work / "cppe5"
    (out / "annotations").mkdir(parents=True)
    (out / "annotations" / "train.json").write_text("{}")
    with caplog.at_level(logging.INFO, logger=dl.__name__):
        got = _fetch(server.serve("d.tar.gz", _tarball()), out, None)
    assert got == out
    assert server.requests == []
    assert "already holds a dataset" in caplog.text
    assert (out / "annotations" / "train.json").read_text() == "{}"


def test_force_replaces_existing_dataset(server, work):
    out = work / "cppe5"
    (out / "annotations").mkdir(parents=True)
    (out / "annotations" / "train.json").write_text("{}")
    data = _tarball()
    _fetch(server.serve("d.tar.gz", data), out, _md5(data), force=True)
    assert server.requests == ["/d.tar.gz"]
    assert json.loads((out / "annotations" / "train.json").read_text()) == TRAIN
    assert sorted(p.name for p in work.iterdir()) == ["cppe5", "keep.txt"]


def test_force_failure_keeps_existing_dataset(server, work):
    out = work / "cppe5"
    (out / "annotations").mkdir(parents=True)
    (out / "annotations" / "train.json").write_text("{}")
    before = _tree(work)
    with pytest.raises(UserError):
        _fetch(server.serve("d.tar.gz", _tarball()), out, "0" * 32, force=True)
    assert _tree(work) == before
    assert (out / "annotations" / "train.json").read_text() == "{}"


def test_refuses_to_overwrite_unrelated_folder(server, work):
    out = work / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    with pytest.raises(UserError, match="not a dataset folder"):
        _fetch(server.serve("d.tar.gz", _tarball()), out, None, force=True)
    assert server.requests == []
    assert (out / "notes.txt").read_text() == "precious"


def test_empty_existing_folder_is_filled(server, work):
    out = work / "cppe5"
    out.mkdir()
    data = _tarball()
    _fetch(server.serve("d.tar.gz", data), out, _md5(data))
    assert (out / "images" / "a.png").is_file()
