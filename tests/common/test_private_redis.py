"""The private redis-server of the fault tests, and the durability promise the README makes:
with ``appendfsync always`` what Redis acknowledged survives even a SIGKILL."""

from __future__ import annotations

import redis

from tests.private_redis import PrivateRedis


def test_acknowledged_writes_survive_a_kill_and_a_restart(private_redis: PrivateRedis) -> None:
    port = private_redis.port
    client = redis.Redis.from_url(private_redis.url, decode_responses=True)
    try:
        for i in range(100):
            client.xadd("durable", {"n": str(i)})  # each acknowledged before the next
        private_redis.restart(kill=True)  # SIGKILL: no shutdown, no final fsync
        assert (private_redis.port, private_redis.starts) == (port, 2)
        assert client.xlen("durable") == 100
        private_redis.restart()  # SIGTERM: an orderly restart
        assert client.xlen("durable") == 100
    finally:
        client.close()
