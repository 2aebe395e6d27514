"""Cursor pagination: the cursor is the sort key of the last item returned, opaque to clients."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Select, tuple_
from sqlalchemy.orm import InstrumentedAttribute, Session

from app.errors import ApiError

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def encode_cursor(values: Sequence) -> str:
    plain = [v.isoformat() if isinstance(v, datetime) else v for v in values]
    return base64.urlsafe_b64encode(json.dumps(plain).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, columns: Sequence[InstrumentedAttribute]) -> list:
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(values, list) or len(values) != len(columns):
            raise ValueError("wrong shape")
        return [_sort_value(v, col.type.python_type) for v, col in zip(values, columns, strict=True)]
    except (ValueError, TypeError, RecursionError) as err:
        raise ApiError(400, "invalid cursor; pass the next_cursor of the previous page unchanged") from err


def _sort_value(value, kind: type):
    """A cursor value as the column's type, strictly: a forged cursor must not reach the database."""
    if kind is datetime:
        if not isinstance(value, str):
            raise TypeError("expected a timestamp")
        return datetime.fromisoformat(value)
    if kind is int:
        # Databases keep 64-bit integers; bigger ones (or 1e400 read as infinity) are forgeries.
        if isinstance(value, bool) or not isinstance(value, int) or not INT64_MIN <= value <= INT64_MAX:
            raise ValueError("expected a 64-bit integer")
        return value
    if not isinstance(value, kind) or (isinstance(value, str) and "\x00" in value):
        raise TypeError(f"expected {kind.__name__}")
    return value


def paginate(
    session: Session,
    query: Select,
    order: Sequence[InstrumentedAttribute],
    cursor: str | None,
    limit: int,
    descending: bool = False,
) -> tuple[list, str | None]:
    """One page of `query` ordered by `order` (unique together); returns (rows, next cursor or None)."""
    if cursor:
        bound = tuple_(*decode_cursor(cursor, order))
        query = query.where(tuple_(*order) < bound if descending else tuple_(*order) > bound)
    query = query.order_by(*(c.desc() if descending else c.asc() for c in order)).limit(limit + 1)
    rows = list(session.scalars(query))
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, encode_cursor([getattr(rows[-1], c.key) for c in order])
