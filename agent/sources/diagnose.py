"""Why a network stream does not open: typed failures and cheap probes of the camera's own host.

OpenCV only says "cannot open". ``reach`` (a TCP connect) tells a refused port from a host that
does not answer; ``diagnose`` adds one RTSP ``DESCRIBE`` or HTTP ``GET`` to tell a 404 on the path,
a login that is refused, or an answer that is not a video. Both contact only the host and port of
the stream's own URL, send no password over RTSP, and never put a password or query in a message.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import re
import socket
import ssl
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import unquote, urlsplit

from agent.errors import SourceError

__all__ = ["Endpoint", "Problem", "SourceUnavailableError", "diagnose", "endpoint", "reach"]

DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}
_RTSP_STATUS = re.compile(rb"RTSP/\d\.\d (\d{3}) ?([^\r\n]*)")
_MAX_REPLY = 64 * 1024


class Problem(StrEnum):
    """What kind of failure a source met; ``SourceStatus.error_kind`` carries its value."""

    REFUSED = "refused"  # nothing listens on the port
    TIMEOUT = "timeout"  # the host, or the server on it, does not answer
    UNREACHABLE = "unreachable"  # no route to the host, or its name does not resolve
    NOT_FOUND = "not_found"  # no such path (RTSP/HTTP 404), file or device
    UNAUTHORIZED = "unauthorized"  # the server wants other credentials (401, 403)
    NOT_VIDEO = "not_video"  # it opens or answers, but no video frame can be read from it
    STOPPED = "stopped"  # it delivered frames, then stopped
    PROTOCOL = "protocol"  # the server answers with an error or something unexpected
    OTHER = "other"


class SourceUnavailableError(SourceError):
    """A source failure whose kind is known; the message says it for a person."""

    def __init__(self, problem: Problem, message: str) -> None:
        super().__init__(message)
        self.problem = problem


@dataclass(frozen=True)
class Endpoint:
    """Where a stream URL points: what a probe needs, without the password or the query."""

    scheme: str
    host: str
    port: int
    path: str
    username: str | None
    password: str | None

    @property
    def tls(self) -> bool:
        return self.scheme in ("rtsps", "https")

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def request_url(self) -> str:
        """The URL as a request line names it, without user, password or query."""
        return f"{self.scheme}://{self.address}{self.path}"


def endpoint(uri: str) -> Endpoint:
    """The endpoint of an ``rtsp(s)://`` or ``http(s)://`` URL (raises if it has none)."""
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        raise SourceUnavailableError(Problem.OTHER, f"invalid stream URL: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        raise SourceUnavailableError(
            Problem.OTHER, "invalid stream URL: no host, or not rtsp/http(s)"
        )
    return Endpoint(
        scheme=scheme,
        host=parts.hostname,
        port=port or DEFAULT_PORTS[scheme],
        path=parts.path or "/",
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def _connect(ep: Endpoint, timeout_s: float) -> socket.socket:
    where = ep.address
    try:
        sock = socket.create_connection((ep.host, ep.port), timeout=timeout_s)
    except ConnectionRefusedError as exc:
        raise SourceUnavailableError(
            Problem.REFUSED,
            f"connection refused by {where}: nothing listens there "
            "(camera off or restarting, or wrong port)",
        ) from exc
    except ConnectionResetError as exc:
        raise SourceUnavailableError(
            Problem.REFUSED,
            f"connection reset by {where}: its server is going down or restarting",
        ) from exc
    except TimeoutError as exc:
        raise SourceUnavailableError(
            Problem.TIMEOUT,
            f"no answer from {where} within {timeout_s:g} s (camera off, or unreachable)",
        ) from exc
    except socket.gaierror as exc:
        raise SourceUnavailableError(
            Problem.UNREACHABLE, f"cannot resolve host {ep.host}: {exc.strerror or exc}"
        ) from exc
    except OSError as exc:
        raise SourceUnavailableError(
            Problem.UNREACHABLE, f"cannot reach {where}: {exc.strerror or exc}"
        ) from exc
    if not ep.tls:
        return sock
    # FFmpeg does not verify a stream's certificate either; the probe sends nothing secret
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        return context.wrap_socket(sock, server_hostname=ep.host)
    except TimeoutError as exc:
        sock.close()
        raise _silent(ep, timeout_s) from exc
    except (ssl.SSLError, OSError) as exc:
        sock.close()
        raise SourceUnavailableError(
            Problem.PROTOCOL, f"TLS handshake with {where} failed: {exc}"
        ) from exc


def _silent(ep: Endpoint, timeout_s: float) -> SourceUnavailableError:
    return SourceUnavailableError(
        Problem.TIMEOUT,
        f"{ep.address} accepts connections but did not answer within {timeout_s:g} s "
        "(camera hung, or not a stream server)",
    )


def reach(uri: str, timeout_s: float) -> None:
    """Return if a TCP connection to the stream's host and port opens, else raise why not."""
    _connect(endpoint(uri), timeout_s).close()


def diagnose(uri: str, timeout_s: float) -> SourceUnavailableError:
    """Why OpenCV could not open the stream at ``uri``, found out with one small request."""
    ep = endpoint(uri)
    try:
        sock = _connect(ep, timeout_s)
    except SourceUnavailableError as failure:
        return failure
    with sock:
        if ep.scheme.startswith("rtsp"):
            return _diagnose_rtsp(ep, sock, timeout_s)
        return _diagnose_http(ep, sock, timeout_s)


def _status_failure(
    ep: Endpoint, proto: str, code: int, reason: str
) -> SourceUnavailableError | None:
    """The failure an error status means, or None for a success."""
    what = f"{ep.address} answers {proto} {code} {reason}".rstrip()
    if code == 404:
        return SourceUnavailableError(Problem.NOT_FOUND, f"{what}: no stream at path {ep.path}")
    if code in (401, 403):
        hint = (
            "the user or password in the URL is not accepted"
            if ep.username
            else "it needs a user and password in the URL"
        )
        return SourceUnavailableError(Problem.UNAUTHORIZED, f"{what} for {ep.path}: {hint}")
    if code >= 300:
        return SourceUnavailableError(Problem.PROTOCOL, f"{what} for {ep.path}")
    return None


def _diagnose_rtsp(ep: Endpoint, sock: socket.socket, timeout_s: float) -> SourceUnavailableError:
    request = (
        f"DESCRIBE {ep.request_url()} RTSP/1.0\r\n"
        "CSeq: 1\r\n"
        "Accept: application/sdp\r\n"
        "User-Agent: edge-agent\r\n\r\n"
    )
    reply = b""
    try:
        sock.sendall(request.encode())
        while b"\r\n\r\n" not in reply and len(reply) < _MAX_REPLY:
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
        match = _RTSP_STATUS.match(head)
        if match is not None and int(match[1]) == 200:
            # the SDP says which tracks there are: read it (Content-Length bytes)
            length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            want = min(int(length[1]), _MAX_REPLY) if length else 0
            while len(body) < want and (chunk := sock.recv(4096)):
                body += chunk
    except TimeoutError:
        if not reply:
            return _silent(ep, timeout_s)
    except OSError as exc:
        return SourceUnavailableError(
            Problem.PROTOCOL, f"{ep.address} closed the connection ({exc.strerror or exc})"
        )
    if not reply:
        return SourceUnavailableError(
            Problem.PROTOCOL, f"{ep.address} closed the connection unanswered"
        )
    match = _RTSP_STATUS.match(reply)
    if match is None:
        return SourceUnavailableError(
            Problem.PROTOCOL, f"{ep.address} does not answer as an RTSP server (wrong port?)"
        )
    code, reason = int(match[1]), match[2].decode(errors="replace").strip()
    failure = _status_failure(ep, "RTSP", code, reason)
    if failure is not None:
        return failure
    if b"m=video" not in body:
        return SourceUnavailableError(
            Problem.NOT_VIDEO,
            f"not a video: the stream at {ep.path} on {ep.address} has no video track",
        )
    return SourceUnavailableError(
        Problem.NOT_VIDEO,
        f"{ep.address} describes a video at {ep.path}, but no frame could be read from it "
        "(codec not supported, or no data arrives)",
    )


def _diagnose_http(ep: Endpoint, sock: socket.socket, timeout_s: float) -> SourceUnavailableError:
    conn = http.client.HTTPConnection(ep.host, ep.port, timeout=timeout_s)
    conn.sock = sock  # already connected (and wrapped in TLS for https)
    headers = {"User-Agent": "edge-agent", "Accept": "*/*"}
    if ep.username:
        token = base64.b64encode(f"{ep.username}:{ep.password or ''}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    try:
        conn.request("GET", ep.path, headers=headers)
        response = conn.getresponse()
    except TimeoutError:
        return _silent(ep, timeout_s)
    except (http.client.HTTPException, OSError):
        return SourceUnavailableError(
            Problem.PROTOCOL, f"{ep.address} does not answer as an HTTP server (wrong port?)"
        )
    finally:
        with contextlib.suppress(OSError):
            conn.close()
    failure = _status_failure(ep, "HTTP", response.status, response.reason)
    if failure is not None:
        return failure
    ctype = (response.getheader("Content-Type") or "").split(";")[0].strip().lower()
    if ctype.startswith(("text/", "application/json", "application/xml")):
        return SourceUnavailableError(
            Problem.NOT_VIDEO,
            f"not a video: {ep.path} on {ep.address} answers with {ctype}",
        )
    return SourceUnavailableError(
        Problem.NOT_VIDEO,
        f"{ep.address} answers for {ep.path} ({ctype or 'no Content-Type'}), "
        "but no video frame could be read from it",
    )
