"""Keyset (cursor) pagination for the big lists: orders and audit events.

A page is the rows strictly after a position in the list's order (newest first: timestamp
descending, then id descending), so a page costs the same at row 20 and at row 2,000,000. The
position travels as an opaque cursor: a version byte, the timestamp in microseconds and the
id, then an HMAC of those and of the list's filters (keyed from the JWT secret), in lower-case
hex (no `-`, `_` or `+` that an edge WAF could read as SQL comments or operators). A cursor that
was altered, truncated, or is reused with other filters fails the check and is answered 400.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

from zapora.infra.db import Row
from zapora.services.common import BadRequest

_VERSION = 1
_MAC_BYTES = 16
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Offset pagination is kept for old clients, bounded so that a deep offset cannot cost a scan.
MAX_OFFSET = 10_000
# Every cursor this release issues is 41 bytes (version, timestamp, id, MAC) in hex: the
# document says so, so that a string the API must refuse (like "0") is not valid by the schema.
CURSOR_LENGTH = 2 * (1 + 8 + 16 + _MAC_BYTES)
CURSOR_PATTERN = rf"^[0-9a-f]{{{CURSOR_LENGTH}}}$"


@dataclass(frozen=True)
class Position:
    at: datetime
    id: UUID


@dataclass(frozen=True)
class Window:
    """What a keyset list is asked for: how many rows, after which position, skipping how many."""

    limit: int = 20
    cursor: str | None = None
    offset: int = 0


class CursorCodec:
    """Cursors are signed with the JWT key set's first key and accepted from any of its keys,
    so a list being paged through survives a key rotation."""

    def __init__(self, secrets: str | Sequence[str]) -> None:
        key_list = [secrets] if isinstance(secrets, str) else list(secrets)
        self._keys = [
            hmac.new(key.encode(), b"list-cursor", hashlib.sha256).digest() for key in key_list
        ]

    def _mac(self, scope: str, payload: bytes, key: bytes | None = None) -> bytes:
        return hmac.new(
            self._keys[0] if key is None else key,
            scope.encode() + b"\x00" + payload,
            hashlib.sha256,
        ).digest()[:_MAC_BYTES]

    def encode(self, scope: str, at: datetime, row_id: UUID) -> str:
        micros = (at - _EPOCH) // timedelta(microseconds=1)
        payload = bytes([_VERSION]) + micros.to_bytes(8, "big", signed=True) + row_id.bytes
        return (payload + self._mac(scope, payload)).hex()

    def decode(self, scope: str, cursor: str) -> Position:
        try:
            raw = bytes.fromhex(cursor)
        except ValueError as exc:
            raise BadRequest("The cursor is not valid for this list.") from exc
        payload, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        if len(payload) != 25 or not any(
            hmac.compare_digest(mac, self._mac(scope, payload, key)) for key in self._keys
        ):
            raise BadRequest("The cursor is not valid for this list.")
        if payload[0] != _VERSION:
            raise BadRequest("The cursor is from an older release; start the list again.")
        micros = int.from_bytes(payload[1:9], "big", signed=True)
        return Position(_EPOCH + timedelta(microseconds=micros), UUID(bytes=payload[9:]))


def after(codec: CursorCodec, scope: str, window: Window) -> tuple[datetime, UUID] | None:
    """The keyset position a page starts after, from the window's cursor."""
    if window.cursor is None:
        return None
    position = codec.decode(scope, window.cursor)
    return position.at, position.id


def finish(
    codec: CursorCodec, scope: str, window: Window, rows: list[Row], at_column: str
) -> tuple[list[Row], str | None]:
    """`rows` were fetched with limit + 1: the extra row only says whether a next page exists."""
    if len(rows) <= window.limit:
        return rows, None
    rows = rows[: window.limit]
    last = rows[-1]
    return rows, codec.encode(scope, last[at_column], last["id"])
