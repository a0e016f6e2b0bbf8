"""TLS on the services' own sockets: the certificate and key ``fxbroker web`` and
``fxbroker ws`` serve ``https://`` and ``wss://`` with.

Both services take the same pair of settings, ``tls_cert`` (``FXBROKER_TLS_CERT``, a PEM
certificate or chain) and ``tls_key`` (``FXBROKER_TLS_KEY``, its PEM private key), or the
flags ``--tls-cert`` / ``--tls-key``: both or neither (neither: plain ``http://`` and
``ws://``, for a service behind a proxy that ends TLS). The files are loaded when the
service starts, before it binds its port, so a missing, unreadable or mismatched file ends
the start with a :class:`~service_common.errors.SettingsError` naming the settings, never
a traceback at the first connection.

Who connects trusts the certificate by the clients' rule (:mod:`sdk.tls`): the SDK and the
agent, through ``ca_file=`` / ``FXBROKER_CA_FILE`` or ``SSL_CERT_FILE``; ws_service, which
asks the web service about tokens at ``FXBROKER_WEB_URL``, through ``SSL_CERT_FILE``.
"""

from __future__ import annotations

import ssl

from service_common.errors import SettingsError

CERT_VAR = "FXBROKER_TLS_CERT"
KEY_VAR = "FXBROKER_TLS_KEY"


def check_pair(cert_file: str, key_file: str) -> None:
    """A certificate needs its key and a key its certificate: both set, or neither."""
    if bool(cert_file) != bool(key_file):
        raise SettingsError(
            f"set both tls_cert ({CERT_VAR}) and tls_key ({KEY_VAR}), or neither; "
            f"only {'tls_cert' if cert_file else 'tls_key'} is set"
        )


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server context serving ``cert_file`` with ``key_file`` (modern defaults: TLS 1.2
    or later, no client certificates asked for).

    Raises :class:`~service_common.errors.SettingsError` naming both settings when the files
    cannot be read, are not PEM, or the key is not the certificate's."""
    check_pair(cert_file, key_file)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise SettingsError(
            f"the TLS certificate {cert_file!r} ({CERT_VAR}) and key {key_file!r} ({KEY_VAR}) "
            f"cannot be loaded: {exc}"
        ) from exc
    return context
