"""``flask run-offers`` and ``flask partners check``: batch offer scoring and partner registry checks."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import NoReturn

import click
from flask import current_app
from flask.cli import with_appcontext

from capabilities.offers import offers_capability
from capabilities.runtime import runtime
from cli.db import require_migrated
from services.errors import CourierError
from services.http.transport import ProxyNotSupported, check_proxy
from services.offers.features.input import InputError
from services.offers.partners.client import PartnerClient
from services.offers.partners.config import PartnerConfig, PartnerConfigError
from services.offers.partners.registry import load_registry
from services.offers.runs.distributed.celery_app import display_url
from services.offers.runs.errors import DistributedUnavailable
from services.offers.runs.frame import RunFailure
from services.offers.runs.lifecycle import ResumeError, RunOptions, resumed_partner_and_date
from services.offers.runs.local import run_offers
from services.offers.runs.recording import OUTPUT_SUFFIXES, RecordedResults, write_output
from services.offers.runs.stats import rate_text
from services.offers.statuses import EXIT_CODES, RunStatus


def _registry():
    try:
        return load_registry(current_app.config["PARTNERS_FILE"], current_app.config["SERVICE_URL"])
    except PartnerConfigError as exc:
        click.echo(f"error: partner registry {exc.path}:", err=True)
        for problem in exc.problems:
            click.echo(f"  {problem}", err=True)
        raise SystemExit(2) from exc


def _flask_program() -> str:
    """How the user ran us (e.g. ``.venv/bin/flask``), so a printed command works when pasted back."""
    program = sys.argv[0] if os.path.basename(sys.argv[0]) == "flask" else ".venv/bin/flask"
    relative = os.path.relpath(program) if os.path.isabs(program) else program
    return relative if not relative.startswith("..") else program


def _usage_error(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    raise SystemExit(2)


class _Progress:
    """tqdm on a terminal; a plain line every 10% otherwise (logs, CI)."""

    def __init__(self) -> None:
        self.bar = None
        self.total = 0
        self.done = 0
        self.next_report = 0
        self.lock = threading.Lock()

    def start(self, total: int) -> None:
        self.total = total
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="member", desc="scoring", dynamic_ncols=True)
        self.next_report = max(1, total // 10)

    def advance(self, n: int) -> None:
        with self.lock:
            self.done += n
            if self.bar is not None:
                self.bar.update(n)
            elif self.done >= self.next_report or self.done == self.total:
                click.echo(f"  {self.done}/{self.total} members recorded", err=True)
                self.next_report = self.done + max(1, self.total // 10)

    def write(self, line: str) -> None:
        """A line that does not tear the bar."""
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            click.echo(line, err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _RetryReporter:
    """At most one line per upstream every ``every_s`` seconds: how many retries, and why."""

    def __init__(self, progress: _Progress, every_s: float = 5.0) -> None:
        self.progress = progress
        self.every_s = every_s
        self.last: dict[str, tuple[float, int]] = {}  # upstream -> (when reported, total then)

    def __call__(self, tally, event) -> None:
        now = time.monotonic()
        when, before = self.last.get(event.upstream, (0.0, 0))
        if now - when < self.every_s:
            return
        self.last[event.upstream] = (now, tally.total)
        self.progress.write(f"  {event.upstream}: retrying ({tally.total - before} retries since the last note, "
                            f"latest: {event.reason})")


def _seconds_since_process_start() -> float:
    """Wall time since this process started (Linux: /proc), else since the command began."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            started_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
            return float(uptime.read().split()[0]) - started_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _COMMAND_STARTED


_COMMAND_STARTED = time.monotonic()


def _print_summary(report) -> None:
    run = report.run
    echo = click.echo
    echo("")
    echo(f"run {run.id} {run.status} in {report.elapsed_s:.2f} s (partner {run.partner}, as of {run.as_of})")
    if run.error:
        echo(f"  error:    {run.error}")
    echo(f"  rows:     {run.rows_read} read, {run.rows_rejected} rejected"
         + (f" ({', '.join(f'{k}: {v}' for k, v in run.rejected.get('by_reason', {}).items())})"
            if run.rows_rejected else ""))
    echo(f"  members:  {run.members_scored} scored, {run.members_skipped} skipped, {run.members_failed} failed"
         f" ({run.members_total} recorded)")
    echo(f"  offers:   {', '.join(f'{k}: {v}' for k, v in run.offers.items()) or 'none'}")
    retries = run.step_metrics.get("retries")
    echo(f"  retries:  {retries['total'] if retries else 0}"
         + (f" ({', '.join(f'{k}: {v}' for k, v in retries['by_reason'].items())})" if retries else ""))
    since_start = _seconds_since_process_start()
    if since_start > 0:
        # Scored members only (skipped ones cost no partner call and inflated this by ~11%), over the
        # whole process so far: start-up, input, features, scoring and recording; --output comes after.
        echo(f"  end to end: {rate_text(run.members_scored / since_start)} scored members/s "
             f"({since_start:.2f} s since the process started)")
    echo("")
    echo(f"  {'step':<9} {'items':>8} {'seconds':>9} {'items/s':>10} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
    for name, s in run.step_metrics.items():
        if name == "retries":
            continue
        rate = rate_text(s.get("items_per_s"))
        pcts = [f"{s[k]:.2f}" if k in s else "-" for k in ("p50_ms", "p95_ms", "p99_ms")]
        echo(f"  {name:<9} {s['items']:>8} {s['seconds']:>9.3f} {rate:>10} {pcts[0]:>8} {pcts[1]:>8} {pcts[2]:>8}")
    if run.rows_rejected:
        sample = run.rejected.get("rows", [])[:5]
        echo("  first rejected rows: " + "; ".join(f"line {r['line']}: {r['reason']}" for r in sample))




@click.command("run-offers", help="Score every member of a transaction CSV on a partner's ML endpoints and "
                                  "record the run. Exit 0: succeeded (every member scored or skipped); "
                                  "1: completed_with_failures or failed; 2: bad usage or unreadable input; "
                                  "130: interrupted. Runs that did not succeed resume with --resume.")
@click.option("--input", "input_path", required=True, type=click.Path(dir_okay=False),
              help="Transaction CSV (either header spelling).")
@click.option("--partner", default=None, help="Partner name from the registry (default: OFFERS_DEFAULT_PARTNER).")
@click.option("--as-of", "as_of", default=None,
              help="Date DAYS_SINCE_LAST_TRANSACTION counts to, YYYY-MM-DD (default: today in UTC).")
@click.option("--output", default=None, type=click.Path(dir_okay=False),
              help="Write per-member results here, by extension: .csv, .jsonl or .parquet; plus "
                   "<output>.summary.json.")
@click.option("--concurrency", type=click.IntRange(1, 1024), default=None,
              help="Members in flight at once when scoring member by member (default: the partner's "
                   "max_concurrency). Partners with batch endpoints use their batch.concurrency instead.")
@click.option("--no-batch", "no_batch", is_flag=True, default=False,
              help="Call the per-member endpoints even if the partner declares batch endpoints.")
@click.option("--max-consecutive-failures", type=click.IntRange(0), default=None,
              help="Stop the run (failed, resumable) after this many members failed in a row; 0: never "
                   "(default: OFFERS_MAX_CONSECUTIVE_FAILURES).")
@click.option("--resume", "resume_run_id", type=click.IntRange(1), default=None,
              help="Continue a run that did not succeed: members recorded as scored or skipped are not sent "
                   "again; failed and unrecorded members are (distributed runs: unfinished chunks).")
@click.option("--distributed", is_flag=True, default=False,
              help="Score on Celery workers (`celery -A wsgi:celery_app worker`, any number of machines) "
                   "instead of in this process; needs PostgreSQL and a broker (COURIER_CELERY_BROKER_URL).")
@click.option("--chunk-size", type=click.IntRange(1, 100_000), default=None,
              help="Members per chunk task with --distributed (default: OFFERS_CHUNK_SIZE).")
@with_appcontext
def run_offers_command(input_path, partner, as_of, output, concurrency, no_batch, max_consecutive_failures,
                       resume_run_id, distributed, chunk_size) -> None:
    process = runtime()
    _check_usage(process, distributed, chunk_size, output)
    options, config = _run_options(process, input_path, partner, _as_of_date(as_of), concurrency, no_batch,
                                   max_consecutive_failures, resume_run_id)
    queue = _checked_queue() if distributed else None
    click.echo(_scoring_line(config, options, no_batch, distributed), err=True)
    progress = _Progress()
    # --output from the results as they were committed, not read back (when they are all of them)
    recorded = RecordedResults() if output and queue is None else None
    try:
        with _stop_on_signals() as stop:
            if queue is not None:
                report = _run_distributed(process, queue, config, options, chunk_size, progress, stop)
            else:
                report = run_offers(process.session_factory, config, options, progress_start=progress.start,
                                    progress=progress.advance, stop=stop, on_retry=_RetryReporter(progress),
                                    recorded=recorded)
    except (InputError, ResumeError, DistributedUnavailable) as exc:
        _usage_error(str(exc))
    finally:
        progress.close()
    _print_summary(report)
    if output:
        with process.session() as session:
            summary = write_output(session, report.run, output, recorded)
        click.echo(f"\nwrote {output} and {summary}")
    _print_hints(report, config, input_path, distributed)
    raise SystemExit(EXIT_CODES.get(report.run.status, 1))


def _check_usage(process, distributed: bool, chunk_size: int | None, output: str | None) -> None:
    """Refusals before any work (exit 2)."""
    if distributed and process.engine.dialect.name == "sqlite":
        _usage_error("--distributed needs a database every worker shares: set COURIER_DATABASE_URL to "
                     "PostgreSQL (postgresql://user:password@host/db); SQLite is one machine's file")
    if chunk_size is not None and not distributed:
        _usage_error("--chunk-size applies to --distributed runs only")
    require_migrated(process.engine)
    if output and Path(output).suffix.lower() not in OUTPUT_SUFFIXES:
        _usage_error(f"--output {output}: unsupported format {Path(output).suffix or '(no extension)'}; "
                     f"use one of {', '.join(OUTPUT_SUFFIXES)}")


def _as_of_date(as_of: str | None) -> date | None:
    if not as_of:
        return None
    try:
        return date.fromisoformat(as_of)
    except ValueError:
        _usage_error(f"--as-of {as_of!r}: expected YYYY-MM-DD")


def _run_options(process, input_path: str, partner: str | None, as_of_date: date | None, concurrency: int | None,
                 no_batch: bool, max_consecutive_failures: int | None,
                 resume_run_id: int | None) -> tuple[RunOptions, PartnerConfig]:
    """The run's options and its partner, from the command line and the settings (a resume keeps the
    run's own partner and date); a partner that is unknown or lacks a secret is a usage error."""
    registry = _registry()
    cfg = current_app.config
    run_date: date
    if resume_run_id is not None:
        try:
            partner, run_date = resumed_partner_and_date(process.session_factory, resume_run_id, partner, as_of_date)
        except ResumeError as exc:
            _usage_error(f"--resume {resume_run_id}: {exc}")
    else:
        partner = partner or cfg["OFFERS_DEFAULT_PARTNER"]
        run_date = as_of_date or datetime.now(UTC).date()
    try:
        config = registry.get(partner)
        config.headers()  # a missing secret is a usage error, before any work
        check_proxy(config.base_url)
    except CourierError as exc:
        _usage_error(f"{exc.message} Known partners: {', '.join(sorted(registry.partners))}")
    except (PartnerConfigError, ProxyNotSupported) as exc:
        _usage_error(str(exc))
    if max_consecutive_failures is None:
        max_consecutive_failures = cfg["OFFERS_MAX_CONSECUTIVE_FAILURES"]
    options = RunOptions(input_path=input_path, partner=partner, as_of=run_date,
                         concurrency=concurrency or config.max_concurrency, resume_run_id=resume_run_id,
                         max_consecutive_failures=max_consecutive_failures, use_batch=not no_batch,
                         database_outage_s=cfg["OFFERS_DATABASE_OUTAGE_S"])
    return options, config


def _checked_queue():
    try:
        queue = offers_capability().distributed.queue()
        queue.check()  # before any work: exit 2 naming the broker URL and the setting
    except DistributedUnavailable as exc:
        _usage_error(str(exc))
    return queue


def _scoring_line(config: PartnerConfig, options: RunOptions, no_batch: bool, distributed: bool) -> str:
    batch = config.batch if not no_batch else None
    mode = (f"batches of {batch.max_size}, {batch.concurrency} in flight" if batch
            else f"one call per member, {options.concurrency} in flight")
    if distributed:
        mode += f", on Celery workers (broker {display_url(current_app.config['CELERY_BROKER_URL'])})"
    return (f"scoring {options.input_path} on partner {options.partner} ({config.display_url}), as of "
            f"{options.as_of}, {mode}" + (f", resuming run {options.resume_run_id}" if options.resume_run_id else ""))


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """Ctrl-C or a kill (TERM): stop taking members, let those in flight finish, record, exit 130;
    a second Ctrl-C stops waiting for members in flight."""
    stop = threading.Event()

    def request_stop(signum, _frame):
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()

    previous_handlers = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)


def _print_hints(report, config: PartnerConfig, input_path: str, distributed: bool) -> None:
    if report.failure is not None and report.failure.kind == RunFailure.PARTNER_DOWN:
        click.echo(f"hint: is the partner up at {config.display_url}? The bundled reference partner is this "
                   "service itself: start it (`make run`), or set COURIER_SERVICE_URL (or COURIER_BIND) to "
                   "where it listens.", err=True)
    status = report.run.status
    if status != RunStatus.SUCCEEDED:
        flag = " --distributed" if distributed else ""
        click.echo(f"run {report.run.id} {status}: resume with `{_flask_program()} run-offers --input {input_path} "
                   f"--partner {report.run.partner} --as-of {report.run.as_of}{flag} --resume {report.run.id}`",
                   err=True)


def _run_distributed(process, queue, config, options, chunk_size, progress, stop):
    from services.offers.runs.distributed.coordinator import DistributedSettings, run_distributed

    cfg = current_app.config
    settings = DistributedSettings(chunk_size=chunk_size or cfg["OFFERS_CHUNK_SIZE"],
                                   stall_s=cfg["OFFERS_DISTRIBUTED_STALL_S"], silent_s=cfg["OFFERS_CHUNK_SILENT_S"])
    return run_distributed(process.session_factory, config, options, queue, settings, progress_start=progress.start,
                           progress=progress.advance, stop=stop, note=progress.write)


@click.group("partners", help="Partner registry (COURIER_PARTNERS_FILE).")
def partners_group() -> None:
    pass


@partners_group.command("check", help="Validate the registry and ping each partner (or only NAME).")
@click.argument("name", required=False)
@with_appcontext
def partners_check(name: str | None) -> None:
    registry = _registry()
    names = [name] if name else sorted(registry.partners)
    click.echo(f"registry {registry.path}: {len(registry.partners)} partner(s), valid")
    failed = 0
    for partner in names:
        try:
            config = registry.get(partner)
            client = PartnerClient(config)
            answer = client.ping()
            click.echo(f"  {partner}: ok ({config.display_url}{config.ping_path} answered {answer!r})")
            client.close()
        except (CourierError, PartnerConfigError) as exc:
            failed += 1
            click.echo(f"  {partner}: FAILED ({getattr(exc, 'message', exc)})", err=True)
    if failed:
        raise SystemExit(1)


@click.group("offers", help="Recorded offer runs.")
def offers_group() -> None:
    pass


@offers_group.command("report", help="Write run RUN_ID's report: one self-contained HTML page (charts inline, "
                                     "no network needed to view it).")
@click.argument("run_id", type=click.IntRange(1))
@click.option("--out", "out_path", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Where to write the page (default: offer-run-RUN_ID.html in the current directory).")
@with_appcontext
def offers_report(run_id: int, out_path: str | None) -> None:
    from services.errors import NotFound
    from services.offers.reports.html import run_report_html

    process = runtime()
    require_migrated(process.engine)
    path = Path(out_path or f"offer-run-{run_id}.html")
    try:
        with process.session() as session:
            page = run_report_html(session, run_id)
    except NotFound as exc:
        _usage_error(exc.message)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(page, encoding="utf-8")
    except OSError as exc:
        _usage_error(f"--out {path}: cannot write ({exc.strerror or exc})")
    click.echo(f"wrote {path} ({len(page.encode()) // 1024} KB)")


@offers_group.command("prune-uploads", help="Remove uploaded run inputs (runs started over REST or the web view) "
                                            "older than COURIER_OFFERS_UPLOAD_RETENTION_DAYS that no run still "
                                            "needs; uploads do it too, this is for a schedule (cron).")
@with_appcontext
def offers_prune_uploads() -> None:
    process = runtime()
    require_migrated(process.engine)
    submissions = offers_capability().submissions
    removed = submissions.prune()
    click.echo(f"removed {len(removed)} uploaded input(s) from {submissions.uploads.folder}")


__all__ = ["offers_group", "partners_group", "run_offers_command"]
