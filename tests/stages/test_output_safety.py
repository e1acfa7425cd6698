"""A stage never deletes or overwrites what it did not write (storage.atomic_directory, which
every stage commits through): foreign directories, files, inputs, and other runs' work areas."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from curation import storage
from curation.pipeline import STAGES
from curation.storage import OutputNotOursError, atomic_directory


def _manifest(*inputs: str) -> dict:
    return {"stage": "test", "inputs": {f"in{i}": {"url": u} for i, u in enumerate(inputs)}}


def _commit(out, *inputs, payload="data"):
    with atomic_directory(str(out), _manifest(*inputs)) as tmp:
        with open(os.path.join(tmp, "part.txt"), "w") as f:
            f.write(payload)


def test_a_users_directory_is_refused_and_left_intact(tmp_path):
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "thesis.txt").write_text("years of work")
    (out / "sub" / "data.bin").write_bytes(b"\x00\x01")
    with pytest.raises(OutputNotOursError, match="not written by curate"):
        _commit(out)
    assert (out / "thesis.txt").read_text() == "years of work"
    assert (out / "sub" / "data.bin").read_bytes() == b"\x00\x01"
    assert not list(tmp_path.glob("out.tmp-*"))


def test_a_file_is_refused_and_left_intact(tmp_path):
    out = tmp_path / "out"
    out.write_text("not a directory")
    with pytest.raises(OutputNotOursError, match="is a file"):
        _commit(out)
    assert out.read_text() == "not a directory"


@pytest.mark.parametrize("where", ["same", "inside", "around"])
def test_an_output_overlapping_an_input_is_refused(tmp_path, where):
    pool = tmp_path / "pool"
    pool.mkdir()
    (pool / "a.parquet").write_bytes(b"PAR1")
    out = {"same": pool, "inside": pool / "out", "around": tmp_path}[where]
    with pytest.raises(OutputNotOursError, match="the input"):
        _commit(out, str(pool))
    assert (pool / "a.parquet").read_bytes() == b"PAR1"


def test_our_own_output_and_an_empty_directory_are_replaced(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    _commit(out, payload="one")  # empty directory: nothing to lose
    _commit(out, payload="two")  # our committed output: replaced
    assert (out / "part.txt").read_text() == "two"
    assert (out / storage.SUCCESS).exists()
    assert json.loads((out / storage.MANIFEST).read_text())["stage"] == "test"


def test_work_areas_are_cleaned_only_when_ours_and_dead(tmp_path):
    out = tmp_path / "out"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    stale = tmp_path / "out.tmp-deadbeef0000"
    stale.mkdir()
    (stale / storage.OWNER).write_text(json.dumps({"host": socket.gethostname(), "pid": dead_pid}))
    foreign = tmp_path / "out.tmp-users-own"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    _commit(out)
    assert not stale.exists()  # a dead run of ours: cleaned
    assert (foreign / "keep.txt").read_text() == "mine"  # not provably ours: left alone

    live = tmp_path / "out.tmp-live00000000"
    live.mkdir()
    (live / storage.OWNER).write_text(
        json.dumps({"host": socket.gethostname(), "pid": os.getpid()})
    )
    with pytest.raises(OutputNotOursError, match="in use by another run"):
        _commit(out, payload="again")
    assert live.exists() and (out / "part.txt").read_text() == "data"


# ------------------------------------------------------------------ every stage, end to end
ENTRIES = [f"w{i}" for i in range(40)]


@pytest.fixture(scope="module")
def small_run(spark, tmp_path_factory) -> dict[str, str]:
    """A tiny real run (match, count, balance, select) and img2dataset-style input shards: valid
    inputs for every stage, so that only the output decides what a stage does."""
    from curation.demo import generate_captions
    from curation.stages.balance import BalanceConfig, run_balance
    from curation.stages.select import SelectConfig, run_select
    from tests.pipeline import match_and_count
    from tests.servers import InputSample, uid_of, write_input_shards

    root = tmp_path_factory.mktemp("safety-run")
    captions, _ = generate_captions(ENTRIES, 300, seed=1, exponent=1.1)
    rows = [
        {"uid": uid_of(i), "url": f"http://127.0.0.1:9/{i}.jpg", "caption": c}
        for i, c in enumerate(captions)
    ]
    matched, counts = match_and_count(spark, root, rows, ENTRIES, margins=())
    (root / "corpus.txt").write_text("\n".join(c for c in captions if c) + "\n")
    r = {"matched": matched, "counts": counts.output}
    r.update(root=str(root), pool=str(root / "pool.parquet"), metadata=str(root / "meta.json"))
    r.update(balance=str(root / "balance"), selected=str(root / "selected"))
    run_balance(
        spark, BalanceConfig(input=r["matched"], counts=r["counts"], output=r["balance"], cap=5)
    )
    run_select(spark, SelectConfig(input=r["matched"], weights=r["balance"], output=r["selected"]))
    r["shards"] = str(root / "shards-in")
    write_input_shards(r["shards"], [[InputSample(i, f"{i:09d}") for i in range(5)]])
    return r


def _stage_options(name: str, r: dict[str, str], out: str) -> dict:
    """Valid options of stage ``name`` on the small run, writing to ``out``."""
    return {
        "demo-pool": {"output": out, "rows": 50, "files": 1},
        "metadata": {
            "output": out,
            "corpus": str(Path(r["root"]) / "corpus.txt"),
            "min_unigram_count": 2,
        },
        "match": {"input": r["pool"], "output": out, "metadata": r["metadata"]},
        "count": {"input": r["matched"], "output": out},
        "balance": {"input": r["matched"], "counts": r["counts"], "output": out, "cap": 5},
        "select": {"input": r["matched"], "weights": r["balance"], "output": out},
        "download": {"input": r["selected"], "output": out},
        "reshard": {"input": r["shards"], "selected": r["selected"], "output": out},
        "report": {"run": r["root"], "output": out},
    }[name]


@pytest.mark.parametrize("name", [s.name for s in STAGES])
def test_no_stage_deletes_what_it_did_not_write(spark, small_run, tmp_path, name):
    """Every stage of the registry, given valid inputs and an output directory holding a user's
    files (no manifest of ours), refuses it and leaves every file as it was; a file in the place
    of the output directory is refused too."""
    import importlib

    info = next(s for s in STAGES if s.name == name)
    stage_cls = importlib.import_module(info.module).STAGE
    for kind in ("directory", "file"):
        out = tmp_path / f"{kind}-out"
        if kind == "directory":
            (out / "sub").mkdir(parents=True)
            (out / "thesis.txt").write_text("years of work")
            (out / "sub" / "data.bin").write_bytes(b"\x00\x01")
        else:
            out.write_text("not a directory")
        before = sorted(
            (p.relative_to(tmp_path), p.read_bytes() if p.is_file() else None)
            for p in tmp_path.rglob("*")
        )
        config = stage_cls.options(**_stage_options(name, small_run, str(out)))
        # refused with an error that names the output (metadata writes one file, so a directory
        # in its place gets its own message)
        with pytest.raises((OutputNotOursError, ValueError), match=re.escape(str(out))):
            stage_cls(config, spark if stage_cls.needs_spark else None).run()
        after = sorted(
            (p.relative_to(tmp_path), p.read_bytes() if p.is_file() else None)
            for p in tmp_path.rglob("*")
        )
        assert after == before, f"{name} changed files it did not write"
