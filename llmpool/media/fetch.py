"""Fetching an image over http(s) without becoming a way into the pool's own network.

- Only with `media.allow_http`.
- The host is resolved once; every address it resolves to is checked, and the connection
  goes to a checked address, never to a second resolution (no DNS rebinding). Hosts that
  are IP literals, in any form the C library accepts (`2130706433`, `0x7f.1`,
  `0177.0.0.1`, `127.1`, `[::ffff:127.0.0.1]`), are read as the address they denote.
- Loopback, private, link-local, multicast, reserved, unspecified and other non-global
  addresses are refused unless `media.allow_private_http`; IPv6 forms that carry an IPv4
  address (IPv4-mapped, 6to4, NAT64) are judged by that address.
- Each redirect is checked the same way, at most `media.max_redirects` of them.
- `media.http_timeout_s` bounds the whole fetch, every send and receive included, so a
  server that drips bytes cannot hold it longer; the body is read up to
  `media.max_image_bytes` and no further.
- https verifies the certificate against the URL's host name.

On the gevent hub the sockets (and the resolver) are gevent's, so a fetch suspends only
its greenlet. It must run on the thread whose hub made its sockets: never inside
`call_blocking`.
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import re
import socket
import ssl
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llmpool.errors import InvalidRequest, MediaForbidden
from llmpool.media.policy import MIME_RE, MediaPolicy, too_large

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
SockAddr = tuple[Any, ...]
Resolve = Callable[[str, int], list[tuple[int, SockAddr]]]
Connect = Callable[[int, SockAddr, float], socket.socket]

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# Checked in this order, so the message names the narrowest kind (ipaddress counts
# loopback and link-local as private too).
_KINDS = ("unspecified", "loopback", "link_local", "multicast", "reserved", "private")
_HOST_RE = re.compile(r"[a-z0-9._-]+|[0-9a-f:.]+")


def _system_resolve(host: str, port: int) -> list[tuple[int, SockAddr]]:
    # Looked up at call time: gevent's patched getaddrinfo when serving on the hub.
    answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [(family, address) for family, _, _, _, address in answers]


def _system_connect(family: int, address: SockAddr, timeout: float) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _system_tls() -> ssl.SSLContext:
    return ssl.create_default_context()


@dataclass(frozen=True)
class Network:
    """How a fetch reaches the network. Tests replace parts: a resolver that would
    rebind, a connect that records where it was sent, a TLS context trusting a test CA."""

    resolve: Resolve = _system_resolve
    connect: Connect = _system_connect
    tls: Callable[[], ssl.SSLContext] = _system_tls


SYSTEM_NETWORK = Network()


def address_refusal(ip: IPAddress) -> str | None:
    """Why `ip` is no public address ('loopback', 'private', ...); None when it is one.

    An IPv6 address that carries an IPv4 one (IPv4-mapped, 6to4, NAT64) reaches that
    address, so that address is judged.
    """
    carried = _carried_ipv4(ip) if isinstance(ip, ipaddress.IPv6Address) else None
    judged = carried or ip
    suffix = "" if carried is None else f" (it carries {carried})"
    for kind in _KINDS:
        if getattr(judged, "is_" + kind):
            return kind.replace("_", "-") + suffix
    if not judged.is_global:
        return "not globally routable" + suffix
    return None


def _carried_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.ipv4_mapped or ip.sixtofour


def fetch_image(url: str, policy: MediaPolicy, network: Network) -> tuple[bytes, str]:
    """The body and MIME type of an http(s) image URL, following checked redirects.

    Raises MediaForbidden where the policy forbids the URL or an address, InvalidRequest
    where the fetch fails or the answer is no acceptable image.
    """
    if not policy.allow_http:
        raise MediaForbidden("http(s) image URLs are off: media.allow_http is false")
    deadline = time.monotonic() + policy.http_timeout_s
    for _ in range(policy.max_redirects + 1):
        target = _Target.parse(url)
        try:
            answer = _get(target, policy, network, deadline)
        except TimeoutError:
            raise InvalidRequest(
                f"fetching the image from '{target.host}' took longer than media.http_timeout_s "
                f"({policy.http_timeout_s:g} s)"
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            raise InvalidRequest(f"fetching the image from '{target.host}' failed: {exc}") from None
        if isinstance(answer, str):
            url = urllib.parse.urljoin(url, answer)
            continue
        return answer
    raise InvalidRequest(f"image URL redirects more than media.max_redirects ({policy.max_redirects}) times")


@dataclass(frozen=True)
class _Target:
    https: bool
    host: str  # lower-case, IDNA-encoded; an IPv6 literal without brackets
    port: int
    path: str  # path and query, as sent in the request line

    @classmethod
    def parse(cls, url: str) -> _Target:
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            # Only a redirect gets here with another scheme (inline_url sorted the first URL).
            raise MediaForbidden(f"image URL redirects to a '{scheme}:' URL; only http(s) is followed")
        try:
            port = parts.port
            host = (parts.hostname or "").encode("idna").decode("ascii")
        except (ValueError, UnicodeError):
            raise InvalidRequest("image URL has an invalid host or port") from None
        if not _HOST_RE.fullmatch(host) or parts.username is not None:
            raise InvalidRequest("image URL needs a host name or address (and no user name)")
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(scheme == "https", host, port or (443 if scheme == "https" else 80), path)


def _literal(host: str) -> IPAddress | None:
    """The address a host that is an IP literal denotes, in every form inet_aton reads."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if re.fullmatch(r"[0-9a-fx.]+", host) and re.match(r"[0-9]", host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _pin(target: _Target, policy: MediaPolicy, network: Network) -> list[tuple[int, SockAddr]]:
    """Resolve `target.host` once and check every address; the addresses to connect to."""
    literal = _literal(target.host)
    if literal is not None:
        family = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
        answers: list[tuple[int, SockAddr]] = [(family, (str(literal), target.port))]
    else:
        try:
            answers = network.resolve(target.host, target.port)
        except OSError as exc:
            raise InvalidRequest(f"image host '{target.host}' does not resolve: {exc}") from None
        if not answers:
            raise InvalidRequest(f"image host '{target.host}' does not resolve")
    if not policy.allow_private_http:
        for _, address in answers:
            ip = ipaddress.ip_address(str(address[0]).partition("%")[0])
            reason = address_refusal(ip)
            if reason is not None:
                named = "" if literal is not None else f" (of '{target.host}')"
                raise MediaForbidden(f"address {ip}{named} is {reason}; media.allow_private_http is false")
    return answers


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline passed")
    return left


def _get(target: _Target, policy: MediaPolicy, network: Network, deadline: float) -> tuple[bytes, str] | str:
    """One GET: the image and its type, or a redirect's Location."""
    conn = _PinnedConnection(target, _pin(target, policy, network), network, deadline)
    response: http.client.HTTPResponse | None = None
    try:
        conn.request("GET", target.path, headers={"Accept": "image/*", "User-Agent": "llm-pool"})
        response = conn.getresponse()
        if response.status in _REDIRECTS:
            location = response.getheader("Location")
            if not location:
                raise InvalidRequest(f"image URL answered HTTP {response.status} without a Location")
            return location
        if response.status != 200:
            raise InvalidRequest(f"image URL answered HTTP {response.status}")
        mime = (response.getheader("Content-Type") or "").partition(";")[0].strip().lower()
        if not MIME_RE.fullmatch(mime):
            raise InvalidRequest(f"image URL answered Content-Type '{mime[:64]}'; image/* is required")
        length = response.getheader("Content-Length") or ""
        if length.isdigit() and int(length) > policy.max_image_bytes:
            raise too_large(policy)
        return _read_capped(response, policy), mime
    finally:
        if response is not None:
            response.close()  # the connection forgets a response that says Connection: close
        conn.close()


def _read_capped(response: http.client.HTTPResponse, policy: MediaPolicy) -> bytes:
    body = bytearray()
    while chunk := response.read(min(_CHUNK, policy.max_image_bytes + 1 - len(body))):
        body += chunk
        if len(body) > policy.max_image_bytes:
            raise too_large(policy)
    if not body:
        raise InvalidRequest("image URL answered an empty body")
    return bytes(body)


class _PinnedConnection(http.client.HTTPConnection):
    """An HTTP(S) connection to addresses checked beforehand: `connect` never resolves
    `host` again, while `host` still names the server in the Host header and, for TLS,
    in SNI and the certificate check."""

    def __init__(
        self, target: _Target, answers: list[tuple[int, SockAddr]], network: Network, deadline: float
    ) -> None:
        super().__init__(target.host, target.port)
        if target.https:
            self.default_port = 443  # so the Host header omits the default port
        self._https = target.https
        self._answers = answers
        self._network = network
        self._deadline = deadline

    def connect(self) -> None:
        sock = self._connect_any()
        if self._https:
            try:
                sock = self._network.tls().wrap_socket(sock, server_hostname=self.host)
            except BaseException:
                sock.close()
                raise
        self.sock = _DeadlineSocket(sock, self._deadline)

    def _connect_any(self) -> socket.socket:
        error: OSError | None = None
        for family, address in self._answers:
            try:
                return self._network.connect(family, address, _left(self._deadline))
            except TimeoutError:
                raise
            except OSError as exc:
                error = exc  # e.g. IPv6 unreachable: try the next checked address
        assert error is not None  # _pin never returns an empty list
        raise error


class _DeadlineSocket:
    """A socket as http.client uses it (`sendall`, `makefile('rb')`, `close`), every send
    and receive given only the time left before the fetch's deadline.

    Like `socket.makefile`, an open reader keeps the socket open: http.client closes the
    connection as soon as a response says `Connection: close`, then reads its body.
    """

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.readers = 0
        self.closed = False

    def arm(self) -> None:
        self.sock.settimeout(_left(self.deadline))

    def sendall(self, data: bytes) -> None:
        self.arm()
        self.sock.sendall(data)

    def makefile(self, mode: str) -> io.BufferedReader:
        assert mode == "rb"
        self.readers += 1
        return io.BufferedReader(_DeadlineReader(self))

    def close(self) -> None:
        self.closed = True
        self.release(0)

    def release(self, readers: int = 1) -> None:
        self.readers -= readers
        if self.closed and self.readers == 0:
            self.sock.close()


class _DeadlineReader(io.RawIOBase):
    def __init__(self, owner: _DeadlineSocket) -> None:
        self.owner = owner

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self.owner.arm()
        return self.owner.sock.recv_into(buffer)

    def close(self) -> None:
        if not self.closed:
            super().close()
            self.owner.release()
