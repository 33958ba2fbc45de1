"""Member features from a transaction CSV, vectorised with polars.

One lazy query over the file classifies every row (transaction, id-only, rejected with a reason),
aggregates transactions per member, and evaluates the feature registry as polars expressions, so
memory grows with the number of members (per-member aggregates), not with the number of rows,
and the same code serves a 5-row real-time request and a multi-million-row batch.

Features are named functions in ``REGISTRY``: each receives ``Aggregates`` (polars expressions
over one member's aggregate columns) and returns an expression.  Adding a feature is one
decorated function; partners choose which features they receive and under which JSON names.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import polars as pl

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
TRANSACTION_TYPES = ("buy", "gift", "redeem")
MAX_MEMBER_ID_LENGTH = 128
TS_FORMAT = "%Y-%m-%d %H:%M:%S"  # after "T" -> " "; an optional ".ffffff" is parsed apart


class InputError(Exception):
    """The input cannot be read at all (missing file, unknown header); message names file and problem."""


# -- the registry -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Aggregates:
    """Column expressions of one member's aggregates, the inputs of every feature function."""

    n: pl.Expr = field(default_factory=lambda: pl.col("n"))
    sum_points: pl.Expr = field(default_factory=lambda: pl.col("sum_points"))
    sum_revenue: pl.Expr = field(default_factory=lambda: pl.col("sum_revenue"))
    n_buy: pl.Expr = field(default_factory=lambda: pl.col("n_buy"))
    n_gift: pl.Expr = field(default_factory=lambda: pl.col("n_gift"))
    n_redeem: pl.Expr = field(default_factory=lambda: pl.col("n_redeem"))
    last3_points: pl.Expr = field(default_factory=lambda: pl.col("last3_points"))
    last3_revenue: pl.Expr = field(default_factory=lambda: pl.col("last3_revenue"))
    last3_n: pl.Expr = field(default_factory=lambda: pl.col("last3_n"))
    last_date: pl.Expr = field(default_factory=lambda: pl.col("last_date"))
    as_of: pl.Expr = field(default_factory=lambda: pl.col("as_of"))


FeatureFn = Callable[[Aggregates], pl.Expr]
REGISTRY: dict[str, FeatureFn] = {}


def feature(name: str) -> Callable[[FeatureFn], FeatureFn]:
    def register(fn: FeatureFn) -> FeatureFn:
        if name in REGISTRY:
            raise ValueError(f"feature {name} is registered twice")
        REGISTRY[name] = fn
        return fn

    return register


@feature("AVG_POINTS_BOUGHT")
def avg_points_bought(a: Aggregates) -> pl.Expr:
    return a.sum_points / a.n  # redemptions are negative and count


@feature("AVG_REVENUE_USD")
def avg_revenue_usd(a: Aggregates) -> pl.Expr:
    return a.sum_revenue / a.n


@feature("LAST_3_TRANSACTIONS_AVG_POINTS_BOUGHT")
def last_3_avg_points(a: Aggregates) -> pl.Expr:
    return a.last3_points / a.last3_n


@feature("LAST_3_TRANSACTIONS_AVG_REVENUE_USD")
def last_3_avg_revenue(a: Aggregates) -> pl.Expr:
    return a.last3_revenue / a.last3_n


@feature("PCT_BUY_TRANSACTIONS")
def pct_buy(a: Aggregates) -> pl.Expr:
    return a.n_buy / a.n


@feature("PCT_GIFT_TRANSACTIONS")
def pct_gift(a: Aggregates) -> pl.Expr:
    return a.n_gift / a.n


@feature("PCT_REDEEM_TRANSACTIONS")
def pct_redeem(a: Aggregates) -> pl.Expr:
    return a.n_redeem / a.n


@feature("DAYS_SINCE_LAST_TRANSACTION")
def days_since_last(a: Aggregates) -> pl.Expr:
    return (a.as_of - a.last_date).dt.total_days()


STANDARD_FEATURES: tuple[str, ...] = tuple(REGISTRY)  # the 8 of the public contract, in order


# -- computing them ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class RejectedRow:
    line: int
    member_id: str | None
    reason: str


@dataclass
class FeatureTable:
    """Result of the feature step: one row per member with transactions, plus the rest."""

    features: pl.DataFrame  # member_id, then every registry feature
    skipped: dict[str, str]  # member_id -> reason (no_transactions, ...)
    rejected: list[RejectedRow]
    rows_read: int
    rejected_counts: dict[str, int] | None = None  # complete counts when ``rejected`` is a sample

    @property
    def rejected_by_reason(self) -> dict[str, int]:
        if self.rejected_counts is not None:
            return dict(self.rejected_counts)
        counts: dict[str, int] = {}
        for row in self.rejected:
            counts[row.reason] = counts.get(row.reason, 0) + 1
        return counts


# No line of a transaction file is anywhere near this long; a longer one means a binary or broken
# file, which must be refused before it is buffered whole (a 1 GB file without a newline would be).
MAX_LINE_BYTES = 64 * 1024


def read_header(path: str | Path) -> list[str]:
    try:
        with open(path, "rb") as handle:
            first = handle.readline(MAX_LINE_BYTES + 1)
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if len(first) > MAX_LINE_BYTES:
        raise InputError(f"{path}: line 1 is longer than {MAX_LINE_BYTES} bytes; not a transaction CSV")
    try:
        text = first.decode("utf-8-sig")
        header = next(csv.reader([text]), None)
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: line 1 is not UTF-8 text") from exc
    except csv.Error as exc:
        raise InputError(f"{path}: line 1 is not CSV ({exc})") from exc
    if not header:
        raise InputError(f"{path}: empty file")
    header = [h.strip() for h in header]
    if tuple(header) not in HEADERS:
        expected = " or ".join(",".join(h) for h in sorted(HEADERS))
        raise InputError(f"{path}: unexpected header {','.join(header)!r}; expected {expected}")
    return header


def _classified(raw: pl.LazyFrame) -> pl.LazyFrame:
    """Parse the five string columns and give each row a ``kind`` and, if rejected, a ``reason``.

    Parsing happens once, in the first ``with_columns``; the classification refers to the parsed
    columns by name, so no parse is evaluated twice.
    """
    text = {c: pl.col(c).str.strip_chars() for c in CANONICAL}
    # "T" or " " between date and time, then an optional fraction.  Parsing the fixed 19 characters
    # with a plain format and adding the fraction separately is 4x faster than a "%.f" format.
    ts_text = text["ts"].str.replace("T", " ", literal=True)
    # After the 19 fixed characters: an optional ".ffffff", then an optional "Z" or UTC offset
    # (+HH:MM or +HHMM), which is applied: timestamps are stored and compared in UTC.
    tail = ts_text.str.slice(19)
    tail_ok = tail.str.contains(r"^(\.[0-9]{1,6})?(Z|[+-][0-9]{2}:?[0-9]{2})?$")
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


_RECENT_ORDER = ["member_id", "ts", "line"]  # equal timestamps: the later row in the file is more recent


def _partial_aggregates(transactions: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Per-member sums and counts of one chunk, and each member's 3 most recent transactions in it."""
    sums = transactions.group_by("member_id").agg(
        n=pl.len(),
        sum_points=pl.col("points").sum(),
        sum_revenue=pl.col("revenue").sum(),
        n_buy=(pl.col("type_norm") == "buy").sum(),
        n_gift=(pl.col("type_norm") == "gift").sum(),
        n_redeem=(pl.col("type_norm") == "redeem").sum(),
        last_ts=pl.col("ts").max(),
    )
    recent = (transactions.select("member_id", "ts", "line", "points", "revenue").sort(_RECENT_ORDER)
              .group_by("member_id", maintain_order=True).tail(3))
    return sums, recent


def _merge_aggregates(a: tuple[pl.DataFrame, pl.DataFrame] | None,
                      b: tuple[pl.DataFrame, pl.DataFrame]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Combine two partial states; the result is again at most 3 recent rows per member."""
    if a is None:
        return b
    sums = pl.concat([a[0], b[0]]).group_by("member_id").agg(
        *[pl.col(c).sum() for c in ("n", "sum_points", "sum_revenue", "n_buy", "n_gift", "n_redeem")],
        pl.col("last_ts").max(),
    )
    recent = pl.concat([a[1], b[1]]).sort(_RECENT_ORDER).group_by("member_id", maintain_order=True).tail(3)
    return sums, recent


def evaluate_registry(state: tuple[pl.DataFrame, pl.DataFrame], as_of: date) -> pl.DataFrame:
    """Every registry feature for every member of a merged aggregate state."""
    sums, recent = state
    last3 = recent.group_by("member_id").agg(last3_points=pl.col("points").sum(),
                                               last3_revenue=pl.col("revenue").sum(), last3_n=pl.len())
    a = Aggregates()
    return (
        sums.join(last3, on="member_id", how="left")
        .with_columns(last_date=pl.col("last_ts").dt.date(), as_of=pl.lit(as_of, dtype=pl.Date))
        .select(
            "member_id",
            *[fn(a).cast(pl.Int64 if name == "DAYS_SINCE_LAST_TRANSACTION" else pl.Float64).alias(name)
              for name, fn in REGISTRY.items()],
        )
    )


CHUNK_ROWS = 500_000


def _skipped_of(features: pl.DataFrame, others: dict[str, bool]) -> tuple[pl.DataFrame, dict[str, str]]:
    """Members without a scoreable transaction, with the reason; and the features of the rest."""
    scored = set(features["member_id"].to_list())
    skipped = {m: ("no_transactions" if id_only else "no_valid_transactions")
               for m, id_only in others.items() if m not in scored}
    for member_id in features.filter(pl.col("DAYS_SINCE_LAST_TRANSACTION") < 0)["member_id"]:
        skipped[member_id] = "last_transaction_after_as_of"
    return features.filter(pl.col("DAYS_SINCE_LAST_TRANSACTION") >= 0), skipped


def _empty_features() -> pl.DataFrame:
    return pl.DataFrame(schema={"member_id": pl.String, **{
        name: pl.Int64 if name == "DAYS_SINCE_LAST_TRANSACTION" else pl.Float64 for name in REGISTRY}})


def compute_features_frame(raw: pl.LazyFrame | pl.DataFrame, as_of: date,
                           chunk_rows: int = CHUNK_ROWS) -> FeatureTable:
    """Features of ``raw`` (the CANONICAL string columns plus ``line``), chunk by chunk.

    Each chunk is classified and reduced to per-member partial aggregates, then merged into the
    running state, which holds a few numbers and at most 3 recent transactions per member.  Used
    for in-memory input (a real-time request is one chunk); files go through :func:`scan_features`,
    which bounds memory by partitioning members instead.
    """
    state = None
    rejected: list[RejectedRow] = []
    others: dict[str, bool] = {}  # member ids seen on non-transaction rows -> has an id-only row
    rows = 0
    # An in-memory frame (a real-time request) is one chunk: no streaming engine to start.
    chunks = [raw] if isinstance(raw, pl.DataFrame) else raw.collect_batches(chunk_size=chunk_rows)
    for chunk in chunks:
        rows += chunk.height
        classified = _classified(chunk.lazy()).collect()
        transactions = classified.filter(pl.col("kind") == "transaction")
        if transactions.height:
            state = _merge_aggregates(state, _partial_aggregates(transactions))
        bad = classified.filter(pl.col("kind") != "transaction")
        for line, member_id, kind, reason in bad.select("line", "member_id", "kind", "reason").iter_rows():
            if member_id is not None:
                others[member_id] = others.get(member_id, False) or kind == "id_only"
            if kind == "rejected":
                rejected.append(RejectedRow(line, member_id, reason))
    features = _empty_features() if state is None else evaluate_registry(state, as_of).sort("member_id")
    features, skipped = _skipped_of(features, others)
    return FeatureTable(features=features, skipped=skipped, rejected=sorted(rejected, key=lambda r: r.line),
                        rows_read=rows)


# -- files: bounded memory at any size ----------------------------------------------------------------

# CSV bytes parsed at once.  Polars' own chunked CSV reader memory-maps the file, so its RSS grows
# with the file (measured: 389 MB just streaming a 243 MB file); reading fixed byte chunks keeps
# the process flat.  A chunk ends at a newline, so a quoted field spanning lines (never valid in
# this format) is split and its pieces are rejected as bad rows.
# Sizes measured on the 100k-member file (24 MB): 8 MB reads and 32 MB partitions peaked at 319 MB,
# 2 MB and 8 MB at 164 MB (175 MB at 1M members: flat), 1 MB and 4 MB at 130 MB but 2x slower.
READ_BYTES = 2 << 20
# CSV bytes per member partition (~160k rows, ~33k members in the sample's shape): the unit that
# is aggregated, scored and written at once.  Files up to this size are one partition, in memory.
PARTITION_BYTES = 8 << 20
SPILL_ROWS = 200_000  # rows buffered across partitions before they are written out
MAX_REJECTED_SAMPLE = 1000
_PARTITION_COLUMNS = ["member_id", "line", "kind", "ts", "type_norm", "points", "revenue"]


@dataclass
class RejectedSummary:
    """Rejected rows: every count, and the first ``MAX_REJECTED_SAMPLE`` rows in file order."""

    total: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    sample: list[RejectedRow] = field(default_factory=list)

    def add(self, bad: pl.DataFrame) -> None:
        """Count one chunk's rejected rows (columns line, member_id, reason), in file order."""
        if not bad.height:
            return
        self.total += bad.height
        for reason, count in bad.group_by("reason").len().iter_rows():
            self.by_reason[reason] = self.by_reason.get(reason, 0) + count
        room = MAX_REJECTED_SAMPLE - len(self.sample)
        if room > 0:
            self.sample.extend(RejectedRow(line, member_id if member_id is None else member_id[:MAX_MEMBER_ID_LENGTH],
                                           reason)
                               for line, member_id, reason
                               in bad.head(room).select("line", "member_id", "reason").iter_rows())

    def as_dict(self) -> dict:
        return {"total": self.total, "by_reason": dict(sorted(self.by_reason.items())),
                "rows": [{"line": r.line, "member_id": r.member_id, "reason": r.reason} for r in self.sample],
                "rows_truncated": self.total > len(self.sample)}


@dataclass
class FeaturePartition:
    """The features of one partition's members (sorted by member id) and its skipped members."""

    features: pl.DataFrame
    skipped: dict[str, str]


class FeatureScan:
    """A transaction file, classified and aggregated per member, one partition at a time.

    Pass one reads the file in byte chunks, counts rejected rows, and splits the rest by a hash of
    the member id into partitions (spilled to Arrow IPC files in a temporary folder when the file
    is larger than one partition), so every row of a member lands in the same partition.  Pass two
    aggregates each partition into features (spilled too).  Memory is bounded by one chunk plus
    one partition, whatever the file size; :meth:`partitions` then hands them out one by one.
    Use as a context manager: the temporary folder is removed on exit.
    """

    def __init__(self, path: str | Path, as_of: date, *, workdir: str | Path | None = None,
                 read_bytes: int = READ_BYTES, partition_bytes: int = PARTITION_BYTES) -> None:
        import tempfile

        self.path = Path(path)
        self.as_of = as_of
        self.rows_read = 0
        self.rejected = RejectedSummary()
        self.members = 0  # scoreable members
        self.skipped_members = 0
        self._read_bytes = read_bytes
        try:
            size = self.path.stat().st_size
        except OSError as exc:
            raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from exc
        self.partition_count = max(1, -(-size // partition_bytes))
        self._tmp = (Path(tempfile.mkdtemp(prefix="courier-features-", dir=workdir))
                     if self.partition_count > 1 else None)
        self._memory: list[list[pl.DataFrame]] = [[] for _ in range(self.partition_count)]
        self._done: list[FeaturePartition | Path] = []

    # -- pass one -------------------------------------------------------------------------------
    def _checked(self, data: bytes, first_line: int) -> bytes:
        """Strict UTF-8: a lossy decode would merge distinct member ids, so a bad byte names its line."""
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = first_line + data.count(b"\n", 0, exc.start)
            raise InputError(f"{self.path}: line {line} is not UTF-8 text (byte {exc.start} of that chunk)") from exc
        return data

    def _chunks(self) -> Iterator[bytes]:
        with open(self.path, "rb") as handle:
            header = handle.readline(MAX_LINE_BYTES + 1)
            rest = b""
            line = 2  # file line of the first byte of ``rest``
            while True:
                block = handle.read(self._read_bytes)
                if not block:
                    break
                block = rest + block
                cut = block.rfind(b"\n") + 1
                if cut == 0:
                    if len(block) > MAX_LINE_BYTES:
                        raise InputError(f"{self.path}: line {line} is longer than {MAX_LINE_BYTES} bytes; "
                                         "not a transaction CSV")
                    rest = block
                    continue
                rest = block[cut:]
                yield header + self._checked(block[:cut], line)
                line += block.count(b"\n", 0, cut)
            if rest.strip():
                if len(rest) > MAX_LINE_BYTES:
                    raise InputError(f"{self.path}: line {line} is longer than {MAX_LINE_BYTES} bytes; "
                                     "not a transaction CSV")
                yield header + self._checked(rest, line)

    def _split(self) -> None:
        pending: dict[int, list[pl.DataFrame]] = {}
        pending_rows = 0
        flushes = 0

        def flush() -> None:
            nonlocal pending_rows, flushes
            assert self._tmp is not None  # spilling is decided (and the folder made) before any flush
            for partition, frames in pending.items():
                pl.concat(frames).write_ipc(self._tmp / f"rows-{partition:05d}-{flushes:06d}.arrow")
            pending.clear()
            pending_rows = 0
            flushes += 1

        for chunk in self._chunks():
            raw = pl.read_csv(io.BytesIO(chunk), has_header=True, new_columns=CANONICAL, infer_schema=False,
                              encoding="utf8", raise_if_empty=False, truncate_ragged_lines=True)
            raw = raw.with_row_index("line", offset=2 + self.rows_read)
            self.rows_read += raw.height
            # One plan, two outputs: classification is computed once and shared (~10% faster than
            # collecting it and filtering twice).
            classified = _classified(raw.lazy())
            kept, rejected = pl.collect_all([
                classified.filter(pl.col("member_id").is_not_null()
                                  & (pl.col("member_id").str.len_chars() <= MAX_MEMBER_ID_LENGTH))
                .select(_PARTITION_COLUMNS),
                classified.filter(pl.col("kind") == "rejected").select("line", "member_id", "reason")])
            self.rejected.add(rejected)
            if self._tmp is None:
                self._memory[0].append(kept)
                continue
            kept = kept.with_columns(partition=(pl.col("member_id").hash(seed=0) % self.partition_count))
            for (partition,), frame in kept.partition_by("partition", as_dict=True, include_key=False).items():
                pending.setdefault(partition, []).append(frame)
            pending_rows += kept.height
            # A few large files per partition rather than one per chunk and partition (thousands of
            # small files made pass two 3x slower at 1M members).
            if pending_rows >= SPILL_ROWS:
                flush()
        if pending:
            flush()

    # -- pass two -------------------------------------------------------------------------------
    def _rows_of(self, partition: int) -> pl.DataFrame:
        if self._tmp is None:
            frames = self._memory[partition]
            self._memory[partition] = []
        else:
            files = sorted(self._tmp.glob(f"rows-{partition:05d}-*.arrow"))
            frames = [pl.read_ipc(f) for f in files]
            for f in files:
                f.unlink()
        if not frames:
            return pl.DataFrame(schema={c: pl.String for c in _PARTITION_COLUMNS}).cast(
                {"line": pl.UInt32, "ts": pl.Datetime("us"), "points": pl.Float64, "revenue": pl.Float64})
        return pl.concat(frames)

    def _aggregate(self, partition: int) -> FeaturePartition:
        rows = self._rows_of(partition)
        transactions = rows.filter(pl.col("kind") == "transaction")
        features = (evaluate_registry(_partial_aggregates(transactions), self.as_of).sort("member_id")
                    if transactions.height else _empty_features())
        others = dict(rows.filter(pl.col("kind") != "transaction").group_by("member_id").agg(
            (pl.col("kind") == "id_only").any()).iter_rows())
        features, skipped = _skipped_of(features, others)
        return FeaturePartition(features, skipped)

    def run(self) -> FeatureScan:
        """Both passes; afterwards ``rows_read``, ``rejected``, ``members`` and ``skipped_members`` are final."""
        try:
            self._split()
        except pl.exceptions.PolarsError as exc:
            raise InputError(f"{self.path}: cannot parse as CSV ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0]})") from exc
        for partition in range(self.partition_count):
            part = self._aggregate(partition)
            self.members += part.features.height
            self.skipped_members += len(part.skipped)
            if self._tmp is None:
                self._done.append(part)
            else:
                target = self._tmp / f"features-{partition:05d}.arrow"
                part.features.write_ipc(target)
                pl.DataFrame({"member_id": list(part.skipped), "reason": list(part.skipped.values())},
                             schema={"member_id": pl.String, "reason": pl.String}).write_ipc(
                    target.with_suffix(".skipped.arrow"))
                self._done.append(target)
        return self

    def partitions(self) -> Iterator[FeaturePartition]:
        """Each partition once, loaded only when asked for."""
        for item in self._done:
            if isinstance(item, FeaturePartition):
                yield item
            else:
                skipped = pl.read_ipc(item.with_suffix(".skipped.arrow"))
                yield FeaturePartition(pl.read_ipc(item), dict(skipped.iter_rows()))

    def close(self) -> None:
        import shutil

        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
        self._done = []

    def __enter__(self) -> FeatureScan:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def scan_features(path: str | Path, as_of: date, **kwargs) -> FeatureScan:
    """Both passes over a transaction CSV (either header spelling); close the result when done."""
    read_header(path)
    scan = FeatureScan(path, as_of, **kwargs)
    try:
        return scan.run()
    except BaseException:
        scan.close()
        raise


def compute_features(path: str | Path, as_of: date, **kwargs) -> FeatureTable:
    """Every member's features of a transaction CSV in one table (tests, benchmarks, small files).

    ``rejected`` holds the first ``MAX_REJECTED_SAMPLE`` rejected rows; counts are complete.
    """
    with scan_features(path, as_of, **kwargs) as scan:
        parts = list(scan.partitions())
        features = pl.concat([p.features for p in parts]).sort("member_id") if parts else _empty_features()
        skipped = {m: r for p in parts for m, r in p.skipped.items()}
        return FeatureTable(features=features, skipped=skipped, rejected=scan.rejected.sample,
                            rows_read=scan.rows_read, rejected_counts=scan.rejected.by_reason)


def transactions_frame(member_id: str, transactions: list[dict]) -> pl.DataFrame:
    """A one-member frame in the CSV's shape, from already-validated transaction dicts (REST path)."""
    return pl.DataFrame(
        {
            "member_id": [member_id] * len(transactions),
            "ts": [t["ts"] for t in transactions],
            "type": [t["type"] for t in transactions],
            "points": [repr(float(t["points"])) for t in transactions],
            "revenue": [repr(float(t["revenue_usd"])) for t in transactions],
        },
        schema={c: pl.String for c in CANONICAL},
    ).with_row_index("line", offset=1)
