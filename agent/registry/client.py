"""The registry client: reads small files and downloads artifacts, with resume and a size and
sha256 check, from an ``http(s)://`` registry or a ``file://`` folder (standard library only).

Every failure is a RegistryError subclass: ResumableDownloadError (timeout, HTTP 5xx, connection
reset, truncated: a partial download is kept for the next try), MissingFileError (HTTP 404/410, no
such file), DownloadError (any other HTTP status, too large), ChecksumError (sha256 differs) or
ManifestError (an unsafe relative path). Callers decide by type, never by the message.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from email.message import Message
from pathlib import Path
from typing import IO, BinaryIO

from agent import __version__
from agent.atomic import fsync_dir
from agent.errors import (
    ChecksumError,
    DownloadError,
    ManifestError,
    MissingFileError,
    RegistryError,
    ResumableDownloadError,
)

CHUNK = 64 * 1024
PROGRESS_STEP_MAX = 1 << 20

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")

Progress = Callable[[int, int], None]

# What a dropped or garbled connection raises: urllib wraps only some of these in URLError, and
# a cut chunked body is an http.client.IncompleteRead, which is not an OSError.
_NET_ERRORS = (OSError, http.client.HTTPException)
# HTTP statuses after which the same request may well work a moment later.
_RETRY_STATUSES = frozenset({408, 425, 429})
_MISSING_STATUSES = frozenset({404, 410})


class RegistryClient:
    """Reads files of one registry, given by its base URL (``file:///...`` or ``http(s)://...``)."""

    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme in ("http", "https"):
            if not parts.hostname:
                raise RegistryError(f"registry url {url!r}: no host")
        elif scheme == "file":
            if parts.netloc not in ("", "localhost"):
                raise RegistryError(f"registry url {url!r}: file:// urls must be local")
        else:
            raise RegistryError(f"registry url {url!r}: use http://, https:// or file:///")
        if parts.query or parts.fragment:
            # Relative paths are appended to the base, which a query or fragment would break.
            raise RegistryError(f"registry url {url!r}: no query or fragment allowed")
        path = parts.path if parts.path.endswith("/") else parts.path + "/"
        self.url = urllib.parse.urlunsplit((scheme, parts.netloc, path, "", ""))
        self.timeout_s = timeout_s
        self._root = Path(urllib.request.url2pathname(path)) if scheme == "file" else None
        self._opener = urllib.request.build_opener(_SameOriginRedirect((scheme, parts.netloc)))

    def __repr__(self) -> str:
        return f"RegistryClient({self.url!r})"

    def url_for(self, rel: str) -> str:
        """The full URL of ``rel`` (checked, each segment percent-quoted)."""
        return self.url + "/".join(urllib.parse.quote(s, safe="") for s in _check_rel(rel))

    def fetch(self, rel: str, max_bytes: int = 1 << 20) -> bytes:
        """The bytes of a small file (index, manifest, signature), at most ``max_bytes``."""
        url = self.url_for(rel)
        if self._root is not None:
            try:
                with self._local(rel).open("rb") as f:
                    data = f.read(max_bytes + 1)
            except FileNotFoundError as exc:
                raise MissingFileError(f"{url}: no such file") from exc
            except OSError as exc:
                raise DownloadError(f"{url}: {exc.strerror or exc}") from exc
        else:
            with self._open(url, None) as resp:
                length = _content_length(resp.headers)
                if length is not None and length > max_bytes:
                    raise DownloadError(f"{url}: {length} bytes, more than {max_bytes} allowed")
                try:
                    data = resp.read(max_bytes + 1)
                except _NET_ERRORS as exc:
                    raise ResumableDownloadError(f"{url}: {_reason(exc, self.timeout_s)}") from exc
            if length is not None and len(data) < length:
                raise ResumableDownloadError(f"{url}: truncated at {len(data)} of {length} bytes")
        if len(data) > max_bytes:
            raise DownloadError(f"{url}: more than {max_bytes} bytes allowed")
        return data

    def download(
        self,
        rel: str,
        dest: Path,
        *,
        size: int,
        sha256: str,
        progress: Progress | None = None,
    ) -> Path:
        """Download ``rel`` to ``dest``, resuming ``dest.part`` left by an earlier cut.

        Exactly ``size`` bytes are accepted: more is a DownloadError that deletes the partial
        file, fewer (or a timeout, HTTP 5xx, a reset) is a ResumableDownloadError that keeps it
        for the next try. The
        sha256 is checked (ChecksumError deletes the partial file), then the file is fsynced and
        renamed to ``dest``. ``progress(done, total)`` is called every 1% or 1 MiB.
        """
        url = self.url_for(rel)
        if size < 0:
            raise ManifestError(f"{url}: negative size {size}")
        dest = Path(dest)
        part_path = dest.with_name(dest.name + ".part")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if part_path.exists() and part_path.stat().st_size > size:
            part_path.unlink()  # left by another artifact: nothing in it can be reused
        with part_path.open("ab") as f:
            part = _Part(f, part_path, size, _Reporter(size, progress))
            try:
                if self._root is not None:
                    self._copy_local(rel, url, part)
                else:
                    self._copy_http(url, part)
                f.flush()
                os.fsync(f.fileno())
            except ResumableDownloadError:
                raise
            except Exception:
                # Too large, or a bug: nothing in the partial file can be trusted.
                f.close()
                part_path.unlink(missing_ok=True)
                raise
        actual = part.digest.hexdigest()
        if actual != sha256.lower():
            part_path.unlink(missing_ok=True)
            raise ChecksumError(f"{url}: sha256 is {actual}, the manifest says {sha256.lower()}")
        part_path.replace(dest)
        fsync_dir(dest.parent)
        return dest

    # --- file:// ---

    def _local(self, rel: str) -> Path:
        assert self._root is not None
        return self._root.joinpath(*_check_rel(rel))

    def _copy_local(self, rel: str, url: str, part: _Part) -> None:
        try:
            src = self._local(rel).open("rb")
        except FileNotFoundError as exc:
            raise MissingFileError(f"{url}: no such file") from exc
        except OSError as exc:
            raise ResumableDownloadError(f"{url}: {exc.strerror or exc}") from exc
        with src:
            try:
                src.seek(part.done)
                part.copy_from(src.read, url)
            except OSError as exc:
                raise ResumableDownloadError(
                    f"{url}: truncated at {part.done} of {part.size}: {exc}"
                ) from exc

    # --- http(s):// ---

    def _copy_http(self, url: str, part: _Part) -> None:
        offset = part.done
        try:
            resp = self._open(url, offset if offset else None)
        except _RangeNotSatisfiableError as exc:
            if offset == part.size:
                part.report.done(offset)  # the partial file was complete: on to the checksum
                return
            raise DownloadError(
                f"{url}: the registry has fewer bytes than the {offset} already downloaded "
                f"(HTTP 416), smaller than the manifest says ({part.size})"
            ) from exc
        with resp:
            if resp.status == 200 and offset:
                part.restart()  # the server ignored the Range header: start from the first byte
            elif resp.status == 206:
                _check_content_range(url, resp.headers, offset, part.size)
            elif resp.status != 200:
                raise ResumableDownloadError(f"{url}: unexpected HTTP {resp.status} {resp.reason}")
            length = _content_length(resp.headers)
            if length is not None and part.done + length > part.size:
                raise DownloadError(
                    f"{url}: {part.done + length} bytes, larger than the manifest says "
                    f"({part.size})"
                )
            try:
                part.copy_from(resp.read, url)
            except _NET_ERRORS as exc:
                raise ResumableDownloadError(
                    f"{url}: truncated at {part.done} of {part.size} bytes: "
                    f"{_reason(exc, self.timeout_s)}"
                ) from exc

    def _open(self, url: str, offset: int | None) -> http.client.HTTPResponse:
        headers = {"User-Agent": f"edge-agent/{__version__}"}
        if offset is not None:
            headers["Range"] = f"bytes={offset}-"
        request = urllib.request.Request(url, headers=headers)
        try:
            resp: http.client.HTTPResponse = self._opener.open(request, timeout=self.timeout_s)
        except urllib.error.HTTPError as exc:
            with contextlib.closing(exc):  # it holds the response: close it, or a socket leaks
                if exc.code == 416 and offset is not None:
                    raise _RangeNotSatisfiableError from None
                message = f"{url}: HTTP {exc.code} {exc.reason}"
                if exc.code in _MISSING_STATUSES:
                    raise MissingFileError(message) from None
                if exc.code >= 500 or exc.code in _RETRY_STATUSES:
                    # A partial file stays after a server error: the next try may resume it.
                    raise ResumableDownloadError(message) from None
                raise DownloadError(message) from None
        except urllib.error.URLError as exc:
            raise ResumableDownloadError(f"{url}: {_reason(exc.reason, self.timeout_s)}") from exc
        except _NET_ERRORS as exc:
            raise ResumableDownloadError(f"{url}: {_reason(exc, self.timeout_s)}") from exc
        return resp


class _RangeNotSatisfiableError(Exception):
    """HTTP 416 to a resume: either the partial file is complete or the remote file is short."""


class _SameOriginRedirect(urllib.request.HTTPRedirectHandler):
    """Follows redirects only within the registry's scheme and host: the device talks only to
    what it was told to (DESIGN.md section 8), and an https registry never drops to http."""

    def __init__(self, origin: tuple[str, str]) -> None:
        self.origin = origin

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        parts = urllib.parse.urlsplit(newurl)
        if (parts.scheme.lower(), parts.netloc) != self.origin:
            # HTTPError owns fp, so the caller's handler closes the response.
            raise urllib.error.HTTPError(
                req.full_url, code, f"redirect to {newurl} refused (another host)", headers, fp
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _Reporter:
    """Calls ``progress(done, total)`` every 1% or 1 MiB, whichever comes first, and at the end."""

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.total = total
        self.progress = progress
        self.step = max(1, min(total // 100, PROGRESS_STEP_MAX))
        self.last = -1

    def done(self, n: int) -> None:
        if self.progress is None or n == self.last:
            return
        if n - self.last >= self.step or n == self.total:
            self.last = n
            self.progress(n, self.total)


class _Part:
    """The ``.part`` file being written, its running sha256 and how many bytes it holds."""

    def __init__(self, f: BinaryIO, path: Path, size: int, report: _Reporter) -> None:
        self.f = f
        self.size = size
        self.report = report
        self.digest = hashlib.sha256()
        # Hash what an earlier try left now, so the whole file is not read again at the end.
        with path.open("rb") as old:
            while chunk := old.read(1 << 20):
                self.digest.update(chunk)
        self.done = f.tell()

    def restart(self) -> None:
        self.f.truncate(0)
        self.f.seek(0)
        self.digest = hashlib.sha256()
        self.done = 0

    def copy_from(self, read: Callable[[int], bytes], url: str) -> None:
        """Append from ``read`` until the source ends; never write past ``size``."""
        self.report.done(self.done)
        while True:
            # Ask for one byte more than is missing, so a longer source shows itself.
            chunk = read(min(CHUNK, self.size - self.done + 1))
            if not chunk:
                break
            if self.done + len(chunk) > self.size:
                raise DownloadError(
                    f"{url}: more than {self.size} bytes, larger than the manifest says"
                )
            self.f.write(chunk)
            self.digest.update(chunk)
            self.done += len(chunk)
            self.report.done(self.done)
        if self.done < self.size:
            raise ResumableDownloadError(f"{url}: truncated at {self.done} of {self.size} bytes")


def _check_rel(rel: str) -> list[str]:
    """The segments of a registry-relative path, refusing anything that could leave the registry."""
    # Paths come from manifests and commands, so the type is not guaranteed at runtime.
    if not isinstance(rel, str) or not rel or rel.startswith("/"):
        raise ManifestError(f"unsafe registry path {rel!r}: must be relative")
    segments = rel.split("/")
    for s in segments:
        if s in ("", ".", "..") or "\\" in s or "\0" in s:
            raise ManifestError(f"unsafe registry path {rel!r}")
    return segments


def _check_content_range(url: str, headers: Message, offset: int, size: int) -> None:
    value = headers.get("Content-Range", "")
    m = _CONTENT_RANGE.fullmatch(value.strip())
    if m is None:
        raise ResumableDownloadError(f"{url}: HTTP 206 with a bad Content-Range {value!r}")
    if int(m.group(1)) != offset:
        raise ResumableDownloadError(f"{url}: asked for bytes from {offset}, got {value!r}")
    total = m.group(3)
    if total != "*" and int(total) > size:
        raise DownloadError(f"{url}: {total} bytes, larger than the manifest says ({size})")
    if total != "*" and int(total) < size:
        raise DownloadError(f"{url}: {total} bytes, smaller than the manifest says ({size})")


def _content_length(headers: Message) -> int | None:
    value = headers.get("Content-Length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _reason(exc: object, timeout_s: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout_s:g} s"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
