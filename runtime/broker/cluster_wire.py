"""The lean connection on a Redis Cluster: one pipelined socket per node, each command sent to the
node that owns its key's slot, redirects followed (:mod:`runtime.broker.cluster` says how)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis import exceptions as rx

from runtime.broker.cluster import (
    MAX_REDIRECTS,
    MIGRATING_BACKOFF_S,
    SlotMoved,
    refusal,
    slot_of_command,
)
from runtime.broker.wire import CommandNotSent, OutcomeUnknown, Wire, _open, _pack, _Protocol


class ClusterWire(Wire):
    """A :class:`~runtime.broker.wire.Wire` per node, behind one object. A command without a key
    (``FUNCTION LOAD``, ``WAIT``, ``INFO``) goes to the owner of the namespace's slot (the
    address' home key: the runtime's own connections have one), else to the node a ``MOVED``
    named last; a handler's ``WAIT`` belongs right behind its write, in one ``execute_many``."""

    def __init__(self, address: Any) -> None:
        super().__init__(address)
        self._nodes: dict[tuple[str, int], _Protocol] = {}
        self._openings: dict[tuple[str, int], asyncio.Task[_Protocol]] = {}

    async def execute(self, *args: Any) -> Any:
        target = self.address.cluster
        slot = slot_of_command(args)
        packed = _pack(args)
        deadline: float | None = None  # set by the first refusal: most commands see none
        pauses = iter(MIGRATING_BACKOFF_S)
        moves = 0
        while True:
            node = target.node_for(slot)
            proto = await self._node(node)
            try:
                return await proto.request(packed)
            except rx.ResponseError as err:
                refused = refusal(err, target, node)
                if refused is None:
                    raise
            except OutcomeUnknown:
                # Lost, or unanswered past its deadline: a hung node still takes connections,
                # so only its silence tells that a failover may have replaced it.
                target.unreachable(node)
                raise
            if isinstance(refused, SlotMoved):
                moves += 1
                if moves > MAX_REDIRECTS:  # a slot map that keeps changing: give up, nothing ran
                    raise refused
                continue
            now = asyncio.get_running_loop().time()
            if deadline is None:
                deadline = now + (self.address.command_timeout_s or 5.0)
            elif now >= deadline:
                raise refused
            await asyncio.sleep(next(pauses, MIGRATING_BACKOFF_S[-1]))

    async def execute_many(self, *commands: Sequence[Any]) -> list[Any]:
        """`commands` back to back to the node of the first one with a key. A command the cluster
        refused (a redirect: it did not run) gets that error in its place, never a second send:
        the others ran, and which of them may run again is the caller's to say."""
        target = self.address.cluster
        slot = next((s for s in map(slot_of_command, map(tuple, commands)) if s is not None), None)
        node = target.node_for(slot)
        proto = await self._node(node)
        replies = await asyncio.gather(*(proto.request(_pack(tuple(c))) for c in commands), return_exceptions=True)
        for index, reply in enumerate(replies):
            if isinstance(reply, rx.ResponseError) and (refused := refusal(reply, target, node)) is not None:
                replies[index] = refused
        if any(isinstance(reply, OutcomeUnknown) for reply in replies):
            target.unreachable(node)
        return replies

    async def _node(self, node: tuple[str, int]) -> _Protocol:
        loop = asyncio.get_running_loop()
        proto = self._nodes.get(node)
        if proto is not None and proto.loop is loop and proto.is_open():
            return proto
        opening = self._openings.get(node)
        if opening is None or opening.get_loop() is not loop or opening.done():
            opening = self._openings[node] = loop.create_task(_open(self.address, node))
        try:
            proto = await asyncio.shield(opening)
        except rx.AuthenticationError:
            raise
        except (rx.ConnectionError, OSError, TimeoutError) as err:
            self.address.cluster.unreachable(node)
            raise CommandNotSent(f"{err} The command was not sent.") from err
        finally:
            if opening.done():
                self._openings.pop(node, None)
        self._nodes[node] = proto
        return proto

    async def close(self) -> None:
        protos, self._nodes = list(self._nodes.values()), {}
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for proto in protos:
            if proto.transport is not None and proto.loop is running and not proto.closed.done():
                proto.transport.close()
                await proto.closed
