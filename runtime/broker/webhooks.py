"""Webhook storage: subscriptions, the fan-out of lifecycle events into deliveries, and the
delivery state machine.

The job transitions already append every lifecycle event to the ``events`` stream; nothing on
their path knows about webhooks. A fan-out cursor (``webhook:cursor``) walks that stream: each
step reads the events after it, matches them against the subscriptions, and creates one delivery
per match while moving the cursor, in one script (webhook_fanout.lua) that only applies when the
cursor has not moved meanwhile. So an event is fanned out once, whichever server gets there, and
a server that dies between its read and its script leaves the cursor for the next one.

A delivery is ``pending`` in ``webhook:due`` (score: when it is due), ``delivering`` under a lease
while a sender has it (score: the end of the lease, after which it is sent again), then
``delivered``, ``dead`` or ``cancelled`` (its record kept for a while). The events stream is
capped (``events_maxlen``): a fan-out that falls further behind than the cap loses events.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Sequence
from typing import Any

import msgspec

from runtime import timefmt
from runtime.broker.core import Broker
from runtime.broker.scripts import Status
from runtime.errors import Conflict, NotFound, Unsupported
from runtime.ids import uuid7
from runtime.webhooks.model import (
    Subscription,
    SubscriptionPatch,
    SubscriptionRequest,
    WebhookFilter,
)

logger = logging.getLogger(__name__)

SOURCE = "ojs://ojs-runtime"
FANOUT_BATCH = 500  # events read per fan-out step
FANOUT_MAX_DELIVERIES = 1_000  # deliveries made per step, at most (plus one event's)
# One process fans out at a time; another takes over this long after it stopped renewing (died).
FANOUT_LEASE_MS = 5_000
_DELIVERY_NAMESPACE = uuid.UUID("6f6a732d-7765-6268-6f6f-6b2d64656c69")
_encode = msgspec.json.encode
_decode_any = msgspec.json.Decoder(dict[str, Any])
_decode_filter = msgspec.json.Decoder(WebhookFilter)
_decode_events = msgspec.json.Decoder(list[str])


class Claimed(msgspec.Struct, frozen=True, kw_only=True):
    """A delivery taken for one attempt, with what sending it needs."""

    id: str
    subscription_id: str
    url: str
    secrets: tuple[str, ...]  # newest first; the previous one while a rotation lasts
    event_type: str
    body: bytes
    attempt: int


def delivery_id(subscription_id: str, event_id: str) -> str:
    """Stable across attempts and fan-out re-runs: the receiver's idempotency key (spec 7.5)."""
    return "del_" + str(uuid.uuid5(_DELIVERY_NAMESPACE, f"{subscription_id}/{event_id}"))


def _text(value: bytes | None) -> str | None:
    return value.decode() if value is not None else None


def _subscription(fields: dict[bytes, bytes]) -> Subscription:
    def get(name: str) -> str | None:
        return _text(fields.get(name.encode()))

    filter_raw, metadata_raw, disabled_at = get("filter"), get("metadata"), get("disabled_at")
    return Subscription(
        id=get("id") or "", url=get("url") or "", events=_decode_events.decode(get("events") or "[]"),
        active=get("active") == "1",
        filter=_decode_filter.decode(filter_raw) if filter_raw else None,
        metadata=_decode_any.decode(metadata_raw) if metadata_raw else None,
        created_at_ms=int(get("created_at") or 0), updated_at_ms=int(get("updated_at") or 0),
        consecutive_failures=int(get("consecutive_failures") or 0),
        disabled_reason=get("disabled_reason") or None,
        disabled_at_ms=int(disabled_at) if disabled_at else None,
        after_event=stream_position(get("after_event") or "0-0"),
    )


def stream_position(entry_id: str) -> tuple[int, int]:
    """A stream entry id as a comparable (ms, sequence)."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def event_envelope(entry_id: str, fields: dict[bytes, bytes]) -> tuple[str, dict[str, Any], bytes]:
    """(type, data, body) of one stream entry: the OJS event envelope (ojs-events.md) a
    subscriber receives, its id derived from the entry so every re-run builds the same body."""
    event_type = _text(fields.get(b"type")) or "unknown"
    try:
        data = _decode_any.decode(fields[b"data"]) if fields.get(b"data") else {}
    except msgspec.DecodeError:  # never let one odd entry hold the cursor back for good
        data = {"raw": fields[b"data"].decode("utf-8", "replace")}
    raw_time = fields.get(b"time") or b""
    time_ms = int(raw_time) if raw_time.isdigit() else stream_position(entry_id)[0]
    envelope = {
        "specversion": "1.0", "id": f"evt_{entry_id}", "type": event_type, "source": SOURCE,
        "time": timefmt.format_ms(time_ms), "subject": _text(fields.get(b"subject")) or "", "data": data,
    }
    return event_type, data, _encode(envelope)


class Webhooks:
    """Subscriptions and deliveries of one namespace."""

    def __init__(self, broker: Broker) -> None:
        self.redis = broker.redis
        self.keys = broker.keys
        self.scripts = broker.scripts
        self.settings = broker.settings
        self._process_id = f"{socket.gethostname()}:{os.getpid()}:{uuid7()}"

    # --- subscriptions ---------------------------------------------------------------------

    async def create(self, req: SubscriptionRequest, secret: str) -> Subscription:
        if self.settings.events_maxlen <= 0:
            raise Unsupported("Webhooks need the event stream, which this server has turned off (events_maxlen 0).")
        now = timefmt.now_ms()
        sub_id = "sub_" + uuid7()
        fields: list[str | bytes] = [
            "id", sub_id, "url", req.url, "events", _encode(req.events), "active", "1" if req.active else "0",
            "secret", secret, "created_at", str(now), "updated_at", str(now), "consecutive_failures", "0",
        ]
        if req.filter is not None:
            fields += ["filter", _encode(req.filter)]
        if req.metadata is not None:
            fields += ["metadata", _encode(req.metadata)]
        (status,) = await self.scripts.call(
            "webhook_subscribe",
            keys=[self.keys.webhook_subs, self.keys.webhook_sub(sub_id), self.keys.webhook_cursor, self.keys.events],
            args=[str(now), sub_id, str(self.settings.webhook_max_subscriptions), *fields],
        )
        if status == Status.CONFLICT:
            raise Conflict(f"At most {self.settings.webhook_max_subscriptions} webhook subscriptions may exist.",
                           details={"max_subscriptions": self.settings.webhook_max_subscriptions})
        return await self.get(sub_id)

    async def get(self, sub_id: str) -> Subscription:
        fields = await self.redis.hgetall(self.keys.webhook_sub(sub_id))
        if not fields:
            raise NotFound(f"Webhook subscription '{sub_id}' not found.")
        return _subscription(fields)

    async def subscriptions(self) -> list[Subscription]:
        ids = await self.redis.zrange(self.keys.webhook_subs, 0, -1)
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for raw in ids:
                pipe.hgetall(self.keys.webhook_sub(raw.decode()))
            rows = await pipe.execute()
        return [_subscription(fields) for fields in rows if fields]  # deleted meanwhile: skipped

    async def update(self, sub_id: str, patch: SubscriptionPatch) -> Subscription:
        sets: list[str | bytes] = ["updated_at", str(timefmt.now_ms())]
        deletes: list[str] = []
        if patch.url is not msgspec.UNSET:
            sets += ["url", patch.url]
        if patch.events is not msgspec.UNSET:
            sets += ["events", _encode(patch.events)]
        if patch.active is not msgspec.UNSET:
            sets += ["active", "1" if patch.active else "0"]
            if patch.active:  # re-enabled by hand: its failure streak starts again
                sets += ["consecutive_failures", "0"]
                deletes += ["disabled_reason", "disabled_at"]
        for name in ("filter", "metadata"):
            value = getattr(patch, name)
            if value is None:
                deletes.append(name)
            elif value is not msgspec.UNSET:
                sets += [name, _encode(value)]
        await self._write(sub_id, sets, deletes)
        return await self.get(sub_id)

    async def rotate_secret(self, sub_id: str, new_secret: str, *, overlap_ms: int) -> Subscription:
        """The new secret signs from now on; the old one signs beside it for `overlap_ms`."""
        current = await self.redis.hget(self.keys.webhook_sub(sub_id), "secret")
        if current is None:
            raise NotFound(f"Webhook subscription '{sub_id}' not found.")
        now = timefmt.now_ms()
        await self._write(sub_id, ["secret", new_secret, "old_secret", current,
                                   "old_secret_until", str(now + overlap_ms), "updated_at", str(now)], [])
        return await self.get(sub_id)

    async def secrets(self, sub_id: str) -> tuple[str, ...]:
        secret, old, until = await self.redis.hmget(self.keys.webhook_sub(sub_id), "secret", "old_secret",
                                                    "old_secret_until")
        if secret is None:
            raise NotFound(f"Webhook subscription '{sub_id}' not found.")
        return _secrets_in_use(secret, old, until, timefmt.now_ms())

    async def _write(self, sub_id: str, sets: list[str | bytes], deletes: list[str]) -> None:
        (status,) = await self.scripts.call(
            "webhook_update", keys=[self.keys.webhook_sub(sub_id)], args=[str(len(deletes)), *deletes, *sets])
        if status == Status.NOT_FOUND:
            raise NotFound(f"Webhook subscription '{sub_id}' not found.")

    async def delete(self, sub_id: str) -> Subscription:
        """Its pending deliveries are cancelled when they come due (webhook_claim.lua)."""
        sub = await self.get(sub_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.webhook_sub(sub_id), self.keys.webhook_log(sub_id))
            pipe.zrem(self.keys.webhook_subs, sub_id)
            await pipe.execute()
        return sub

    async def log(self, sub_id: str, *, limit: int) -> list[dict[str, Any]]:
        await self.get(sub_id)
        return (await self.logs([sub_id], limit=limit))[0]

    async def logs(self, sub_ids: Sequence[str], *, limit: int) -> list[list[dict[str, Any]]]:
        """The latest `limit` delivery attempts of each subscription, in one round trip; a
        subscription deleted meanwhile has none (its log went with it), not a 404 for all."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for sub_id in sub_ids:
                pipe.lrange(self.keys.webhook_log(sub_id), 0, limit - 1)
            replies: list[list[bytes]] = await pipe.execute()
        return [[_decode_any.decode(entry) for entry in entries] for entries in replies]

    async def delivery(self, delivery_id: str) -> dict[str, Any]:
        fields = await self.redis.hgetall(self.keys.webhook_delivery(delivery_id))
        if not fields:
            raise NotFound(f"Webhook delivery '{delivery_id}' not found.")
        view: dict[str, Any] = {k.decode(): v.decode("utf-8", "replace") for k, v in fields.items() if k != b"body"}
        view["attempt"] = int(view.get("attempt", 0))
        view["event"] = _decode_any.decode(fields[b"body"])
        for name in ("created_at", "updated_at", "next_attempt_at"):
            if view.get(name):
                view[name] = timefmt.format_ms(int(view[name]))
        if view.get("last_status"):
            view["last_status"] = int(view["last_status"])
        return view

    async def retry(self, delivery_id: str) -> dict[str, Any]:
        """A dead (or cancelled) delivery sent again from now, with a fresh attempt count."""
        status, state = await self.scripts.call(
            "webhook_retry", keys=[self.keys.webhook_delivery(delivery_id), self.keys.webhook_due],
            args=[str(timefmt.now_ms()), delivery_id],
        )
        if int(status) == Status.NOT_FOUND:
            raise NotFound(f"Webhook delivery '{delivery_id}' not found.")
        if int(status) != Status.OK:
            raise Conflict(f"Delivery '{delivery_id}' is {state.decode()}; only dead or cancelled ones are retried.")
        return await self.delivery(delivery_id)

    # --- fan-out -----------------------------------------------------------------------------

    async def fan_out(self, *, now_ms: int | None = None) -> bool:
        """Fan one batch of events out into deliveries. True when more may be waiting."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(self.keys.webhook_subs)
            pipe.get(self.keys.webhook_cursor)
            count, raw_cursor = await pipe.execute()
        if not count or not await self._hold_fanout():
            return False
        cursor = _text(raw_cursor)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xrange(self.keys.events, min=f"({cursor}" if cursor else "-", count=FANOUT_BATCH)
            pipe.xinfo_stream(self.keys.events)
            entries, info = await pipe.execute(raise_on_error=False)
        if isinstance(entries, Exception) or not entries:
            return False
        self._warn_if_trimmed(cursor, info)
        # Read after the events: a subscription made since has its after_event at or past all of
        # them (the stream only grows), so none of this batch is one it should have had.
        # Inactive subscriptions still move the cursor: what happens while one is off is not
        # delivered when it is turned on again.
        subs = [sub for sub in await self.subscriptions() if sub.active]
        args: list[str | bytes] = []
        last = ""
        for raw_id, fields in entries:
            last = raw_id.decode()
            event_type, data, body = event_envelope(last, fields)
            position = stream_position(last)
            for sub in subs:
                # Only events after the subscription was made reach it.
                if position > sub.after_event and sub.wants(event_type, data):
                    args += [delivery_id(sub.id, last), sub.id, event_type, body]
            if len(args) >= 4 * FANOUT_MAX_DELIVERIES:
                break  # one script call stays small; the rest is the next batch
        now = timefmt.now_ms() if now_ms is None else now_ms
        status, _created, dropped = await self.scripts.call(
            "webhook_fanout", keys=[self.keys.prefix, self.keys.webhook_cursor, self.keys.webhook_due],
            args=[str(now), cursor or "", last, str(self.settings.webhook_max_pending), *args],
        )
        if dropped:
            logger.warning("webhooks: %s deliveries not made: %s are pending already", dropped,
                           self.settings.webhook_max_pending)
        return status == Status.OK and (len(entries) == FANOUT_BATCH or last != entries[-1][0].decode())

    async def _hold_fanout(self) -> bool:
        """Whether this process does the fan-out now (webhook_fanout_lease.lua)."""
        (held,) = await self.scripts.call("webhook_fanout_lease", keys=[self.keys.webhook_fanout_lease],
                                          args=[self._process_id, str(FANOUT_LEASE_MS)])
        return bool(held)

    @staticmethod
    def _warn_if_trimmed(cursor: str | None, info: Any) -> None:
        """The capped stream trimmed past the cursor: events that left it before their fan-out
        are lost (all of them, or at the very least the one the cursor named): say so."""
        first = info.get("recorded-first-entry-id") if isinstance(info, dict) else None
        if isinstance(first, bytes):
            first = first.decode()
        if cursor and cursor != "0-0" and first and stream_position(first) > stream_position(cursor):
            logger.warning("webhooks: the event stream (capped by OJS_EVENTS_MAXLEN) now starts at %s, past %s "
                           "where the fan-out was: events in between may not be delivered", first, cursor)

    # --- delivery ----------------------------------------------------------------------------

    async def claim(self, limit: int, *, now_ms: int | None = None) -> list[Claimed]:
        now = timefmt.now_ms() if now_ms is None else now_ms
        rows = await self.scripts.call(
            "webhook_claim", keys=[self.keys.prefix, self.keys.webhook_due],
            args=[str(now), str(self.settings.webhook_lease_ms), str(limit), str(self.settings.webhook_retention_ms),
                  str(self.settings.webhook_max_attempts)],
        )
        return [
            Claimed(id=row[0].decode(), subscription_id=row[1].decode(), url=row[2].decode(),
                    secrets=_secrets_in_use(row[3], row[4] or None, row[5] or None, now),
                    event_type=row[6].decode(), body=row[7], attempt=int(row[8]))
            for row in rows
        ]

    async def settle(self, claimed: Claimed, *, verdict: str, next_ms: int | None, entry: dict[str, Any],
                     status: int | None, error: str | None) -> bool | None:
        """Record an attempt. True when it disabled the subscription; None when the claim was
        stale (its lease ended and the delivery is someone else's now)."""
        reply = await self.scripts.call(
            "webhook_settle",
            keys=[self.keys.webhook_delivery(claimed.id), self.keys.webhook_sub(claimed.subscription_id),
                  self.keys.webhook_log(claimed.subscription_id), self.keys.webhook_due],
            args=[str(timefmt.now_ms()), claimed.id, str(claimed.attempt), verdict,
                  "" if next_ms is None else str(next_ms), _encode(entry), str(self.settings.webhook_log_length),
                  str(self.settings.webhook_disable_after_failures), str(self.settings.webhook_retention_ms),
                  "" if status is None else str(status), error or ""],
        )
        if reply[0] == Status.STALE_CLAIM:
            return None
        return bool(reply[1])


def _secrets_in_use(secret: bytes, old: bytes | None, until: bytes | None, now_ms: int) -> tuple[str, ...]:
    if old and until and int(until) > now_ms:
        return secret.decode(), old.decode()
    return (secret.decode(),)
