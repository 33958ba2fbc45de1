"""The streamed scan of a large file: read in partitions by member, spill to disk past a bound, so memory
grows with members, not rows (``scan_features``)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import polars as pl

from services.offers.features.aggregate import FeatureTable, empty_features, member_features
from services.offers.features.input import (
    CANONICAL,
    MAX_LINE_BYTES,
    MAX_MEMBER_ID_LENGTH,
    InputError,
    RejectedRow,
    classify_rows,
    read_header,
)

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
            classified = classify_rows(raw.lazy())
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
        return FeaturePartition(*member_features(self._rows_of(partition), self.as_of))

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
        features = pl.concat([p.features for p in parts]).sort("member_id") if parts else empty_features()
        skipped = {m: r for p in parts for m, r in p.skipped.items()}
        return FeatureTable(features=features, skipped=skipped, rejected=scan.rejected.sample,
                            rows_read=scan.rows_read, rejected_counts=scan.rejected.by_reason)
