"""The transaction CSV as Courier reads it: accepted headers, transaction types, the row classification
(transaction, id-only, rejected with a reason), and one member's transactions from a request."""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl

from services.offers.features.transactions import MAX_MEMBER_ID_LENGTH, TRANSACTION_TYPES

CANONICAL = ["member_id", "ts", "type", "points", "revenue"]


HEADERS = {
    ("memberId", "lastTransactionUtcTs", "lastTransactionType", "lastTransactionPointsBought",
     "lastTransactionRevenueUSD"),
    # An older export misspells the timestamp column.
    ("memberId", "lastTransatcionUtcTs", "lastTransactionType", "lastTransactionPointsBought",
     "lastTransactionRevenueUSD"),
    ("MEMBER_ID", "LAST_TRANSACTION_TS", "LAST_TRANSACTION_TYPE", "LAST_TRANSACTION_POINTS_BOUGHT",
     "LAST_TRANSACTION_REVENUE_USD"),
}


TS_FORMAT = "%Y-%m-%d %H:%M:%S"  # after "T" -> " "; an optional ".ffffff" is parsed apart
# What may follow those 19 characters: an optional ".ffffff", then an optional "Z" or UTC offset
# (+HH:MM or +HHMM). One pattern for both readers of a timestamp (classify_rows, _utc_timestamp).
_TS_TAIL_PATTERN = r"(\.[0-9]{1,6})?(Z|([+-])([0-9]{2}):?([0-9]{2}))?"


class InputError(Exception):
    """The input cannot be read at all (missing file, unknown header); message names file and problem."""


@dataclass(frozen=True)
class RejectedRow:
    line: int
    member_id: str | None
    reason: str


# No line of a transaction file is anywhere near this long; a longer one means a binary or broken
# file, which must be refused before it is buffered whole (a 1 GB file without a newline would be).
MAX_LINE_BYTES = 64 * 1024


def read_header(path: str | Path) -> list[str]:
    try:
        with open(path, "rb") as handle:
            first = handle.readline(MAX_LINE_BYTES + 1)
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    return check_header(first, str(path))


def check_header(first: bytes, name: str) -> list[str]:
    """The header of a transaction CSV whose first line (with its newline, at most MAX_LINE_BYTES + 1
    bytes) is ``first``; InputError naming ``name`` otherwise. Files and uploads are checked alike."""
    if len(first) > MAX_LINE_BYTES:
        raise InputError(f"{name}: line 1 is longer than {MAX_LINE_BYTES} bytes; not a transaction CSV")
    try:
        text = first.decode("utf-8-sig")
        header = next(csv.reader([text]), None)
    except UnicodeDecodeError as exc:
        raise InputError(f"{name}: line 1 is not UTF-8 text") from exc
    except csv.Error as exc:
        raise InputError(f"{name}: line 1 is not CSV ({exc})") from exc
    if not header:
        raise InputError(f"{name}: empty file")
    header = [h.strip() for h in header]
    if tuple(header) not in HEADERS:
        expected = " or ".join(",".join(h) for h in sorted(HEADERS))
        raise InputError(f"{name}: unexpected header {','.join(header)!r}; expected {expected}")
    return header


def classify_rows(raw: pl.LazyFrame) -> pl.LazyFrame:
    """Parse the five string columns and give each row a ``kind`` and, if rejected, a ``reason``.

    Parsing happens once, in the first ``with_columns``; the classification refers to the parsed
    columns by name, so no parse is evaluated twice.
    """
    text = {c: pl.col(c).str.strip_chars() for c in CANONICAL}
    # "T" or " " between date and time, then an optional fraction.  Parsing the fixed 19 characters
    # with a plain format and adding the fraction separately is 4x faster than a "%.f" format.
    ts_text = text["ts"].str.replace("T", " ", literal=True)
    # The offset after the 19 fixed characters (_TS_TAIL_PATTERN) is applied: timestamps are stored
    # and compared in UTC.
    tail = ts_text.str.slice(19)
    tail_ok = tail.str.contains(f"^{_TS_TAIL_PATTERN}$")
    fraction = tail.str.extract(r"^\.([0-9]{1,6})", 1)
    micros = pl.when(fraction.is_null()).then(0).otherwise(fraction.str.pad_end(6, "0").cast(pl.Int64, strict=False))
    offset = tail.str.extract_groups(r"([+-])([0-9]{2}):?([0-9]{2})$")
    offset_minutes = pl.when(offset.struct.field("1").is_null()).then(0).otherwise(
        pl.when(offset.struct.field("1") == "-").then(-1).otherwise(1)
        * (offset.struct.field("2").cast(pl.Int64, strict=False) * 60
           + offset.struct.field("3").cast(pl.Int64, strict=False)))
    offset_ok = offset.struct.field("2").is_null() | (
        (offset.struct.field("2").cast(pl.Int64, strict=False) < 24)
        & (offset.struct.field("3").cast(pl.Int64, strict=False) < 60))
    ts = pl.when(tail_ok & offset_ok).then(
        ts_text.str.slice(0, 19).str.strptime(pl.Datetime("us"), TS_FORMAT, strict=False)
        + pl.duration(microseconds=micros) - pl.duration(minutes=offset_minutes))
    parsed = raw.with_columns(
        member_id=pl.when(text["member_id"] != "").then(text["member_id"]),
        id_only=pl.all_horizontal([text[c].is_null() | (text[c] == "") for c in CANONICAL[1:]]),
        ts=ts,
        type_norm=text["type"].str.to_lowercase(),
        points=text["points"].cast(pl.Float64, strict=False),
        revenue=text["revenue"].cast(pl.Float64, strict=False),
    )
    bad_points = pl.col("points").is_null() | ~pl.col("points").is_finite()
    bad_revenue = pl.col("revenue").is_null() | ~pl.col("revenue").is_finite()
    bad_type = ~pl.col("type_norm").is_in(TRANSACTION_TYPES) | pl.col("type_norm").is_null()
    reason = (
        pl.when(pl.col("member_id").is_null()).then(pl.lit("missing member id"))
        # As long as REST accepts and the results table stores (a longer one failed a PostgreSQL run).
        .when(pl.col("member_id").str.len_chars() > MAX_MEMBER_ID_LENGTH).then(pl.lit("member id too long"))
        .when(pl.col("id_only")).then(pl.lit(None, dtype=pl.String))
        # Year 0 parses in polars (proleptic calendar) but is no date REST or Python accepts.
        .when(pl.col("ts").is_null() | (pl.col("ts").dt.year() < 1)).then(pl.lit("invalid timestamp"))
        .when(bad_type).then(pl.lit("invalid transaction type"))
        .when(bad_points).then(pl.lit("invalid points"))
        .when(bad_revenue).then(pl.lit("invalid revenue"))
        .otherwise(pl.lit(None, dtype=pl.String))
    )
    return parsed.with_columns(reason=reason).with_columns(
        kind=pl.when(pl.col("reason").is_not_null()).then(pl.lit("rejected"))
        .when(pl.col("id_only")).then(pl.lit("id_only"))
        .otherwise(pl.lit("transaction"))
    )


# What polars' ``str.strip_chars()`` strips: Unicode's White_Space (Python's ``str.strip()`` also
# strips \x1c-\x1f, which would give a REST member id another meaning than the CSV's).
_WHITE_SPACE = ("\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
                "\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
_TS_TAIL = re.compile(_TS_TAIL_PATTERN)
_CLASSIFIED_SCHEMA: dict[str, pl.DataType] = {"line": pl.UInt32(), "member_id": pl.String(), "ts": pl.Datetime("us"),
                                               "type": pl.String(), "points": pl.Float64(), "revenue": pl.Float64(),
                                               "id_only": pl.Boolean(), "type_norm": pl.String(),
                                               "reason": pl.String(), "kind": pl.String()}


def _utc_timestamp(text: str) -> datetime | None:
    """A CSV timestamp cell as :func:`classify_rows` reads it (UTC, offset applied), or None."""
    text = text.strip(_WHITE_SPACE).replace("T", " ")
    tail = _TS_TAIL.fullmatch(text[19:])
    if tail is None:
        return None
    try:
        value = datetime.strptime(text[:19], TS_FORMAT)
    except ValueError:
        return None
    fraction, _, sign, hours, minutes = tail.groups()
    if fraction:
        value += timedelta(microseconds=int(fraction[1:].ljust(6, "0")))
    if sign:
        if int(hours) >= 24 or int(minutes) >= 60:
            return None
        try:
            value -= (1 if sign == "+" else -1) * timedelta(hours=int(hours), minutes=int(minutes))
        except OverflowError:
            # Before year 1 in UTC: rejected, as the CSV's row is. After 9999 (polars has year 10000):
            # the latest datetime Python has, later than any as-of date just the same.
            return datetime.max if sign == "-" else None
    return value


def classified_transactions(member_id: str, transactions: list[dict]) -> pl.DataFrame:
    """One member's transactions from a request, classified as :func:`classify_rows` classifies the
    CSV's rows (same columns, values and reasons), without its polars query: planning its parsing
    expressions costs ~3 ms per call, a third of a real-time offer's CPU, for a handful of rows.
    ``tests/services/offers/features/test_realtime_classification.py`` holds the two to each other."""
    member = member_id.strip(_WHITE_SPACE) or None
    rows = []
    for line, t in enumerate(transactions, start=1):
        ts = _utc_timestamp(t["ts"])
        type_norm = t["type"].strip(_WHITE_SPACE).lower()
        points, revenue = float(t["points"]), float(t["revenue_usd"])
        if member is None:
            reason: str | None = "missing member id"
        elif len(member) > MAX_MEMBER_ID_LENGTH:
            reason = "member id too long"
        elif ts is None:
            reason = "invalid timestamp"
        elif type_norm not in TRANSACTION_TYPES:
            reason = "invalid transaction type"
        elif not math.isfinite(points):
            reason = "invalid points"
        elif not math.isfinite(revenue):
            reason = "invalid revenue"
        else:
            reason = None
        rows.append((line, member, ts, t["type"], points, revenue, False, type_norm, reason,
                     "transaction" if reason is None else "rejected"))
    return pl.DataFrame(rows, schema=_CLASSIFIED_SCHEMA, orient="row")
