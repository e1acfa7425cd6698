"""A stage never deletes or overwrites what it did not write (storage.atomic_directory, which
every stage commits through): foreign directories, files, inputs, and other runs' work areas."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from curation import storage
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
