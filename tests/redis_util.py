"""Reading Redis in tests as plain text, with the types spelled out once."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import redis


def text_hash(r: redis.Redis, key: str | bytes) -> dict[str, str]:
    raw: dict[bytes, bytes] = r.hgetall(key)  # type: ignore[assignment]
    return {k.decode(): v.decode() for k, v in raw.items()}


def stream_entries(r: redis.Redis, name: str) -> list[dict[str, str]]:
    raw: list[tuple[bytes, dict[bytes, bytes]]] = r.xrange(name)  # type: ignore[assignment]
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in raw]


def hset_text(r: redis.Redis, key: str | bytes, mapping: Mapping[str, str]) -> None:
    r.hset(key, mapping=cast(Mapping[Any, Any], mapping))
