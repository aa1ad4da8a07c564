"""Stream one slide from the GDC (``GET <base>/data/<id>``) to node-local scratch.

A partial download is resumed with an HTTP Range request; the finished file is checked against the
manifest's size and md5 before it is handed to the tiler. Transient errors (connection drops,
timeouts, 5xx, 429, an md5 mismatch) are retried with exponential backoff, a bounded number of
times; anything else (401/403/404, a file larger than the scratch budget) fails at once. The
token is read from a file, sent only as the ``X-Auth-Token`` header and only to the base URL's
origin (redirects are followed by hand: urllib's handler would forward it anywhere), and never
appears in a log line, an error message or a command line.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from dcssl.slides.config import DownloadConfig, is_secure_url
from dcssl.slides.sources import SlideRef

__all__ = ["DownloadError", "download_slide", "read_token", "scratch_root"]

log = logging.getLogger(__name__)
_TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}


class DownloadError(RuntimeError):
    """A slide could not be downloaded; ``transient`` tells whether another attempt may help."""

    def __init__(self, message: str, transient: bool):
        super().__init__(message)
        self.transient = transient


def read_token(token_file: str | None) -> str | None:
    """The token in ``token_file`` (stripped), or None when no file is configured."""
    if token_file is None:
        return None
    path = Path(token_file).expanduser()
    if not path.is_file():
        raise DownloadError(
            f"{path}: token file not found; set tile.download.token_file to the "
            "file gdc-client's token was saved in",
            transient=False,
        )
    if path.stat().st_mode & 0o077:
        log.warning("%s is readable by other users; chmod 600 it", path)
    token = path.read_text().strip()
    if not token:
        raise DownloadError(
            f"{path}: token file is empty; download a fresh token from the GDC portal", transient=False
        )
    return token


def scratch_root(cfg: DownloadConfig) -> Path:
    """Node-local download folder: the configured one, else $SLURM_TMPDIR, $TMPDIR or /tmp."""
    base = cfg.scratch_dir or os.environ.get("SLURM_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
    return Path(base).expanduser()


def _md5_of(path: Path, chunk: int = 8 << 20) -> hashlib._Hash:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest


def _check_budget(ref: SlideRef, folder: Path, cfg: DownloadConfig) -> None:
    budget = int(cfg.scratch_budget_gb * 1e9)
    if ref.size is not None and ref.size > budget:
        raise DownloadError(
            f"slide is {ref.size / 1e9:.2f} GB, over the scratch budget of "
            f"{cfg.scratch_budget_gb:g} GB; raise tile.download.scratch_budget_gb",
            transient=False,
        )
    free = shutil.disk_usage(folder).free
    if ref.size is not None and ref.size > free:
        raise DownloadError(
            f"{folder} has {free / 1e9:.2f} GB free, the slide needs "
            f"{ref.size / 1e9:.2f} GB; set tile.download.scratch_dir to a larger "
            "disk",
            transient=False,
        )


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Hand 3xx back to ``_open``: urllib's own handler copies X-Auth-Token to wherever a
    redirect points."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)
_MAX_REDIRECTS = 5


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


def _next_url(url: str, err: urllib.error.HTTPError, cfg: DownloadConfig) -> str:
    """Where a 3xx points, or DownloadError when it points somewhere we will not go."""
    location = err.headers.get("Location")
    if not location:
        raise DownloadError(f"HTTP {err.code} redirect without a Location", transient=False)
    target = urllib.parse.urljoin(url, location)
    if not target.startswith(("http://", "https://")):
        raise DownloadError(f"redirect to a non-http URL ({urllib.parse.urlsplit(target).scheme}:)", False)
    if not (cfg.allow_insecure or is_secure_url(target)):
        raise DownloadError(
            "redirect to plain http on another host refused (set tile.download.allow_insecure "
            "if that network is trusted)",
            transient=False,
        )
    return target


def _open(url: str, token: str | None, offset: int, cfg: DownloadConfig) -> http.client.HTTPResponse | None:
    """The response, or None when the server has no bytes past ``offset`` (HTTP 416).

    Redirects are followed here, by hand: the token goes only to the base URL's origin (scheme,
    host, port); a redirect elsewhere is requested without it.
    """
    origin = _origin(url)
    for _ in range(_MAX_REDIRECTS + 1):
        headers = {"User-Agent": "dcssl-tile"}
        if token is not None and _origin(url) == origin:
            headers["X-Auth-Token"] = token
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            return _OPENER.open(urllib.request.Request(url, headers=headers), timeout=cfg.timeout_s)
        except urllib.error.HTTPError as err:
            err.close()
            if err.code in (301, 302, 303, 307, 308):
                url = _next_url(url, err, cfg)
                continue
            if err.code == 416 and offset:  # nothing past what we have: _verify judges the file
                return None
            raise _http_error(err) from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise DownloadError(f"connection failed: {reason}", transient=True) from None
    raise DownloadError(f"more than {_MAX_REDIRECTS} redirects", transient=False)


def _http_error(err: urllib.error.HTTPError) -> DownloadError:
    hint = {
        401: "; the token is missing or expired: set tile.download.token_file",
        403: "; access denied: the token lacks access to this controlled file",
        404: "; no such file id on the server: check the manifest",
    }.get(err.code, "")
    return DownloadError(f"HTTP {err.code} {err.reason}{hint}", transient=err.code in _TRANSIENT_HTTP)


def _stream(ref: SlideRef, part: Path, cfg: DownloadConfig, token: str | None) -> int:
    """One attempt: append to ``part`` from where it stops. Returns the bytes received."""
    offset = part.stat().st_size if part.exists() else 0
    if ref.size is not None and offset > ref.size:
        part.unlink()
        offset = 0
    url = f"{cfg.base_url.rstrip('/')}/data/{ref.gdc_id}"
    response = _open(url, token, offset, cfg)
    received = 0
    if response is None:
        return 0
    with response:
        if offset and response.status != 206:  # the server ignored Range: start over
            log.info(
                "%s: server did not resume (HTTP %d); restarting from byte 0", ref.slide_id, response.status
            )
            offset = 0
        chunk = int(cfg.chunk_mb * (1 << 20))
        with open(part, "r+b" if offset else "wb") as handle:
            handle.seek(offset)
            handle.truncate()
            try:
                while block := response.read(chunk):
                    handle.write(block)
                    received += len(block)
            except (TimeoutError, http.client.IncompleteRead, ConnectionError, OSError) as err:
                raise DownloadError(
                    f"connection dropped after {offset + received} bytes ({type(err).__name__})",
                    transient=True,
                ) from None
    return received


def _verify(ref: SlideRef, part: Path) -> None:
    size = part.stat().st_size
    if ref.size is not None and size != ref.size:
        # a short body without a connection error: the server sent less than the manifest says
        raise DownloadError(f"truncated download: {size} bytes, the manifest says {ref.size}", transient=True)
    if ref.md5:
        got = _md5_of(part).hexdigest()
        if got != ref.md5:
            part.unlink()
            raise DownloadError(f"md5 mismatch: got {got}, the manifest says {ref.md5}", transient=True)


def download_slide(
    ref: SlideRef, folder: str | Path, cfg: DownloadConfig, token: str | None = None, sleep=time.sleep
) -> Path:
    """Download ``ref`` into ``folder`` (resuming ``<name>.part``); the verified file's path.

    Raises DownloadError with the last reason after ``cfg.retries`` attempts.
    """
    if ref.gdc_id is None:
        raise ValueError(f"{ref.slide_id} is a local slide, not a GDC file")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / Path(ref.filename or f"{ref.gdc_id}.svs").name
    part = final.with_name(final.name + ".part")
    _check_budget(ref, folder, cfg)
    delay, last = cfg.backoff_s, None
    for attempt in range(1, cfg.retries + 1):
        start = time.monotonic()
        try:
            received = _stream(ref, part, cfg, token)
            _verify(ref, part)
            seconds = max(time.monotonic() - start, 1e-6)
            log.info(
                "%s: downloaded %.1f MB (%.1f MB/s) on attempt %d",
                ref.slide_id,
                part.stat().st_size / 1e6,
                received / 1e6 / seconds,
                attempt,
            )
            os.replace(part, final)
            return final
        except DownloadError as err:
            last = err
            if not err.transient or attempt == cfg.retries:
                break
            log.warning(
                "%s: attempt %d/%d failed (%s); retrying in %.1f s",
                ref.slide_id,
                attempt,
                cfg.retries,
                err,
                delay,
            )
            sleep(delay)
            delay = min(delay * 2, 60.0)
    assert last is not None
    raise DownloadError(
        f"{last} (after {attempt} attempt{'s' if attempt > 1 else ''})", transient=last.transient
    )
