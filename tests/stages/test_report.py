"""``curate report``: the HTML page and summary.json of a whole run, checked against the stage
summaries, decoded image by image, and rendered in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.demo import generate_captions
from curation.report import fmt_int, fmt_num, fmt_pct
from curation.stages.balance import BalanceConfig, run_balance
from curation.stages.count import CountConfig, run_count
from curation.stages.match import MatchConfig, run_match
from curation.stages.report import ReportConfig, ReportStage, run_report
from curation.stages.reshard import ReshardConfig, run_reshard
from curation.stages.select import SelectConfig, run_select
from tests.servers import InputSample, uid_of, write_input_shards

ENTRIES = [f"w{i}" for i in range(300)] + ["hot dog", "New York"]
SOURCES = ("web-a", "web-b", "web-c")
TARGET = 600
IMG = re.compile(r"<img\b[^>]*>")


def read(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def run_dir(spark, tmp_path_factory) -> Path:
    """A small whole run: match, count (margin source), balance twice (metaclip, rake with the
    source margin), select, reshard (some selected uids missing), and one killed balance."""
    root = tmp_path_factory.mktemp("report")
    run = root / "run"
    inputs = root / "inputs"
    inputs.mkdir()
    (inputs / "meta.json").write_text(json.dumps(ENTRIES))
    captions, source = generate_captions(ENTRIES, 3000, seed=5, exponent=1.2)
    rows = [
        {"uid": uid_of(i), "url": f"http://x/{i}", "caption": c, "source": SOURCES[s]}
        for i, (c, s) in enumerate(zip(captions, source))
    ]
    pq.write_table(pa.Table.from_pylist(rows), inputs / "pool.parquet")
    matched = run_match(
        spark,
        MatchConfig(
            input=str(inputs / "pool.parquet"),
            output=str(run / "matched"),
            metadata=str(inputs / "meta.json"),
        ),
    ).output
    counts = run_count(
        spark, CountConfig(input=matched, output=str(run / "counts"), margins=["source"])
    ).output
    for method, margins in (("metaclip", []), ("rake", ["source"])):
        run_balance(
            spark,
            BalanceConfig(
                input=matched,
                counts=counts,
                output=str(run / f"balance-{method}"),
                method=method,
                target_size=TARGET,
                margins=margins,
            ),
        )
    selected = run_select(
        spark,
        SelectConfig(
            input=matched, weights=str(run / "balance-rake"), output=str(run / "selected")
        ),
    ).output
    uids = pq.read_table(Path(selected) / "selected", columns=["uid"]).column("uid").to_pylist()
    index = {uid_of(i): i for i in range(len(rows))}
    present = sorted(index[u] for u in uids)[:-7]  # the last 7 selected uids never arrive
    write_input_shards(
        inputs / "shards",
        [
            [InputSample(i, f"{i:09d}") for i in present[k : k + 150]]
            for k in range(0, len(present), 150)
        ],
    )
    run_reshard(
        spark,
        ReshardConfig(
            input=str(inputs / "shards"),
            selected=selected,
            output=str(run / "shards"),
            samples_per_shard=100,
        ),
    )
    killed = run / "balance-killed"
    killed.mkdir()
    (killed / "_manifest.json").write_text(json.dumps({"stage": "balance"}))
    (run / "notes").mkdir()  # not a stage output: no manifest
    run_report(ReportConfig(run=str(run)))
    return run


@pytest.fixture(scope="module")
def page(run_dir) -> str:
    return (run_dir / "report" / "index.html").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def summary(run_dir) -> dict:
    return read(run_dir / "report" / "summary.json")


def test_output_is_committed(run_dir):
    out = run_dir / "report"
    assert {p.name for p in out.iterdir()} == {
        "index.html",
        "summary.json",
        "_manifest.json",
        "_SUCCESS",
    }
    manifest = read(out / "_manifest.json")
    assert manifest["stage"] == "report"
    assert set(manifest["inputs"]) == {
        "matched",
        "counts",
        "balance-metaclip",
        "balance-rake",
        "selected",
        "shards",
    }


def test_page_has_every_section_and_the_stage_numbers(run_dir, page):
    for section in ("stages", "pool", "balance", "comparison", "margins", "selection", "shards"):
        assert f'<section id="{section}">' in page
    m = read(run_dir / "matched" / "summary.json")
    for key in ("input_rows", "usable_rows", "matched", "rejected", "total_matches"):
        assert f">{m[key]:,}<" in page, key
    assert fmt_pct(m["matched_share"]) in page
    for reason, n in m["rejects_by_reason"].items():
        assert re.search(rf"<td>{reason}</td><td class=num>{n:,}</td>", page), reason
    c = read(run_dir / "counts" / "summary.json")
    assert f">{c['signatures']:,}<" in page
    assert f">{c['top_entries'][0]['entry']}<" in page
    for method in ("metaclip", "rake"):
        b = read(run_dir / f"balance-{method}" / "summary.json")
        assert f"balance-{method}/ ({method})" in page
        assert f">{fmt_num(b['expected_size'])}<" in page
        assert f">{fmt_num(b['headline']['after']['l1_error'])}<" in page
        assert f">{fmt_num(b['headline']['weights']['kish_ess'])}<" in page
    assert "Method comparison" in page and "pool (before balancing)" in page
    s = read(run_dir / "selected" / "summary.json")
    assert f">{s['selected']:,}<" in page and f">{fmt_num(s['expected_size'])}<" in page
    sizes = read(run_dir / "shards" / "sizes.json")
    stats = read(run_dir / "shards" / "_stats.json")
    assert f">{sum(sizes.values()):,}<" in page and f">{len(sizes)}<" in page
    assert stats["missing_uids"] == 7
    assert "selected uid not in the input shards</td><td class=num>7<" in page
    # the killed balance run is listed but not reported; a directory without manifest is ignored
    assert "balance-killed/" in page and "incomplete (no _SUCCESS)" in page
    assert "balance-killed/ (balance)" not in page and "notes/" not in page
    # rake is scored against MetaCLIP's rule at its own expected size, and beats it there
    rake_info = read(run_dir / "balance-rake" / "summary.json")["info"]["vs_metaclip"]
    assert "Against MetaCLIP&#x27;s rule at the same size" in page or (
        "Against MetaCLIP's rule at the same size" in page
    )
    assert f">{fmt_num(rake_info['this']['entropy_nats'])}<" in page
    assert f">{fmt_num(rake_info['metaclip']['entropy_nats'])}<" in page
    assert "Entropy against tail share" in page or "entropy against tail share" in page
    # metaclip is closed form: no convergence curve, and the page says so
    assert "closed-form method" in page


def test_every_image_is_an_embedded_png_that_decodes(page, summary):
    from PIL import Image

    tags = IMG.findall(page)
    # matches; per balance run rank-frequency + π histogram (+ convergence and the entropy/tail
    # scatter against MetaCLIP for rake); the method overlay and scatter; the source margin
    assert len(tags) == summary["plots"] == 10
    for tag in tags:
        src = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', tag)
        assert src, tag[:80]
        image = Image.open(io.BytesIO(base64.b64decode(src.group(1), validate=True)))
        image.load()
        assert image.format == "PNG"
        width, height = (int(re.search(rf'{k}="(\d+)"', tag).group(1)) for k in ("width", "height"))
        assert image.size == (width, height) and width >= 600
        assert re.search(r'alt="[^"]{10,}"', tag)
    assert "<script" not in page and "http://" not in page.split("</head>")[0]


def test_summary_has_the_headline_numbers(run_dir, summary):
    m = read(run_dir / "matched" / "summary.json")
    assert summary["match"]["matched"] == m["matched"]
    assert summary["match"]["rejects_by_reason"] == m["rejects_by_reason"]
    assert summary["count"]["signatures"] == read(run_dir / "counts" / "summary.json")["signatures"]
    by_dir = {b["directory"]: b for b in summary["balance"]}
    assert set(by_dir) == {"balance-metaclip", "balance-rake"}
    for name, b in by_dir.items():
        stage = read(run_dir / name / "summary.json")
        assert b["expected_size"] == pytest.approx(stage["expected_size"])
        assert b["after"]["l1_error"] == pytest.approx(stage["headline"]["after"]["l1_error"])
        # the expected samples per margin level after balancing add up to the expected size
        after = summary["margins"]["source"]["after"][name]
        assert sum(after.values()) == pytest.approx(stage["expected_size"], rel=1e-9)
    assert [r["method"] for r in summary["comparison"]] == ["metaclip", "rake"]
    before = summary["margins"]["source"]["before"]
    assert sum(before.values()) == m["usable_rows"]
    [sel] = summary["select"]
    assert sel["selected"] == read(run_dir / "selected" / "summary.json")["selected"]
    assert sel["weights"] == "balance-rake"
    [shards] = summary["shards"]
    assert shards["samples"] == sum(read(run_dir / "shards" / "sizes.json").values())
    assert shards["missing_uids"] == 7
    assert [s["directory"] for s in summary["stages"] if not s["complete"]] == ["balance-killed"]


def test_rerun_is_skipped_and_text_is_escaped(run_dir, tmp_path):
    again = run_report(ReportConfig(run=str(run_dir)))
    assert again.skipped
    out = tmp_path / "r"
    result = ReportStage(
        ReportConfig(run=str(run_dir), output=str(out), title="<script>x</script> & co")
    ).run()
    assert not result.skipped and "index.html" in result.report()
    text = (out / "index.html").read_text()
    assert "&lt;script&gt;x&lt;/script&gt; &amp; co" in text and "<script>" not in text
    assert ReportStage.name == "report" and not ReportStage.needs_spark


def test_partial_run_omits_missing_sections_with_a_note(run_dir, tmp_path):
    shutil.copytree(run_dir / "matched", tmp_path / "run" / "matched")
    result = run_report(ReportConfig(run=str(tmp_path / "run")))
    text = (tmp_path / "run" / "report" / "index.html").read_text()
    for what in ("balance", "select", "download or reshard"):
        assert f"No complete {what} output in this run; section omitted." in text
    assert result.summary["plots"] == 1  # the matches-per-sample histogram
    assert (
        result.summary["match"]["matched"] == read(run_dir / "matched" / "summary.json")["matched"]
    )


def test_formatting_is_for_people():
    assert fmt_int(1234567) == "1,234,567" and fmt_int(None) == "–"
    assert fmt_num(10007.4057) == "10,007" and fmt_num(0.56336) == "0.5634"
    assert fmt_num(2.5e-5) == "2.5e-05" and fmt_num(float("inf")) == "∞"
    assert fmt_pct(0.87940) == "87.9%" and fmt_pct(0.00025) == "0.025%" and fmt_pct(1.0) == "100%"


# --- headless Chromium ----------------------------------------------------------------------

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
)
# Appended to a copy of the page only: records whether each image decoded, and where it is.
PROBE = """<script>
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  const ok = imgs.filter((i) => i.complete && i.naturalWidth > 0);
  document.body.dataset.images = ok.length + "/" + imgs.length;
  document.body.dataset.rects = imgs.map((i) => {
    const r = i.getBoundingClientRect();
    return [r.left, r.top + window.scrollY, r.width, r.height].map(Math.round).join(",");
  }).join(";");
});
</script>"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "/usr/bin/chromium"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("Chromium is not installed (apt-get install -y chromium); page not rendered")


def run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def test_page_renders_in_headless_chromium(run_dir, summary, tmp_path):
    from PIL import Image, ImageStat

    binary = chromium()
    index = run_dir / "report" / "index.html"
    probe = tmp_path / "probe.html"
    probe.write_text(index.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"))
    dom = run_chromium(
        binary,
        tmp_path / "profile",
        "--window-size=1200,1000",  # the screenshot's width: the same layout
        "--virtual-time-budget=10000",
        "--dump-dom",
        probe.as_uri(),
    ).stdout
    loaded = re.search(r'data-images="(\d+)/(\d+)"', dom)
    assert loaded, "the probe did not run"
    assert loaded.group(1) == loaded.group(2) == str(summary["plots"])
    rects = [
        tuple(int(v) for v in r.split(","))
        for r in re.search(r'data-rects="([^"]*)"', dom).group(1).split(";")
    ]
    height = min(max(y + h for _, y, _, h in rects) + 40, 16_000)
    shot = tmp_path / "page.png"
    run_chromium(
        binary,
        tmp_path / "profile",
        f"--screenshot={shot}",
        f"--window-size=1200,{height}",
        index.as_uri(),
    )
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, height)
    assert ImageStat.Stat(image.convert("L")).stddev[0] > 10, "the screenshot is blank"
    for x, y, w, h in rects:
        assert w >= 300 and h >= 150, (x, y, w, h)
        region = image.crop((x + 2, y + 2, x + w - 2, y + h - 2))
        pixels = region.getcolors(maxcolors=1 << 16)
        colours = len(pixels) if pixels else 1 << 16
        coloured = sum(n for n, (r, g, b) in (pixels or []) if max(r, g, b) - min(r, g, b) > 60)
        assert colours > 20, f"image at {(x, y)} rendered as a flat region"
        assert pixels is None or coloured > 100, f"image at {(x, y)} has no plotted colour"


def test_convergence_plot_shows_the_kkt_error_per_pass():
    from curation.report.plots import plot_convergence

    rake_history = [
        {"iter": i, "passes": 2 * i + 1, "kkt_err": 0.5 / (i + 1) ** 2, "l1": 0.1, "max_rel_err": 1}
        for i in range(40)
    ]
    plot = plot_convergence(rake_history)
    assert plot.alt.startswith("Solver convergence: KKT error and L1 error per pass over the table")
    # with margins the pass count restarts: drawn per iteration instead
    restarted = rake_history + [dict(h, iter=h["iter"] + 40) for h in rake_history]
    assert "per iteration" in plot_convergence(restarted).alt
    balance_history = [{"iter": i, "max_rel_err": 1 / (i + 1), "l1": 0.1} for i in range(5)]
    assert "max relative error" in plot_convergence(balance_history).alt
