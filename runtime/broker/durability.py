"""``OJS_DURABILITY=replicated``: an enqueue, ack or nack is answered only once a replica has it.

Redis replicates asynchronously: a primary that dies right after answering a write may take it
along, and the replica promoted in its place never saw it (an enqueued job that is gone, a
completion that runs again). With this setting every call of those three transitions is followed,
in the same write on the same connection, by ``WAIT <replicas> <timeout>``, and its caller is
answered when the replicas have acknowledged the script's writes.

* **Group commit.** One ``WAIT`` is in flight at a time. The calls made while none is go out
  together at the end of the event-loop iteration, followed by one ``WAIT``; the calls that
  arrive while it blocks wait for it to return and then go out together, behind one ``WAIT`` of
  their own. A WAIT holds its connection until it returns, so a batch sent behind another's would
  only queue there: this way every caller is answered within about two timeouts, however many
  batches came before it.
* **A connection of its own.** The transitions with a WAIT go over a second lean connection, so
  that fetches, heartbeats and reads never wait behind one.
* **When the replicas do not confirm in time** (none connected, a failover under way), or the
  WAIT itself fails after the call's script ran (``-UNBLOCKED``: the primary was demoted while
  it blocked; the connection lost), the call fails with :class:`NotReplicated`: its writes were made on the primary and may or may not
  survive it, which is an unknown outcome (an HTTP enqueue gets the 503 of one; an enqueue with a
  client-chosen id is safe to repeat, and gets 409 when the first one survived). A pool's acks and
  nacks are sent again until they are confirmed (ack.lua and nack.lua take a repeat as done).
* **A reply that wrote nothing** (a 409 duplicate, a refused ack) is confirmed as far as WAIT
  can: up to this connection's last write. The job a duplicate names may have been written over
  another connection, before a reconnect.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from runtime.broker.wire import OutcomeUnknown

# The transitions that answer a producer (enqueue) or settle a job (ack, nack).
REPLICATED_TRANSITIONS = frozenset({"enqueue", "ack", "nack"})

SendMany = Callable[..., Awaitable[list[Any]]]


class NotReplicated(OutcomeUnknown):
    """The write was made on the primary, but too few replicas confirmed it in time: a failover
    now could lose it."""


class ReplicatedWrites:
    """Sends commands each followed by a shared ``WAIT`` (see the module text). `send_many` sends
    commands back to back on one connection and returns their replies (errors in their place)."""

    def __init__(self, send_many: SendMany, *, replicas: int, timeout_ms: int) -> None:
        self._send_many = send_many
        self._wait = ("WAIT", replicas, timeout_ms)
        self.replicas = replicas
        self._queue: list[tuple[Sequence[Any], asyncio.Future[Any]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sending: asyncio.Task[None] | None = None  # the batch whose WAIT is in flight
        self._flush_due = False

    async def call(self, command: Sequence[Any]) -> Any:
        """Send `command`; its reply once the replicas confirmed it, or its error."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a new event loop (a forked child, a test's): start afresh
            self._loop, self._queue, self._sending, self._flush_due = loop, [], None, False
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((command, future))
        if self._sending is None and not self._flush_due:
            self._flush_due = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        """Send what is queued, unless a batch is in flight: its end sends the next one."""
        self._flush_due = False
        if self._sending is not None:
            return
        batch, self._queue = self._queue, []
        if batch:
            self._sending = asyncio.get_running_loop().create_task(self._send(batch))
            self._sending.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        if self._sending is not task:
            return  # a batch of an event loop given up (see call)
        self._sending = None
        if self._queue and not self._flush_due:
            self._flush_due = True
            task.get_loop().call_soon(self._flush)

    async def _send(self, batch: list[tuple[Sequence[Any], asyncio.Future[Any]]]) -> None:
        try:
            replies = await self._send_many(*(command for command, _ in batch), self._wait)
        except BaseException as err:
            for _, future in batch:
                if not future.done():
                    future.set_exception(err)
            if not isinstance(err, Exception):
                raise
            return
        confirmed = replies[-1]
        for (_, future), reply in zip(batch, replies, strict=False):
            if future.done():
                continue
            if isinstance(reply, BaseException):
                future.set_exception(reply)  # the script itself failed: nothing to wait for
            elif isinstance(confirmed, BaseException):
                # The script ran; only the WAIT failed (-UNBLOCKED by a demotion, a lost
                # connection): whether its writes survive is unknown, as with too few replicas.
                unknown = NotReplicated(f"the write was made on the primary, but its WAIT failed "
                                        f"({confirmed}); a failover may lose it")
                unknown.__cause__ = confirmed
                future.set_exception(unknown)
            elif int(confirmed) < self.replicas:
                future.set_exception(NotReplicated(
                    f"{int(confirmed)} of {self.replicas} replica(s) confirmed the write within "
                    f"{self._wait[2]} ms; it was made on the primary and a failover may lose it"))
            else:
                future.set_result(reply)
