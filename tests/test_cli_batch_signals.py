"""Issue 25: a batched ``map`` stops when told, at any moment of the run.

Each test runs the command in a subprocess and sends it SIGTERM or SIGINT at one moment: while
the map is chosen, while the sections map on the workers, while a result is written into the
temporary output (the signal landing inside a weakref callback during an h5py write, where
Python ignores an exception: the spot of issue 25), and in-process (``--workers 0``) while a
section maps. The run must stop there (not map the remaining sections), exit 130 / 143 with one
line on stderr, leave no temporary file beside the output, leave an earlier output as it was and
leave no process of its own behind.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pandas as pd
import psutil
import pytest

from _data import make_synthetic

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

N_SECTIONS = 6
#: A hang guard, not a speed check: the run and its processes end long before this.
GUARD_S = 120
#: Sections that map for seconds each: the signal comes while the others still map.
SLOW = ("--method", "tangram", "--epochs", "3000")

# The driver marks the moment on stdout (``MOMENT name``) where the test sends the signal from
# outside; "write" sends it from inside, in a weakref callback run during an h5py write.
_DRIVER = textwrap.dedent(
    """
    import os, signal, sys, weakref

    moment, how = sys.argv[1], sys.argv[2]

    if __name__ == "__main__":  # Dask's worker processes import this module too
        if moment == "choice":
            from napari_spatial_impute.core.maps import choose

            original_choose = choose.choose_map

            def choose_map(*args, **kwargs):
                print("MOMENT choice", flush=True)
                chosen = original_choose(*args, **kwargs)
                print("MOMENT choice done", flush=True)
                return chosen

            choose.choose_map = choose_map
        elif moment == "write":
            import h5py

            original_setitem = h5py.Dataset.__setitem__
            sent = []

            class Held:
                pass

            def setitem(self, key, value):
                if not sent and ".tmp" in self.file.filename and "/X" in self.name:
                    sent.append(True)
                    print("MOMENT write", flush=True)
                    sig = signal.SIGINT if how == "int" else signal.SIGTERM
                    held = Held()
                    weakref.finalize(held, os.kill, os.getpid(), sig)
                    del held  # the handler runs inside the finalizer: Python ignores a raise there
                return original_setitem(self, key, value)

            h5py.Dataset.__setitem__ = setitem
        from napari_spatial_impute.cli import main

        raise SystemExit(main(sys.argv[3:]))
    """
)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("batch_signals")
    ref, sp = make_synthetic(n_ref=300, n_sp=100 * N_SECTIONS, n_genes=16, seed=25)
    sp.obs["section"] = pd.Categorical(np.repeat([f"s{i}" for i in range(N_SECTIONS)], 100))
    ref.write_h5ad(folder / "reference.h5ad")
    sp.write_h5ad(folder / "spatial.h5ad")
    (folder / "driver.py").write_text(_DRIVER)
    return folder


def _run(folder, tmp_path, moment, how, *extra):
    """Run the driver; send the signal at the moment's mark (unless it sends its own).

    Returns ``(exit code, stdout, stderr, the run's child processes seen at the signal)``.
    """
    out = tmp_path / "out.h5ad"
    cmd = [sys.executable, str(folder / "driver.py"), moment, how, "map"]
    cmd += ["-r", str(folder / "reference.h5ad"), "-s", str(folder / "spatial.h5ad")]
    cmd += ["--cluster-key", "cell_type", "--batch-key", "section", "--out", str(out), *extra]
    sig = signal.SIGINT if how == "int" else signal.SIGTERM
    errors = tmp_path.parent / f"{tmp_path.name}.stderr"  # a file: a pipe left unread could fill
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors.open("w"), text=True)
    killer = threading.Timer(GUARD_S * 5, proc.kill)  # hang guard
    killer.start()
    stdout: list[str] = []
    children: list[psutil.Process] = []
    mark = {"choice": "MOMENT choice", "write": "MOMENT write"}.get(moment, "batch 1/")
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            stdout.append(line)
            if line.startswith(mark) and not children:
                children = psutil.Process(proc.pid).children(recursive=True)
                if moment != "write":
                    proc.send_signal(sig)
        code = proc.wait(GUARD_S)
        err = errors.read_text()
    finally:
        killer.cancel()
        if proc.poll() is None:
            proc.kill()
    return code, "".join(stdout), err, children


def _check_stopped(tmp_path, code, stdout, err, children, how, earlier):
    expected = 130 if how == "int" else 143
    assert code == expected, (stdout, err)
    lines = [line for line in err.splitlines() if line.strip()]
    word = "cancelled" if how == "int" else "terminated"
    assert lines == [f"napari-spatial-impute: {word}; nothing written"], err
    assert "Traceback" not in err and "Exception ignored" not in err
    # stopped where it was told, not after mapping every section
    assert f"batch {N_SECTIONS}/{N_SECTIONS}" not in stdout, stdout
    assert "wrote " not in stdout
    # no temporary file or folder beside the output; the earlier output as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5ad"]
    assert (tmp_path / "out.h5ad").read_bytes() == earlier
    _, alive = psutil.wait_procs(children, timeout=GUARD_S)
    assert not alive, f"processes of the run left: {alive}"


def _earlier(tmp_path):
    earlier = b"an earlier output the run must leave as it was\n"
    (tmp_path / "out.h5ad").write_bytes(earlier)
    return earlier


@pytest.mark.parametrize("how", ["term", "int"])
def test_signal_while_the_map_is_chosen_on_a_cluster(pair, tmp_path, how):
    earlier = _earlier(tmp_path)
    code, stdout, err, children = _run(pair, tmp_path, "choice", how, "--workers", "2")
    assert "MOMENT choice" in stdout and "MOMENT choice done" not in stdout, stdout
    assert children, "the cluster's workers were running at the signal"
    _check_stopped(tmp_path, code, stdout, err, children, how, earlier)


@pytest.mark.parametrize("how", ["term", "int"])
def test_signal_while_sections_map_on_the_workers(pair, tmp_path, how):
    earlier = _earlier(tmp_path)
    code, stdout, err, children = _run(pair, tmp_path, "batch", how, "--workers", "2", *SLOW)
    assert "batch 1/" in stdout and children
    _check_stopped(tmp_path, code, stdout, err, children, how, earlier)


@pytest.mark.parametrize("how", ["term", "int"])
def test_signal_swallowed_inside_a_write_still_stops_the_run(pair, tmp_path, how):
    """Issue 25: the signal's handler runs inside a weakref callback during an h5py write of the
    temporary output; an exception raised there is ignored by Python and the run went on writing
    every section. The run now stops after that write."""
    earlier = _earlier(tmp_path)
    code, stdout, err, children = _run(
        pair, tmp_path, "write", how, "--workers", "2", "--method", "ensemble"
    )
    assert "MOMENT write" in stdout and children
    _check_stopped(tmp_path, code, stdout, err, children, how, earlier)


@pytest.mark.parametrize("how", ["term", "int"])
def test_signal_while_a_section_maps_in_this_process(pair, tmp_path, how):
    earlier = _earlier(tmp_path)
    code, stdout, err, children = _run(pair, tmp_path, "batch", how, "--workers", "0", *SLOW)
    assert "batch 1/" in stdout
    _check_stopped(tmp_path, code, stdout, err, children, how, earlier)
