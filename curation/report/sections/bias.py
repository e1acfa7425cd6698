"""*Bias*: representation and association bias before and after, per balance output that wrote
``bias.json`` (``--method m4``, or rake with ``--attributes``); definitions in docs/balancing.md."""

from __future__ import annotations

from curation.report.context import Builder
from curation.report.format import DASH, fmt_int, fmt_num
from curation.report.html import cards, e, table
from curation.report.plots import plot_bias
from curation.report.run import StageOutput
from curation.summaries import BiasAttribute, BiasReport

#: Constrained labels listed per attribute (largest bias before first).
TOP_LABELS = 25


def section_bias(b: Builder) -> None:
    """One part per balance output with ``bias.json``; nothing when no run has one."""
    parts = []
    for out in b.of("balance"):
        if out.json(BiasReport.FILE) is None:
            continue
        report = out.summary(BiasReport)
        parts.append(_part(b, out, report))
        b.summary.setdefault("bias", []).append(
            {"output": out.name, "method": report.method, "status": report.status}
            | {
                name: {"rb_after": a.rb_after, "ab_after": a.ab_after}
                for name, a in report.attribute_records().items()
            }
        )
    if parts:
        b.add("bias", "Bias (representation and association)", "".join(parts))


def _part(b: Builder, out: StageOutput, report: BiasReport) -> str:
    eps_r = report.epsilon.get("representation")
    eps_a = report.epsilon.get("association")
    head = cards(
        [
            ("method", str(report.method or DASH)),
            ("status", str(report.status or DASH)),
            ("ε representation", fmt_num(eps_r)),
            ("ε association", fmt_num(eps_a)),
            ("expected size", fmt_num(report.size.get("expected"))),
        ]
    )
    attrs = report.attribute_records()
    base = any(a.rb_base is not None for a in attrs.values())
    headers = ["attribute", "target", "RB before"] + (["RB base"] if base else [])
    headers += ["RB after", "status", "AB before"] + (["AB base"] if base else [])
    headers += ["AB after", "status"]
    rows = [_attribute_row(name, a, base) for name, a in attrs.items()]
    body = [f'<h3 id="bias-{e(out.name)}">{e(out.label)}</h3>', head]
    body.append(table(headers, rows, align="llrrrlrrrl" if base else "llrrlrrl"))
    for name, a in attrs.items():
        body.append(_labels(b, name, a, eps_a))
    blocked = report.solver.get("infeasible_constraints") or []
    if report.status not in (None, "converged") and blocked:
        items = ", ".join(
            f"{c.get('attribute')}/{c.get('kind')}/{c.get('label') or '–'}" for c in blocked[:20]
        )
        body.append(b.noted(f"{out.name}: constraints held at the bound: {items}"))
    return "".join(body)


def _attribute_row(name: str, a: BiasAttribute, base: bool) -> list[str]:
    target = a.target if isinstance(a.target, str) else ", ".join(map(str, a.target or []))
    row = [name, target or DASH, fmt_num(a.rb_before)] + ([fmt_num(a.rb_base)] if base else [])
    row += [fmt_num(a.rb_after), a.rb_status or DASH, fmt_num(a.ab_before)]
    row += [fmt_num(a.ab_base)] if base else []
    return row + [fmt_num(a.ab_after), a.ab_status or DASH]


def _labels(b: Builder, attribute: str, a: BiasAttribute, eps_a: float | None) -> str:
    labels = a.label_records()
    constrained = sorted(
        ((n, r) for n, r in labels.items() if r.constrained),
        key=lambda nr: -(nr[1].max_abs_ab_before or 0.0),
    )
    rows = [
        [
            name,
            fmt_int(r.count_before),
            fmt_num(r.expected_after),
            fmt_num(r.max_abs_ab_before),
            fmt_num(r.max_abs_ab_after),
            r.status or DASH,
        ]
        for name, r in constrained[:TOP_LABELS]
    ]
    shown = f"{min(len(constrained), TOP_LABELS)} of {len(constrained)} constrained labels"
    html = f"<h4>{e(attribute)}: labels ({e(shown)}, {len(labels) - len(constrained)} not constrained)</h4>"
    html += table(
        ["label", "mentions", "expected after", "max |AB| before", "max |AB| after", "status"],
        rows,
        align="lrrrrl",
    )
    points = [
        (n, r.max_abs_ab_before, r.max_abs_ab_after, bool(r.constrained)) for n, r in labels.items()
    ]
    if eps_a is not None:
        html += b.figure(plot_bias(points, float(eps_a)))
    return html
