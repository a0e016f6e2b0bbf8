"""TLS for the clients of the services: which certificates are trusted, and a refused
certificate told apart from an outage.

The SDK (``Client``, ``AsyncClient``, ``Executor``) and the endpoint agent reach the
services over ``https://`` and ``wss://`` with the certificate always verified; no setting
turns verification off. One rule says which certificate authorities are trusted, for HTTP
and WebSocket alike:

1. the PEM file named by ``ca_file=`` (a keyword of the clients) or ``FXBROKER_CA_FILE``
   (the SDK's and the agent's variable), when one is given: that file alone, so a private
   CA or a self-signed certificate is trusted without touching the system;
2. else the file named by ``SSL_CERT_FILE``, the variable OpenSSL itself reads (Python's
   :mod:`ssl`, and so :mod:`websockets`, honours it; the Client's connection pool and the
   AsyncClient's aiohttp session each get a default context made when they open, which
   reads it then);
3. else the default certificate authorities of those libraries.

A certificate that fails verification is not an outage: waiting does not make it trusted,
so it ends a call at once with :class:`~sdk.errors.CertificateNotTrusted` (a
:class:`~sdk.errors.ConnectionFailed`) saying how to trust it, where an unreachable service
would be retried for ``retry_for_s``.
"""

from __future__ import annotations

import ssl
from typing import Any

from sdk.errors import ConfigurationError

ENV_CA_FILE = "FXBROKER_CA_FILE"
"""The variable naming the PEM file of certificate authorities to trust (rule 1)."""

HOW_TO_TRUST = (
    f"to trust a private CA or a self-signed certificate, pass ca_file= or set {ENV_CA_FILE} "
    "or SSL_CERT_FILE to its PEM file"
)

_CHAIN_MAX = 16
"""Causes followed when looking for a verification failure inside a library's error."""


def client_context(ca_file: str | None) -> ssl.SSLContext | None:
    """A verifying client context that trusts ``ca_file`` only; ``None`` without a file,
    meaning the libraries' defaults (rules 2 and 3 of the module docstring).

    A file that cannot be read or holds no certificate raises
    :class:`~sdk.errors.ConfigurationError` naming it, when the client is made rather than
    at its first request."""
    if not ca_file:
        return None
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise ConfigurationError(
            f"the CA file {ca_file!r} (ca_file= or {ENV_CA_FILE}) cannot be loaded: {exc}"
        ) from exc


def connect_options(url: str, context: ssl.SSLContext | None) -> dict[str, Any]:
    """The keywords that make :func:`websockets.asyncio.client.connect` verify ``url`` with
    ``context``: none for a ``ws://`` URL (websockets refuses a context there) or without a
    context (websockets then makes its default one, rules 2 and 3)."""
    if context is None or not url.startswith("wss:"):
        return {}
    return {"ssl": context}


def certificate_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure behind ``exc``, if that is what it is.

    urllib3 wraps the :mod:`ssl` error in its own ``SSLError`` (and the Client's
    :class:`~sdk.transport.TransportError` wraps that), httpx in its ``ConnectError``
    (twice); websockets raises it as it is. Each keeps it as a cause or context, which is
    followed.
    aiohttp's ``ClientConnectorCertificateError`` is itself a ``CertificateError`` without
    the ssl error's fields, and holds that error as ``certificate_error``."""
    seen: BaseException | None = exc
    for _ in range(_CHAIN_MAX):
        if seen is None:
            return None
        inner = getattr(seen, "certificate_error", None)
        if isinstance(inner, ssl.SSLCertVerificationError):
            return inner
        if isinstance(seen, ssl.SSLCertVerificationError) and hasattr(seen, "verify_message"):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def untrusted(error: ssl.SSLCertVerificationError) -> str:
    """Why a certificate was refused, and what to do about it (for the error message)."""
    why = error.verify_message or error.reason or str(error)
    return f"certificate verify failed: {why}; {HOW_TO_TRUST}"
