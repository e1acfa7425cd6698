"""README.md runs as written: every ``bash`` block is executed, so the README cannot drift.

Conventions (``README.md``):

- a fenced block whose first line is ``# NAME`` (a ``yaml`` or ``toml`` block) is the file NAME in
  the directory the commands run in (``# run.yaml``);
- every ``bash`` block is run with ``bash -e`` in that directory, with ``curate`` and ``python`` of
  this environment first on the PATH, after the config files are written;
- a block that cannot run here (it installs a virtual environment, needs a GPU, a cluster or the
  network) is preceded by ``<!-- readme-test: skip: REASON -->`` (invisible on GitHub); a skip
  without a reason is an error.

The run config points at a pool under ``/data``; the test writes a small demo pool (the columns
the config names: ``TEXT``, ``URL``, ``language``) and points ``run.pool`` there, and serves the
pool's images from a loopback server, as ``make demo`` does.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from curation.demo import pool_table, write_parquet_files
from curation.metadata import DEFAULT_METADATA, load_metadata
from curation.shards.demo_server import Handler

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
FENCE = re.compile(r"^```(\w*)\s*$")
SKIP = re.compile(r"^<!--\s*readme-test:\s*skip(?::\s*(.*?))?\s*-->$")


@dataclass
class Block:
    language: str
    text: str
    line: int  # of the opening fence, 1-based
    skip: str | None  # the reason, when marked to be skipped

    @property
    def file_name(self) -> str | None:
        first = self.text.splitlines()[0] if self.text else ""
        if self.language in ("yaml", "toml") and re.fullmatch(r"# [\w.-]+\.(yaml|toml)", first):
            return first[2:]
        return None


def readme_blocks(text: str) -> list[Block]:
    """The fenced blocks of ``text``, each with the skip mark of the line before it."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        mark = SKIP.match(lines[i - 1].strip()) if i else None
        skip = (mark.group(1) or "") if mark else None
        blocks.append(Block(fence.group(1), "\n".join(lines[i + 1 : end]), i + 1, skip))
        i = end + 1
    return blocks


def test_every_bash_block_runs_or_says_why_not():
    blocks = readme_blocks(README.read_text())
    bash = [b for b in blocks if b.language == "bash"]
    assert bash, "README.md has no bash block"
    for b in bash:
        assert b.skip is None or b.skip.strip(), f"README.md:{b.line}: a skip needs a reason"
    assert any(b.skip is None for b in bash), "every bash block of README.md is skipped"
    for b in blocks:
        if b.skip is not None:
            assert b.language == "bash", f"README.md:{b.line}: only bash blocks are run"


@pytest.fixture()
def image_server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/images/"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def write_config_files(blocks: list[Block], cwd: Path, pool: Path) -> list[str]:
    """Write the README's config files into ``cwd``, ``run.pool`` pointing at ``pool``."""
    names = []
    for b in blocks:
        if b.file_name is None:
            continue
        data = yaml.safe_load(b.text)
        if isinstance(data.get("run"), dict) and str(data["run"].get("pool", "")).startswith(
            "/data/"
        ):
            data["run"]["pool"] = str(pool)
        (cwd / b.file_name).write_text(yaml.safe_dump(data, sort_keys=False))
        names.append(b.file_name)
    return names


@pytest.mark.slow
def test_the_readme_commands_run_against_the_demo_pool(tmp_path, image_server):
    blocks = readme_blocks(README.read_text())
    entries = load_metadata(DEFAULT_METADATA).entries
    table = pool_table(entries, 2000, 0, 1.1, 5000, image_server)
    table = table.rename_columns(["uid", "URL", "TEXT", "source", "language"])
    (tmp_path / "pool").mkdir()
    write_parquet_files(table, str(tmp_path / "pool"), 2)
    assert write_config_files(blocks, tmp_path, tmp_path / "pool") == ["run.yaml"]
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(REPO),
        "PYSPARK_PYTHON": sys.executable,
        "SPARK_LOCAL_IP": "127.0.0.1",
    }
    ran = 0
    for b in blocks:
        if b.language != "bash" or b.skip is not None:
            continue
        done = subprocess.run(
            ["bash", "-e", "-c", b.text],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        assert done.returncode == 0, f"README.md:{b.line}:\n{b.text}\n{done.stderr[-3000:]}"
        ran += 1
    assert ran >= 1
    # The run of the README's config: every stage, the report last, and the second command's
    # cap replaced the file's target_fraction (the later, more explicit setting wins).
    run_dir = tmp_path / "runs" / "laion"
    for name in ("matched", "counts", "balance", "selected", "shards", "report"):
        assert (run_dir / name / "_SUCCESS").exists(), name
    balance = yaml.safe_load((run_dir / "balance" / "_manifest.json").read_text())
    assert balance["config"]["method"] == "metaclip"
    assert balance["config"]["cap"] == 20000 and balance["config"]["target_fraction"] == 0
