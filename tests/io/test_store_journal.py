"""A write into a store is a journal: killed at any step, a second writer, stray groups, links.

The fault-injection tests kill a real process (SIGKILL) at each named step of a write
(:func:`napari_spatial_impute.io.store_journal.fault_point`), then read the store with plain
spatialdata (before any repair), repair it the way a user would (the next write, or opening it),
and read it again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from _data import make_store, tree_digest
from napari_spatial_impute._errors import InputError
from napari_spatial_impute.io.schema import UNS_KEY
from napari_spatial_impute.io.sdata_write import write_table

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _table(n_genes: int, seed: int) -> ad.AnnData:
    """A results table annotating the 48 cells of :func:`make_store` (as this plugin writes it)."""
    from spatialdata.models import TableModel

    rng = np.random.default_rng(seed)
    regions = [f"fov{f}_labels" for f in range(2) for _ in range(24)]
    obs = pd.DataFrame(
        {"fov_labels": pd.Categorical(regions), "cell_ID": list(range(1, 25)) * 2},
        index=[f"c{i}" for i in range(48)],
    )
    table = ad.AnnData(
        X=rng.random((48, n_genes)).astype(np.float32),
        obs=obs,
        var=pd.DataFrame(index=[f"G{seed}_{i}" for i in range(n_genes)]),
        uns={UNS_KEY: {"method": "ensemble", "seed": seed}},
    )
    return TableModel.parse(
        table, region=sorted(set(regions)), region_key="fov_labels", instance_key="cell_ID"
    )


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    folder = tmp_path_factory.mktemp("journal")
    path, _ = make_store(folder / "cells.zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_table(_table(3, 1), path, "res.y")
    table = folder / "new_table.h5ad"
    _table(5, 2).write_h5ad(table)
    return path, table


@pytest.fixture
def store(template, tmp_path):
    import shutil

    src, table = template
    dst = tmp_path / "cells.zarr"
    shutil.copytree(src, dst)
    return dst, table


def _load(path: Path) -> ad.AnnData:
    """The results table saved as .h5ad (its region list comes back as an array)."""
    table = ad.read_h5ad(path)
    table.uns["spatialdata_attrs"]["region"] = list(table.uns["spatialdata_attrs"]["region"])
    return table


def _tables(path: Path) -> dict[str, list[str]]:
    """The tables plain spatialdata reads from ``path`` (name -> var names)."""
    import spatialdata as sd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sdata = sd.read_zarr(path)
    return {name: list(t.var_names) for name, t in sdata.tables.items()}


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


_CHILD = r"""
import os, signal, sys
import anndata as ad
from napari_spatial_impute.io import store_journal
from napari_spatial_impute.io.sdata_write import write_table

table, store, name, out, overwrite, kill_at = sys.argv[1:7]
step, count = kill_at.rsplit(":", 1)
seen = [0]

def fault_point(at):
    if at == step:
        seen[0] += 1
        if seen[0] == int(count):
            os.kill(os.getpid(), signal.SIGKILL)

store_journal.fault_point = fault_point
t = ad.read_h5ad(table)
t.uns["spatialdata_attrs"]["region"] = list(t.uns["spatialdata_attrs"]["region"])
write_table(t, store, name, out=out or None, overwrite=overwrite == "1")
print("finished")
"""


def _killed_write(table: Path, store: Path, name: str, kill_at: str, **kw) -> int:
    out = str(kw.get("out") or "")
    args = [str(table), str(store), name, out, "1" if kw.get("overwrite") else "0", kill_at]
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, *args], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode in (0, -signal.SIGKILL), proc.stderr[-2000:]
    return proc.returncode


EARLIER = {"table": ["gene0"], "res.y": ["G1_0", "G1_1", "G1_2"]}
NEW = ["G2_0", "G2_1", "G2_2", "G2_3", "G2_4"]

# (mode, step): every step a write passes, for a new table, a replaced one and a copy
_NEW_STEPS = ["tmp written:1", "staged:1", "tmp written:2", "placing:1", "renamed in:1"]
_NEW_STEPS += ["meta written:1", "listed:1", "tmp written:3", "committed:1", "removed stage:1"]
_REPLACE_STEPS = ["placing:1", "meta written:1", "unlisted:1", "moved aside:1", "renamed in:1"]
_REPLACE_STEPS += ["meta written:2", "listed:1", "committed:1", "removed old:1"]
_COPY_STEPS = ["copied:1", "staged:1", "renamed in:1", "listed:1", "committed:1"]
CASES = (
    [("new", s) for s in _NEW_STEPS]
    + [("replace", s) for s in _REPLACE_STEPS]
    + [("copy", s) for s in _COPY_STEPS]
)


@pytest.mark.parametrize(("mode", "kill_at"), CASES, ids=[f"{m}-{s}" for m, s in CASES])
def test_killed_at_any_step_the_store_reads_and_keeps_every_table(store, mode, kill_at):
    path, table = store
    before, digest = _tables(path), tree_digest(path)
    assert {k: v[:1] if k == "table" else v for k, v in before.items()} == EARLIER
    name = "res.y" if mode == "replace" else "res"
    out = path.parent / "copy.zarr" if mode == "copy" else None
    code = _killed_write(table, path, name, kill_at, overwrite=mode == "replace", out=out)
    assert code == -signal.SIGKILL
    # plain spatialdata reads the store at once, before any repair, with every table it had
    # (an earlier table being replaced may be unlisted until the repair), or the new one complete
    seen = _tables(path)
    for got, cols in seen.items():
        assert cols == before.get(got) or (got == name and cols == NEW)
    assert set(before) - set(seen) <= ({name} if mode == "replace" else set())
    if mode == "copy":  # the input store is never touched; the same command again repairs
        assert seen == before and tree_digest(path) == digest
        committed = kill_at.startswith("committed")
        if committed:
            assert _tables(out) == {**before, name: NEW}
            with pytest.raises(InputError, match="exists"):
                write_table(_load(table), path, name, out=out)
        else:
            assert not os.path.lexists(out)
            write_table(_load(table), path, name, out=out)
        assert _tables(out) == {**before, name: NEW} and _hidden(path.parent) == []
        assert tree_digest(path) == digest
        return
    # the next write (another name: the prefix 'res' of 'res.y' too) repairs the store first
    write_table(_load(table), path, "res" if mode == "replace" else "other")
    after = _tables(path)
    committed = kill_at.startswith(("committed", "removed"))
    expected = dict(before)
    if committed:
        expected[name] = NEW
    expected["res" if mode == "replace" else "other"] = NEW
    assert after == expected
    assert _hidden(path.parent) == []  # no journal, staging store or moved table left
    assert sorted(p.name for p in path.iterdir()) == ["images", "labels", "tables", "zarr.json"]


def test_opening_the_store_repairs_a_killed_replace(store):
    """Killed with the earlier table moved aside: opening the store (as the plugin reads it)
    puts it back before anything is read."""
    from napari_spatial_impute.io.sdata import open_store

    path, table = store
    _killed_write(table, path, "res.y", "moved aside:1", overwrite=True)
    assert "res.y" not in _tables(path)
    open_store(path)
    assert _tables(path)["res.y"] == EARLIER["res.y"] and _hidden(path.parent) == []


def test_stray_groups_stay_unlisted_and_the_store_reads(store):
    """A plain zarr group spatialdata ignores (images/scratch) and a link loop: the store reads
    before and after a write, and the consolidated metadata lists only what it listed plus the
    new table (it is never rebuilt by walking the store)."""
    import zarr

    path, table = store
    zarr.open_group(str(path / "images" / "scratch"), mode="w", zarr_format=3)
    os.symlink(".", path / "labels" / "loop")
    listed = set(json.loads((path / "zarr.json").read_text())["consolidated_metadata"]["metadata"])
    before = _tables(path)
    write_table(_load(table), path, "res")
    meta = json.loads((path / "zarr.json").read_text())["consolidated_metadata"]["metadata"]
    assert {k for k in meta if not k.startswith("tables/res/") and k != "tables/res"} == listed
    assert "tables/res/X" in meta and not any("scratch" in k or "loop" in k for k in meta)
    assert _tables(path) == {**before, "res": NEW}
    copy = path.parent / "copy.zarr"
    write_table(_load(table), path, "res2", out=copy)  # the loop is copied as a link
    assert os.readlink(copy / "labels" / "loop") == "."
    assert _tables(copy) == {**before, "res": NEW, "res2": NEW}


def test_two_writers_of_one_name_serialise_and_the_second_is_refused(store):
    """Two processes write table 'c' into one store without --overwrite: one writes it, the
    other is refused in one line; the store holds the first one's table, whole."""
    path, table = store
    gate = path.parent / "gate"
    child = _CHILD.replace(
        "store_journal.fault_point = fault_point",
        "import time\n"
        "def wait(at):\n"
        f"    if at == 'staged' and not os.path.exists({str(gate)!r} + '.open'):\n"
        f"        open({str(gate)!r} + '.ready', 'w').close()\n"
        f"        while not os.path.exists({str(gate)!r} + '.open'):\n"
        "            time.sleep(0.05)\n"
        "store_journal.fault_point = wait",
    )
    args = [str(table), str(path), "c", "", "0", "none:1"]
    first = subprocess.Popen([sys.executable, "-c", child, *args], stderr=subprocess.PIPE)
    while not Path(str(gate) + ".ready").exists():  # the first holds the lock, table staged
        assert first.poll() is None, first.stderr.read()
        threading.Event().wait(0.05)
    second = subprocess.Popen(
        [sys.executable, "-c", child, *args], stderr=subprocess.PIPE, text=True
    )
    threading.Event().wait(0.5)  # let the second reach the lock (either order is checked)
    Path(str(gate) + ".open").touch()
    assert first.wait(timeout=300) == 0
    assert second.wait(timeout=300) == 1
    err = second.stderr.read().strip().splitlines()[-1]
    assert "already has a results table 'c'" in err and "--overwrite" in err
    assert _tables(path)["c"] == NEW and _hidden(path.parent) == []


def test_the_lock_serialises_writers_in_one_process(store):
    """A second write of the same name waits for the first (threads, as two widgets would)."""
    from napari_spatial_impute.io import store_journal

    path, table = store
    in_first, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def slow(at: str) -> None:
        if at == "staged" and threading.current_thread().name == "first":
            in_first.set()
            release.wait(60)

    def run() -> None:
        try:
            write_table(_load(table), path, "c")
        except InputError as exc:
            errors.append(exc)

    store_journal_point = store_journal.fault_point
    store_journal.fault_point = slow
    try:
        first = threading.Thread(target=run, name="first")
        first.start()
        assert in_first.wait(60)
        second = threading.Thread(target=run, name="second")
        second.start()
        second.join(0.5)
        assert second.is_alive()  # waiting for the lock, not writing beside the first
        release.set()
        first.join(60)
        second.join(60)
    finally:
        store_journal.fault_point = store_journal_point
    assert len(errors) == 1 and "already has a results table 'c'" in str(errors[0])
    assert _tables(path)["c"] == NEW


def test_replacing_a_linked_table_leaves_no_link_behind(store, tmp_path):
    """A results table that is a link to a folder elsewhere: replacing it removes the link (the
    folder it pointed to is the user's and stays), and leaves no '.old' link."""
    import shutil

    path, table = store
    elsewhere = tmp_path / "kept" / "res.y"
    elsewhere.parent.mkdir()
    shutil.move(path / "tables" / "res.y", elsewhere)
    os.symlink(elsewhere, path / "tables" / "res.y")
    kept = tree_digest(elsewhere)
    write_table(_load(table), path, "res.y", overwrite=True)
    assert _tables(path)["res.y"] == NEW and not (path / "tables" / "res.y").is_symlink()
    assert _hidden(path.parent) == [] and tree_digest(elsewhere) == kept


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "table name is empty"),
        ("r" * 300, "is 300 characters long; the file system allows at most 255"),
    ],
)
def test_bad_table_names_are_one_line(store, name, message):
    path, table = store
    before = tree_digest(path)
    with pytest.raises(InputError, match=message) as exc:
        write_table(_load(table), path, name)
    assert "\n" not in str(exc.value) and tree_digest(path) == before


@pytest.mark.parametrize("kind", ["dangling", "loop"])
def test_copy_over_a_broken_link_is_refused_before_work(store, kind):
    from napari_spatial_impute.io.sdata_write import check_table_target

    path, _ = store
    out = path.parent / "copy.zarr"
    os.symlink(out if kind == "loop" else path.parent / "missing.zarr", out)
    with pytest.raises(InputError, match="exists .a link to a missing path or a link loop."):
        check_table_target(path, "res", out=out)


class _Killed(BaseException):
    """The process died here (in-process: nothing is rolled back, the disk is left as it is)."""


_STEPS = ["staged", "placing", "unlisted", "moved aside", "renamed in", "meta written"]
_STEPS += ["listed", "tmp written", "committed", "removed old", "removed stage"]


@settings(max_examples=12, deadline=None)
@example(ops=[("x", False, "renamed in"), ("x", False, None)])
@example(ops=[("x", False, "placing"), ("x", False, None)])
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["x", "x.y", "y"]),
            st.booleans(),
            st.one_of(st.none(), st.sampled_from(_STEPS)),
        ),
        min_size=1,
        max_size=3,
    )
)
def test_any_sequence_of_writes_and_deaths_keeps_the_store(template, ops):
    """Writes of names that share prefixes, replaced or not, each dying at a random step or not:
    plain spatialdata reads the store after every one, and after the next write's repair the
    tables are exactly those of the writes that committed."""
    import shutil
    import tempfile

    from napari_spatial_impute.io import store_journal

    src, _ = template
    folder = Path(tempfile.mkdtemp())
    path = folder / "cells.zarr"
    shutil.copytree(src, path)
    model = _tables(path)
    try:
        for i, (name, overwrite, dies_at) in enumerate(ops):
            table = _table(2, 10 + i)
            new = list(table.var_names)
            committed = []

            def point(at: str, dies_at=dies_at, committed=committed) -> None:
                if at == "committed":
                    committed.append(True)
                if at == dies_at:
                    raise _Killed

            original = (store_journal.fault_point, store_journal.Journal.roll_back)
            rollback = original[1]

            def roll_back(self, rollback=rollback) -> None:
                if sys.exc_info()[0] is not _Killed:  # a dead process rolls nothing back
                    rollback(self)

            store_journal.fault_point = point
            store_journal.Journal.roll_back = roll_back
            try:
                write_table(table, path, name, overwrite=overwrite)
                committed.append(True)
            except _Killed:
                pass
            except InputError as exc:
                assert name in model and not overwrite and "already has" in str(exc)
            finally:
                store_journal.fault_point, store_journal.Journal.roll_back = original
            seen = _tables(path)  # plain spatialdata, before any repair
            for got, cols in seen.items():
                assert cols == model.get(got) or (got == name and cols == new)
            if committed:
                model[name] = new
            assert set(model) - set(seen) <= {name}
        write_table(_table(2, 99), path, "z")  # the repair, then a last write
        assert _tables(path) == {**model, "z": list(_table(2, 99).var_names)}
        assert _hidden(folder) == []
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_store_that_cannot_be_repaired_where_it_is_still_opens_with_a_warning(store, monkeypatch):
    """A dead write in a store whose folder is read-only: opening it warns in one line and reads;
    a folder that cannot even be listed opens as any store."""
    from pathlib import Path as _Path

    from napari_spatial_impute._errors import InputWarning
    from napari_spatial_impute.io.sdata import open_store

    path, table = store
    _killed_write(table, path, "res.y", "moved aside:1", overwrite=True)
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if mode == os.W_OK else real_access(p, mode)
    )
    with pytest.warns(InputWarning, match="unfinished write") as record:
        open_store(path)
    assert "\n" not in str(record[0].message)
    monkeypatch.setattr(os, "access", real_access)
    real_iterdir = _Path.iterdir

    def unlistable(self):
        if self == path.parent:
            raise PermissionError(13, "Permission denied")
        return real_iterdir(self)

    monkeypatch.setattr(_Path, "iterdir", unlistable)
    open_store(path)  # no journal can be seen: nothing to repair, no error
    monkeypatch.setattr(_Path, "iterdir", real_iterdir)
    open_store(path)  # writable again: repaired
    assert _tables(path)["res.y"] == EARLIER["res.y"] and _hidden(path.parent) == []


def test_a_write_through_a_link_is_repaired_by_either_path(store):
    """The store opened through a link with another name: the journal names the real store, so
    the repair through the link or the real path finds it (the earlier table comes back)."""
    from napari_spatial_impute.io.sdata import open_store

    path, table = store
    link = path.parent / "linked.zarr"
    os.symlink(path, link)
    _killed_write(table, link, "res.y", "moved aside:1", overwrite=True)
    assert "res.y" not in _tables(path)
    open_store(link)
    assert _tables(path)["res.y"] == EARLIER["res.y"]
    assert _hidden(path.parent) == []
    _killed_write(table, path, "res.y", "moved aside:1", overwrite=True)
    write_table(_load(table), link, "other")  # a write through the link repairs it too
    assert _tables(path)["res.y"] == EARLIER["res.y"] and _hidden(path.parent) == []


def test_a_repair_keeps_what_changed_in_the_store_since(store):
    """Between the crash and the repair the user changed the store (here: an attribute of the
    root): the repair takes out only the dead write's table and keeps the rest as it is now."""
    path, table = store
    _killed_write(table, path, "res", "listed:1")
    root = json.loads((path / "zarr.json").read_text())
    root["attributes"]["note"] = "added after the crash"
    (path / "zarr.json").write_text(json.dumps(root))
    write_table(_load(table), path, "other")
    after = json.loads((path / "zarr.json").read_text())
    assert after["attributes"]["note"] == "added after the crash"
    assert "res" not in _tables(path) and "other" in _tables(path)


def test_a_copy_being_made_by_a_live_process_is_left_alone(store, tmp_path):
    """Two stores written into one --out at once: a write does not take the other's (live)
    journal for a dead one."""

    from napari_spatial_impute.io.store_journal import _key

    path, table = store
    out = tmp_path / "copy.zarr"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        tag = f".{_key(out)}.{sleeper.pid}.0123abcd"
        live = tmp_path / (tag + ".journal")
        record = {"store": out.name, "table": "res", "stage": tag + ".stage"}
        record |= {"old": tag + ".old", "meta_tmp": tag + ".meta", "copy": tag + ".copy"}
        live.write_text(json.dumps(record))
        (tmp_path / (tag + ".copy")).mkdir()
        write_table(_load(table), path, "res", out=out)
        assert live.exists() and (tmp_path / (tag + ".copy")).is_dir()
        assert _tables(out)["res"] == NEW
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_read_only_results_table_is_refused_before_work(store, monkeypatch):
    from napari_spatial_impute.io.sdata_write import check_table_target

    path, _ = store
    real_access = os.access
    table_dir = path / "tables" / "res.y"
    monkeypatch.setattr(
        os,
        "access",
        lambda p, mode: False if Path(p) == table_dir and mode == os.W_OK else real_access(p, mode),
    )
    with pytest.raises(InputError, match="is read-only, so it cannot be replaced"):
        check_table_target(path, "res.y", overwrite=True)


def test_cluster_keys_follow_spatialdatas_rule():
    from napari_spatial_impute.io.sdata_write import check_cluster_column

    check_cluster_column("célltype")  # letters of any script, as spatialdata takes them
    check_cluster_column(None)
    with pytest.raises(InputError, match="cluster key 'cell type'"):
        check_cluster_column("cell type")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_the_table_is_placed_is_held_until_it_is_complete(store, sig):
    """Ctrl-C or SIGTERM between the renames: the table is completed, then the interrupt is
    raised, saying so and carrying the signal (the command exits 128 + it)."""
    from napari_spatial_impute._errors import CommittedInterrupt
    from napari_spatial_impute.io import store_journal

    path, table = store
    original = store_journal.fault_point

    def signal_here(at: str) -> None:
        if at == "renamed in":
            os.kill(os.getpid(), sig)

    handler = signal.getsignal(sig)
    store_journal.fault_point = signal_here
    try:
        with pytest.raises(CommittedInterrupt, match="was written") as exc:
            write_table(_load(table), path, "res")
    finally:
        store_journal.fault_point = original
    assert exc.value.signum == sig
    assert _tables(path)["res"] == NEW and _hidden(path.parent) == []
    assert signal.getsignal(sig) is handler  # the write's own handler is gone
