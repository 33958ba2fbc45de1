"""Uploaded run inputs: streamed to a folder with their sha256 and the CLI's input checks, and
removed after their retention.

Why a folder and not the database: the coordinator scans its input in bounded memory (polars
reads the file lazily, in partitions), and it is the only reader (chunk workers take their members'
features from the database). A file in a row would be read back whole. Web processes and the
coordinator worker must share the folder (compose mounts the ``uploads`` volume on both).

Files are named by content (``<sha256>.csv``): the same input uploaded twice is kept once, and a
run's ``input_sha256`` finds its file. A file is written under a temporary name and renamed when
complete, so a reader never sees half an upload.
"""

from __future__ import annotations

import codecs
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from services.offers.features.input import MAX_LINE_BYTES, InputError, check_header

log = logging.getLogger("courier.offers.uploads")

BLOCK_BYTES = 1 << 20  # read and hashed a MiB at a time: memory stays flat whatever the upload's size
SUFFIX = ".csv"


class UploadTooLarge(Exception):
    """The upload passed the size cap; nothing was kept."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the input is larger than {limit} bytes")
        self.limit = limit


@dataclass(frozen=True)
class StoredInput:
    path: Path
    sha256: str
    size: int
    lines: int


class _LineChecks:
    """The checks a run applies to its file before any work, on a stream: a transaction header on
    line 1, UTF-8 throughout, no line longer than MAX_LINE_BYTES (a binary file), as ``read_header``
    and the feature scan refuse them; each names its line."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lines_before = 0  # complete lines seen before the current block
        self.header: bytes | None = b""  # line 1 while it is read; None once checked
        self.open_line = 0  # bytes of the line not yet ended by a newline
        self.decoder = codecs.getincrementaldecoder("utf-8")()

    def feed(self, block: bytes) -> None:
        if self.header is not None:
            end = block.find(b"\n")
            self.header += block if end < 0 else block[:end + 1]
            if end < 0 and len(self.header) <= MAX_LINE_BYTES:
                self.open_line += len(block)
                self._decode(block)
                return
            check_header(self.header[:MAX_LINE_BYTES + 1], self.name)
            self.header = None
        try:
            self._decode(block)
            parts = block.split(b"\n")
            longest = max(self.open_line + len(parts[0]), max(map(len, parts[1:-1]), default=0),
                          len(parts[-1]) if len(parts) > 1 else 0)
            if longest > MAX_LINE_BYTES:
                raise InputError(f"{self.name}: line {self._overlong_line(parts)} is longer than {MAX_LINE_BYTES} "
                                 "bytes; not a transaction CSV")
        finally:
            self.lines_before += block.count(b"\n")
        self.open_line = self.open_line + len(block) if len(parts) == 1 else len(parts[-1])

    def _overlong_line(self, parts: list[bytes]) -> int:
        if self.open_line + len(parts[0]) > MAX_LINE_BYTES:
            return self.lines_before + 1
        return self.lines_before + 1 + next(i for i, part in enumerate(parts) if i and len(part) > MAX_LINE_BYTES)

    def _decode(self, block: bytes, final: bool = False) -> None:
        try:
            self.decoder.decode(block, final)
        except UnicodeDecodeError as exc:
            line = self.lines_before + 1 + block.count(b"\n", 0, max(0, exc.start))
            raise InputError(f"{self.name}: line {line} is not UTF-8 text") from exc

    def finish(self) -> int:
        """The file's line count; InputError if it ended inside line 1 or inside a character."""
        if self.header is not None:
            check_header(self.header, self.name)  # an empty file, or a header without a newline
        self._decode(b"", final=True)
        return self.lines_before + (1 if self.open_line else 0)


class UploadStore:
    """The folder of uploaded inputs."""

    def __init__(self, folder: str | Path, max_bytes: int, retention_s: float) -> None:
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self.retention_s = retention_s

    def path_of(self, sha256: str) -> Path:
        return self.folder / f"{sha256}{SUFFIX}"

    def save(self, stream: BinaryIO, name: str = "upload") -> StoredInput:
        """Stream ``stream`` to the folder, checking and hashing it on the way. InputError (naming the
        line) or UploadTooLarge leave nothing behind."""
        self.folder.mkdir(parents=True, exist_ok=True)
        digest, checks, size = hashlib.sha256(), _LineChecks(name), 0
        partial = self.folder / f".upload-{os.getpid()}-{time.monotonic_ns()}.part"
        try:
            with open(partial, "wb") as out:
                while block := stream.read(BLOCK_BYTES):
                    size += len(block)
                    if size > self.max_bytes:
                        raise UploadTooLarge(self.max_bytes)
                    checks.feed(block)
                    digest.update(block)
                    out.write(block)
            lines = checks.finish()
            sha = digest.hexdigest()
            final = self.path_of(sha)
            os.replace(partial, final)  # the same content uploaded before: the same file, replaced whole
            os.utime(final)  # retention counts from the newest upload
            return StoredInput(final, sha, size, lines)
        finally:
            partial.unlink(missing_ok=True)

    def prune(self, kept: Callable[[float], Iterable[str]], now: float | None = None) -> list[str]:
        """Remove the inputs uploaded more than the retention ago that no run still needs; their
        sha256s. ``kept(cutoff)``: the sha256s of runs not ended, or ended after ``cutoff`` (epoch
        seconds), asked only when some file is old enough. Partial files of a process that died
        mid-upload go after an hour."""
        now = time.time() if now is None else now
        if not self.folder.is_dir():
            return []
        old: dict[str, Path] = {}
        for entry in os.scandir(self.folder):
            try:
                age = now - entry.stat().st_mtime
            except FileNotFoundError:
                continue
            if entry.name.endswith(SUFFIX) and age >= self.retention_s:
                old[entry.name[:-len(SUFFIX)]] = Path(entry.path)
            elif entry.name.startswith(".upload-") and age > 3600:
                Path(entry.path).unlink(missing_ok=True)
        if not old:
            return []
        keep = set(kept(now - self.retention_s))
        removed = []
        for sha, path in old.items():
            if sha not in keep:
                path.unlink(missing_ok=True)
                removed.append(sha)
        if removed:
            log.info("uploaded inputs removed after their retention", extra={"removed": len(removed)})
        return removed
