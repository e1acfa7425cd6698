"""``make help`` is generated from the stage registry: every stage, in pipeline order, with the
stage each of its inputs comes from."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from curation.pipeline import ORDER, make_help

REPO = Path(__file__).resolve().parents[1]


def test_make_help_lists_every_stage_in_order_with_its_feeds():
    text = make_help()
    positions = [text.index(f"make {name} ") for name in ORDER]
    assert positions == sorted(positions)
    assert "--counts from count" in text
    assert "--input from run.pool or demo-pool" in text


def test_make_help_prints_the_registry_help():
    out = subprocess.run(
        ["make", "-s", "help", f"PYTHON={sys.executable}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
    ).stdout
    assert out.strip() == make_help().strip()
