"""GDC streaming against a real loopback HTTP server: Range resume, md5, truncation, 5xx retries,
the token header (sent, never logged), the scratch budget, and the whole tile stage from a manifest."""

from __future__ import annotations

import hashlib
import http.server
import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import pytest

from dcssl.launch.__main__ import main as launch
from dcssl.slides.config import DownloadConfig
from dcssl.slides.gdc import DownloadError, download_slide
from dcssl.slides.sources import SlideRef

DATA = Path(__file__).resolve().parents[1] / "data"
TOKEN = "s3cr3t-token-value-0123456789"


@dataclass
class Behaviour:
    """What the server does; every request is recorded."""

    files: dict[str, bytes] = field(default_factory=dict)
    drop_once_at: int | None = None  # first full GET: send the headers, then only this many bytes
    fail_first: int = 0  # this many 503s before serving
    require_token: bool = False
    redirect_to: str | None = None  # answer GETs outside /mirror with a 302 to this root + the path
    requests: list[dict] = field(default_factory=list)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):  # noqa: N802 (http.server's naming)
        b: Behaviour = self.server.behaviour
        b.requests.append(
            {"path": self.path, "range": self.headers.get("Range"), "token": self.headers.get("X-Auth-Token")}
        )
        if b.redirect_to is not None and not self.path.startswith("/mirror"):
            self.send_response(302)
            self.send_header("Location", b.redirect_to + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if b.require_token and self.headers.get("X-Auth-Token") != TOKEN:
            return self._reply(401, b"")
        if b.fail_first > 0:
            b.fail_first -= 1
            return self._reply(503, b"busy")
        body = b.files.get(self.path.rsplit("/", 1)[-1])
        if body is None:
            return self._reply(404, b"")
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            if start >= len(body):
                return self._reply(416, b"")
        status = 206 if start else 200
        self.send_response(status)
        self.send_header("Content-Length", str(len(body) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        if b.drop_once_at is not None and not start:
            cut, b.drop_once_at = b.drop_once_at, None
            self.wfile.write(body[:cut])
            self.close_connection = True
            return
        self.wfile.write(body[start:])

    def _reply(self, code: int, body: bytes):
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _served():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.behaviour = Behaviour()
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def server():
    yield from _served()


@pytest.fixture
def elsewhere():
    """A second server: another port is another origin."""
    yield from _served()


def _cfg(httpd, **kw) -> DownloadConfig:
    return DownloadConfig(
        base_url=f"http://127.0.0.1:{httpd.server_port}", backoff_s=0.5, timeout_s=10, chunk_mb=0.25, **kw
    )


def _ref(body: bytes, file_id="f1", md5=None, size=None) -> SlideRef:
    return SlideRef(
        slide_id="s",
        gdc_id=file_id,
        filename="s.svs",
        md5=md5 or hashlib.md5(body).hexdigest(),
        size=len(body) if size is None else size,
    )


SLIDE = (DATA / "cmu-1-small-region.svs").read_bytes()


def test_resume_after_a_dropped_connection(server, tmp_path):
    server.behaviour.files["f1"] = SLIDE
    server.behaviour.drop_once_at = 700_000
    waits = []
    path = download_slide(_ref(SLIDE), tmp_path, _cfg(server), sleep=waits.append)
    assert path.read_bytes() == SLIDE and path.name == "s.svs"
    ranges = [r["range"] for r in server.behaviour.requests]
    assert ranges == [None, "bytes=700000-"] and waits == [0.5]
    assert not list(tmp_path.glob("*.part"))


def test_transient_5xx_retried_with_backoff(server, tmp_path):
    server.behaviour.files["f1"] = SLIDE
    server.behaviour.fail_first = 2
    waits = []
    path = download_slide(_ref(SLIDE), tmp_path, _cfg(server), sleep=waits.append)
    assert path.read_bytes() == SLIDE
    assert waits == [0.5, 1.0] and len(server.behaviour.requests) == 3


def test_failing_server_gives_up_after_the_retries(server, tmp_path):
    server.behaviour.fail_first = 100
    with pytest.raises(DownloadError, match=r"HTTP 503 .*\(after 3 attempts\)"):
        download_slide(_ref(SLIDE), tmp_path, _cfg(server, retries=3), sleep=lambda s: None)
    assert len(server.behaviour.requests) == 3


def test_md5_mismatch_is_retried_then_fails_and_leaves_nothing(server, tmp_path):
    server.behaviour.files["f1"] = SLIDE
    with pytest.raises(DownloadError, match="md5 mismatch") as err:
        download_slide(_ref(SLIDE, md5="0" * 32), tmp_path, _cfg(server, retries=2), sleep=lambda s: None)
    assert "after 2 attempts" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_truncated_file_on_the_server(server, tmp_path):
    server.behaviour.files["f1"] = SLIDE[:500_000]
    with pytest.raises(
        DownloadError, match=f"truncated download: 500000 bytes, the manifest says {len(SLIDE)}"
    ):
        download_slide(_ref(SLIDE), tmp_path, _cfg(server, retries=2), sleep=lambda s: None)


def test_token_is_sent_and_never_logged(server, tmp_path, caplog):
    server.behaviour.files["f1"] = SLIDE
    server.behaviour.require_token = True
    server.behaviour.drop_once_at = 100_000  # a retry: warnings get logged
    caplog.set_level(logging.DEBUG)
    download_slide(_ref(SLIDE), tmp_path / "a", _cfg(server), token=TOKEN, sleep=lambda s: None)
    assert all(r["token"] == TOKEN for r in server.behaviour.requests)
    with pytest.raises(DownloadError) as err:  # no token: 401, not retried
        download_slide(_ref(SLIDE), tmp_path / "b", _cfg(server), token=None, sleep=lambda s: None)
    assert "HTTP 401" in str(err.value) and "token_file" in str(err.value)
    assert not err.value.transient and len(server.behaviour.requests) == 3
    assert caplog.records and TOKEN not in caplog.text and TOKEN not in str(err.value)


def test_token_never_follows_a_redirect_to_another_port(server, elsewhere, tmp_path):
    elsewhere.behaviour.files["f1"] = SLIDE
    server.behaviour.redirect_to = f"http://127.0.0.1:{elsewhere.server_port}"
    path = download_slide(_ref(SLIDE), tmp_path, _cfg(server), token=TOKEN, sleep=lambda s: None)
    assert path.read_bytes() == SLIDE
    assert [r["token"] for r in server.behaviour.requests] == [TOKEN]
    assert [r["token"] for r in elsewhere.behaviour.requests] == [None]


def test_same_origin_redirect_keeps_the_token(server, tmp_path):
    server.behaviour.files["f1"] = SLIDE
    server.behaviour.require_token = True
    server.behaviour.redirect_to = "/mirror"  # relative Location: the same scheme, host and port
    path = download_slide(_ref(SLIDE), tmp_path, _cfg(server), token=TOKEN, sleep=lambda s: None)
    assert path.read_bytes() == SLIDE
    requests = server.behaviour.requests
    assert [(r["path"], r["token"]) for r in requests] == [("/data/f1", TOKEN), ("/mirror/data/f1", TOKEN)]


def test_plain_http_elsewhere_is_refused(server, tmp_path):
    with pytest.raises(ValueError, match="plain http to a non-loopback host.*allow_insecure"):
        DownloadConfig(base_url="http://api.gdc.example.org")
    assert DownloadConfig(base_url="http://api.gdc.example.org", allow_insecure=True)
    assert DownloadConfig(base_url="http://localhost:8080")
    server.behaviour.redirect_to = "http://slides.example.org"
    with pytest.raises(DownloadError, match="redirect to plain http on another host refused") as err:
        download_slide(_ref(SLIDE), tmp_path, _cfg(server), token=TOKEN, sleep=lambda s: None)
    assert not err.value.transient and len(server.behaviour.requests) == 1


def test_scratch_budget_refuses_big_slides_before_any_request(server, tmp_path):
    ref = _ref(SLIDE, size=3 * 10**9)
    with pytest.raises(DownloadError, match="over the scratch budget of 2 GB"):
        download_slide(ref, tmp_path, _cfg(server, scratch_budget_gb=2.0))
    assert server.behaviour.requests == []


def test_tile_stage_from_a_gdc_manifest(server, tmp_path, capsys):
    """Stream → tile → delete for a good slide; an md5-mismatched one lands in the ledger."""
    server.behaviour.files.update({"good-id": SLIDE, "bad-id": SLIDE})
    token_file = tmp_path / "token.txt"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    server.behaviour.require_token = True
    manifest = tmp_path / "manifest.tsv"
    md5 = hashlib.md5(SLIDE).hexdigest()
    manifest.write_text(
        "id\tfilename\tmd5\tsize\tstate\n"
        f"good-id\tgood slide.svs\t{md5}\t{len(SLIDE)}\treleased\n"
        f"bad-id\tbad.svs\t{'f' * 32}\t{len(SLIDE)}\treleased\n"
    )
    scratch = tmp_path / "scratch"
    run = tmp_path / "run"
    code = launch(
        [
            "tile",
            str(run),
            "--slides",
            str(manifest),
            f"tile.download.base_url=http://127.0.0.1:{server.server_port}",
            f"tile.download.token_file={token_file}",
            f"tile.download.scratch_dir={scratch}",
            "tile.download.retries=2",
            "tile.download.backoff_s=0",
            "tile.workers=1",
        ]
    )
    assert code == 1  # one slide failed
    captured = capsys.readouterr()
    assert TOKEN not in captured.out + captured.err
    ledger = [json.loads(line) for line in (run / "store" / "ledger.jsonl").read_text().splitlines()]
    by_slide = {r["slide"]: r for r in ledger}
    assert by_slide["good slide"]["status"] == "ok" and by_slide["good slide"]["tiles"] == 44
    assert by_slide["bad"]["status"] == "failed" and by_slide["bad"]["stage"] == "download"
    assert "md5 mismatch" in by_slide["bad"]["reason"]
    with h5py.File(next((run / "store" / "shards").glob("good_slide*.h5"))) as f:
        assert f.attrs["source_md5"] == md5
    assert [p for p in scratch.rglob("*") if p.is_file()] == []  # downloads deleted
    for path in run.rglob("*"):  # the token is nowhere in the run directory
        assert not path.is_file() or TOKEN.encode() not in path.read_bytes()
