"""``flask run-offers`` and ``flask partners check``: batch offer scoring and partner registry checks."""

from __future__ import annotations

import signal
import sys
import threading
from datetime import UTC, date, datetime

import click
from flask import current_app
from flask.cli import with_appcontext

from cli.db import require_migrated
from services.errors import CourierError
from services.offers.features import InputError
from services.offers.partners import PartnerClient, PartnerConfigError, load_registry
from services.offers.pipeline import ResumeError, RunOptions, run_offers
from services.offers.recording import write_output


def _registry():
    try:
        return load_registry(current_app.config["PARTNERS_FILE"])
    except PartnerConfigError as exc:
        click.echo(f"error: partner registry {exc.path}:", err=True)
        for problem in exc.problems:
            click.echo(f"  {problem}", err=True)
        raise SystemExit(2) from exc


def _usage_error(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    raise SystemExit(2)


AUTO_PROCESSES_MIN_MEMBERS = 5000


def _auto_processes(input_path: str) -> int:
    """Spawning processes costs about a second; it pays off only for larger inputs."""
    import os

    try:
        size = os.path.getsize(input_path)
    except OSError:
        return 1
    # ~25 bytes per row and ~5 rows per member in the sample's shape
    return 1 if size < AUTO_PROCESSES_MIN_MEMBERS * 125 else max(1, min(os.cpu_count() or 1, 4))


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

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _print_summary(report) -> None:
    run = report.run
    echo = click.echo
    echo("")
    echo(f"run {run.id} {run.status} in {report.elapsed_s:.2f} s (partner {run.partner}, as of {run.as_of})")
    echo(f"  rows:     {run.rows_read} read, {run.rows_rejected} rejected"
         + (f" ({', '.join(f'{k}: {v}' for k, v in run.rejected.get('by_reason', {}).items())})"
            if run.rows_rejected else ""))
    echo(f"  members:  {run.members_scored} scored, {run.members_skipped} skipped, {run.members_failed} failed"
         f" ({run.members_total} recorded)")
    echo(f"  offers:   {', '.join(f'{k}: {v}' for k, v in run.offers.items()) or 'none'}")
    if report.elapsed_s > 0:
        echo(f"  end to end: {run.members_total / report.elapsed_s:.1f} members/s")
    echo("")
    echo(f"  {'step':<9} {'items':>8} {'seconds':>9} {'items/s':>10} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
    for name, s in run.step_metrics.items():
        rate = f"{s['items_per_s']:.1f}" if s.get("items_per_s") else "-"
        pcts = [f"{s[k]:.2f}" if k in s else "-" for k in ("p50_ms", "p95_ms", "p99_ms")]
        echo(f"  {name:<9} {s['items']:>8} {s['seconds']:>9.3f} {rate:>10} {pcts[0]:>8} {pcts[1]:>8} {pcts[2]:>8}")
    if run.rows_rejected:
        sample = run.rejected.get("rows", [])[:5]
        echo("  first rejected rows: " + "; ".join(f"line {r['line']}: {r['reason']}" for r in sample))


@click.command("run-offers", help="Score every member of a transaction CSV on a partner's ML endpoints and "
                                  "record the run. Exit 0: all scored or skipped; 1: some members failed; "
                                  "2: bad usage or unreadable input; 130: interrupted (resume with --resume).")
@click.option("--input", "input_path", required=True, help="Transaction CSV (either header spelling).")
@click.option("--partner", default=None, help="Partner name from the registry (default: OFFERS_DEFAULT_PARTNER).")
@click.option("--as-of", "as_of", default=None, help="Date DAYS_SINCE_LAST_TRANSACTION counts to, YYYY-MM-DD "
                                                     "(default: today in UTC).")
@click.option("--output", default=None, help="Write per-member results here: CSV, or .jsonl, or .parquet; "
                                             "plus <output>.summary.json.")
@click.option("--concurrency", type=click.IntRange(1, 256), default=None,
              help="Members in flight at once (default: the partner's max_concurrency).")
@click.option("--processes", type=click.IntRange(1, 64), default=None,
              help="Scoring processes; --concurrency is split between them. Default: 1 for fewer than "
                   f"{AUTO_PROCESSES_MIN_MEMBERS} members, else the number of cores (at most 4), since "
                   "one process's CPU (about 0.75 ms per partner call) becomes the limit.")
@click.option("--resume", "resume_run_id", type=int, default=None,
              help="Continue an interrupted run: members already recorded are not sent again.")
@with_appcontext
def run_offers_command(input_path, partner, as_of, output, concurrency, processes, resume_run_id) -> None:
    runtime = current_app.extensions["courier"]
    require_migrated(runtime.engine)
    registry = _registry()
    if resume_run_id is not None:
        from services.models import OfferRun

        with runtime.session() as session:
            previous = session.get(OfferRun, resume_run_id)
        if previous is None:
            _usage_error(f"--resume {resume_run_id}: no such run")
        if partner and partner != previous.partner:
            _usage_error(f"--resume {resume_run_id}: the run used partner {previous.partner!r}, not {partner!r}")
        if as_of and as_of != previous.as_of.isoformat():
            _usage_error(f"--resume {resume_run_id}: the run used --as-of {previous.as_of}, not {as_of}")
        partner, as_of_date = previous.partner, previous.as_of
    else:
        partner = partner or current_app.config["OFFERS_DEFAULT_PARTNER"]
        try:
            as_of_date = date.fromisoformat(as_of) if as_of else datetime.now(UTC).date()
        except ValueError:
            _usage_error(f"--as-of {as_of!r}: expected YYYY-MM-DD")
    try:
        config = registry.get(partner)
    except CourierError as exc:
        _usage_error(f"{exc.message} Known partners: {', '.join(sorted(registry.partners))}")
    try:
        client = PartnerClient(config, pool_maxsize=concurrency)
    except PartnerConfigError as exc:
        _usage_error(str(exc))
    processes = processes or _auto_processes(input_path)
    options = RunOptions(input_path=input_path, partner=partner, as_of=as_of_date,
                         concurrency=concurrency or config.max_concurrency, resume_run_id=resume_run_id,
                         processes=processes)
    stop = threading.Event()

    def request_stop(signum, _frame):
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop waiting for members in flight
        stop.set()

    # Ctrl-C or a kill (TERM): stop taking members, let those in flight finish, record, exit 130.
    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    progress = _Progress()
    click.echo(f"scoring {input_path} on partner {partner} ({config.base_url}), as of {as_of_date}, "
               f"concurrency {options.concurrency}, processes {processes}" + (f", resuming run {resume_run_id}" if resume_run_id else ""),
               err=True)
    try:
        report = run_offers(runtime.session_factory, client, options, progress_start=progress.start,
                            progress=progress.advance, stop=stop)
    except (InputError, ResumeError) as exc:
        _usage_error(str(exc))
    finally:
        progress.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        client.close()
    _print_summary(report)
    if output:
        with runtime.session() as session:
            summary = write_output(session, report.run, output)
        click.echo(f"\nwrote {output} and {summary}")
    if report.run.status == "interrupted":
        click.echo(f"interrupted: resume with `flask run-offers --input {input_path} --resume {report.run.id}`",
                   err=True)
        raise SystemExit(130)
    if report.run.status == "failed" or report.run.members_failed:
        raise SystemExit(1)


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
            click.echo(f"  {partner}: ok ({config.base_url}{config.ping_path} answered {answer!r})")
            client.close()
        except (CourierError, PartnerConfigError) as exc:
            failed += 1
            click.echo(f"  {partner}: FAILED ({getattr(exc, 'message', exc)})", err=True)
    if failed:
        raise SystemExit(1)


__all__ = ["partners_group", "run_offers_command"]
