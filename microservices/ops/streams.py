"""Reading the governor's streams the way an operator looks for something: entries as text, newest first.

The plans, events and dead-letter streams are read with ``XREVRANGE`` in pages, never whole: a busy plans stream
holds many thousands of entries, and an operator's question ("where is plan X?") is about the recent ones.
"""

from __future__ import annotations

from collections.abc import Iterator

from microservices.core.redis_client import RedisClient

PAGE_SIZE = 1000
#: How many of a stream's newest entries a search looks through by default.
SEARCH_LIMIT = 10_000

#: A stream entry as text: its id and its fields.
Entry = tuple[str, dict[str, str]]


def text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def as_entry(raw: tuple[bytes, dict[bytes, bytes]]) -> Entry:
    entry_id, fields = raw
    return text(entry_id), {text(k): text(v) for k, v in (fields or {}).items()}


def newest(client: RedisClient, stream: str, limit: int, page_size: int = PAGE_SIZE) -> Iterator[Entry]:
    """At most ``limit`` entries of ``stream``, newest first, ``page_size`` per ``XREVRANGE``."""
    high, seen = "+", 0
    while seen < limit:
        count = min(page_size, limit - seen)
        page: list[tuple[bytes, dict[bytes, bytes]]] = client.xrevrange(stream, max=high, min="-", count=count)  # type: ignore[assignment]
        for raw in page:
            yield as_entry(raw)
        seen += len(page)
        if len(page) < count:
            return
        high = "(" + text(page[-1][0])  # exclusive: the next page starts before the last entry read


def find(client: RedisClient, stream: str, field: str, value: str, limit: int = SEARCH_LIMIT) -> list[Entry]:
    """The entries among the ``limit`` newest of ``stream`` whose ``field`` is ``value``, newest first."""
    return [entry for entry in newest(client, stream, limit) if entry[1].get(field) == value]


def entry(client: RedisClient, stream: str, entry_id: str) -> Entry | None:
    """One entry by its id, or None when the stream does not hold it (any more)."""
    page: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(stream, min=entry_id, max=entry_id, count=1)  # type: ignore[assignment]
    return as_entry(page[0]) if page else None
