"""The batched run's writer (issue 25): whole chunks in the file's row order, however the
batches' cells are interleaved; staged files removed once written; nothing compressed."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_spatial_impute._errors import MappingCancelled
from napari_spatial_impute.core.batches import BatchOutput
from napari_spatial_impute.io import batch_out
from napari_spatial_impute.io.batch_out import BatchResultWriter
from napari_spatial_impute.io.batch_stage import BatchStage, make_stage_folder

GENES = [f"g{i}" for i in range(7)]


def _expected(n, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "X": rng.random((n, len(GENES)), dtype=np.float32),
        "lay": rng.random((n, len(GENES)), dtype=np.float32),
        "probs": rng.random((n, 3), dtype=np.float32),
        "top": rng.integers(0, 50, (n, 2)),
    }


def _output(b, rows, values, stage=None, run_id=""):
    """Batch ``b``'s output: staged in files (``stage``) or carried in memory."""
    out = BatchOutput(b, f"s{b}", rows)
    if stage is None:
        out.X = values["X"][rows]
        out.layers = {"lay": values["lay"][rows]}
        out.obsm = {
            "probs": pd.DataFrame(values["probs"][rows], columns=["a", "b", "c"]),
            "top": values["top"][rows],
        }
        return out
    st_ = BatchStage(str(stage), b)
    st_.put("X", values["X"][rows])
    st_.put("layers/lay", values["lay"][rows])
    st_.put("frame:probs", values["probs"][rows], ["a", "b", "c"])
    st_.put("obsm/top", values["top"][rows])
    out.staged = st_.staged()
    return out


def _writer(tmp_path, n, batches, zarr=False, stop=None):
    obs = pd.DataFrame(index=[f"c{i}" for i in range(n)])
    stage = make_stage_folder(tmp_path / "out", "run")
    path = tmp_path / ("tmp.zarr" if zarr else "tmp.h5ad")
    writer = BatchResultWriter(
        path, obs, {}, GENES, batches=batches, stage=stage, zarr=zarr, stop=stop
    )
    return writer, stage, path, obs


def _finish(writer, obs):
    writer.finish(obs, pd.DataFrame(index=GENES), {})


def _check(path, values, zarr=False, skipped=()):
    got = ad.read_zarr(path) if zarr else ad.read_h5ad(path)
    expected = {k: v.copy() for k, v in values.items()}
    for rows in skipped:
        for k in ("X", "lay", "probs"):
            expected[k][rows] = np.nan
        expected["top"][rows] = -1
    np.testing.assert_array_equal(got.X, expected["X"])
    np.testing.assert_array_equal(got.layers["lay"], expected["lay"])
    np.testing.assert_array_equal(got.obsm["probs"].to_numpy(), expected["probs"])
    assert list(got.obsm["probs"].columns) == ["a", "b", "c"]
    np.testing.assert_array_equal(got.obsm["top"], expected["top"])


@settings(max_examples=12, deadline=None)
@given(
    n=st.integers(1, 70),
    k=st.integers(1, 5),
    chunk=st.integers(1, 16),
    seed=st.integers(0, 10**6),
    staged=st.booleans(),
)
def test_any_interleaving_writes_each_chunk_once_when_its_batches_are_in(
    tmp_path_factory, n, k, chunk, seed, staged
):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(batch_out, "CHUNK_ROWS", chunk)
        _interleaved(tmp_path_factory.mktemp("w"), n, k, chunk, seed, staged)


def _interleaved(tmp_path, n, k, chunk, seed, staged):
    rng = np.random.default_rng(seed)
    owner = rng.integers(0, k, n)
    batches = [np.flatnonzero(owner == b) for b in range(k)]
    values = _expected(n, seed)
    writer, stage, path, obs = _writer(tmp_path, n, batches)
    written = []
    real = writer._assemble

    def assemble(c):
        rows = np.arange(c * chunk, min((c + 1) * chunk, n))
        assert set(owner[rows]) <= set(writer.written), "a chunk waits for all of its batches"
        written.append(c)
        real(c)

    writer._assemble = assemble
    for b in rng.permutation(k):
        writer.write(_output(int(b), batches[b], values, stage if staged else None, "run"))
    _finish(writer, obs)
    assert sorted(written) == list(range(-(-n // chunk))), "every chunk written once"
    _check(path, values)
    assert sorted(p.name for p in stage.iterdir()) == ["RUN"], "staged files removed"


def test_a_file_sorted_by_batch_is_written_as_its_batches_arrive(tmp_path, monkeypatch):
    monkeypatch.setattr(batch_out, "CHUNK_ROWS", 10)
    batches = [np.arange(0, 25), np.arange(25, 60)]
    values = _expected(60)
    writer, stage, path, obs = _writer(tmp_path, 60, batches)
    writer.write(_output(0, batches[0], values, stage))
    assert writer.chunks_written == 2, "rows 0-19 written with the first batch"
    writer.write(_output(1, batches[1], values, stage))
    assert writer.chunks_written == 6
    _finish(writer, obs)
    _check(path, values)


def test_rows_of_a_skipped_batch_stay_empty(tmp_path, monkeypatch):
    monkeypatch.setattr(batch_out, "CHUNK_ROWS", 4)
    batches = [np.arange(0, 30, 3), np.arange(1, 30, 3), np.arange(2, 30, 3)]
    values = _expected(30)
    writer, stage, path, obs = _writer(tmp_path, 30, batches, zarr=True)
    writer.write(BatchOutput(1, "s1", batches[1], status="skipped", reason="no counts"))
    writer.write(_output(2, batches[2], values, stage))
    writer.write(_output(0, batches[0], values))
    _finish(writer, obs)
    _check(path, values, zarr=True, skipped=[batches[1]])
    import zarr

    root = zarr.open_group(path, mode="r")
    assert root["X"].compressors == () and root["layers/lay"].compressors == ()


def test_a_stop_is_asked_between_blocks_and_before_the_end(tmp_path):
    """A cancel reaches the writer between the arrays a batch stages and the blocks written,
    and before the end's obs / var / uns (issue 24, 10e: a batch's arrays can be gigabytes)."""
    batches = [np.arange(0, 3), np.arange(3, 6)]
    values = _expected(6)
    asked = []
    stop_at = [3]

    def stop():
        asked.append(1)
        return len(asked) >= stop_at[0]

    writer, stage, path, obs = _writer(tmp_path, 6, batches, stop=stop)
    with pytest.raises(MappingCancelled):
        writer.write(_output(0, batches[0], values))
    assert len(asked) == 3, "asked before each array, stopped at the second"
    writer.close()
    stop_at[0] = 10**6
    asked.clear()
    (tmp_path / "again").mkdir()
    writer, stage, path, obs = _writer(tmp_path / "again", 6, batches, stop=stop)
    writer.write(_output(0, batches[0], values))
    writer.write(_output(1, batches[1], values))
    assert len(asked) > 2 + 2 * 4, "asked before each staged array and each block"
    stop_at[0] = 0
    with pytest.raises(MappingCancelled):
        _finish(writer, obs)
    writer.close()


def test_the_batches_must_cover_every_row(tmp_path):
    with pytest.raises(ValueError, match="cover every row"):
        _writer(tmp_path, 5, [np.arange(0, 3)])


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(1, 40),
    width=st.integers(1, 23),
    band=st.integers(1, 8),
    chunk=st.integers(1, 12),
    lo=st.integers(0, 39),
    g0=st.integers(0, 22),
    on_disk=st.booleans(),
)
def test_a_staged_array_written_in_blocks_reads_back_any_rectangle(
    tmp_path_factory, n, width, band, chunk, lo, g0, on_disk
):
    """Blocks of cells x whole bands, written with plain file calls in any order, read back
    as any rows x columns (what the writer asks for)."""
    folder = tmp_path_factory.mktemp("s") if on_disk else None
    values = np.random.default_rng(n * width).random((n, width), dtype=np.float32)
    stage = BatchStage(None if folder is None else str(folder), 3)
    stage.create("X", (n, width), np.float32, band)
    blocks = [(a, b) for a in range(0, n, chunk) for b in range(0, width, band)]
    for a, b in reversed(blocks):
        cells, genes = slice(a, min(a + chunk, n)), slice(b, min(b + band, width))
        stage.write("X", cells, genes, values[cells, genes])
    (staged,) = stage.staged()
    assert (staged.path is not None) == on_disk
    lo, g0 = min(lo, n - 1), min(g0, width - 1)
    np.testing.assert_array_equal(staged.rows(lo, n, g0, width), values[lo:, g0:])
    np.testing.assert_array_equal(staged.read(), values)
    if on_disk:
        with pytest.raises(ValueError, match="not one band"):
            stage.write("X", slice(0, 1), slice(0, min(width, band) + 1), values[:1, :2])
