"""Every script and transaction of the services touches one hash slot, so all of them run on a
Redis Cluster (issue 14).

The walk imports every module of the services and the endpoint agent, finds each
:class:`~service_common.lua.Lua` script defined there, and builds the keys it declares with
:class:`sdk.keys.Keys` for a random id: they must share a slot. The calls are held to the
declaration at run time (:meth:`Lua.__call__` refuses other keys), which the whole suite
exercises. ``MULTI`` transactions are found in the source and each must be one of
:data:`TRANSACTIONS`, whose keys are checked the same way."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import uuid
from pathlib import Path
from types import ModuleType

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from sdk.keys import Keys
from service_common.lua import CrossSlotKeys, Lua, check_one_slot

PACKAGES = ("web_service", "ws_service", "service_common", "amqp_publisher", "endpoint_agent")

TRANSACTIONS = {
    ("web_service.taskstore.endpoint_state", "set_allowed_functions"): (
        "endpoint_allowed_functions",
    ),
}
"""Each ``pipeline(transaction=True)`` in the services: (module, function) -> the Keys
methods that build the keys it touches."""


def _modules() -> list[ModuleType]:
    found = []
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        found.append(package)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{package_name}."):
            try:
                found.append(importlib.import_module(info.name))
            except ImportError as exc:  # an optional engine whose library is absent
                if "parsl" not in str(exc) and "rq" not in str(exc):
                    raise
    return found


def _scripts() -> dict[str, Lua]:
    scripts: dict[str, Lua] = {}
    for module in _modules():
        for name, value in vars(module).items():
            if isinstance(value, Lua) and value.__class__ is Lua:
                scripts.setdefault(value.sha, value)
                scripts[f"{module.__name__}.{name}"] = scripts.pop(value.sha)
    return scripts


def _same_slot(builders: tuple[str, ...]) -> set[int]:
    keys = Keys(prefix="fx")
    some_id = str(uuid.uuid4())
    return {key_slot(getattr(keys, builder)(some_id).encode()) for builder in builders}


def test_the_walk_finds_the_scripts_of_every_hop() -> None:
    names = set(_scripts())
    for expected in (
        "service_common.tasks.stream.START",
        "service_common.tasks.settle.SETTLE",
        "service_common.tasks.settle.ANNOUNCE",
        "web_service.taskstore.cancel.CANCEL",
        "web_service.taskstore.tasks.CREATE_TASK",
        "amqp_publisher.publisher.ADVANCE",
    ):
        assert expected in names


@pytest.mark.parametrize("name", sorted(_scripts()))
async def test_each_scripts_keys_share_a_hash_slot(name: str) -> None:
    """A batch script's fixed keys and one unit's share a slot (a cluster call holds one slot's
    units); a one-node script is refused a cluster client before anything is sent."""
    script = _scripts()[name]
    builders = (*script.keys, *script.unit)
    assert builders, f"{name} declares no keys"
    for builder in builders:
        assert callable(getattr(Keys, builder, None)), f"{name}: Keys has no {builder}()"
    if script.one_node:
        keys = Keys(prefix="fx")
        cluster = aioredis.RedisCluster(host="127.0.0.1", port=1)  # not connected: its kind
        with pytest.raises(CrossSlotKeys, match="one Redis"):
            await script(keys=[getattr(keys, b)("x") for b in builders], args=[], client=cluster)
        return
    assert len(_same_slot(builders)) == 1, f"{name}: {builders} span hash slots"


def test_every_transaction_is_known_and_touches_one_slot() -> None:
    found = set()
    for module in _modules():
        source = inspect.getsource(module)
        for match in re.finditer(r"pipeline\(transaction=True\)", source):
            line = source.count("\n", 0, match.start())
            functions = re.findall(
                r"^\s*(?:async )?def (\w+)", "\n".join(source.splitlines()[:line]), re.M
            )
            found.add((module.__name__, functions[-1]))
    assert found == set(TRANSACTIONS)
    for builders in TRANSACTIONS.values():
        assert len(_same_slot(builders)) == 1


def test_a_call_with_keys_of_two_slots_is_refused_before_it_is_sent() -> None:
    keys = Keys(prefix="fx")
    task, group = str(uuid.uuid4()), str(uuid.uuid4())
    check_one_slot([keys.task_group_results(group), keys.task_group_noticed(group)])
    with pytest.raises(CrossSlotKeys):
        check_one_slot([keys.task(task), keys.task_group_results(group)])


async def test_a_script_refuses_keys_other_than_it_declares() -> None:
    script = Lua("return 1", keys=["task_group_results", "task_group_noticed"])
    keys = Keys(prefix="fx")
    with pytest.raises(CrossSlotKeys, match="takes 2 keys, not 1"):
        await script(keys=[keys.task("x")], args=[], client=None)  # type: ignore[arg-type]
    with pytest.raises(CrossSlotKeys, match="more than one hash slot"):
        pair = [keys.task("x"), keys.task("y")]
        await script(keys=pair, args=[], client=None)  # type: ignore[arg-type]


def test_the_walk_reads_the_services_from_this_checkout() -> None:
    assert all(Path(m.__file__ or "").is_file() for m in _modules())
