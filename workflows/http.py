"""HTTP requests from workflow nodes, refusing private addresses (SSRF) unless allow-listed.

The host is resolved once, every address is checked, and the connection goes to
the checked address (so a DNS answer that changes between check and connect
cannot redirect it). Redirects are not followed; the body read is bounded.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import socket
import ssl
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


def is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def resolve_checked(host: str, port: int) -> str:
    """An address of ``host`` that may be called; BlockedAddress if any address is private."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise NodeFailed(f"Cannot resolve {host!r}: {exc}") from None
    networks = allowed_networks()
    addresses = []
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        if not is_public(address) and not any(address in network for network in networks):
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


def check_config(config: dict[str, Any]) -> None:
    url = config.get("url")
    if not isinstance(url, str) or not url:
        raise ConfigError("'url' is required.")
    if "{{" not in url:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"'url' must be an http(s) URL, got {url!r}.")
    method = config.get("method", "POST")
    if method not in METHODS:
        raise ConfigError(f"'method' must be one of {', '.join(METHODS)}, got {method!r}.")
    headers = config.get("headers", {})
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise ConfigError("'headers' must be an object of text values.")
    bad = sorted(h for h in headers if h.lower() in _FORBIDDEN_HEADERS)
    if bad:
        raise ConfigError(f"Headers {', '.join(bad)} are set by the engine and cannot be configured.")
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
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise NodeFailed(f"Not an http(s) URL: {url!r}.")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    address = resolve_checked(parts.hostname, port)
    connection_class = _PinnedHTTPSConnection if parts.scheme == "https" else _PinnedHTTPConnection
    connection = connection_class(parts.hostname, port, address, timeout=timeout)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    payload = None
    headers = dict(headers)
    if body is not None and method not in ("GET", "HEAD"):
        payload = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    try:
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        limit = conf.WORKFLOWS_HTTP_MAX_RESPONSE_BYTES
        raw = response.read(limit + 1)
    except (OSError, http.client.HTTPException) as exc:
        raise NodeFailed(f"{method} {url} failed: {exc}") from None
    finally:
        connection.close()
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
