"""An offers run report as one self-contained HTML page (inline SVG charts, no script, no network).

Charts are drawn with matplotlib's object API (``Figure``, never ``pyplot``: no global figure
state, nothing to close in a long-lived worker) and inlined as SVG with text kept as text, so the
page is small, sharp at any zoom, searchable, and needs nothing but the file. matplotlib is
imported on the first report only: it costs 0.4-0.6 s and ~40 MB of RSS (measured after the app
was built), which a pricing worker that never renders a report should not pay.
"""

from __future__ import annotations

import io
import re
from functools import lru_cache
from typing import Any, cast

from markupsafe import Markup
from sqlalchemy.orm import Session

from services.offers.reports.data import PARTNER_CALLS, Histogram, RunReportData, collect_report
from services.offers.runs.stats import rate_text

# Text kept as text (escaped by the SVG backend), ids stable between renders. Labels that come
# from the run (offer names, failure reasons) go through _label, which escapes mathtext's "$";
# parse_math itself stays on, since log-axis tick labels are mathtext.
_RC = {"svg.fonttype": "none", "svg.hashsalt": "courier-report", "font.size": 9,
       "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3}
_LABEL_CHARS = 40
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"  # the page needs nothing else


def _label(text: Any) -> str:
    """A run-provided string as a plain chart label: shortened, and never read as mathtext."""
    text = str(text)
    text = text if len(text) <= _LABEL_CHARS else text[:_LABEL_CHARS - 1] + "…"
    return text.replace("$", r"\$")


def _svg(figure) -> Markup:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg"):]  # drop the XML prolog and DOCTYPE: the SVG lives inside HTML
    svg = re.sub(r"\s*<metadata>.*?</metadata>", "", svg, flags=re.S)
    # Every SVG numbers its groups from 1 (figure_1, axes_1, ...): prefix this chart's ids and the
    # references to them, so the several SVGs of one page never share an id.
    prefix = re.sub(r"\W+", "-", figure.get_label())
    svg = re.sub(r'( id="|url\(#|href="#)', lambda m: f"{m.group(1)}{prefix}-", svg)
    return Markup(svg)  # noqa: S704 - matplotlib's own output, every text in it escaped by its SVG backend


def _figure(name: str, width: float, height: float):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    figure.set_label(name)
    return figure


def _timeline_chart(points: list[list[float]]) -> Markup | None:
    if len(points) < 2:
        return None
    figure = _figure("timeline", 7.5, 2.6)
    ax = figure.subplots()
    ax.plot([p[0] for p in points], [p[1] for p in points], drawstyle="steps-post")
    ax.set_xlabel("seconds since scoring started")
    ax.set_ylabel("members recorded")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    return _svg(figure)


def _bars(counts: dict[str, int], xlabel: str, color: str = "C0") -> Markup | None:
    if not counts:
        return None
    names = list(counts)[::-1]  # largest first, top to bottom
    figure = _figure(xlabel, 7.5, 0.6 + 0.28 * len(names))
    ax = figure.subplots()
    bars = ax.barh([_label(n) for n in names], [counts[n] for n in names], color=color)
    ax.bar_label(bars, padding=3)
    ax.set_xlabel(xlabel)
    ax.grid(axis="y", visible=False)
    return _svg(figure)


def _step_latency_chart(steps: dict[str, dict]) -> Markup | None:
    named = [(name, s) for name, s in steps.items() if isinstance(s, dict) and "p50_ms" in s]
    if not named:
        return None
    import numpy as np

    figure = _figure("steps", 7.5, 2.6)
    ax = figure.subplots()
    x = np.arange(len(named))
    for i, key in enumerate(("p50_ms", "p95_ms", "p99_ms")):
        ax.bar(x + (i - 1) * 0.27, [max(s[key], 1e-3) for _, s in named], width=0.27, label=key[:-3])
    ax.set_xticks(x, [name for name, _ in named])
    _log_axis(ax.yaxis)
    ax.set_ylabel("ms per member (log)")
    ax.legend(frameon=False, ncols=3)
    return _svg(figure)


def _log_axis(axis) -> None:
    """Log scale ticked at 1-2-5 with plain numbers: the default labels every minor tick as 10^x
    and they overlap when the data spans less than a decade (partner calls usually do).  Below a
    decade a 1-2-5 locator finds at most one tick and matplotlib falls back to a dense linear one
    (5, 5.01, 5.02, ... run into one string when every call took 5 ms): four ticks at most there."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    axis.axes.set_xscale("log") if axis is axis.axes.xaxis else axis.axes.set_yscale("log")
    low, high = axis.get_view_interval()
    if low > 0 and high / low < 10:
        axis.set_major_locator(MaxNLocator(nbins=4))
    else:
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))
    axis.set_minor_formatter(NullFormatter())


def _call_latency_chart(histograms: dict[str, Histogram]) -> Markup | None:
    """Each member's latency of each partner call.  A batch call answers many members (each counted
    with its batch's latency), so the titles count members: "890 calls" was wrong for batch runs."""
    calls = [call for call in PARTNER_CALLS if call in histograms and histograms[call].total]
    if not calls:
        return None
    figure = _figure("calls", 7.5, 2.4)
    axes = figure.subplots(1, len(calls), squeeze=False)[0]
    for ax, call, color in zip(axes, calls, ("C0", "C1", "C2"), strict=False):
        hist = histograms[call]
        ax.stairs(hist.counts, hist.edges, fill=True, color=color, alpha=0.8)
        _log_axis(ax.xaxis)
        ax.set_title(f"{call} ({hist.total:,} members)")
        ax.set_xlabel("ms (log)")
    axes[0].set_ylabel("members")
    return _svg(figure)


def _features_chart(features: dict[str, dict[str, Histogram]]) -> Markup | None:
    shown = {name: groups for name, groups in features.items() if any(h.total for h in groups.values())}
    if not shown:
        return None
    columns = 2
    rows = (len(shown) + columns - 1) // columns
    figure = _figure("features", 7.5, 1.9 * rows + 0.4)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    offers = sorted({offer for groups in shown.values() for offer in groups})
    colors = {offer: f"C{i % 10}" for i, offer in enumerate(offers)}
    for ax, (name, groups) in zip(axes, shown.items(), strict=False):
        for offer, hist in groups.items():
            if hist.total:
                ax.stairs([c / hist.total for c in hist.counts], hist.edges, color=colors[offer],
                          label=_label(offer), linewidth=1.4)
        ax.set_title(name, fontsize=8)
    for ax in axes[len(shown):]:
        ax.set_visible(False)
    for ax in axes[::columns]:
        ax.set_ylabel("share of offer")
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside upper center", ncols=min(len(labels), 6), frameon=False)
    return _svg(figure)


@lru_cache(maxsize=1)
def _template():
    from jinja2 import Environment

    environment = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
    environment.filters["rate"] = rate_text
    return environment.from_string(_TEMPLATE)


def run_report_html(session: Session, run_id: int) -> str:
    """The report page of run ``run_id`` (NotFound if there is none); read-only."""
    return render_report(collect_report(session, run_id))


def render_report(data: RunReportData) -> str:
    """The whole page as one string."""
    import matplotlib

    run = data.run
    with matplotlib.rc_context(cast(Any, _RC)):  # its hints list every rc key as a Literal
        charts = {
            "timeline": _timeline_chart(data.timeline),
            "offers": _bars(run["offers"], "members"),
            "steps": _step_latency_chart(run["step_metrics"]),
            "calls": _call_latency_chart(data.call_latency_ms),
            "failures": _bars(data.failures, "failed members", color="C3"),
            "rejected": _bars(run["rejected"].get("by_reason", {}), "rejected rows", color="C7"),
            "features": _features_chart(data.features_by_offer),
        }
    steps = {name: s for name, s in run["step_metrics"].items() if name != "retries"}
    return _template().render(run=run, mode=data.mode, timeline_recorded=data.timeline_recorded, charts=charts,
                              steps=steps, failures=data.failures,
                              retries=run["step_metrics"].get("retries"))


_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Offers run {{ run.id }}: {{ run.status }}</title>
<style>
body { font: 14px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; padding: 0 1rem; color: #222; }
h1 { font-size: 1.5rem; margin-bottom: .2rem; }
h2 { font-size: 1.1rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .5rem 0; } td, th { padding: .2rem .7rem; text-align: right; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
.status { display: inline-block; padding: .1rem .5rem; border-radius: .3rem; color: #fff; background: #777; }
.status-succeeded { background: #2a7d2e; } .status-completed_with_failures { background: #b26a00; }
.status-failed, .status-abandoned { background: #b3261e; } .status-interrupted, .status-running { background: #1f5fa8; }
.muted { color: #777; } svg { max-width: 100%; height: auto; }
dl { display: grid; grid-template-columns: max-content auto; gap: .1rem 1rem; }
dt { color: #555; } dd { margin: 0; word-break: break-all; }
</style>
</head>
<body>
<h1>Offers run {{ run.id }} <span class="status status-{{ run.status }}" id="status">{{ run.status }}</span></h1>
<p class="muted">partner {{ run.partner }} · as of {{ run.as_of }} · started {{ run.started_at }}
{% if run.finished_at %} · finished {{ run.finished_at }}{% endif %}</p>
{% if run.error %}<p id="error"><strong>Error:</strong> {{ run.error }}</p>{% endif %}

<h2>Run record</h2>
<dl>
<dt>input</dt><dd>{{ run.input_file }}</dd>
<dt>input sha256</dt><dd>{{ run.input_sha256 }}</dd>
<dt>concurrency</dt><dd>{{ run.concurrency }}</dd>
<dt>mode</dt><dd id="mode">{{ mode }}</dd>
</dl>
<table id="counts">
<tr><th>rows read</th><th>rows rejected</th><th>members recorded</th><th>scored</th><th>skipped</th><th>failed</th>
<th>retries</th></tr>
<tr>{% for value in (run.rows_read, run.rows_rejected, run.members_total, run.members_scored, run.members_skipped,
run.members_failed, retries.total if retries else 0) %}<td>{{ value }}</td>{% endfor %}</tr>
</table>

<h2>Members completed over time</h2>
{% if charts.timeline %}{{ charts.timeline }}
{% elif not run.members_total %}<p class="muted" id="no-timeline">No members were recorded: the run ended before
scoring{% if run.error %} ({{ run.error }}){% endif %}.</p>
{% elif not timeline_recorded %}<p class="muted" id="no-timeline">No timeline recorded for this run (runs recorded
before migration 0008 have none).</p>
{% else %}<p class="muted" id="no-timeline">Too few progress points to draw a timeline.</p>
{% endif %}

<h2>Offer split</h2>
<table id="offers">
<tr><th>offer</th><th>members</th><th>share of scored</th></tr>
{% for offer, count in run.offers.items() %}
<tr><td>{{ offer }}</td><td>{{ count }}</td>
<td>{{ '%.1f%%'|format(100 * count / run.members_scored) if run.members_scored else '-' }}</td></tr>
{% endfor %}
</table>
{{ charts.offers or '<p class="muted">No offers.</p>'|safe }}

<h2>Steps: throughput and latency</h2>
<table id="steps">
<tr><th>step</th><th>items</th><th>seconds</th><th>items/s</th><th>p50 ms</th><th>p95 ms</th><th>p99 ms</th></tr>
{% for name, s in steps.items() %}
<tr><td>{{ name }}</td><td>{{ s['items'] }}</td><td>{{ '%.3f'|format(s['seconds']) }}</td>
<td>{{ s.get('items_per_s')|rate }}</td>
{% for key in ('p50_ms', 'p95_ms', 'p99_ms') %}<td>{{ '%.2f'|format(s[key]) if key in s else '-' }}</td>{% endfor %}
</tr>
{% endfor %}
</table>
{{ charts.steps or '' }}

<h2>Partner call latency</h2>
{{ charts.calls or '<p class="muted">No partner calls recorded.</p>'|safe }}

<h2>Failures by reason</h2>
{% if failures %}
<table id="failures">
<tr><th>reason</th><th>members</th></tr>
{% for reason, count in failures.items() %}<tr><td>{{ reason }}</td><td>{{ count }}</td></tr>{% endfor %}
</table>
{{ charts.failures }}
{% else %}<p class="muted" id="failures">No member failed.</p>{% endif %}
{% if retries %}
<p>Retries: {{ retries.total }} ({% for reason, n in retries.by_reason.items() -%}
{{ reason }}: {{ n }}{{ ', ' if not loop.last }}{% endfor %})</p>
{% endif %}
{% if run.rows_rejected %}
<h3>Rejected input rows</h3>
{{ charts.rejected }}
{% endif %}

<h2>Features by offer</h2>
<p class="muted">Each line is one offer's members, as a share of that offer's scored members per bin.</p>
{{ charts.features or '<p class="muted">No scored members.</p>'|safe }}

<p class="muted">Generated by Courier from run {{ run.id }}; figures in the tables are the run record's.</p>
</body>
</html>
"""
