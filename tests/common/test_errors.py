"""The server-side exception tree: one root, and configuration mistakes the SDK's type too."""

from __future__ import annotations

import pickle

import pytest

from sdk.errors import ConfigurationError, FxBrokerError
from service_common.errors import ServiceError, SettingsError
from web_service.accounts import AccountError, UnknownToken, UnknownUser, UserExists
from web_service.errors import ApiError
from ws_service.auth import WebUnavailable


@pytest.mark.parametrize(
    "error",
    [
        SettingsError("REDIS_URL is not set"),
        ApiError(404, "TASK_NOT_FOUND", "no task t"),
        AccountError("no"),
        UserExists("bob"),
        UnknownUser("bob"),
        UnknownToken("fxb_abcd", 2),
        WebUnavailable("GET /v1/whoami: HTTP 502"),
    ],
)
def test_every_server_error_derives_from_the_root_and_survives_pickling(
    error: ServiceError,
) -> None:
    assert isinstance(error, ServiceError)
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), str(copy)) == (type(error), str(error))


def test_only_a_configuration_mistake_is_also_the_sdks_error() -> None:
    assert issubclass(SettingsError, ConfigurationError)
    for cls in (ApiError, AccountError, WebUnavailable):
        assert not issubclass(cls, FxBrokerError)
