"""Limits: per-user (and per-endpoint, for agents) request rate (429 with Retry-After),
tasks per batch, body size."""

from __future__ import annotations

from dataclasses import replace

import pytest

from web_service.accounts import create_user
from web_service.app import create_app
from web_service.middleware.ratelimit import RateLimiter
from web_service.settings import WebSettings

from .helpers import assert_error, in_process_client


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_a_burst_then_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(rate_per_s=2.0, burst=3, clock=clock)
    assert [limiter.acquire("u") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("u") == pytest.approx(0.5)
    assert limiter.acquire("other") == 0.0  # each user has a bucket of their own
    clock.now += 0.5
    assert limiter.acquire("u") == 0.0
    assert limiter.acquire("u") == pytest.approx(0.5)
    clock.now += 100
    assert [limiter.acquire("u") for _ in range(4)][-1] > 0  # refills up to the burst only


def test_a_rate_of_zero_switches_the_limit_off() -> None:
    limiter = RateLimiter(rate_per_s=0, burst=1)
    assert not limiter.enabled
    assert all(limiter.acquire("u") == 0.0 for _ in range(100))


async def test_too_many_requests_are_429_with_retry_after(web_settings: WebSettings) -> None:
    settings = replace(web_settings, rate_limit_per_s=0.01, rate_limit_burst=3)
    _, token = await create_user(settings.database_url, "greedy")
    _, other = await create_user(settings.database_url, "modest")
    async with in_process_client(create_app(settings)) as client:
        headers = {"Authorization": f"Bearer {token}"}
        for _ in range(3):
            assert (await client.get("/v1/whoami", headers=headers)).status_code == 200
        response = await client.get("/v1/whoami", headers=headers)
        assert_error(response, 429, "RATE_LIMITED")
        assert 1 <= int(response.headers["retry-after"]) <= 100
        other_headers = {"Authorization": f"Bearer {other}"}
        assert (await client.get("/v1/whoami", headers=other_headers)).status_code == 200
        assert (await client.get("/healthz")).status_code == 200  # probes are not limited


async def test_an_agents_requests_count_against_its_endpoint_not_its_owner(
    web_settings: WebSettings,
) -> None:
    settings = replace(web_settings, rate_limit_per_s=0.01, rate_limit_burst=2)
    _, token = await create_user(settings.database_url, "owner")
    async with in_process_client(create_app(settings)) as client:
        headers = {"Authorization": f"Bearer {token}"}
        registered = await client.post("/v1/endpoints", json={"name": "gpu"}, headers=headers)
        agent = {"Authorization": f"Bearer {registered.json()['credential']}"}
        assert (await client.get("/v1/endpoint_session", headers=agent)).status_code == 200
        assert (await client.get("/v1/endpoint_session", headers=agent)).status_code == 200
        assert_error(await client.get("/v1/endpoint_session", headers=agent), 429, "RATE_LIMITED")
        # the owner spent one request of two: one is left
        assert (await client.get("/v1/whoami", headers=headers)).status_code == 200
        assert_error(await client.get("/v1/whoami", headers=headers), 429, "RATE_LIMITED")
