"""The sync :class:`~sdk.client.Client`'s HTTP: one urllib3 connection pool per client.

urllib3, not httpx: a request costs the client about half the CPU (420-590 us with httpx,
200-250 with urllib3, measured against one uvicorn service on loopback; httpx's URL model,
request and response objects and h11 state machine are most of it), and a long poll's round
trip has two requests on its path. The pool keeps connections open between requests, drops
one the service closed while it sat idle before using it (urllib3 checks), and is safe to
share between threads, as a client is.

The environment's proxy (``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY``, ``NO_PROXY``, as
:mod:`urllib.request` reads them) is looked up once, when the client opens; the token is the
only credential sent (no ``~/.netrc``). Every failure to send a request or read its answer
raises :class:`TransportError`, with urllib3's error as its cause (a refused certificate is
found behind it by :func:`sdk.tls.certificate_error`).
"""

from __future__ import annotations

import ssl
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import urllib3
from urllib3 import BaseHTTPResponse
from urllib3.exceptions import HTTPError

POOL_SIZE = 8
"""Connections a client keeps open for reuse (more are opened when threads ask at once,
and closed after their request)."""


class TransportError(Exception):
    """A request could not be sent, or its answer not read (refused, reset, timed out, TLS)."""


@dataclass(frozen=True, slots=True)
class Answer:
    """A request's answer: status, headers (looked up by any case of their names) and body."""

    status: int
    headers: Mapping[str, str]
    content: bytes


def env_proxy(url: str) -> str | None:
    """The proxy URL the environment names for ``url``, or None (none named, or ``NO_PROXY``
    exempts its host)."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


class Transport:
    """Requests to the service at ``base_url`` (paths are appended to its path), each with
    ``headers`` added; ``timeout_s`` to connect and to read (a request may add to the read
    timeout what the service may hold its answer)."""

    def __init__(
        self,
        base_url: str,
        headers: Mapping[str, str],
        *,
        timeout_s: float,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self.timeout_s = timeout_s
        self._base = base_url.rstrip("/")
        self._headers = dict(headers)
        context = ssl_context
        if context is None and self._base.startswith("https:"):
            context = ssl.create_default_context()  # made now: reads SSL_CERT_FILE (sdk.tls)
        self._proxy = env_proxy(self._base)
        self._manager: urllib3.PoolManager
        if self._proxy is None:
            self._manager = urllib3.PoolManager(num_pools=1, maxsize=POOL_SIZE, ssl_context=context)
        else:
            self._manager = urllib3.ProxyManager(
                self._proxy,
                num_pools=1,
                maxsize=POOL_SIZE,
                ssl_context=context,
                proxy_headers=_proxy_headers(self._proxy),
            )
        self._pool = self._manager.connection_from_url(self._base)
        self._prefix = urlsplit(self._base).path
        self._closed = False

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None,
        headers: Mapping[str, str],
        held_s: float = 0.0,
    ) -> Answer:
        """Send one request; its answer. ``held_s``: how long the service may hold the
        answer (a long poll's ``wait_s``), added to the read timeout."""
        if self._closed:
            raise RuntimeError("this client is closed; open a new one")
        timeout = urllib3.Timeout(connect=self.timeout_s, read=self.timeout_s + held_s)
        # Through a proxy the manager adds the proxy's headers (or opens a tunnel, for https).
        urlopen: Callable[..., BaseHTTPResponse]
        if self._proxy is None:
            urlopen, url = self._pool.urlopen, self._prefix + path
        else:
            urlopen, url = self._manager.urlopen, self._base + path
        try:
            response = urlopen(
                method,
                url,
                body=body,
                headers={**self._headers, **headers},
                retries=False,
                redirect=False,
                timeout=timeout,
            )
        except (HTTPError, OSError) as exc:
            raise TransportError(f"{type(exc).__name__}: {exc}") from exc
        return Answer(response.status, response.headers, response.data)

    def close(self) -> None:
        """Close every connection; requests after this raise :class:`RuntimeError`."""
        self._closed = True
        self._manager.clear()


def _proxy_headers(proxy: str) -> dict[str, str] | None:
    """``Proxy-Authorization`` for a proxy URL that names a user and password."""
    parts = urlsplit(proxy)
    if parts.username is None:
        return None
    auth = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    return urllib3.make_headers(proxy_basic_auth=auth)
