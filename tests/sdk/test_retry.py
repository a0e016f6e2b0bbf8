"""The retry decisions as pure code: which answers are retried, how long the delays are, when
an outage is given up, and what the error then says. The time is passed in; nothing sleeps."""

from __future__ import annotations

import httpx
import pytest

from fxbroker import APIError, ConfigurationError, ConnectionFailed
from sdk import _base
from sdk.config import ClientConfig
from sdk.retry import Outage, Retry, check_retry_for_s, parse_retry_after

URL = "http://web.example:8000"


def outage(retry_for_s: float = 10.0, jitter: float = 0.999999) -> Outage:
    return Outage(Retry(retry_for_s=retry_for_s), service=URL, jitter=lambda: jitter)


def test_delays_double_up_to_the_cap_with_jitter_between_half_and_all() -> None:
    policy = Retry(first_delay_s=0.1, max_delay_s=1.0)
    assert [round(policy.backoff_s(n, 0.999999), 3) for n in range(1, 7)] == [
        0.1, 0.2, 0.4, 0.8, 1.0, 1.0,
    ]  # fmt: skip
    assert [policy.backoff_s(n, 0.0) for n in (1, 5)] == [0.05, 0.5]
    assert policy.backoff_s(10_000, 0.0) == 0.5  # no overflow however long the outage


def test_an_outage_is_given_up_once_it_has_lasted_retry_for_s() -> None:
    o = outage(retry_for_s=10.0)
    assert o.failed(100.0, "refused") == pytest.approx(0.1)
    assert o.failed(100.1, "refused") == pytest.approx(0.2)
    assert o.failed(109.9, "refused") == pytest.approx(0.1)  # never sleeps past the bound
    assert o.failed(110.0, "refused") is None
    assert "gave up after trying for 10.0 s" in o.describe("refused", 110.0)
    assert "4 failures in a row, retry_for_s=10" in o.describe("refused", 110.0)


def test_an_answer_ends_the_outage_and_the_next_failure_starts_a_new_one() -> None:
    o = outage(retry_for_s=10.0)
    o.failed(0.0, "refused")
    o.failed(9.0, "refused")
    o.ended(9.5)
    assert o.since is None and o.failures == 0
    assert o.failed(50.0, "refused") == pytest.approx(0.1)
    assert o.since == 50.0


def test_retry_for_s_zero_gives_up_at_the_first_failure() -> None:
    o = outage(retry_for_s=0)
    assert o.failed(5.0, "refused") is None
    assert "retries are off" in o.describe("refused", 5.0)


def test_retry_after_is_honoured_capped_and_within_the_bound() -> None:
    o = Outage(Retry(retry_for_s=100.0, retry_after_max_s=30.0), service=URL, jitter=lambda: 0)
    assert o.failed(0.0, "HTTP 503", retry_after_s=3.0) == 3.0
    assert o.failed(3.0, "HTTP 503", retry_after_s=3600.0) == 30.0
    assert o.failed(90.0, "HTTP 503", retry_after_s=20.0) == 10.0  # the bound comes first
    assert [parse_retry_after(v) for v in ("2", " 1.5 ", "-1", "soon", None)] == [
        2.0, 1.5, None, None, None,
    ]  # fmt: skip


def test_retry_for_s_must_be_a_number_of_seconds_at_least_zero() -> None:
    assert check_retry_for_s(0) == 0.0
    for bad in (-1, float("inf"), float("nan"), True, "5"):
        with pytest.raises(ValueError, match="retry_for_s"):
            check_retry_for_s(bad)  # type: ignore[arg-type]


def test_the_bound_comes_from_the_argument_then_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FXBROKER_RETRY_FOR_S", "7.5")
    assert ClientConfig.from_env(url=URL, token="t").retry_for_s == 7.5
    assert ClientConfig.from_env(url=URL, token="t", retry_for_s=0).retry_for_s == 0
    monkeypatch.setenv("FXBROKER_RETRY_FOR_S", "a minute")
    with pytest.raises(ConfigurationError, match="FXBROKER_RETRY_FOR_S"):
        ClientConfig.from_env(url=URL, token="t")
    monkeypatch.delenv("FXBROKER_RETRY_FOR_S")
    assert ClientConfig.from_env(url=URL, token="t").retry_for_s == 60.0


def test_a_submit_carries_one_idempotency_key_kept_by_the_request() -> None:
    first = _base.submit("ep", [], None)
    second = _base.submit("ep", [], None)
    assert first.idempotency_key and second.idempotency_key
    assert first.idempotency_key != second.idempotency_key
    json_body = {"content-type": "application/json"}
    assert first.headers() == {**json_body, "Idempotency-Key": first.idempotency_key}
    keyed = _base.submit("ep", [], None, idempotency_key="k1")
    assert keyed.headers() == {**json_body, "Idempotency-Key": "k1"}
    assert keyed.body() == keyed.body()  # the same bytes on every retry: the key's fingerprint
    assert _base.batch_status(["t"]).headers() == json_body
    assert _base.get_task("t").headers() == {}


def test_which_answers_are_retried() -> None:
    submit, read = _base.submit("ep", [], None), _base.get_task("t")
    for status in (429, 502, 503, 504):
        assert _base.retryable(read, status) and _base.retryable(submit, status)
    for status in (200, 400, 401, 404, 422, 500):
        assert not _base.retryable(submit, status)
    # 409 CONFLICT: the same Idempotency-Key is underway; only a keyed request waits it out
    assert _base.retryable(submit, 409) and not _base.retryable(read, 409)


def test_an_exchange_retries_then_gives_up_naming_the_service() -> None:
    exchange = _base.Exchange(_base.whoami(), outage(retry_for_s=1.0), url=URL)
    error = httpx.ConnectError("connection refused")
    assert exchange.after_error(error, 0.0) is not None
    assert exchange.after_error(error, 0.5) is not None
    assert exchange.after_error(error, 1.0) is None
    failed = exchange.unreachable(1.0)
    assert isinstance(failed, ConnectionFailed) and failed.url == URL
    assert str(failed).startswith(f"could not reach {URL}: ConnectError: connection refused")
    assert "gave up after trying for 1.0 s" in str(failed) and exchange.attempts == 3


def test_a_final_unavailable_answer_raises_its_api_error_saying_it_gave_up() -> None:
    o = outage(retry_for_s=1.0)
    exchange = _base.Exchange(_base.whoami(), o, url=URL)
    assert exchange.after_answer(503, "0", 0.0) is not None
    assert exchange.after_answer(503, "0", 2.0) is None
    body = b'{"code": "SERVICE_UNAVAILABLE", "message": "Redis is down", "request_id": "r1"}'
    with pytest.raises(APIError) as caught:
        exchange.result(503, body, request_id="", now=2.0)
    assert caught.value.status == 503 and caught.value.code == "SERVICE_UNAVAILABLE"
    assert caught.value.message.startswith("Redis is down; gave up after trying for 2.0 s")
    assert o.since is not None  # still unavailable: the outage goes on


def test_any_other_answer_is_final_and_ends_the_outage() -> None:
    o = outage()
    o.failed(0.0, "refused")
    exchange = _base.Exchange(_base.whoami(), o, url=URL)
    assert exchange.after_answer(404, None, 1.0) is None
    assert o.since is None
    body = b'{"code": "NOT_FOUND", "message": "no such thing"}'
    with pytest.raises(APIError, match=r"^404 NOT_FOUND: no such thing$"):
        exchange.result(404, body, request_id="", now=1.0)
    assert exchange.result(200, b'{"ok": true}', request_id="", now=1.0) == {"ok": True}


def test_a_repeated_cancel_that_finds_the_task_cancelled_reads_as_cancelled() -> None:
    assert _base.parse_cancel({"outcome": "finished", "state": "cancelled"}) == "cancelled"
    assert _base.parse_cancel({"outcome": "finished", "state": "success"}) == "finished"
    assert _base.parse_cancel({"outcome": "interrupt_requested", "state": "running"}) == (
        "interrupt_requested"
    )
