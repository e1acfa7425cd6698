"""The report's plots, drawn on matplotlib's Agg canvas.

The report does not import pyplot and does not switch the global backend. Each function returns a
:class:`Plot` (PNG bytes with pixel size, alt text and caption) or None when there is nothing to
draw.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from curation.report.format import finite

BEFORE_COLOR = "#6b6b6b"
AFTER_COLOR = "#1f77b4"
TARGET_COLOR = "#d62728"
METHOD_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf")


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
    from matplotlib.ticker import MaxNLocator

    # integer ticks the axis has room for: at large k a tick per bar (or per n-th bar) overlapped
    ax.xaxis.set_major_locator(MaxNLocator(nbins=12, integer=True))
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
    """The solver's KKT error (the stopping test; max relative error for solvers without one)
    and L1 error per pass over the table, or per iteration when passes are not recorded (log y)."""
    if not history:
        return None
    passes = [h.get("passes") for h in history]
    # per pass when every point has one and they rise (rake with margins restarts the count)
    by_pass = all(p is not None for p in passes) and all(a <= b for a, b in zip(passes, passes[1:]))
    xs = [h.get("passes") if by_pass else h.get("iter") for h in history]
    main = "kkt_err" if any(h.get("kkt_err") is not None for h in history) else "max_rel_err"
    fig, ax = _figure(7.2, 3.2)
    drawn = False
    for key, label, color in (
        (main, "KKT error" if main == "kkt_err" else "max relative entry error", TARGET_COLOR),
        ("l1", "L1 error to the target", AFTER_COLOR),
    ):
        x, y = _positive([(x or 0) + 1 for x in xs], [h.get(key) for h in history])
        if x.size:
            ax.plot(x - 1, y, label=label, color=color, lw=1.6)
            drawn = True
    if not drawn:
        return None
    ax.set_yscale("log")
    unit = "pass over the table" if by_pass else "iteration"
    _style(ax, "Solver convergence", unit, "error (log scale)")
    ax.legend(frameon=False)
    return _render(
        fig,
        f"Solver convergence: {label_of(main)} and L1 error per {unit} (log scale)",
        f"{label_of(main).capitalize()} and L1 error to the target, per {unit} (rake: of the "
        "final solve at the chosen cap; the cap search's rough solves are not drawn).",
    )


def label_of(key: str) -> str:
    return "KKT error" if key == "kkt_err" else "max relative error"


def plot_tail_entropy(points: list[tuple[str, dict[str, Any], bool]]) -> Plot | None:
    """Entropy of the expected entry distribution against the tail share kept, one point per
    run and one per MetaCLIP baseline at the same size (``points``: label, the
    :func:`~curation.balancing.diagnostics.entry_quality` dict, is-baseline). Up and to the right
    is better: a flatter head while keeping the tail."""
    pts = [
        (label, q["tail_share"], q["entropy_nats"], baseline)
        for label, q, baseline in points
        if finite(q.get("tail_share")) and finite(q.get("entropy_nats"))
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


def plot_bias(labels: list[tuple[str, float, float, bool]], epsilon: float) -> Plot | None:
    """Association bias per label, before (x) against after (y): ``labels`` holds (name,
    max_k |AB| before, after, constrained). Constrained labels must end below ε."""
    pts = [p for p in labels if finite(p[1]) and finite(p[2])]
    if not pts:
        return None
    fig, ax = _figure(7.2, 3.8)
    for constrained, color, name in (
        (True, AFTER_COLOR, "constrained"),
        (False, "#999999", "not constrained"),
    ):
        xs = [p[1] for p in pts if p[3] == constrained]
        ys = [p[2] for p in pts if p[3] == constrained]
        if xs:
            ax.scatter(xs, ys, s=18, color=color, label=f"{name} ({len(xs)})", zorder=3)
    top = max(max(p[1] for p in pts), max(p[2] for p in pts), epsilon) * 1.05
    ax.plot([0, top], [0, top], color="#bbbbbb", lw=1, ls=":")
    ax.axhline(epsilon, color=TARGET_COLOR, lw=1, ls="--", label=f"ε = {epsilon:g}")
    for name, x, y, _ in sorted(pts, key=lambda p: -p[1])[:5]:
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.legend(fontsize=8, loc="upper left")
    _style(
        ax,
        "Association bias per label, before and after",
        "max over groups of |AB| before",
        "after",
    )
    return _render(
        fig,
        "Scatter of each label's association bias before and after balancing",
        "Each point is a label: max over the attribute's groups of |E[y | s_k = 1] − "
        "E[y | s_k = 0]| in the pool (x) and in the balanced set (y). Constrained labels (at "
        "least min_label_count mentions) must end below the dashed line.",
    )
