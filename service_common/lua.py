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
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError, RedisError
from redis.typing import EncodableT

_SOURCES: dict[str, str] = {}
"""SHA1 -> source of every script made here, for reloading after ``NOSCRIPT``."""


class Lua:
    """One Lua script, called by its SHA1 (see the module docstring)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        _SOURCES[self.sha] = source

    async def __call__(
        self,
        *,
        keys: Sequence[str],
        args: Sequence[EncodableT],
        client: aioredis.Redis | Pipeline,
    ) -> Any:
        """Run the script on ``client`` now; on a pipeline, queue it (its reply comes from
        :func:`execute_pipeline`)."""
        if isinstance(client, Pipeline):
            client.evalsha(self.sha, len(keys), *keys, *args)
            return client
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await client.script_load(self.source)
            return await client.evalsha(self.sha, len(keys), *keys, *args)


async def execute_pipeline(pipe: Pipeline) -> list[Any]:
    """``await pipe.execute()``, running again (once, after loading them) the script calls
    Redis answered ``NOSCRIPT``; raises the first other error, as ``execute`` does. The
    pipeline's connection always goes back to the pool."""
    stack = list(pipe.command_stack)
    try:
        replies = await pipe.execute(raise_on_error=False)
    finally:
        await pipe.reset()  # type: ignore[no-untyped-call]
    missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    if missing:
        await _load({_sha(stack[i]) for i in missing}, pipe)
        again = pipe.pipeline_execute_command  # the same client, a fresh stack
        for i in missing:
            args, options = stack[i]
            again(*args, **options)  # type: ignore[no-untyped-call]
        try:
            for i, reply in zip(missing, await pipe.execute(raise_on_error=False), strict=True):
                replies[i] = reply
        finally:
            await pipe.reset()  # type: ignore[no-untyped-call]
    for reply in replies:
        if isinstance(reply, RedisError):
            raise reply
    return list(replies)


def _sha(command: tuple[Any, Any]) -> str:
    args, _ = command
    return str(args[1])  # ("EVALSHA", sha, numkeys, ...)


async def _load(shas: set[str], pipe: Pipeline) -> None:
    for sha in shas:
        source = _SOURCES.get(sha)
        if source is None:
            raise NoScriptError(f"NOSCRIPT: no script with SHA {sha} was made by this process")
        pipe.script_load(source)
    try:
        await pipe.execute()
    finally:
        await pipe.reset()  # type: ignore[no-untyped-call]
