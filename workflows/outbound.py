"""HTTP requests from workflow nodes, refusing private addresses (SSRF) unless allow-listed.

The host is resolved once, every address is checked, and the connection goes to
the checked address (so a DNS answer that changes between check and connect
cannot redirect it). An IPv6 address that carries an IPv4 one (mapped, 6to4,
Teredo, NAT64, IPv4-compatible, SIIT) is judged by that IPv4 address, and
site-local IPv6 is refused. Redirects are not followed; the body read is bounded,
and the whole call (connect, headers, body) has one deadline: the node's timeout.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from worker_mode import storable

from .conf import conf
from .exceptions import ConfigError, NodeFailed

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")
_FORBIDDEN_HEADERS = {"host", "content-length", "transfer-encoding", "connection"}


class BlockedAddress(NodeFailed):
    """The URL resolves to an address workflows may not call."""


def allowed_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(item, strict=False) for item in conf.WORKFLOWS_HTTP_ALLOWED_NETWORKS]


#: IPv6 ranges whose last 32 bits are an IPv4 address: NAT64 (well-known and local-use),
#: IPv4-compatible (deprecated), and SIIT's IPv4-translated ``::ffff:0:a.b.c.d``.
_EMBEDDING = tuple(
    ipaddress.ip_network(net) for net in ("64:ff9b::/96", "64:ff9b:1::/48", "::/96", "::ffff:0:0:0/96")
)


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries, whatever the form; None for a plain IPv6 address."""
    if address.ipv4_mapped:
        return address.ipv4_mapped
    if address.sixtofour:
        return address.sixtofour
    if address.teredo:
        return address.teredo[1]  # the client; its server is a public relay
    if any(address in network for network in _EMBEDDING) and int(address) > 1:  # not :: or ::1
        return ipaddress.IPv4Address(address.packed[-4:])
    return None


def is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        if address.is_site_local:  # fec0::/10: deprecated, and private wherever it is still used
            return False
        inner = embedded_ipv4(address)
        if inner is not None:
            return is_public(inner)
    return address.is_global and not address.is_multicast


def _allowed(address: ipaddress.IPv4Address | ipaddress.IPv6Address, networks: list) -> bool:
    """Whether ``address`` is allow-listed. An IPv4-mapped address (``::ffff:a.b.c.d``) is its IPv4
    address; other forms that carry one (NAT64, 6to4, Teredo, IPv4-compatible) reach a translator
    or a relay, not that host, so they are allowed only when listed themselves."""
    candidates = [address]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        candidates.append(address.ipv4_mapped)
    return any(candidate in network for candidate in candidates for network in networks)


def resolve_checked(host: str, port: int) -> str:
    """An address of ``host`` that may be called; BlockedAddress if any address is private."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:  # UnicodeError: a label IDNA cannot encode
        raise NodeFailed(f"Cannot resolve {host!r}: {exc}") from None
    networks = allowed_networks()
    addresses = []
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        if not is_public(address) and not _allowed(address, networks):
            raise BlockedAddress(
                f"{host} resolves to {address}, a private or local address; "
                "add it to WORKFLOWS_HTTP_ALLOWED_NETWORKS to allow it."
            )
        addresses.append(str(address))
    return addresses[0]


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, address: str, **kwargs: Any) -> None:
        super().__init__(host, port, **kwargs)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, address: str, **kwargs: Any) -> None:
        super().__init__(host, port, context=ssl.create_default_context(), **kwargs)
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


class BadURL(ValueError):
    """Not an http(s) URL with a host and a valid port; the message says what is wrong."""


def parse_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path with query) of an http(s) URL; BadURL otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port  # raises for a port outside 0-65535 or not a number
        host = parts.hostname
    except ValueError as exc:  # e.g. "Invalid IPv6 URL", "Port out of range 0-65535"
        raise BadURL(f"{url!r} is not a valid URL: {exc}.") from None
    if parts.scheme not in ("http", "https") or not host:
        raise BadURL(f"{url!r} is not an http(s) URL with a host.")
    if any(ord(char) < 33 or char == "\x7f" for char in url):
        raise BadURL(f"{url!r} contains spaces or control characters.")
    if port == 0:
        raise BadURL(f"{url!r} has port 0.")
    try:
        host.encode("idna")  # labels of 1 to 63 characters, names of at most 253
    except UnicodeError as exc:
        raise BadURL(f"{url!r} has a host name that cannot be looked up: {exc}.") from None
    port = port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, host, port, (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


#: A header name is an RFC 9110 token; a value is visible Latin-1 text, spaces and tabs.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e\xa0-\xff]*")


def _bad_header(name: str, value: str) -> bool:
    return not (_HEADER_NAME.fullmatch(name) and _HEADER_VALUE.fullmatch(value))


def _header_problem(broken: list[str]) -> str:
    return (
        f"Header(s) {', '.join(repr(name[:100]) for name in broken[:10])}: a name is letters, digits "
        "and !#$%&'*+-.^_`|~ (no spaces or colons); a value is Latin-1 text without line breaks "
        "or control characters."
    )


def check_config(config: dict[str, Any]) -> None:
    url = config.get("url")
    if not isinstance(url, str) or not url:
        raise ConfigError("'url' is required.")
    if "{{" not in url:
        try:
            parse_url(url)
        except BadURL as exc:
            raise ConfigError(f"'url': {exc}") from None
    method = config.get("method", "POST")
    if method not in METHODS:
        raise ConfigError(f"'method' must be one of {', '.join(METHODS)}, got {method!r}.")
    headers = config.get("headers", {})
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise ConfigError("'headers' must be an object of text values.")
    bad = sorted(h for h in headers if h.lower() in _FORBIDDEN_HEADERS)
    if bad:
        raise ConfigError(f"Headers {', '.join(bad)} are set by the engine and cannot be configured.")
    broken = sorted(name for name, value in headers.items() if _bad_header(name, value))
    if broken:
        raise ConfigError(_header_problem(broken))
    timeout = config.get("timeout", 10)
    if not isinstance(timeout, (int, float)) or not 0 < timeout <= conf.WORKFLOWS_HTTP_MAX_TIMEOUT:
        raise ConfigError(f"'timeout' must be a number of seconds in (0, {conf.WORKFLOWS_HTTP_MAX_TIMEOUT}].")


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    data: Any


def request(
    method: str, url: str, *, headers: dict[str, str], body: Any = None, timeout: float = 10.0
) -> Response:
    """Call ``url``; the whole call (resolving, connecting, sending, headers, body) within ``timeout``."""
    try:
        scheme, host, port, path = parse_url(url)
    except BadURL as exc:
        raise NodeFailed(str(exc)) from None
    broken = sorted(name for name, value in headers.items() if _bad_header(name, value))
    if broken:  # a placeholder rendered a line break into a header
        raise NodeFailed(_header_problem(broken))
    deadline = time.monotonic() + timeout
    address = resolve_checked(host, port)
    connection_class = _PinnedHTTPSConnection if scheme == "https" else _PinnedHTTPConnection
    connection = connection_class(host, port, address, timeout=max(deadline - time.monotonic(), 0.001))
    payload = None
    headers = dict(headers)
    if body is not None and method not in ("GET", "HEAD"):
        payload = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    # A socket timeout bounds each read, not the call: a peer that sends a byte a second would
    # hold the worker for ever. At the deadline the socket is shut, which ends any read at once.
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        sock = connection.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(max(deadline - time.monotonic(), 0), expire)
    timer.daemon = True
    timer.start()
    limit = conf.WORKFLOWS_HTTP_MAX_RESPONSE_BYTES
    try:
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        chunks, size = [], 0
        while size <= limit and not expired.is_set():
            chunk = response.read(min(65536, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        raw = b"".join(chunks)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        if expired.is_set():
            raise NodeFailed(f"{method} {url} took longer than its {timeout:g} s timeout.") from None
        raise NodeFailed(f"{method} {url} failed: {exc}") from None
    finally:
        timer.cancel()
        connection.close()
    if expired.is_set():
        raise NodeFailed(f"{method} {url} took longer than its {timeout:g} s timeout.")
    if len(raw) > limit:
        raise NodeFailed(f"{method} {url}: the response is larger than {limit} bytes.")
    text = raw.decode(errors="replace")
    try:
        data = storable.loads(text, what="The response") if text else None
    except storable.InvalidJSON:
        data = text  # not JSON: kept as text
    except storable.NotStorable as exc:  # NaN, deep nesting, a 5,000-digit number: one clear failure
        raise NodeFailed(f"{method} {url}: the response cannot be stored: {exc}") from None
    return Response(status=response.status, headers=dict(response.getheaders()), data=data)
