"""Rendered run reports, kept per process and validated by ETag.

A report costs a whole run's results read and drawn: ~2.2 s for 100k members on PostgreSQL, in a
sync worker. A run that has ended does not change until it is resumed, and a resume changes its
record (status, counts, timings), so a digest of the record names the page: a client holding it
gets 304 after one primary-key read, and another client gets the page kept from the last render.
A running run's results change under it, so its page is neither kept nor tagged.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Container
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from sqlalchemy.orm import Session

from services.offers.reports.queries import get_run
from services.offers.runs.recording import run_record
from services.offers.statuses import RunStatus

# ~200 KB a page: 8 pages are under 2 MB per worker.
PAGES_KEPT = 8


@dataclass(frozen=True)
class ReportPage:
    etag: str | None  # None: a running run's page, not to be cached by anyone
    html: str | None  # None: the caller's copy (its If-None-Match) is current


@lru_cache(maxsize=1)
def _layout_digest() -> bytes:
    """The code that draws the page: a new layout must not be answered with 304 for an old page.
    Read as files, not imported: numpy and matplotlib load on the first report only (+12 MB RSS
    in every worker otherwise, measured after create_app)."""
    here = Path(__file__).parent
    return hashlib.sha256(b"".join((here / name).read_bytes() for name in ("data.py", "html.py")))\
        .digest()


class ReportPages:
    """The report pages of ended runs, at most ``keep``, the least recently served dropped first."""

    def __init__(self, keep: int = PAGES_KEPT) -> None:
        self._keep = keep
        self._pages: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, session: Session, run_id: int, known: Container[str] = ()) -> ReportPage:
        """Run ``run_id``'s page (NotFound if there is none); ``html`` is None when ``known`` (the
        ETags the client holds) has the current one."""
        from services.offers.reports.html import run_report_html

        record = run_record(get_run(session, run_id))
        if record["status"] in (RunStatus.RUNNING, RunStatus.ABANDONED):
            return ReportPage(None, run_report_html(session, run_id))
        digest = hashlib.sha256(_layout_digest())
        digest.update(json.dumps(record, sort_keys=True, default=str).encode())
        etag = digest.hexdigest()[:32]
        if etag in known:
            return ReportPage(etag, None)
        with self._lock:
            html = self._pages.get(etag)
            if html is not None:
                self._pages.move_to_end(etag)
                return ReportPage(etag, html)
        html = run_report_html(session, run_id)  # not under the lock: seconds for a big run
        with self._lock:
            self._pages[etag] = html
            while len(self._pages) > self._keep:
                self._pages.popitem(last=False)
        return ReportPage(etag, html)
