""":class:`tests.private_cluster.PrivateCluster`: it forms a cluster that serves every slot,
keeps its data through a restart with AOF, and leaves no process behind."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.cluster

from tests.private_cluster import SLOTS, PrivateCluster, cluster_info, require_redis_cli
from tests.private_redis import HOST, require_redis_server


@pytest.fixture
def tools() -> None:
    require_redis_server()
    require_redis_cli()


def cluster_client(cluster: PrivateCluster) -> redis.cluster.RedisCluster:
    """A redis-py cluster client seeded with the first node only: it finds the rest."""
    return redis.cluster.RedisCluster(host=HOST, port=cluster.ports[0], decode_responses=True)


def slot_owners(port: int) -> dict[int, int]:
    """Slot -> the port of the master serving it, as the node on ``port`` sees it."""
    with redis.Redis(host=HOST, port=port) as node:
        ranges = node.execute_command("CLUSTER SLOTS")
    owners: dict[int, int] = {}
    for first, last, master, *_ in ranges:
        owners.update(dict.fromkeys(range(int(first), int(last) + 1), int(master[1])))
    return owners


def node_has(port: int, key: str) -> bool:
    """Whether the node on ``port`` itself holds ``key`` (``SCAN`` is never redirected)."""
    with redis.Redis(host=HOST, port=port) as node:
        return key.encode() in set(node.scan_iter(match=key))


@pytest.fixture
def durable(tools: None, tmp_path: Path) -> Iterator[PrivateCluster]:
    """Three masters with AOF, ``appendfsync always``."""
    with PrivateCluster(tmp_path / "cluster", appendfsync="always") as cluster:
        yield cluster


def test_the_cluster_forms_on_its_ports_and_serves_every_slot(
    durable: PrivateCluster,
) -> None:
    assert len(set(durable.ports)) == 3 and durable.running
    assert durable.url == "redis+cluster://" + ",".join(f"{HOST}:{p}" for p in durable.ports)
    for port in durable.ports:
        info = cluster_info(port)
        assert info["cluster_state"] == "ok", info
        assert (info["cluster_slots_assigned"], info["cluster_slots_ok"]) == (str(SLOTS),) * 2
        assert info["cluster_known_nodes"] == "3", info
        owners = slot_owners(port)
        assert sorted(owners) == list(range(SLOTS))
        assert set(owners.values()) == set(durable.ports)  # every master serves some slots


def test_a_key_lands_on_its_slots_master_and_survives_a_restart(
    durable: PrivateCluster,
) -> None:
    keys = [f"pc-{i}" for i in range(30)]  # enough to reach all three masters
    with cluster_client(durable) as client:
        for key in keys:
            client.set(key, key.upper())
        owner = {key: slot_owners(durable.ports[0])[client.keyslot(key)] for key in keys}
    assert set(owner.values()) == set(durable.ports)
    for key in keys:
        assert [node_has(p, key) for p in durable.ports] == [p == owner[key] for p in durable.ports]

    durable.restart(down_s=0.5)  # SIGTERM every node, start them again
    assert durable.running and durable.starts == 2
    assert slot_owners(durable.ports[1]) == slot_owners(durable.ports[0])
    assert sorted(slot_owners(durable.ports[2])) == list(range(SLOTS))
    with cluster_client(durable) as client:
        assert [client.get(key) for key in keys] == [key.upper() for key in keys]


def test_a_killed_node_keeps_what_always_fsynced_and_rejoins(durable: PrivateCluster) -> None:
    with cluster_client(durable) as client:
        client.set("pc-killed", "kept")
        port = slot_owners(durable.ports[0])[client.keyslot("pc-killed")]
    node = durable.ports.index(port)

    durable.restart_node(node, down_s=0.2, kill=True)  # SIGKILL: no final fsync
    assert all(cluster_info(p)["cluster_state"] == "ok" for p in durable.ports)
    with cluster_client(durable) as client:
        assert client.get("pc-killed") == "kept"


def test_without_aof_only_the_layout_survives(tools: None, tmp_path: Path) -> None:
    with PrivateCluster(tmp_path / "cluster") as cluster:
        with cluster_client(cluster) as client:
            client.set("pc-gone", "1")
        assert not any((tmp_path / "cluster" / str(p) / "appendonlydir").exists()
                       for p in cluster.ports)  # fmt: skip
        cluster.restart(kill=True)
        with cluster_client(cluster) as client:
            assert client.get("pc-gone") is None
        assert sorted(slot_owners(cluster.ports[0])) == list(range(SLOTS))


def test_nothing_is_left_running(tools: None, tmp_path: Path) -> None:
    cluster = PrivateCluster(tmp_path / "cluster")
    with cluster:
        pids = cluster.pids
        assert len(pids) == 3
    assert not cluster.running
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # signal 0: does the process exist?
    with pytest.raises(redis.ConnectionError):
        cluster_info(cluster.ports[0])
