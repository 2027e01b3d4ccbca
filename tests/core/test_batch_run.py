"""Mapping batch by batch into one file, in this process and on a Dask LocalCluster.

With ``method="auto"`` the map is chosen once for the whole run; each batch is then the mapping
of that batch alone with the chosen method.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import napari_spatial_impute as nsi
from _data import make_synthetic
from napari_spatial_impute._errors import InputError, MappingCancelled
from napari_spatial_impute.core import mapping
from napari_spatial_impute.core.batch_run import map_batches
from napari_spatial_impute.core.export import result_to_anndata
from napari_spatial_impute.core.maps import choose

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

MAP = {"cluster_key": "cell_type", "seed": 2}


def _pair(n_sp=240, n_ref=150, seed=5, interleaved=True):
    ref, sp = make_synthetic(n_ref=n_ref, n_sp=n_sp, n_genes=14, seed=seed)
    names = np.array(["s1", "s2", "s3"])
    codes = np.arange(n_sp) % 3 if interleaved else np.repeat(np.arange(3), n_sp // 3)
    sp.obs["section"] = pd.Categorical(names[codes])
    return ref, sp


def _read(path):
    return ad.read_zarr(path) if str(path).endswith(".zarr") else ad.read_h5ad(path)


def _chosen(result):
    """The map every batch made (the choice made once, recorded in the file)."""
    info = result.uns["spatial_impute"]
    chosen = info["map_choice"]["chosen"]
    assert info["params"]["method"] == chosen
    assert [run["params"]["method"] for run in info["batches"]["runs"].values()] == [chosen] * 3
    return chosen


def _alone(ref, cells, method, calibration):
    """The mapping of ``cells`` alone with ``method``, its intervals from the run's calibration
    (made once for every batch)."""
    from napari_spatial_impute.core.uncertainty import for_cells

    result = nsi.map_cells_to_space(ref, cells, method=method, uncertainty=False, **MAP)
    result.calibration = for_cells(calibration, result)
    return result_to_anndata(result)


def _assert_batches_as_alone(result, ref, sp, calibration, rtol=0.0, atol=0.0):
    """Each batch's rows are the mapping of that batch alone with the chosen method, and its
    intervals those of the calibration made once for the run."""
    method = _chosen(result)
    for name in ("s1", "s2", "s3"):
        rows = np.flatnonzero(sp.obs["section"].to_numpy() == name)
        alone = _alone(ref, sp[rows].copy(), method, calibration)
        np.testing.assert_allclose(result.X[rows], alone.X, rtol=rtol, atol=atol)
        for layer, values in alone.layers.items():
            np.testing.assert_allclose(result.layers[layer][rows], values, rtol=rtol, atol=atol)
        np.testing.assert_allclose(
            result.obsm["cluster_probabilities"].to_numpy()[rows],
            alone.obsm["cluster_probabilities"].to_numpy(),
            rtol=rtol,
            atol=atol,
        )
        np.testing.assert_allclose(
            result.obsm["measured"].to_numpy()[rows], alone.obsm["measured"].to_numpy()
        )
        assert list(result.obs["cell_type_predicted"].iloc[rows].astype(str)) == list(
            alone.obs["cell_type_predicted"].astype(str)
        )
        assert list(result.obs["mapped_unit"].iloc[rows].astype(str)) == list(
            alone.obs["mapped_unit"].astype(str)
        )
        np.testing.assert_array_equal(
            result.obsm["mapping_top_index"][rows], alone.obsm["mapping_top_index"]
        )


@pytest.mark.parametrize("suffix", [".h5ad", ".zarr"])
def test_each_batch_is_its_own_mapping_in_one_file(tmp_path, suffix, caplog):
    ref, sp = _pair()
    seen = []
    with caplog.at_level(logging.INFO, logger="napari_spatial_impute.core.batch_run"):
        run = map_batches(
            ref, sp, "section", tmp_path / f"out{suffix}", workers=0, progress=seen.append, **MAP
        )
    result = _read(tmp_path / f"out{suffix}")
    assert result.shape == (sp.n_obs, ref.n_vars)
    assert list(result.obs_names) == list(sp.obs_names)  # the input's row order
    _assert_batches_as_alone(result, ref, sp, run.calibration)
    assert [p.done for p in seen] == [1, 2, 3]
    # the choice, made once before any batch, in one logged line (all 240 cells drawn; the
    # synthetic data have a few without counts, left out)
    assert [r.getMessage() for r in caplog.records] == [run.choice["batch_summary"]]
    line = run.choice["batch_summary"]
    assert line.startswith("map chosen once for all 3 sections on ") and "from each of them" in line
    assert run.choice["sample_n_drawn"] == 240
    assert list(run.batches.index) == ["s1", "s2", "s3"]
    assert (run.batches["status"] == "mapped").all()
    info = result.uns["spatial_impute"]
    assert info["batch_key"] == "section"
    table = info["batches"]["table"]
    assert list(table["name"]) == ["s1", "s2", "s3"]
    assert info["batches"]["train_score"].shape == (ref.n_vars, 3)  # genes x batches
    assert list(info["batches"]["train_score"].columns) == ["s1", "s2", "s3"]
    # the file reads as any result: the reader's checks pass
    from napari_spatial_impute.io.schema import interval_levels

    assert interval_levels(result) == ["90", "67"]


def test_backed_h5ad_is_read_batch_by_batch(tmp_path):
    ref, sp = _pair(interleaved=False)
    sp.write_h5ad(tmp_path / "spatial.h5ad")
    before = (tmp_path / "spatial.h5ad").read_bytes()
    run = map_batches(
        ref, tmp_path / "spatial.h5ad", "section", tmp_path / "out.h5ad", workers=0, **MAP
    )
    _assert_batches_as_alone(_read(tmp_path / "out.h5ad"), ref, sp, run.calibration)
    assert (tmp_path / "spatial.h5ad").read_bytes() == before


def _spy_choose(monkeypatch, change=None):
    """Count the choices made (in map_batches and in any lone mapping); ``change`` edits one."""
    calls = []
    real = choose.choose_map

    def spy(problem, *args, **kwargs):
        calls.append((problem.n_spatial, kwargs.get("cancel")))
        made = real(problem, *args, **kwargs)
        return change(made) if change is not None else made

    monkeypatch.setattr(choose, "choose_map", spy)
    monkeypatch.setattr(mapping, "choose_map", spy)
    return calls


def test_auto_chooses_once_and_every_batch_makes_that_map(tmp_path, monkeypatch):
    """The choice is made once, on a stated sample drawn across the sections; every batch makes
    the chosen map (here forced to the Tangram map, with a weak score), warned of once."""

    def tangram_weak(made):
        made.chosen, made.scores, made.size_baseline = "tangram", {"tangram": 0.05}, 0.5
        return made

    ref, sp = _pair(n_sp=300, n_ref=60, seed=3)
    monkeypatch.setattr(choose, "CHOICE_CELLS", 60)  # the sample: 20 cells of each section
    calls = _spy_choose(monkeypatch, tangram_weak)
    with pytest.warns(nsi.InputWarning) as caught:
        run = map_batches(ref, sp, "section", tmp_path / "out.h5ad", workers=0, epochs=30, **MAP)
    assert [n for n, _ in calls] == [60], "one choice, on the sample only"
    weak = [w for w in caught if "imputation is weak" in str(w.message)]
    assert len(weak) == 1 and "tangram" in str(weak[0].message)
    result = _read(tmp_path / "out.h5ad")
    assert _chosen(result) == "tangram"
    record = result.uns["spatial_impute"]["map_choice"]
    assert record["scope"] == "once for all batches" and record["n_batches"] == 3
    assert list(record["sample_sections"]) == ["s1", "s2", "s3"]
    assert list(record["sample_cells_per_section"]) == [20, 20, 20]
    assert record["sample_n_cells"] == record["n_cells"] == 60
    assert record["warning"].startswith("imputation is weak")
    line = result.uns["spatial_impute"]["params"]["map_choice"]
    assert line == record["batch_summary"] == run.choice["batch_summary"]
    assert line.startswith("map chosen once for all 3 sections on 60 cells drawn from each")
    assert not any("weak" in text for _, text in run.warnings)  # the batches did not choose
    # each batch is that batch mapped alone with the chosen map
    rows = np.flatnonzero(sp.obs["section"].to_numpy() == "s2")
    alone = result_to_anndata(
        nsi.map_cells_to_space(ref, sp[rows].copy(), method="tangram", epochs=30, **MAP)
    )
    np.testing.assert_array_equal(result.X[rows], alone.X)


def test_a_given_method_makes_no_choice(tmp_path, monkeypatch, caplog):
    ref, sp = _pair(n_sp=90, n_ref=60)
    calls = _spy_choose(monkeypatch)
    with caplog.at_level(logging.INFO, logger="napari_spatial_impute.core.batch_run"):
        run = map_batches(
            ref, sp, "section", tmp_path / "out.h5ad", workers=0, method="ensemble", **MAP
        )
    assert calls == [] and run.choice is None and caplog.records == []
    info = _read(tmp_path / "out.h5ad").uns["spatial_impute"]
    assert "map_choice" not in info and info["params"]["map_choice"] == ""
    assert info["params"]["method"] == "ensemble"


def test_cancel_stops_the_choice_and_writes_nothing(tmp_path, monkeypatch):
    ref, sp = _pair(n_sp=90, n_ref=60)
    flag = threading.Event()
    calls = _spy_choose(monkeypatch)
    real = choose.choose_map

    def cancel_then_choose(problem, *args, **kwargs):
        flag.set()
        return real(problem, *args, **kwargs)

    monkeypatch.setattr(choose, "choose_map", cancel_then_choose)
    seen = []
    with pytest.raises(MappingCancelled):
        map_batches(
            ref,
            sp,
            "section",
            tmp_path / "o.h5ad",
            workers=0,
            progress=seen.append,
            cancel=flag,
            **MAP,
        )
    from napari_spatial_impute.core.engine.mapper import is_cancelled

    given = calls[0][1]  # the run's flag (with the signals' when run in the main thread)
    assert given is not None and is_cancelled(given), "the run's cancel flag reaches the choice"
    flag.clear()
    assert not is_cancelled(given)
    assert seen == [] and list(tmp_path.iterdir()) == []


def test_a_batch_without_counts_is_skipped_and_reported(tmp_path):
    ref, sp = _pair()
    X = sp.X.toarray()
    X[sp.obs["section"].to_numpy() == "s2"] = 0
    sp.X = X
    run = map_batches(ref, sp, "section", tmp_path / "out.h5ad", workers=0, **MAP)
    assert list(run.skipped.index) == ["s2"]
    assert "no counts" in run.skipped.loc["s2", "reason"]
    result = _read(tmp_path / "out.h5ad")
    s2 = sp.obs["section"].to_numpy() == "s2"
    assert np.isnan(result.X[s2]).all() and not np.isnan(result.X[~s2]).any()
    assert result.obs["cell_type_predicted"][s2].isna().all()
    assert (result.obsm["mapping_top_index"][s2] == -1).all()


@pytest.mark.parametrize(
    ("method", "uncertainty", "match"),
    [
        ("ensemble", False, "no batch could be mapped.*no counts"),
        (
            "ensemble",
            True,
            "240 cells drawn across the 3 sections to calibrate the prediction intervals have no "
            "counts",
        ),
        ("auto", True, "240 cells drawn across the 3 sections to choose the map have no counts"),
    ],
)
def test_nothing_is_written_when_no_batch_maps(tmp_path, method, uncertainty, match):
    ref, sp = _pair()
    sp.X = sp.X * 0
    with pytest.raises(InputError, match=match):
        map_batches(
            ref,
            sp,
            "section",
            tmp_path / "out.h5ad",
            workers=0,
            method=method,
            uncertainty=uncertainty,
            **MAP,
        )
    assert list(tmp_path.iterdir()) == []


def test_cancel_leaves_an_earlier_output_untouched(tmp_path):
    ref, sp = _pair()
    out = tmp_path / "out.h5ad"
    out.write_bytes(b"earlier result")
    flag = threading.Event()

    def progress(p):
        if p.done == 1:
            flag.set()  # after the first batch

    with pytest.raises(MappingCancelled):
        map_batches(ref, sp, "section", out, workers=0, progress=progress, cancel=flag, **MAP)
    assert out.read_bytes() == b"earlier result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5ad"]


def test_bad_input_is_refused_before_any_work(tmp_path):
    ref, sp = _pair()
    with pytest.raises(InputError, match="'slice' is not a column"):
        map_batches(ref, sp, "slice", tmp_path / "o.h5ad", workers=0)
    with pytest.raises(InputError, match=r"must end in \.h5ad or \.zarr"):
        map_batches(ref, sp, "section", tmp_path / "o.csv", workers=0)
    (tmp_path / "exists.zarr").mkdir()
    with pytest.raises(InputError, match="exists"):
        map_batches(ref, sp, "section", tmp_path / "exists.zarr", workers=0)
    with pytest.raises(InputError, match="cluster key 'nope'"):
        map_batches(ref, sp, "section", tmp_path / "o.h5ad", workers=0, cluster_key="nope")
    with pytest.raises(InputError, match=r"needs about .* GiB per worker, but --memory-limit"):
        map_batches(ref, sp, "section", tmp_path / "o.h5ad", workers=1, memory_limit="1MB")
    with pytest.raises(InputError, match="not a size"):
        map_batches(ref, sp, "section", tmp_path / "o.h5ad", workers=1, memory_limit="lots")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.zarr"]


def test_a_scheduler_that_does_not_answer_is_one_line(tmp_path):
    ref, sp = _pair()
    with pytest.raises(InputError, match="does not answer") as info:
        map_batches(ref, sp, "section", tmp_path / "o.h5ad", scheduler="tcp://127.0.0.1:9", **MAP)
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def cluster():
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as c,
        Client(c) as client,
    ):
        yield client


def test_dask_cluster_gives_the_batches_own_mappings(tmp_path, cluster):
    ref, sp = _pair()
    run = map_batches(ref, sp, "section", tmp_path / "out.zarr", scheduler=cluster, **MAP)
    result = _read(tmp_path / "out.zarr")
    # worker processes run torch on one thread: sums may round differently in the last bits
    _assert_batches_as_alone(result, ref, sp, run.calibration, rtol=1e-5, atol=1e-6)
    workers = {w.rsplit(":", 1)[1] for w in run.batches["worker"]}
    assert str(os.getpid()) not in workers  # the batches ran in the worker processes


def test_a_killed_worker_is_replaced_and_its_batch_written_once(tmp_path, cluster):
    """Kill the worker process running a batch: the batch runs again elsewhere, every batch is
    in the file once, and the result is the same as without the kill."""
    ref, sp = _pair(n_sp=3000, n_ref=3000, seed=8, interleaved=False)
    pids = cluster.run(os.getpid)
    killed: dict[str, object] = {}

    def killer():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            busy = {addr: keys for addr, keys in cluster.processing().items() if keys}
            for addr, keys in busy.items():
                if addr in pids:
                    killed.update(pid=pids[addr], key=list(keys)[0])
                    os.kill(pids[addr], 9)
                    return
            time.sleep(0.005)

    thread = threading.Thread(target=killer)
    thread.start()
    run = map_batches(ref, sp, "section", tmp_path / "out.h5ad", scheduler=cluster, **MAP)
    thread.join()
    assert killed, "no batch was seen running"
    assert (run.batches["status"] == "mapped").all() and len(run.batches) == 3
    index = int(str(killed["key"]).rsplit("-", 1)[1])
    rerun_by = run.batches["worker"].iloc[index].rsplit(":", 1)[1]
    assert rerun_by != str(killed["pid"])
    _assert_batches_as_alone(
        _read(tmp_path / "out.h5ad"), ref, sp, run.calibration, rtol=1e-5, atol=1e-6
    )


#: What differs from run to run whatever the result: times, processes, memory.
VOLATILE = {
    "timings",
    "seconds",
    "worker",
    "peak_rss_gib",
    "client_peak_rss_gib",
    "client_cpu_s",
    "workers",
}


def _stable(value):
    """``value`` (an ``uns``) without :data:`VOLATILE`."""
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, pd.DataFrame):
        return value.drop(columns=[c for c in value.columns if c in VOLATILE])
    return value


def _assert_same(a, b, where="uns", rtol=0.0):
    """Nested ``uns`` values equal (floats within ``rtol``; 0: exactly)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a) == sorted(b), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}/{key}", rtol)
    elif isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b, obj=where, check_exact=not rtol, rtol=rtol or 1e-5)
    elif isinstance(a, np.ndarray) and a.dtype.kind == "f":
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol and 1e-6, err_msg=where)
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=where)
    elif isinstance(a, float):
        assert (np.isnan(a) and np.isnan(b)) or a == pytest.approx(b, rel=rtol, abs=0), where
    else:
        assert a == b, where


def _assert_same_file(a, b, rtol=0.0):
    np.testing.assert_allclose(a.X, b.X, rtol=rtol, atol=rtol and 1e-6)
    assert sorted(a.layers) == sorted(b.layers)
    for name in a.layers:
        np.testing.assert_allclose(a.layers[name], b.layers[name], rtol=rtol, atol=rtol and 1e-6)
    pd.testing.assert_frame_equal(a.obs, b.obs, check_exact=not rtol, rtol=rtol or 1e-5)
    pd.testing.assert_frame_equal(a.var, b.var, check_exact=not rtol, rtol=rtol or 1e-5)
    assert sorted(a.obsm) == sorted(b.obsm)
    for key in a.obsm:
        _assert_same(np.asarray(a.obsm[key]), np.asarray(b.obsm[key]), f"obsm/{key}", rtol)
    _assert_same(_stable(a.uns), _stable(b.uns), rtol=rtol)


def test_the_file_is_the_same_whatever_order_the_batches_finish_in(tmp_path, monkeypatch):
    """On a cluster the batches finish in any order: the file (values, per-cell labels and their
    categories, var, uns with the calibration) is the one the plan's order gives."""
    from napari_spatial_impute.core import batch_run
    from napari_spatial_impute.core.batches import plan_batches

    ref, sp = _pair()
    map_batches(ref, sp, "section", tmp_path / "plan.h5ad", workers=0, **MAP)
    batches = plan_batches(sp.obs, "section")
    order = iter([2, 0, 1])
    real = batch_run.map_batch

    def out_of_order(reference, cells, batch, **options):
        other = batches[next(order)]
        return real(reference, sp[other.rows].copy(), other, **options)

    monkeypatch.setattr(batch_run, "map_batch", out_of_order)
    seen = []
    map_batches(ref, sp, "section", tmp_path / "late.h5ad", workers=0, progress=seen.append, **MAP)
    assert [p.name for p in seen] == ["s3", "s1", "s2"]
    plan, late = _read(tmp_path / "plan.h5ad"), _read(tmp_path / "late.h5ad")
    _assert_same_file(plan, late)
    # the reference's cluster order; the union of the batches' reference cells, sorted
    assert list(late.obs["cell_type_predicted"].cat.categories) == ["T0", "T1", "T2"]
    units = list(late.obs["mapped_unit"].cat.categories)
    assert units == sorted(units)
    assert list(late.uns["spatial_impute"]["batches"]["train_score"].columns) == ["s1", "s2", "s3"]


def test_output_options_that_cannot_work_are_refused_before_any_work(tmp_path, monkeypatch):
    """A memory limit that sizes no worker, a scheduler address Dask cannot connect with, and an
    output link to nothing: refused in one line before any data is read or mapped."""
    from napari_spatial_impute.core import batch_run

    ref, sp = _pair(n_sp=90, n_ref=60)

    def no_work(*args, **kwargs):
        raise AssertionError("a batch was mapped")

    monkeypatch.setattr(batch_run, "map_batch", no_work)
    (tmp_path / "dangling.zarr").symlink_to(tmp_path / "nowhere.zarr")
    (tmp_path / "loop.h5ad").symlink_to(tmp_path / "loop.h5ad")
    cases = [
        ({"workers": 0, "memory_limit": "1MB"}, "o.h5ad", "with --workers 0"),
        ({"scheduler": "tcp://127.0.0.1:9", "memory_limit": "4GB"}, "o.h5ad", "own workers"),
        ({"scheduler": "ucx://127.0.0.1:9"}, "o.h5ad", "cannot connect with ucx://"),
        ({"workers": 1, "memory_limit": float("inf")}, "o.h5ad", "not a size"),
        ({"workers": 0}, "dangling.zarr", "symbolic link to nothing"),
        ({"workers": 0}, "loop.h5ad", "symbolic link to nothing"),
    ]
    for options, name, match in cases:
        with pytest.raises(InputError, match=match) as info:
            map_batches(ref, sp, "section", tmp_path / name, **options, **MAP)
        assert "\n" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling.zarr", "loop.h5ad"]
    assert os.readlink(tmp_path / "loop.h5ad") == str(tmp_path / "loop.h5ad")


def test_workers_are_lowered_to_the_cores_and_the_run_names_those_it_had(tmp_path, monkeypatch):
    """More workers than cores (or batches) are lowered, warned of once; the local cluster has
    that many worker processes, and the run records them."""
    from napari_spatial_impute.core import cluster

    ref, sp = _pair(n_sp=90, n_ref=60)
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    asked = []
    real = cluster.dask_client

    def spy(workers=None, *args, **kwargs):
        asked.append(workers)
        return real(workers, *args, **kwargs)

    monkeypatch.setattr(cluster, "dask_client", spy)
    with pytest.warns(nsi.InputWarning) as caught:
        run = map_batches(
            ref, sp, "section", tmp_path / "out.h5ad", workers=8, method="ensemble", **MAP
        )
    lowered = [str(w.message) for w in caught if "lowered" in str(w.message)]
    assert lowered == [
        "--workers 8 lowered to 1 (at most one per batch and one per core: 3 batches, 1 core)."
    ]
    assert asked == [1] and run.workers == 1
    assert run.batches["worker"].nunique() == 1
    assert _read(tmp_path / "out.h5ad").uns["spatial_impute"]["batches"]["workers"] == 1


def test_a_cluster_run_writes_what_a_run_here_writes(tmp_path, cluster):
    """The same input on two worker processes and in this process: the same file (floats within
    rounding: torch runs on one thread in a worker)."""
    ref, sp = _pair()
    map_batches(ref, sp, "section", tmp_path / "here.zarr", workers=0, **MAP)
    map_batches(ref, sp, "section", tmp_path / "dask.zarr", scheduler=cluster, **MAP)
    _assert_same_file(_read(tmp_path / "here.zarr"), _read(tmp_path / "dask.zarr"), rtol=1e-4)
