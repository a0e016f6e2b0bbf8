"""The exception tree of the server side: every error a service raises on purpose.

The SDK's tree (:mod:`sdk.errors`) is what users catch; this one is what operators and the
composition root see. The two meet once: a configuration mistake is a
:class:`~sdk.errors.ConfigurationError` wherever it is made, so ``fxbroker`` catches one
type for a bad client setting and a bad service setting alike::

    ServiceError                        base of every deliberate server-side error
    ├── SettingsError                   a setting is missing or unusable (names the variable
    │                                   or field); also an sdk.errors.ConfigurationError
    ├── ApiError (web_service.errors)   an HTTP answer other than success (status, code)
    ├── AccountError (web_service.accounts)
    │   ├── UserExists                  the user name is taken
    │   ├── UnknownUser                 no user has that name
    │   └── UnknownToken                no live token (or several) match a prefix
    ├── WebUnavailable (ws_service.auth)
    │                                   the web service could not answer the ws service
    └── ProtocolError (service_common.agent_protocol)
                                        a frame of the agent <-> gateway protocol is malformed
                                        or breaks its rules (carries the error code)

Each error passes its context to ``super().__init__`` so it survives pickling.
"""

from __future__ import annotations

from sdk.errors import ConfigurationError


class ServiceError(Exception):
    """Base class of every error a service raises on purpose."""


class SettingsError(ServiceError, ConfigurationError):
    """A setting is missing or has a value the service cannot use; nothing falls back."""
