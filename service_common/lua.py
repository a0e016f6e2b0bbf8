"""Lua scripts called by SHA: loaded once, never asked about again.

redis-py's registered scripts send ``SCRIPT EXISTS`` before every pipeline that holds one,
so a batch of one task paid a whole extra command per pipeline (about one command in twelve
on the hot path). A :class:`Lua` script is instead queued as a plain ``EVALSHA``; when Redis
answers ``NOSCRIPT`` (its script cache is empty after a restart or ``SCRIPT FLUSH``; a new
node of a cluster), :func:`execute_pipeline` loads the scripts that were missing and runs
those calls again, once. A call that failed with ``NOSCRIPT`` did nothing, so running it
again writes nothing twice; the other commands of the pipeline ran once, in order, and are
not repeated.

Every :class:`Lua` created in this process is known by its SHA, so a pipeline can hold the
calls of several scripts.

**One hash slot per call.** Each script declares the keys it takes, as the names of the
:class:`sdk.keys.Keys` methods that build them (all called with one id), and every call is
checked against that: the number of keys, and that they share a hash slot (a Redis Cluster
refuses a script whose keys do not; the check refuses it on one Redis too, before anything is
sent). ``tests/common/test_key_slots.py`` walks every script the services define and checks
that its declared keys share a slot.

**Batch scripts** (``unit=``) take the keys of each *unit* (one task, say) after their fixed
``keys`` and loop over the units, so a batch costs one call instead of one per unit. On one
Redis a call may hold units of any slots: the whole batch is one call. On a Redis Cluster a
call holds one slot's units; :func:`slot_groups` splits a batch into those calls (on one
Redis, into calls of at most :data:`MAX_UNITS`, so no call holds Redis up for long).

**One-node scripts** (``one_node=True``) touch keys of many slots by design: a fast path for
one Redis, which refuses them a Redis Cluster client (the caller takes its cluster path
there). Their keys are the declared ones, then any more the source documents.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Sequence
from typing import Any, TypeAlias

from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.crc import key_slot
from redis.exceptions import NoScriptError, RedisError
from redis.typing import EncodableT

from service_common.redis_client import RedisClient

AnyPipeline: TypeAlias = Pipeline | ClusterPipeline
"""A pipeline of one Redis or of a Redis Cluster (which sends each command to its slot's node)."""

_SOURCES: dict[str, str] = {}
"""SHA1 -> source of every script made here, for reloading after ``NOSCRIPT``."""

_QUEUED: weakref.WeakKeyDictionary[Any, dict[int, tuple[Any, ...]]] = weakref.WeakKeyDictionary()
"""Per pipeline, the script calls queued on it: position in the pipeline -> EVALSHA's args."""


class CrossSlotKeys(ValueError):
    """A script was called with keys that are not one hash slot's, or not the keys it declares."""


def check_one_slot(keys: Sequence[str]) -> None:
    """Raise :class:`CrossSlotKeys` unless ``keys`` all map to one hash slot."""
    if len(keys) > 1 and len({key_slot(key.encode()) for key in keys}) > 1:
        raise CrossSlotKeys(f"keys of more than one hash slot in one script: {list(keys)}")


MAX_UNITS = 256
"""The most units one call of a batch script holds: a script runs alone on its Redis, so a
window of thousands of tasks goes as several calls, and other clients wait for none long."""


def is_cluster(client: RedisClient | AnyPipeline) -> bool:
    """Whether ``client`` talks to a Redis Cluster (whose scripts take one slot's keys)."""
    return isinstance(client, RedisCluster | ClusterPipeline)


def slot_groups(client: RedisClient | AnyPipeline, keys: Sequence[str]) -> list[list[int]]:
    """The calls of a batch script over units whose (first) keys are ``keys``, as lists of
    indices into ``keys``, in order: on one Redis, runs of at most :data:`MAX_UNITS`; on a
    Redis Cluster, one slot's units each (then also at most :data:`MAX_UNITS`)."""
    if not is_cluster(client):
        indices = range(len(keys))
        return [list(indices[i : i + MAX_UNITS]) for i in range(0, len(keys), MAX_UNITS)]
    by_slot: dict[int, list[int]] = {}
    for i, key in enumerate(keys):
        by_slot.setdefault(key_slot(key.encode()), []).append(i)
    return [g[i : i + MAX_UNITS] for g in by_slot.values() for i in range(0, len(g), MAX_UNITS)]


class Lua:
    """One Lua script, called by its SHA1 (see the module docstring). ``keys`` names the
    :class:`sdk.keys.Keys` methods that build its first ``KEYS``, in order; ``unit`` those of
    each unit of a batch script, which follow them."""

    def __init__(
        self,
        source: str,
        *,
        keys: Sequence[str] = (),
        unit: Sequence[str] = (),
        one_node: bool = False,
    ) -> None:
        self.source = source
        self.keys = tuple(keys)
        self.unit = tuple(unit)
        self.one_node = one_node
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        _SOURCES[self.sha] = source

    async def __call__(
        self,
        *,
        keys: Sequence[str],
        args: Sequence[EncodableT],
        client: RedisClient | AnyPipeline,
        by_source: bool = False,
    ) -> Any:
        """Run the script on ``client`` now; on a pipeline, queue it (its reply comes from
        :func:`execute_pipeline`). ``by_source`` sends it as ``EVAL`` with its source, which
        needs no script cache (for a path that runs right after a Redis restart, where an
        ``EVALSHA`` refused would leave the rest of its pipeline run without it)."""
        self._check(keys, client)
        if by_source:
            return await _eval(client, self.source, keys, args)
        command = ("EVALSHA", self.sha, len(keys), *keys, *args)
        if isinstance(client, Pipeline | ClusterPipeline):
            _QUEUED.setdefault(client, {})[len(client)] = command
            client.execute_command(*command)
            return client
        try:
            return await client.execute_command(*command)
        except NoScriptError:
            await client.script_load(self.source)
            return await client.execute_command(*command)

    def _check(self, keys: Sequence[str], client: RedisClient | AnyPipeline) -> None:
        fixed, per_unit = len(self.keys), len(self.unit)
        if self.one_node:
            if is_cluster(client):
                raise CrossSlotKeys("a script for one Redis was called on a Redis Cluster")
            if len(keys) < fixed:
                raise CrossSlotKeys(f"the script takes at least {fixed} keys, not {len(keys)}")
            return
        if not per_unit:
            if len(keys) != fixed:
                raise CrossSlotKeys(f"the script takes {fixed} keys, not {len(keys)}")
            check_one_slot(keys)
            return
        units = len(keys) - fixed
        if units <= 0 or units % per_unit:
            raise CrossSlotKeys(
                f"the script takes {fixed} keys and {per_unit} per unit, not {len(keys)} in all"
            )
        if is_cluster(client):
            check_one_slot(keys)
            return
        for i in range(fixed, len(keys), per_unit):
            check_one_slot([*keys[:fixed], *keys[i : i + per_unit]])


async def _eval(
    client: RedisClient | AnyPipeline,
    source: str,
    keys: Sequence[str],
    args: Sequence[EncodableT],
) -> Any:
    reply = client.execute_command("EVAL", source, len(keys), *keys, *args)
    if isinstance(client, Pipeline | ClusterPipeline):
        return client
    return await reply


async def execute_pipeline(pipe: AnyPipeline) -> list[Any]:
    """``await pipe.execute()``, running again (once, after loading them) the script calls
    Redis answered ``NOSCRIPT``; raises the first other error, as ``execute`` does. The
    pipeline's connection always goes back to the pool."""
    queued = _QUEUED.pop(pipe, {})
    try:
        replies = await pipe.execute(raise_on_error=False)
    finally:
        await pipe.reset()  # type: ignore[no-untyped-call]
    missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    if missing:
        await _load({str(queued[i][1]) for i in missing}, pipe)
        for i in missing:
            pipe.execute_command(*queued[i])
        try:
            for i, reply in zip(missing, await pipe.execute(raise_on_error=False), strict=True):
                replies[i] = reply
        finally:
            await pipe.reset()  # type: ignore[no-untyped-call]
    for reply in replies:
        if isinstance(reply, RedisError):
            raise reply
    return list(replies)


async def _load(shas: set[str], pipe: AnyPipeline) -> None:
    """Load the scripts ``shas`` on every server (every primary of a cluster)."""
    sources = []
    for sha in shas:
        source = _SOURCES.get(sha)
        if source is None:
            raise NoScriptError(f"NOSCRIPT: no script with SHA {sha} was made by this process")
        sources.append(source)
    if isinstance(pipe, ClusterPipeline):
        for source in sources:  # SCRIPT LOAD on the client goes to every primary
            await pipe.cluster_client.script_load(source)
        return
    for source in sources:
        pipe.script_load(source)
    try:
        await pipe.execute()
    finally:
        await pipe.reset()  # type: ignore[no-untyped-call]
