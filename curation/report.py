"""The run report: one self-contained HTML page and a ``summary.json`` for a whole run directory.

:func:`build_report` reads a run directory (a local path or any fsspec URL) through
:mod:`curation.storage`. It finds the stage outputs in it by the ``stage`` field of each
subdirectory's ``_manifest.json``, not by fixed names, so ``balance-metaclip/`` and
``balance-rake/`` are both found, and an output without ``_SUCCESS`` is listed as incomplete and
not reported. Nothing here needs Spark. Every input is a small JSON or Parquet file that a stage
wrote. The one exception is the per-margin "after" table: the report gets it by rescoring the count
stage's distinct-signature table with each balance run's ``params.json``. This is exact, and it
reads the table once per balance run, in batches.

The plots are drawn on matplotlib's Agg canvas. The report does not import pyplot and does not
switch the global backend. They are embedded as base64 PNG ``data:`` URLs, so the page loads nothing
from elsewhere and runs no script. Every string that comes from the run (entries, margin levels,
paths, reasons) is escaped with :func:`html.escape`.

The page has these sections. When a section's stage is missing, a one-line note takes its place.

- *Stages*: every stage output found, its status and its time.
- *Pool and matching*: rows, usable rows, matched share, rejects by reason, metadata entries, and
  a plot of the matches-per-sample histogram. The count stage adds entries observed, distinct
  signatures and the top entries.
- *Balancing*, one part per balance output: the solver facts, then before/after entry statistics
  and weight statistics. Plots: rank–frequency of the entry counts before and after (log–log) with
  the target, the histogram of inclusion probabilities, and the convergence curve (max relative
  error and L1 per iteration, log y). The head entries follow with count, target and expected
  count.
- *Method comparison*, when several balance outputs exist: L1 error to the target, max head-entry
  error, entropy, top-100 share, tail entries fully kept, Kish ESS, design effect, max/mean weight
  and expected size, with a rank–frequency overlay.
- *Margins*: for each margin column counted, samples per level before balancing and the expected
  samples per level after each balance run.
- *Selection*: expected against realised size.
- *Output shards*: samples, shards, bytes, and failures by reason.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curation import __version__, storage
from curation.pipeline import SHARD_STAGES, STAGE_ORDER

DASH = "–"
TOP_ENTRIES = 12

BEFORE_COLOR = "#6b6b6b"
AFTER_COLOR = "#1f77b4"
TARGET_COLOR = "#d62728"
METHOD_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf")


# --- formatting ---------------------------------------------------------------------------------


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fmt_int(x: Any) -> str:
    """An integer with thousands separators (``199,800``); ``–`` for missing values."""
    if not _finite(x):
        return DASH
    return f"{int(round(x)):,}"


def fmt_num(x: Any, sig: int = 4) -> str:
    """A number for people: integers with separators, floats to ``sig`` significant digits."""
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float) and math.isinf(x):
        return "∞" if x > 0 else "−∞"
    if not _finite(x):
        return DASH
    if isinstance(x, int):
        return f"{x:,}"
    a = abs(x)
    if a == 0:
        return "0"
    if a >= 10**sig:
        return f"{x:,.0f}"
    if a >= 1e-3:
        return f"{x:,.{sig}g}"
    return f"{x:.3g}"


def fmt_pct(x: Any) -> str:
    """A share as a percentage: ``87.9%``, ``0.35%``; ``–`` for missing values."""
    if not _finite(x):
        return DASH
    v = 100.0 * float(x)
    if v == 0:
        return "0%"
    if v == 100:
        return "100%"
    if abs(v) < 1:
        return f"{v:.2g}%"
    return f"{v:.1f}%"


def fmt_bytes(n: Any) -> str:
    """A size in bytes with a binary unit: ``41.0 MiB``."""
    if not _finite(n):
        return DASH
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return DASH  # pragma: no cover - the loop always returns


def fmt_seconds(s: Any) -> str:
    """A duration: ``53.2 s``, ``2 min 28 s``, ``1 h 05 min``."""
    if not _finite(s):
        return DASH
    s = float(s)
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(round(s % 60)):02d} s"
    return f"{int(s // 3600)} h {int(round(s % 3600 / 60)):02d} min"


def fmt_signed(x: Any, pct: bool = False) -> str:
    """A difference with its sign: ``+61``, ``−3.2``; ``+1.3%`` with ``pct``."""
    if not _finite(x):
        return DASH
    text = fmt_pct(abs(x)) if pct else fmt_num(abs(x))
    return ("+" if x >= 0 else "−") + text


# --- reading a run ------------------------------------------------------------------------------


def _read_json(url: str) -> Any:
    try:
        return storage.read_json(url)
    except (FileNotFoundError, ValueError, OSError):
        return None


def _read_parquet(url: str) -> pa.Table | None:
    fs, path = storage.url_to_fs(url)
    try:
        if not fs.exists(path):
            return None
        with fs.open(path, "rb") as f:
            return pq.read_table(f)
    except (OSError, pa.ArrowException):
        return None


@dataclass(frozen=True)
class StageOutput:
    """One stage output found in a run directory."""

    name: str
    url: str
    stage: str
    complete: bool
    manifest: dict[str, Any]

    def path(self, *parts: str) -> str:
        """A URL under this output."""
        return storage.join(self.url, *parts)

    def json(self, *parts: str) -> Any:
        """A JSON file of this output, or None when it is missing or unreadable."""
        return _read_json(self.path(*parts))

    def parquet(self, *parts: str) -> pa.Table | None:
        """A single Parquet file of this output, or None when it is missing or unreadable."""
        return _read_parquet(self.path(*parts))

    @property
    def label(self) -> str:
        return self.name + "/"


def discover_stages(run: str) -> list[StageOutput]:
    """Every stage output directly under ``run``, found by its manifest's ``stage`` field.

    Directories without a readable manifest (a user's own pool, work areas), temporary
    directories of a stage in progress (``*.tmp-*``) and report outputs are left out. Sorted in
    pipeline order, then by name.
    """
    fs, path = storage.url_to_fs(run)
    path = path.rstrip("/")
    if not fs.exists(path) or not fs.isdir(path):
        raise storage.StageInputError(f"{run}: run directory not found")
    found = []
    for info in fs.ls(path, detail=True):
        if info.get("type") != "directory":
            continue
        name = info["name"].rstrip("/").rsplit("/", 1)[-1]
        if ".tmp-" in name or name.startswith("."):
            continue
        url = storage.join(run, name)
        manifest = _read_json(storage.join(url, storage.MANIFEST))
        if not isinstance(manifest, dict) or not isinstance(manifest.get("stage"), str):
            continue
        if manifest["stage"] == "report":
            continue
        complete = storage.exists(storage.join(url, storage.SUCCESS))
        found.append(StageOutput(name, url, manifest["stage"], complete, manifest))
    order = {s: i for i, s in enumerate(STAGE_ORDER)}
    found.sort(key=lambda s: (order.get(s.stage, len(order)), s.name))
    return found


class _Producers:
    """Which output of the run a stage read: its manifest's input fingerprint matched against the
    outputs' fingerprints, else the only candidate."""

    def __init__(self) -> None:
        self._fingerprints: dict[str, str | None] = {}

    def fingerprint(self, out: StageOutput) -> str | None:
        if out.url not in self._fingerprints:
            try:
                self._fingerprints[out.url] = storage.fingerprint(out.url)
            except (OSError, ValueError):
                self._fingerprints[out.url] = None
        return self._fingerprints[out.url]

    def find(
        self, consumer: StageOutput, input_name: str, candidates: Sequence[StageOutput]
    ) -> StageOutput | None:
        wanted = (consumer.manifest.get("inputs") or {}).get(input_name) or {}
        fp = wanted.get("fingerprint") if isinstance(wanted, dict) else None
        if fp:
            for c in candidates:
                if self.fingerprint(c) == fp:
                    return c
        return candidates[0] if len(candidates) == 1 else None


# --- plots --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plot:
    """A rendered PNG with its pixel size, alt text and caption."""

    png: bytes
    width: int
    height: int
    alt: str
    caption: str = ""


def _figure(width: float = 7.2, height: float = 3.6):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig, fig.add_subplot()


def _render(fig, alt: str, caption: str = "") -> Plot:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    canvas.print_png(buffer, metadata={"Software": None})
    width, height = (int(round(v)) for v in fig.get_size_inches() * fig.dpi)
    return Plot(buffer.getvalue(), width, height, alt, caption)


def _style(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=11, loc="left")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _positive(xs: Sequence[float], ys: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(xs, dtype=np.float64)
    y = np.asarray([np.nan if v is None else v for v in ys], dtype=np.float64)
    keep = np.isfinite(y) & (y > 0) & np.isfinite(x) & (x > 0)
    return x[keep], y[keep]


def plot_matches_histogram(per_k: dict[int, int]) -> Plot:
    """Bar chart of samples by number of matched entries ``k`` (k = 0 in grey)."""
    fig, ax = _figure(7.2, 3.2)
    ks = sorted(per_k)
    colors = [BEFORE_COLOR if k == 0 else AFTER_COLOR for k in ks]
    ax.bar(ks, [per_k[k] for k in ks], color=colors, width=0.8)
    _style(ax, "Matches per sample", "entries matched in the caption (k)", "samples")
    ax.yaxis.set_major_formatter(_thousands())
    ax.set_xticks(ks if len(ks) <= 25 else ks[:: max(1, len(ks) // 20)])
    return _render(
        fig,
        "Bar chart: number of samples by number of matched entries",
        "Samples by the number of metadata entries their caption matched (grey: no match).",
    )


def _thousands():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _pos: f"{v:,.0f}")


def _rank_line(
    ax, data: dict[str, Any] | None, label: str, **style: Any
) -> tuple[float, float] | None:
    """Draw one rank–frequency curve; returns its (smallest, largest) value, or None."""
    if not data or not data.get("rank"):
        return None
    x, y = _positive(data["rank"], data["value"])
    if x.size == 0:
        return None
    ax.plot(x, y, label=label, **style)
    return float(y.min()), float(y.max())


RANK_FLOOR = 1e-2  # expected counts below this share of the smallest pool count are cut off


def _rank_axes(ax, reference: list[tuple[float, float] | None], others: list) -> None:
    """Log–log axes from the smallest reference value (pool counts, targets) to the top value.

    Explicit limits: log autoscaling pads by a share of the decades spanned, and near-zero
    expected counts can span hundreds of them.
    """
    ax.set_xscale("log")
    ax.set_yscale("log")
    ranges = [r for r in reference if r is not None] or [r for r in others if r is not None]
    tops = [r[1] for r in [*reference, *others] if r is not None]
    if ranges and tops:
        ax.set_ylim(min(r[0] for r in ranges) * RANK_FLOOR, max(tops) * 3)
    ax.grid(True, which="minor", alpha=0.1)


def plot_rank_frequency(plots: dict[str, Any], title: str) -> Plot | None:
    """Log–log rank–frequency of entry counts: before, after (expected) and the target."""
    fig, ax = _figure()
    before = _rank_line(
        ax, plots.get("rank_frequency_before"), "before: pool counts c_j", color=BEFORE_COLOR, lw=2
    )
    target = _rank_line(
        ax,
        plots.get("rank_frequency_target"),
        "target τ_j",
        color=TARGET_COLOR,
        lw=1.5,
        ls="--",
    )
    after = _rank_line(
        ax,
        plots.get("rank_frequency_after"),
        "after: expected counts n_j(π)",
        color=AFTER_COLOR,
        lw=2,
    )
    if before is None and target is None and after is None:
        return None
    _rank_axes(ax, [before, target], [after])
    _style(ax, title, "entry rank", "samples matching the entry")
    ax.legend(frameon=False)
    return _render(
        fig,
        f"Log-log rank-frequency plot of entry counts before and after balancing: {title}",
        "Entries sorted by count, each curve on its own ranking (log–log). Expected counts "
        f"below {RANK_FLOOR:g} × the smallest pool count run off the bottom.",
    )


def plot_rank_frequency_overlay(
    before: dict[str, Any] | None, runs: list[tuple[str, dict]]
) -> Plot | None:
    """The expected entry counts after every balance run on one log–log plot."""
    fig, ax = _figure()
    pool = _rank_line(ax, before, "before: pool counts", color=BEFORE_COLOR, lw=2)
    afters = [
        _rank_line(
            ax,
            plots.get("rank_frequency_after"),
            f"after: {label}",
            color=METHOD_COLORS[i % len(METHOD_COLORS)],
            lw=1.8,
        )
        for i, (label, plots) in enumerate(runs)
    ]
    if pool is None and all(a is None for a in afters):
        return None
    _rank_axes(ax, [pool], afters)
    _style(ax, "Entry counts after each method", "entry rank", "expected samples")
    ax.legend(frameon=False, fontsize=9)
    return _render(
        fig,
        "Log-log rank-frequency plot of expected entry counts after each balance run",
        "Expected entry counts after each balance run, against the pool's counts (log–log).",
    )


def plot_pi_histogram(hist: dict[str, Any]) -> Plot | None:
    """Histogram of inclusion probabilities (log y when the counts span decades)."""
    edges = np.asarray(hist.get("edges") or [], dtype=np.float64)
    counts = np.asarray(hist.get("counts") or [], dtype=np.float64)
    if edges.size < 2 or counts.size != edges.size - 1 or counts.sum() <= 0:
        return None
    fig, ax = _figure(7.2, 3.2)
    ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color=AFTER_COLOR, ec="white")
    positive = counts[counts > 0]
    log = positive.size and positive.max() / positive.min() > 50
    if log:
        ax.set_yscale("log")
    _style(
        ax,
        "Inclusion probabilities",
        "inclusion probability π_i",
        "samples" + (" (log scale)" if log else ""),
    )
    if not log:
        ax.yaxis.set_major_formatter(_thousands())
    ax.set_xlim(edges[0], edges[-1])
    return _render(
        fig,
        "Histogram of per-sample inclusion probabilities",
        "Matched samples by inclusion probability π_i.",
    )


def plot_convergence(history: list[dict[str, Any]]) -> Plot | None:
    """Max relative error and L1 error per solver iteration (log y)."""
    if not history:
        return None
    it = [h.get("iter") for h in history]
    fig, ax = _figure(7.2, 3.2)
    drawn = False
    for key, label, color in (
        ("max_rel_err", "max relative entry error", TARGET_COLOR),
        ("l1", "L1 error to the target", AFTER_COLOR),
    ):
        x, y = _positive([i + 1 for i in it], [h.get(key) for h in history])
        if x.size:
            ax.plot(x - 1, y, label=label, color=color, lw=1.6)
            drawn = True
    if not drawn:
        return None
    ax.set_yscale("log")
    _style(ax, "Solver convergence", "iteration", "error (log scale)")
    ax.legend(frameon=False)
    return _render(
        fig,
        "Solver convergence: max relative error and L1 error per iteration (log scale)",
        "Max relative error over entries and L1 error to the target, per iteration.",
    )


def plot_tail_entropy(points: list[tuple[str, dict[str, Any], bool]]) -> Plot | None:
    """Entropy of the expected entry distribution against the tail share kept, one point per
    run and one per MetaCLIP baseline at the same size (``points``: label, the
    :func:`~curation.balancing.diagnostics.entry_quality` dict, is-baseline). Up and to the right
    is better: a flatter head while keeping the tail."""
    pts = [
        (label, q["tail_share"], q["entropy_nats"], baseline)
        for label, q, baseline in points
        if _finite(q.get("tail_share")) and _finite(q.get("entropy_nats"))
    ]
    if not pts:
        return None
    fig, ax = _figure(7.2, 3.6)
    for label, x, y, baseline in pts:
        ax.scatter(
            [x],
            [y],
            s=60,
            marker="s" if baseline else "o",
            color=BEFORE_COLOR if baseline else AFTER_COLOR,
            zorder=3,
        )
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    xs = [p[1] for p in pts]
    ax.set_xlim(min(min(xs) - 0.02, 0.9), 1.01)
    _style(
        ax,
        "Entropy against tail share, at equal expected size",
        "share of tail-entry samples kept (entries with c_j ≤ MetaCLIP's cap)",
        "entropy of expected entry counts (nats)",
    )
    return _render(
        fig,
        "Scatter of entropy against tail share for each balance run and MetaCLIP's rule at "
        "the same expected size",
        "Squares: MetaCLIP's rule at the run's expected size; circles: the runs. A method beats "
        "MetaCLIP when its point lies above the square (flatter) at the same tail share.",
    )


def plot_margin(column: str, before: dict[str, float], after: list[tuple[str, dict]]) -> Plot:
    """Grouped bars: each level's share of samples before and after each balance run."""
    levels = list(before)
    fig, ax = _figure(7.2, 3.0)
    groups = [("before", before, BEFORE_COLOR)] + [
        (label, values, METHOD_COLORS[i % len(METHOD_COLORS)])
        for i, (label, values) in enumerate(after)
    ]
    width = 0.8 / len(groups)
    x = np.arange(len(levels))
    for g, (label, values, color) in enumerate(groups):
        total = sum(values.values()) or 1.0
        shares = [100.0 * values.get(level, 0.0) / total for level in levels]
        ax.bar(x + (g - (len(groups) - 1) / 2) * width, shares, width, label=label, color=color)
    ax.set_xticks(x, [str(level) for level in levels], rotation=30 if len(levels) > 6 else 0)
    _style(ax, f"Margin {column}: share of samples per level", column, "share of samples (%)")
    ax.legend(frameon=False, fontsize=9)
    return _render(
        fig,
        f"Bar chart of the share of samples per level of {column} before and after balancing",
        f"Share of samples per level of {column}: the matched pool, and the expected selection "
        "of each balance run.",
    )


# --- the margin "after" table -------------------------------------------------------------------


def expected_by_level(
    counts: StageOutput, balance: StageOutput, columns: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Expected samples per margin level after balancing: Σ multiplicity · π over the signatures.

    Uses the count output's distinct-signature table and the balance output's ``params.json``
    (the function the balance and select stages use to score rows). With replacement, the value
    summed is the expected number of repeats. Raises ``ValueError`` when a column is missing.
    """
    import pyarrow.dataset as ds

    from curation.balancing import ScoreParams, expected_repeats, score_arrow
    from curation.balancing.signatures import encode_margin

    params = ScoreParams.from_json(storage.read_bytes(balance.path("params.json")).decode())
    fs, path = storage.url_to_fs(counts.path("signatures"))
    dataset = ds.dataset(path, filesystem=fs, format="parquet")
    needed = list(dict.fromkeys([*columns, *params.margin_values]))
    missing = [c for c in [*needed, "entry_ids", "multiplicity"] if c not in dataset.schema.names]
    if missing:
        raise ValueError(f"the signature table has no column {missing[0]!r}")
    sums: dict[str, dict[str, float]] = {c: defaultdict(float) for c in columns}
    for batch in dataset.to_batches(
        columns=["entry_ids", *needed, "multiplicity"], batch_size=65_536
    ):
        if batch.num_rows == 0:
            continue
        weight, pi = score_arrow(params, batch)
        value = expected_repeats(params, weight) if params.repeat_scale is not None else pi
        value = value * batch.column("multiplicity").to_numpy(zero_copy_only=False)
        for col in columns:
            codes, levels = encode_margin(batch.column(col))
            per_level = np.bincount(codes, weights=value, minlength=len(levels))
            for level, v in zip(levels, per_level):
                sums[col][level] += float(v)
    return {c: dict(v) for c, v in sums.items()}


# --- HTML helpers -------------------------------------------------------------------------------


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    align: str = "",
    cls: str = "",
) -> str:
    """A table of preformatted cells (escaped here); ``align`` is one l/r per column."""

    def cell(tag: str, i: int, text: Any) -> str:
        right = i < len(align) and align[i] == "r"
        return f"<{tag}{' class=num' if right else ''}>{_e(text)}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>" for row in rows
    )
    klass = f' class="{_e(cls)}"' if cls else ""
    return (
        f'<div class="scroll"><table{klass}><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def _kv(rows: Iterable[tuple[str, Any]]) -> str:
    """A two-column key/value table."""
    body = "".join(f"<tr><th>{_e(k)}</th><td class=num>{_e(v)}</td></tr>" for k, v in rows)
    return f'<table class="kv"><tbody>{body}</tbody></table>'


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _figure_html(plot: Plot) -> str:
    data = base64.b64encode(plot.png).decode("ascii")
    caption = f"<figcaption>{_e(plot.caption)}</figcaption>" if plot.caption else ""
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{_e(plot.alt)}" '
        f'width="{plot.width}" height="{plot.height}">{caption}</figure>'
    )


CSS = """
:root { --fg: #1d1d1f; --muted: #5f6368; --line: #dadce0; --accent: #1f77b4; --bg-alt: #f6f8fa; }
* { box-sizing: border-box; }
body { font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Helvetica, Arial,
       sans-serif; color: var(--fg); margin: 0; background: #fff; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 32px 64px; }
header { border-bottom: 2px solid var(--accent); margin-bottom: 16px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 21px; margin: 36px 0 8px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 17px; margin: 24px 0 8px; }
.meta, .note, figcaption { color: var(--muted); font-size: 13px; }
.note { font-style: italic; }
nav ul { list-style: none; padding: 0; display: flex; flex-wrap: wrap; gap: 4px 18px; }
nav a { color: var(--accent); text-decoration: none; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 14px; }
table.wide { font-size: 13px; }
table.wide thead th { white-space: normal; max-width: 110px; vertical-align: bottom; }
td:first-child { white-space: nowrap; }
th, td { padding: 4px 12px 4px 8px; border-bottom: 1px solid var(--line); text-align: left;
         vertical-align: top; }
thead th { background: var(--bg-alt); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.kv th { font-weight: normal; color: var(--muted); }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 12px 0; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 8px 14px; min-width: 150px; }
.card .v { font-size: 20px; font-weight: 600; }
.card .k { color: var(--muted); font-size: 12px; }
.cols { display: flex; flex-wrap: wrap; gap: 8px 32px; align-items: flex-start; }
figure { margin: 8px 0 20px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
.ok { color: #188038; } .bad { color: #c5221f; }
"""


def _cards(items: Iterable[tuple[str, str]]) -> str:
    return (
        '<div class="cards">'
        + "".join(
            f'<div class="card"><div class="v">{_e(v)}</div><div class="k">{_e(k)}</div></div>'
            for k, v in items
        )
        + "</div>"
    )


# --- the report ---------------------------------------------------------------------------------


@dataclass
class RunReport:
    """What :func:`build_report` returns: the page, the summary and what was found."""

    run: str
    html: str
    summary: dict[str, Any]
    stages: list[StageOutput]
    plots: int = 0


@dataclass
class _Builder:
    run: str
    stages: list[StageOutput]
    sections: list[tuple[str, str, str]] = field(default_factory=list)  # id, title, body
    summary: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    plots: int = 0
    producers: _Producers = field(default_factory=_Producers)

    def of(self, *stage: str) -> list[StageOutput]:
        return [s for s in self.stages if s.stage in stage and s.complete]

    def figure(self, plot: Plot | None) -> str:
        if plot is None:
            return ""
        self.plots += 1
        return _figure_html(plot)

    def missing(self, section: str, title: str, what: str) -> None:
        text = f"No complete {what} output in this run; section omitted."
        self.notes.append(text)
        self.sections.append((section, title, _note(text)))


def _seconds_of(out: StageOutput) -> Any:
    for name in ("summary.json", "_stats.json", "_summary.json"):
        data = out.json(name)
        if isinstance(data, dict) and "seconds" in data:
            return data["seconds"]
    return None


def _section_stages(b: _Builder) -> None:
    rows = []
    for s in b.stages:
        rows.append(
            (
                s.label,
                s.stage,
                "complete" if s.complete else "incomplete (no _SUCCESS)",
                fmt_seconds(_seconds_of(s)) if s.complete else DASH,
                s.manifest.get("version", DASH),
            )
        )
    incomplete = [s.label for s in b.stages if not s.complete]
    body = _table(("directory", "stage", "status", "time", "version"), rows, align="lllrl")
    if incomplete:
        text = (
            f"Incomplete outputs are not reported: {', '.join(incomplete)} "
            "(a stage in progress, or one that was killed)."
        )
        b.notes.append(text)
        body += _note(text)
    if not b.stages:
        body = _note("No stage output (a directory with _manifest.json) was found in this run.")
    b.summary["stages"] = [
        {"directory": s.name, "stage": s.stage, "complete": s.complete} for s in b.stages
    ]
    b.sections.append(("stages", "Stages", body))


def _section_pool(b: _Builder) -> None:
    body = []
    pool_out = b.of("demo-pool")
    matched = b.of("match")
    counts = b.of("count")
    if not matched and not pool_out and not counts:
        b.missing("pool", "Pool and matching", "match")
        return
    summary: dict[str, Any] = {}
    for p in pool_out:
        ps = p.json("_summary.json") or {}
        summary["pool"] = {"directory": p.name, "rows": ps.get("rows"), "files": ps.get("files")}
        body.append(
            f"<p>Pool <code>{_e(p.label)}</code>: {_e(fmt_int(ps.get('rows')))} rows in "
            f"{_e(fmt_int(ps.get('files')))} files (the built-in demo pool).</p>"
        )
    per_k: dict[int, int] = {}
    if matched:
        m = matched[0]
        s = m.json("summary.json") or {}
        meta = s.get("metadata") or {}
        usable = s.get("usable_rows")
        body.append(
            _cards(
                [
                    ("input rows", fmt_int(s.get("input_rows"))),
                    ("usable rows", fmt_int(usable)),
                    ("matched", fmt_int(s.get("matched"))),
                    ("matched share", fmt_pct(s.get("matched_share"))),
                    ("rejected", fmt_int(s.get("rejected"))),
                ]
            )
        )
        mean_k = (
            s["total_matches"] / s["matched"]
            if _finite(s.get("total_matches")) and s.get("matched")
            else None
        )
        left = _kv(
            [
                ("matched output", m.label),
                ("input", s.get("input", DASH)),
                ("input format", s.get("input_format", DASH)),
                ("metadata entries", fmt_int(meta.get("entries"))),
                ("metadata list", meta.get("source", DASH)),
                ("case folding", fmt_num(bool(s.get("casefold")))),
                ("unmatched (usable, no entry)", fmt_int(s.get("unmatched"))),
                ("total matches", fmt_int(s.get("total_matches"))),
                ("matches per matched sample", fmt_num(mean_k, 3)),
                ("match time", fmt_seconds(s.get("seconds"))),
            ]
        )
        reasons = s.get("rejects_by_reason") or {}
        rejected = s.get("rejected") or 0
        right = "<h3>Rejected rows by reason</h3>" + _table(
            ("reason", "rows", "share of input"),
            [
                (r, fmt_int(n), fmt_pct(n / s["input_rows"]) if s.get("input_rows") else DASH)
                for r, n in reasons.items()
            ]
            + [
                (
                    "total",
                    fmt_int(rejected),
                    fmt_pct(rejected / s["input_rows"]) if s.get("input_rows") else DASH,
                )
            ],
            align="lrr",
        )
        body.append(f'<div class="cols"><div>{left}</div><div>{right}</div></div>')
        per_k = {int(k): int(v) for k, v in (s.get("matches_per_sample") or {}).items()}
        summary["match"] = {
            "directory": m.name,
            **{
                k: s.get(k)
                for k in (
                    "input_rows",
                    "usable_rows",
                    "matched",
                    "unmatched",
                    "matched_share",
                    "rejected",
                    "rejects_by_reason",
                    "total_matches",
                    "matches_per_sample",
                )
            },
            "metadata_entries": meta.get("entries"),
        }
    if counts:
        c = counts[0]
        cs = c.json("summary.json") or {}
        if not per_k:
            hist = c.parquet("matches_histogram.parquet")
            if hist is not None:
                per_k = dict(zip(hist.column("k").to_pylist(), hist.column("samples").to_pylist()))
        body.append(
            "<h3>Entries</h3>"
            + _kv(
                [
                    ("counts output", c.label),
                    ("samples counted", fmt_int(cs.get("samples"))),
                    ("entries in the list", fmt_int(cs.get("entries"))),
                    (
                        "entries observed",
                        f"{fmt_int(cs.get('entries_observed'))} "
                        f"({fmt_pct(cs['entries_observed'] / cs['entries']) if cs.get('entries') else DASH})",
                    ),
                    ("distinct signatures", fmt_int(cs.get("signatures"))),
                    ("margins counted", ", ".join(cs.get("margins") or {}) or "none"),
                ]
            )
        )
        top = (cs.get("top_entries") or [])[:TOP_ENTRIES]
        matched_n = cs.get("matched") or 0
        if top:
            body.append(
                "<h3>Most frequent entries</h3>"
                + _table(
                    ("rank", "entry", "samples", "share of matched samples"),
                    [
                        (
                            i + 1,
                            e["entry"],
                            fmt_int(e["count"]),
                            fmt_pct(e["count"] / matched_n) if matched_n else DASH,
                        )
                        for i, e in enumerate(top)
                    ],
                    align="rlrr",
                )
            )
        summary["count"] = {
            "directory": c.name,
            **{
                k: cs.get(k)
                for k in ("samples", "matched", "entries", "entries_observed", "signatures")
            },
        }
    else:
        b.notes.append("No complete count output in this run; entry statistics omitted.")
        body.append(_note("No complete count output in this run; entry statistics omitted."))
    if per_k:
        body.append(b.figure(plot_matches_histogram(per_k)))
    if not matched:
        body.insert(0, _note("No complete match output in this run; matching statistics omitted."))
        b.notes.append("No complete match output in this run; matching statistics omitted.")
    b.summary.update(summary)
    b.sections.append(("pool", "Pool and matching", "".join(body)))


_ENTRY_ROWS = (
    ("l1_error", "L1 error to the target", fmt_num),
    ("max_rel_err_head", "max relative error, head entries", fmt_num),
    ("entropy_nats", "entropy of the entry distribution (nats)", fmt_num),
    ("top100_share", "share of the top-100 entries", fmt_pct),
    ("tail_entries_fully_kept_share", "tail entries fully kept", fmt_pct),
    ("expected_matches", "matches (expected)", fmt_int),
)


@dataclass
class _BalanceRun:
    out: StageOutput
    summary: dict[str, Any]
    diag: dict[str, Any]

    @property
    def method(self) -> str:
        return str(self.summary.get("method") or self.diag.get("method") or "?")

    @property
    def label(self) -> str:
        return f"{self.out.label} ({self.method})"

    def entries(self, when: str) -> dict[str, Any]:
        full = self.diag.get(f"entries_{when}")
        if isinstance(full, dict):
            return full
        return ((self.summary.get("headline") or {}).get(when)) or {}

    @property
    def weights(self) -> dict[str, Any]:
        return self.diag.get("weights") or (self.summary.get("headline") or {}).get("weights") or {}

    @property
    def expected_size(self) -> Any:
        return self.summary.get(
            "expected_size", (self.diag.get("inclusion") or {}).get("expected_size")
        )

    @property
    def info(self) -> dict[str, Any]:
        """The solver's info (summary first, then diagnostics)."""
        return self.summary.get("info") or self.diag.get("info") or {}


def _tail_kept(entries: dict[str, Any]) -> str:
    kept, tail = entries.get("tail_entries_fully_kept"), entries.get("tail_entries")
    share = fmt_pct(entries.get("tail_entries_fully_kept_share"))
    if _finite(kept) and _finite(tail):
        return f"{fmt_int(kept)} of {fmt_int(tail)} ({share})"
    return share


def _section_balance(b: _Builder) -> list[_BalanceRun]:
    outs = b.of("balance")
    if not outs:
        b.missing("balance", "Balancing", "balance")
        b.summary["balance"] = []
        return []
    runs = [
        _BalanceRun(o, o.json("summary.json") or {}, o.json("diagnostics.json") or {}) for o in outs
    ]
    body = []
    if len(runs) > 1:
        body.append(
            f"<p>{len(runs)} balance runs: "
            + ", ".join(f'<a href="#balance-{_e(r.out.name)}">{_e(r.label)}</a>' for r in runs)
            + ".</p>"
        )
    summaries = []
    for r in runs:
        s, d = r.summary, r.diag
        info = r.info
        pool = d.get("pool") or {}
        body.append(f'<h3 id="balance-{_e(r.out.name)}">{_e(r.label)}</h3>')
        iterations = info.get("iterations")
        body.append(
            _cards(
                [
                    ("method", r.method),
                    ("cap t", fmt_num(s.get("t"))),
                    ("target size", fmt_num(s.get("target_size"))),
                    ("expected size", fmt_num(r.expected_size)),
                    ("solver status", str(s.get("status", DASH))),
                ]
            )
        )
        facts = _kv(
            [
                ("iterations", fmt_int(iterations) if iterations is not None else "closed form"),
                ("margins balanced", ", ".join(s.get("margins") or []) or "none"),
                ("with replacement", fmt_num(bool(s.get("with_replacement")))),
                ("head entries (c_j > t)", fmt_int(pool.get("head_entries"))),
                ("entries observed", fmt_int(pool.get("entries_observed"))),
                (
                    "size error vs target",
                    fmt_pct((d.get("inclusion") or {}).get("size_rel_err")),
                ),
                ("samples with π = 1", fmt_pct((d.get("inclusion") or {}).get("pi_equal_1_share"))),
                ("balance time", fmt_seconds(s.get("seconds"))),
            ]
        )
        before, after = r.entries("before"), r.entries("after")
        rows = [
            (label, f(before.get(key)), f(after.get(key)))
            for key, label, f in _ENTRY_ROWS
            if key != "tail_entries_fully_kept_share"
        ]
        rows.insert(4, ("tail entries fully kept", _tail_kept(before), _tail_kept(after)))
        entries_table = "<h4>Entries, before and after</h4>" + _table(
            ("", "before (pool)", "after (expected)"), rows, align="lrr"
        )
        w = r.weights
        weights_table = "<h4>Weights</h4>" + _kv(
            [
                ("Kish effective sample size", fmt_num(w.get("kish_ess"))),
                ("design effect n / ESS", fmt_num(w.get("design_effect"))),
                ("max / mean weight", fmt_num(w.get("max_over_mean"))),
                ("share above 2× mean", fmt_pct(w.get("share_above_2x_mean"))),
                ("share above 5× mean", fmt_pct(w.get("share_above_5x_mean"))),
                ("share above 10× mean", fmt_pct(w.get("share_above_10x_mean"))),
            ]
        )
        body.append(
            f'<div class="cols"><div><h4>Solver</h4>{facts}{weights_table}</div>'
            f"<div>{entries_table}</div></div>"
        )
        plots = d.get("plots") or {}
        body.append(b.figure(plot_rank_frequency(plots, f"Entry counts by rank: {r.label}")))
        ref = info.get("vs_metaclip")
        if ref and r.method != "metaclip":
            body.append(_vs_metaclip(ref))
            body.append(
                b.figure(
                    plot_tail_entropy(
                        [
                            ("MetaCLIP, same size", ref["metaclip"], True),
                            (r.label, ref["this"], False),
                        ]
                    )
                )
            )
        body.append(
            b.figure(plot_pi_histogram((d.get("inclusion") or {}).get("pi_histogram") or {}))
        )
        history = d.get("convergence")
        if not history:
            table = r.out.parquet("history.parquet")
            history = table.to_pylist() if table is not None else []
        conv = b.figure(plot_convergence(history))
        body.append(
            conv or _note("No solver iterations (a closed-form method): no convergence curve.")
        )
        body.append(_head_entries(r.out))
        summaries.append(
            {
                "directory": r.out.name,
                "method": r.method,
                "t": s.get("t"),
                "status": s.get("status"),
                "iterations": iterations,
                "target_size": s.get("target_size"),
                "expected_size": r.expected_size,
                "before": {k: before.get(k) for k, _, _ in _ENTRY_ROWS},
                "after": {k: after.get(k) for k, _, _ in _ENTRY_ROWS},
                "weights": {
                    k: w.get(k) for k in ("kish_ess", "design_effect", "max_over_mean", "mean")
                },
            }
        )
    b.summary["balance"] = summaries
    b.sections.append(("balance", "Balancing", "".join(body)))
    return runs


_VS_ROWS = (
    ("tail_share", "tail share kept (c_j ≤ MetaCLIP's cap)", fmt_num),
    ("tail_min_share", "smallest share kept by a tail entry", fmt_num),
    ("entropy_nats", "entropy (nats)", fmt_num),
    ("top100_share", "top-100 share", fmt_pct),
    ("head_overshoot", "head overshoot over the cap", fmt_pct),
    ("tv_to_capped", "TV distance to the capped target", fmt_num),
)


def _vs_metaclip(ref: dict[str, Any]) -> str:
    """This run against MetaCLIP's rule at the same expected size (:mod:`curation.balancing.reference`)."""
    rows = [
        (label, f(ref["metaclip"].get(key)), f(ref["this"].get(key))) for key, label, f in _VS_ROWS
    ]
    return (
        f"<h4>Against MetaCLIP's rule at the same size (cap {fmt_num(ref.get('t_mc'))})</h4>"
        + _table(("", "MetaCLIP", "this run"), rows, align="lrr")
    )


def _head_entries(out: StageOutput) -> str:
    table = out.parquet("entry_factors.parquet")
    if table is None or "count" not in table.column_names:
        return ""
    counts = table.column("count").to_numpy(zero_copy_only=False)
    top = np.argsort(-counts, kind="stable")[:TOP_ENTRIES]
    cols = {name: table.column(name) for name in table.column_names}
    rows = []
    for j in top:
        if counts[j] <= 0:
            break
        expected = cols["expected"][j].as_py() if "expected" in cols else None
        rows.append(
            (
                cols["entry"][j].as_py() if "entry" in cols else int(j),
                fmt_int(int(counts[j])),
                fmt_num(cols["target"][j].as_py()) if "target" in cols else DASH,
                fmt_num(expected),
                fmt_pct(expected / counts[j]) if _finite(expected) else DASH,
            )
        )
    if not rows:
        return ""
    return "<h4>Head entries, before and after</h4>" + _table(
        ("entry", "count before", "target", "expected after", "kept"), rows, align="lrrrr"
    )


def _section_comparison(b: _Builder, runs: list[_BalanceRun]) -> None:
    if len(runs) < 2:
        text = (
            "One balance run: the method comparison table appears when several balance outputs "
            "exist in the run."
            if runs
            else "No balance output: no method comparison."
        )
        b.sections.append(("comparison", "Method comparison", _note(text)))
        return
    headers = (
        "run",
        "L1 error to target",
        "max head-entry error",
        "entropy (nats)",
        "top-100 share",
        "tail entries fully kept",
        "Kish ESS",
        "design effect",
        "max / mean weight",
        "expected size",
    )
    before = runs[0].entries("before")
    rows = [
        (
            "pool (before balancing)",
            fmt_num(before.get("l1_error")),
            fmt_num(before.get("max_rel_err_head")),
            fmt_num(before.get("entropy_nats")),
            fmt_pct(before.get("top100_share")),
            fmt_pct(before.get("tail_entries_fully_kept_share")),
            DASH,
            DASH,
            DASH,
            fmt_int((runs[0].diag.get("pool") or {}).get("matched")),
        )
    ]
    table_summary = []
    for r in runs:
        a, w = r.entries("after"), r.weights
        rows.append(
            (
                r.label,
                fmt_num(a.get("l1_error")),
                fmt_num(a.get("max_rel_err_head")),
                fmt_num(a.get("entropy_nats")),
                fmt_pct(a.get("top100_share")),
                fmt_pct(a.get("tail_entries_fully_kept_share")),
                fmt_num(w.get("kish_ess")),
                fmt_num(w.get("design_effect")),
                fmt_num(w.get("max_over_mean")),
                fmt_num(r.expected_size),
            )
        )
        table_summary.append(
            {
                "directory": r.out.name,
                "method": r.method,
                "l1_error": a.get("l1_error"),
                "max_rel_err_head": a.get("max_rel_err_head"),
                "entropy_nats": a.get("entropy_nats"),
                "top100_share": a.get("top100_share"),
                "tail_entries_fully_kept_share": a.get("tail_entries_fully_kept_share"),
                "kish_ess": w.get("kish_ess"),
                "design_effect": w.get("design_effect"),
                "max_over_mean": w.get("max_over_mean"),
                "expected_size": r.expected_size,
            }
        )
    body = _table(headers, rows, align="l" + "r" * 9, cls="wide")
    body += _note(
        "Entry statistics are of the expected counts n_j(π) against each run's own target; "
        "the pool row is every matched sample kept (against the first run's target)."
    )
    overlay = plot_rank_frequency_overlay(
        (runs[0].diag.get("plots") or {}).get("rank_frequency_before"),
        [(r.label, r.diag.get("plots") or {}) for r in runs],
    )
    body += b.figure(overlay)
    points: list[tuple[str, dict[str, Any], bool]] = []
    baselines: set[float] = set()
    for r in runs:
        ref = r.info.get("vs_metaclip")
        if not ref:
            continue
        size = round(float(ref["expected_size"]), 3)
        if r.method != "metaclip" and size not in baselines:
            baselines.add(size)
            points.append((f"MetaCLIP at {fmt_num(size)}", ref["metaclip"], True))
        points.append((r.label, ref["this"], r.method == "metaclip"))
    body += b.figure(plot_tail_entropy(points))
    b.summary["comparison"] = table_summary
    b.sections.append(("comparison", "Method comparison", body))


def _section_margins(b: _Builder, runs: list[_BalanceRun]) -> None:
    counts = b.of("count")
    if not counts:
        b.sections.append(
            ("margins", "Margins", _note("No complete count output: no margin tables."))
        )
        return
    c = counts[0]
    fs, path = storage.url_to_fs(c.path("margin_counts"))
    files = sorted(p for p in fs.glob(f"{path.rstrip('/')}/*.parquet")) if fs.exists(path) else []
    columns = [p.rsplit("/", 1)[-1].removesuffix(".parquet") for p in files]
    if not columns:
        b.sections.append(
            (
                "margins",
                "Margins",
                _note("No margin column was counted (count --margin COLUMN); no margin tables."),
            )
        )
        return
    from curation.balancing.signatures import NULL_LEVEL

    after: dict[str, dict[str, dict[str, float]]] = {}  # balance dir -> column -> level -> n
    after_notes = []
    for r in runs:
        own_counts = b.producers.find(r.out, "counts", counts)
        if own_counts is None:
            after_notes.append(f"{r.out.label}: its counts input is not in this run")
            continue
        try:
            after[r.out.name] = expected_by_level(own_counts, r.out, columns)
        except (ValueError, OSError, KeyError, pa.ArrowException) as exc:
            after_notes.append(f"{r.out.label}: {exc}")
    body = []
    summary: dict[str, Any] = {}
    for col in columns:
        table = c.parquet("margin_counts", f"{col}.parquet")
        if table is None or col not in table.column_names:
            continue
        levels = [NULL_LEVEL if v is None else str(v) for v in table.column(col).to_pylist()]
        samples = [int(v) for v in table.column("samples").to_pylist()]
        before = dict(zip(levels, samples))
        total = sum(samples) or 1
        entries_seen: dict[str, int] = {}
        pairs = c.parquet("margin_entry_counts", f"{col}.parquet")
        if pairs is not None and col in pairs.column_names:
            for level in pairs.column(col).to_pylist():
                key = NULL_LEVEL if level is None else str(level)
                entries_seen[key] = entries_seen.get(key, 0) + 1
        headers = ["level", "samples before", "share before"]
        if entries_seen:
            headers.append("entries seen")
        after_runs = [(r, after[r.out.name][col]) for r in runs if r.out.name in after]
        for r, _ in after_runs:
            headers += [f"expected after, {r.out.name}", "share"]
        rows = []
        for level in levels:
            row = [level, fmt_int(before[level]), fmt_pct(before[level] / total)]
            if entries_seen:
                row.append(fmt_int(entries_seen.get(level, 0)))
            for _, values in after_runs:
                size = sum(values.values()) or 1.0
                row += [fmt_num(values.get(level, 0.0)), fmt_pct(values.get(level, 0.0) / size)]
            rows.append(row)
        body.append(f"<h3>{_e(col)}</h3>")
        body.append(_table(headers, rows, align="l" + "r" * (len(headers) - 1), cls="wide"))
        if after_runs:
            body.append(
                b.figure(plot_margin(col, before, [(r.out.name, v) for r, v in after_runs]))
            )
        summary[col] = {
            "before": before,
            "after": {r.out.name: v for r, v in after_runs},
        }
    if not runs:
        body.append(
            _note("No balance output: the expected samples per level after balancing are skipped.")
        )
    for text in after_notes:
        note = f"Expected per level after balancing is not available for {text}."
        b.notes.append(note)
        body.append(_note(note))
    if runs and len(after) == len(runs):
        body.append(
            _note(
                "After: Σ π_i (expected repeats with replacement) per level, from each balance "
                "run's parameters applied to the count stage's distinct signatures."
            )
        )
    b.summary["margins"] = summary
    b.sections.append(("margins", "Margins", "".join(body)))


def _section_selection(b: _Builder) -> None:
    outs = b.of("select")
    if not outs:
        b.missing("selection", "Selection", "select")
        b.summary["select"] = []
        return
    balances = b.of("balance")
    rows, summaries = [], []
    for o in outs:
        s = o.json("summary.json") or {}
        source = b.producers.find(o, "weights", balances)
        expected, realised = s.get("expected_size"), s.get("selected")
        diff = realised - expected if _finite(expected) and _finite(realised) else None
        rows.append(
            (
                o.label,
                source.label if source else DASH,
                s.get("method", DASH),
                fmt_num(s.get("seed")),
                fmt_num(expected),
                fmt_int(realised),
                fmt_signed(diff),
                fmt_signed(diff / expected, pct=True) if diff is not None and expected else DASH,
                fmt_int(s.get("total_repeats")),
            )
        )
        summaries.append(
            {
                "directory": o.name,
                "weights": source.name if source else None,
                "method": s.get("method"),
                "seed": s.get("seed"),
                "with_replacement": s.get("with_replacement"),
                "expected_size": expected,
                "selected": realised,
                "total_repeats": s.get("total_repeats"),
            }
        )
    body = _table(
        (
            "selection",
            "weights from",
            "method",
            "seed",
            "expected size",
            "selected",
            "difference",
            "relative",
            "sum of repeats",
        ),
        rows,
        align="lllrrrrrr",
    )
    body += _note(
        "Expected size: Σ π_i over the matched pool (Σ of the expected repeats with "
        "replacement); selected: the samples the seeded hash kept."
    )
    b.summary["select"] = summaries
    b.sections.append(("selection", "Selection", body))


def _section_shards(b: _Builder) -> None:
    outs = b.of(*SHARD_STAGES)
    if not outs:
        b.missing("shards", "Output shards", "download or reshard")
        b.summary["shards"] = []
        return
    body, summaries = [], []
    for o in outs:
        sizes = o.json("sizes.json") or {}
        stats = o.json("_stats.json") or {}
        values = [int(v) for v in sizes.values()]
        samples = sum(values)
        body.append(f"<h3>{_e(o.label)} ({_e(o.stage)})</h3>")
        body.append(
            _cards(
                [
                    ("samples", fmt_int(samples)),
                    ("shards", fmt_int(len(values))),
                    ("size on disk", fmt_bytes(stats.get("output_bytes"))),
                    ("selected uids missing", fmt_int(stats.get("missing_uids"))),
                ]
            )
        )
        first = min(sizes) if sizes else None
        last = max(sizes) if sizes else None
        body.append(
            _kv(
                [
                    ("shards", f"{first} … {last}" if first else DASH),
                    ("samples per shard", fmt_int(stats.get("samples_per_shard"))),
                    (
                        "smallest / largest shard",
                        f"{fmt_int(min(values))} / {fmt_int(max(values))}" if values else DASH,
                    ),
                    ("selected uids", fmt_int(stats.get("selected_uids"))),
                    ("selected samples (with repeats)", fmt_int(stats.get("selected_samples"))),
                    ("uids found", fmt_int(stats.get("found_uids"))),
                    ("samples written", fmt_int(stats.get("written_samples"))),
                    ("shuffled", fmt_num(bool(stats.get("shuffle")))),
                    ("weights renormalised by", fmt_num(stats.get("weight_scale"), 6)),
                    ("time", fmt_seconds(stats.get("seconds"))),
                ]
            )
        )
        failures: dict[str, int] = {}
        download = stats.get("download") or {}
        if download:
            failures.update(download.get("failures_by_reason") or {})
            body.append(
                f"<p>Download: {_e(fmt_int(download.get('successes')))} of "
                f"{_e(fmt_int(download.get('urls')))} URLs fetched "
                f"({_e(fmt_pct(download['successes'] / download['urls']) if download.get('urls') else DASH)}).</p>"
            )
        dropped = {
            f"input sample dropped: {k}": int(v)
            for k, v in (stats.get("input_samples_dropped") or {}).items()
            if v
        }
        skipped = {
            f"input member skipped: {k}": int(v)
            for k, v in (stats.get("input_members_skipped") or {}).items()
            if v
        }
        failures.update(dropped)
        failures.update(skipped)
        if not download and stats.get("missing_uids"):
            failures["selected uid not in the input shards"] = int(stats["missing_uids"])
        if failures:
            total = stats.get("selected_uids") or 0
            body.append(
                "<h4>Failures by reason</h4>"
                + _table(
                    ("reason", "samples", "share of selected uids"),
                    [
                        (k, fmt_int(v), fmt_pct(v / total) if total else DASH)
                        for k, v in sorted(failures.items(), key=lambda kv: (-kv[1], kv[0]))
                    ],
                    align="lrr",
                )
            )
        else:
            body.append("<p>No failures.</p>")
        summaries.append(
            {
                "directory": o.name,
                "stage": o.stage,
                "samples": samples,
                "shards": len(values),
                "bytes": stats.get("output_bytes"),
                "selected_uids": stats.get("selected_uids"),
                "missing_uids": stats.get("missing_uids"),
                "failures_by_reason": failures,
            }
        )
    b.summary["shards"] = summaries
    b.sections.append(("shards", "Output shards", "".join(body)))


def _page(b: _Builder, title: str, generated: str) -> str:
    toc = "".join(f'<li><a href="#{_e(i)}">{_e(t)}</a></li>' for i, t, _ in b.sections)
    sections = "".join(
        f'<section id="{_e(i)}"><h2>{_e(t)}</h2>{body}</section>' for i, t, body in b.sections
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body><main>"
        f"<header><h1>{_e(title)}</h1>"
        f'<p class="meta">Run <code>{_e(b.run)}</code> · generated {_e(generated)} by curation '
        f"{_e(__version__)}</p></header>"
        f"<nav><ul>{toc}</ul></nav>{sections}</main></body></html>\n"
    )


def build_report(
    run: str,
    *,
    title: str | None = None,
    now: _dt.datetime | None = None,
    stages: list[StageOutput] | None = None,
) -> RunReport:
    """Read the run directory ``run`` and build the HTML page and the summary.

    ``stages``: the outputs :func:`discover_stages` found (found again when None). Raises
    :class:`curation.storage.StageInputError` when ``run`` is not a directory.
    """
    stages = discover_stages(run) if stages is None else stages
    generated = (now or _dt.datetime.now(_dt.timezone.utc)).strftime("%Y-%m-%d %H:%M UTC")
    b = _Builder(run, stages)
    b.summary.update({"run": run, "generated": generated, "version": __version__})
    _section_stages(b)
    _section_pool(b)
    runs = _section_balance(b)
    _section_comparison(b, runs)
    _section_margins(b, runs)
    _section_selection(b)
    _section_shards(b)
    b.summary["plots"] = b.plots
    b.summary["notes"] = b.notes
    page = _page(
        b, title or f"Curation run report: {run.rstrip('/').rsplit('/', 1)[-1]}", generated
    )
    return RunReport(run, page, _clean(b.summary), stages, b.plots)


def _clean(x: Any) -> Any:
    """JSON-safe: numpy scalars to Python, non-finite floats to None."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
