"""A claimed job's Redis hash as the `Job` its handler sees, built without a JSON round trip.

The general path renders the hash as the OJS envelope (`broker.render`), encodes it and decodes
that into `Job`: the largest single cost of a short job in a pool, twice this path's. Here each
`Job` field is read straight from its hash field and only the JSON fragments are decoded, each
with a decoder of its field's type (JSON null included where the field is optional), so a `Job`
field the general path rejects is rejected here too, and the two build equal Jobs (a test holds
both, on real and on malformed hashes). Two differences, both for hashes no enqueue writes: the
fields a `Job` does not hold (progress, result, the other times) are not read, where the general
path rejects some malformed ones it did not need; and a JSON fragment with text after it is
rejected, where the general path spliced it into the envelope unparsed (``args`` of
``[1],"type":"x"`` changed the type). A hash with unknown top-level fields (``extra``, rare)
takes the general path, which may fill `Job` fields from them.
"""

from __future__ import annotations

from typing import Any

import msgspec

from runtime import timefmt
from runtime.broker.records import retry_display
from runtime.broker.render import DEFAULT_MAX_ATTEMPTS, encode_job, error_history
from runtime.context import Job

_job_decoder = msgspec.json.Decoder(Job)
_list = msgspec.json.Decoder(list[Any])
_dict = msgspec.json.Decoder(dict[str, Any])
_optional_list = msgspec.json.Decoder(list[Any] | None)
_optional_dict = msgspec.json.Decoder(dict[str, Any] | None)
_optional_tags = msgspec.json.Decoder(list[str] | None)
_version = msgspec.json.Decoder(int | str | None)


def job_of_hash(h: dict[bytes, bytes]) -> Job:
    """Raises `msgspec.MsgspecError` or `ValueError` for a hash that is not a valid job."""
    if b"extra" in h:
        return _job_decoder.decode(encode_job(h))
    get = h.get
    try:
        return Job(
            id=h[b"id"].decode(),
            type=h[b"type"].decode(),
            queue=h[b"queue"].decode(),
            args=_list.decode(get(b"args", b"[]")),
            meta=_dict.decode(get(b"meta", b"{}")),
            priority=int(get(b"priority", b"0")),
            state=h[b"state"].decode(),
            attempt=int(get(b"attempt", b"0")),
            max_attempts=int(get(b"max_attempts", DEFAULT_MAX_ATTEMPTS)),
            timeout_ms=None if (v := get(b"timeout_ms")) is None else int(v),
            visibility_timeout_ms=None if (v := get(b"visibility_timeout_ms")) is None else int(v),
            retry=_optional_dict.decode(retry_display(get(b"retry"))),  # the defaults filled in
            tags=None if (v := get(b"tags")) is None else _optional_tags.decode(v),
            created_at=_time(get(b"created_at")),
            enqueued_at=_time(get(b"enqueued_at")),
            started_at=_time(get(b"started_at")),
            scheduled_at=None if (v := get(b"scheduled_at")) is None else v.decode(),
            error=None if (v := get(b"error")) is None else _optional_dict.decode(v),
            errors=[_dict.decode(entry) for entry in error_history(h)] if b"nerr" in h else [],
            workflow_id=None if (v := get(b"workflow_id")) is None else v.decode(),
            parent_results=None if (v := get(b"parent_results")) is None else _optional_list.decode(v),
            version=None if (v := get(b"version")) is None else _version.decode(v),
        )
    except KeyError as missing:
        raise ValueError(f"the job hash has no {missing.args[0].decode()}") from None


# Epoch ms (as stored) -> RFC 3339. The jobs of one enqueue share created_at and enqueued_at, and
# those of one fetch share started_at: a few recent values cover nearly every job.
_recent_times: dict[bytes, str] = {}
_RECENT_TIMES = 64


def _time(value: bytes | None) -> str | None:
    if value is None:
        return None
    text = _recent_times.get(value)
    if text is None:
        text = timefmt.format_ms(int(value))
        if len(_recent_times) >= _RECENT_TIMES:
            _recent_times.clear()
        _recent_times[value] = text
    return text
