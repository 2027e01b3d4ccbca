"""Shared helpers of the benchmark scripts: data loading, the evaluation protocol, a seeded
simulator, machine description and process measurement.

Nothing here is imported by the package; the scripts under ``benchmarks/`` import it as a
sibling module (``python benchmarks/accuracy.py`` puts this folder on ``sys.path``).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
BENCH_OUT = DOCS / "bench"
IMAGES = DOCS / "images"

# --------------------------------------------------------------------------------------------
# environment


def tangram_available() -> bool:
    """Whether tangram-sc can be imported."""
    try:
        import tangram  # noqa: F401
    except Exception:  # pragma: no cover - depends on the environment
        return False
    return True


def quiet_tangram() -> None:
    """Silence tangram-sc's INFO logging and the deprecation noise of its dependencies."""
    import logging
    import warnings

    logging.getLogger().setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)


def data_dir() -> Path | None:
    """The shared real-data folder (``$NSI_DATA_DIR``, ``../shared/data`` beside the checkout)."""
    from napari_spatial_impute.io.datasets import shared_data_dir

    d = shared_data_dir()
    if d is None and Path("/work/shared/data/README.md").exists():
        d = Path("/work/shared/data")
    return d


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gib() -> float:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return float("nan")


def _version(mod: str) -> str:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:
        return "not installed"


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()
    except Exception:
        return "unknown"


def source_state() -> dict[str, Any]:
    """Where ``napari_spatial_impute`` is imported from, and whether that tree has local edits."""
    import napari_spatial_impute as nsi

    pkg = Path(nsi.__file__).resolve().parent
    state: dict[str, Any] = {"package_path": str(pkg)}
    snap = os.environ.get("NSI_BENCH_SOURCE_COMMIT")
    if snap:
        state["source"] = f"snapshot of commit {snap} (git archive), not the working tree"
        return state
    try:
        out = subprocess.run(
            ["git", "-C", str(pkg), "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
            check=True,
        )
        dirty = [ln[3:] for ln in out.stdout.splitlines()]
        state["source"] = "working tree" + (
            f" with uncommitted changes: {', '.join(dirty)}" if dirty else " (clean)"
        )
    except Exception:
        state["source"] = "unknown"
    return state


def machine_info() -> dict[str, Any]:
    """Machine, versions, date and load, for the record next to every table."""
    import torch

    return {
        "date_utc": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "ram_gib": round(_ram_gib(), 1),
        "gpu": "none" if not torch.cuda.is_available() else torch.cuda.get_device_name(0),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "anndata": _version("anndata"),
        "scanpy": _version("scanpy"),
        "tangram-sc": _version("tangram-sc"),
        "napari-spatial-impute": _version("napari-spatial-impute"),
        "git_commit": git_commit(),
        **source_state(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def loadavg() -> float:
    """1-minute load average (recorded next to each timed row)."""
    return round(os.getloadavg()[0], 2)


def engine_names() -> list[str] | None:
    """The concrete engines of ``map_cells_to_space`` (:data:`~napari_spatial_impute.core.settings.ENGINES`).

    ``"auto"`` is left out because it only picks one of the concrete engines by size.
    """
    from napari_spatial_impute.core.settings import ENGINES

    return [e for e in ENGINES if e != "auto"]


# --------------------------------------------------------------------------------------------
# protocol


def normalize_log1p(adata: ad.AnnData) -> ad.AnnData:
    """Total-count normalisation over the set's own genes (to the median total), then log1p.

    The package's own ``transform="normalize_log1p"``
    (:func:`~napari_spatial_impute.core.preprocess.apply_transform`), applied once per data set,
    before any split. Returns a copy (``obs``, ``var``, ``obsm`` kept) whose ``X`` is a float32
    ``csr_matrix`` (tangram-sc rejects ``csr_array``).
    """
    from napari_spatial_impute.core.preprocess import apply_transform

    out = adata.copy()
    out.X = sp.csr_matrix(apply_transform(adata, "normalize_log1p").X, dtype=np.float32)
    return out


def shared_genes(reference: ad.AnnData, spatial: ad.AnnData) -> list[tuple[str, str]]:
    """``(reference_name, spatial_name)`` pairs matched case-insensitively, in reference order."""
    from napari_spatial_impute.core.genes import match_genes

    return match_genes(reference.var_names, spatial.var_names)


def dense(adata: ad.AnnData, genes: Sequence[str]) -> np.ndarray:
    """Dense float32 columns ``genes`` of ``X`` (:func:`~napari_spatial_impute.core.preprocess.dense_columns`)."""
    from napari_spatial_impute.core.preprocess import dense_columns

    return dense_columns(adata, genes)


def shared_matrices(pair: Pair) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """``(reference genes, spatial genes, R, S)``: the shared genes of a pair and its dense
    reference and spatial matrices over them (cells x genes, float32, in reference gene order)."""
    shared = shared_genes(pair.reference, pair.spatial)
    rg = [r for r, _ in shared]
    sg = [s for _, s in shared]
    return rg, sg, dense(pair.reference, rg), dense(pair.spatial, sg)


# --------------------------------------------------------------------------------------------
# data sets

DATASETS = ("merfish_hypothalamus", "starmap_mpfc", "osmfish_sscortex")


class Pair:
    """A reference/spatial pair, normalised, with the label columns used to score annotations."""

    def __init__(
        self,
        name: str,
        reference: ad.AnnData,
        spatial: ad.AnnData,
        ref_label: str | None,
        sp_label: str | None,
        split: str,
    ) -> None:
        self.name = name
        self.reference = reference
        self.spatial = spatial
        self.ref_label = ref_label
        self.sp_label = sp_label
        self.split = split


def _strip_reference(a: ad.AnnData) -> ad.AnnData:
    """A reference made from spatial cells: coordinates dropped."""
    out = ad.AnnData(X=a.X.copy(), obs=a.obs.copy(), var=pd.DataFrame(index=a.var_names.copy()))
    return out


def load_pair(name: str, root: Path | None = None) -> Pair:
    """Load one benchmark pair from the shared data folder, normalised once before splitting.

    * ``merfish_hypothalamus``: the true pair (scRNA-seq reference, MERFISH spatial); each set is
      normalised over its own genes.
    * ``starmap_mpfc``: cells of sections (``batch``) 0 and 1 are the reference (all genes, no
      coordinates), section 2 is the spatial assay. Labels: ``cluster``.
    * ``osmfish_sscortex``: ``Valid == 1`` cells; regions ranked by cell count, even ranks are the
      reference, odd ranks the spatial assay (so both hold cortical layers). Labels:
      ``ClusterName``.
    """
    root = root or data_dir()
    if root is None:
        raise FileNotFoundError("shared data folder not found (set NSI_DATA_DIR)")
    if name == "merfish_hypothalamus":
        ref = ad.read_h5ad(root / name / "reference.h5ad")
        spa = ad.read_h5ad(root / name / "spatial.h5ad")
        ref, spa = normalize_log1p(ref), normalize_log1p(spa)
        return Pair(name, ref, spa, None, None, "published pair (10x reference, MERFISH spatial)")
    if name == "starmap_mpfc":
        a = ad.read_h5ad(root / name / "spatial.h5ad")
        a = normalize_log1p(a)
        b = a.obs["batch"].astype(float)
        ref = _strip_reference(a[b.isin([0.0, 1.0]).to_numpy()])
        spa = a[(b == 2.0).to_numpy()].copy()
        ref.obs["cluster"] = ref.obs["cluster"].astype(str)
        spa.obs["cluster"] = spa.obs["cluster"].astype(str)
        return Pair(
            name, ref, spa, "cluster", "cluster", "sections 0+1 reference, section 2 spatial"
        )
    if name == "osmfish_sscortex":
        a = ad.read_h5ad(root / name / "spatial.h5ad")
        a = a[(a.obs["Valid"] == 1).to_numpy()].copy()
        a = normalize_log1p(a)
        counts = a.obs["Region"].astype(str).value_counts()
        ranked = list(counts.sort_values(ascending=False, kind="stable").index)
        ref_regions = ranked[0::2]
        sp_regions = ranked[1::2]
        reg = a.obs["Region"].astype(str)
        ref = _strip_reference(a[reg.isin(ref_regions).to_numpy()])
        spa = a[reg.isin(sp_regions).to_numpy()].copy()
        ref.obs["ClusterName"] = ref.obs["ClusterName"].astype(str)
        spa.obs["ClusterName"] = spa.obs["ClusterName"].astype(str)
        desc = f"Valid==1; reference regions: {', '.join(ref_regions)}; spatial regions: {', '.join(sp_regions)}"
        return Pair(name, ref, spa, "ClusterName", "ClusterName", desc)
    raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")


# --------------------------------------------------------------------------------------------
# simulator


def simulate_pair(
    n_ref: int,
    n_sp: int,
    n_genes: int,
    *,
    n_types: int = 20,
    seed: int = 0,
    depth_ref: float = 3.0,
    depth_sp: float = 1.5,
    panel: int | None = None,
) -> tuple[ad.AnnData, ad.AnnData]:
    """A seeded reference/spatial pair of raw counts (float32 CSR).

    Cell types have distinct programs: a log-normal baseline per gene, each type up-regulating
    its own block of marker genes (about ``n_genes / n_types`` genes, 8-30x) and perturbing the
    rest (log-normal, sigma 0.5). Each cell has a log-normal library size; counts are Poisson.
    The spatial assay has per-gene detection efficiencies (log-normal, sigma 0.5) and lower depth,
    and its cell types are laid out in spatial bands. ``depth_*`` is the mean count per gene
    per cell before efficiencies; the defaults give roughly 60-80 % zeros, as in targeted panels
    and scRNA-seq restricted to panel genes. ``panel``: the spatial assay measures only that
    many genes (a seeded choice, in gene order); only those are simulated for it.
    """
    rng = np.random.default_rng(seed)
    base = rng.lognormal(mean=-1.0, sigma=1.2, size=n_genes)
    programs = np.tile(base, (n_types, 1)) * rng.lognormal(0.0, 0.5, size=(n_types, n_genes))
    block = max(1, n_genes // n_types)
    for t in range(n_types):
        genes = (np.arange(block) + t * block) % n_genes
        programs[t, genes] *= rng.uniform(8, 30, size=block)
    programs /= programs.mean(axis=1, keepdims=True)  # mean 1 per gene per type
    type_freq = rng.dirichlet(np.full(n_types, 2.0))

    def counts(
        n: int, depth: float, eff: np.ndarray, types: np.ndarray, cols: np.ndarray | None = None
    ) -> sp.csr_matrix:
        prog = programs if cols is None else programs[:, cols]
        lib = rng.lognormal(0.0, 0.4, size=n) * depth
        out = []
        chunk = 20000
        for a in range(0, n, chunk):
            b = min(n, a + chunk)
            lam = prog[types[a:b]] * eff[None, :] * lib[a:b, None] * 0.15
            out.append(sp.csr_matrix(rng.poisson(lam).astype(np.float32)))
        return sp.csr_matrix(sp.vstack(out), dtype=np.float32)

    ref_types = rng.choice(n_types, size=n_ref, p=type_freq)
    Xr = counts(n_ref, depth_ref, np.ones(n_genes), ref_types)
    xy = rng.uniform(0, 1000, size=(n_sp, 2))
    # spatial bands: the preferred type depends on y, mixed with random cells
    band = np.minimum((xy[:, 1] / 1000 * n_types).astype(int), n_types - 1)
    rand = rng.choice(n_types, size=n_sp, p=type_freq)
    sp_types = np.where(rng.random(n_sp) < 0.6, band, rand)
    eff = rng.lognormal(0.0, 0.5, size=n_genes)
    genes = [f"Gene{i:04d}" for i in range(n_genes)]
    cols = None
    if panel is not None and panel < n_genes:
        cols = np.sort(np.random.default_rng(seed + 1).choice(n_genes, panel, replace=False))
        eff = eff[cols]
    Xs = counts(n_sp, depth_sp, eff, sp_types, cols)
    ref = ad.AnnData(
        X=Xr,
        obs=pd.DataFrame(
            {"cell_type": pd.Categorical([f"type{t}" for t in ref_types])},
            index=[f"r{i}" for i in range(n_ref)],
        ),
        var=pd.DataFrame(index=genes),
    )
    spa = ad.AnnData(
        X=Xs,
        obs=pd.DataFrame(
            {"cell_type": pd.Categorical([f"type{t}" for t in sp_types])},
            index=[f"s{i}" for i in range(n_sp)],
        ),
        var=pd.DataFrame(index=genes if cols is None else [genes[i] for i in cols]),
    )
    spa.obsm["spatial"] = xy.astype(np.float32)
    return ref, spa


def sparsity(adata: ad.AnnData) -> float:
    X = adata.X
    nnz = X.nnz if sp.issparse(X) else int(np.count_nonzero(X))
    return 1.0 - nnz / (adata.shape[0] * adata.shape[1])


# --------------------------------------------------------------------------------------------
# measurement


def peak_rss_bytes() -> int:
    """Peak resident set size of this process's address space (``VmHWM``).

    ``ru_maxrss`` is not used: Linux carries it over from the parent across fork + exec, so a
    worker started by a large parent would report the parent's peak.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def run_measured(
    cmd: list[str], timeout: float | None = None, sample_s: float = 0.05
) -> dict[str, Any]:
    """Run ``cmd`` in a fresh process; return wall time, peak RSS (psutil sampling of the
    process and its children) and the last JSON line it printed."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            rss = ps.memory_info().rss
            for c in ps.children(recursive=True):
                try:
                    rss += c.memory_info().rss
                except psutil.Error:
                    pass
            peak = max(peak, rss)
        except psutil.Error:
            pass
        if timeout is not None and time.perf_counter() - t0 > timeout:
            proc.kill()
            break
        time.sleep(sample_s)
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    payload: dict[str, Any] = {}
    for line in reversed(out.strip().splitlines()):
        if line.startswith("{"):
            try:
                payload = json.loads(line)
                break
            except json.JSONDecodeError:
                continue
    if proc.returncode != 0 and not payload:
        payload = {
            "error": err.strip().splitlines()[-1] if err.strip() else f"exit {proc.returncode}"
        }
    payload["process_wall_s"] = wall
    payload["sampled_peak_rss_bytes"] = peak
    payload["returncode"] = proc.returncode
    return payload


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Measured float32 matmul throughput of torch on this machine (GFLOP/s, best of repeats)."""
    import torch

    a = torch.randn(n, n)
    b = torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def write_json(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))


def write_csv(df: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def md_table(df: pd.DataFrame, floatfmt: str = ".3g") -> str:
    """A GitHub markdown table (no tabulate dependency)."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "" if np.isnan(v) else format(v, floatfmt)
        return str(v)

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(fmt(v) for v in row) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# hard pairs: raw counts with load_pair's splits, and variants of a pair (benchmarks/hard_pairs.py)


def load_raw_pair(name: str, root: Path | None = None) -> tuple[ad.AnnData, ad.AnnData]:
    """The raw counts of :func:`load_pair`'s reference and spatial cells (same cells, same order).

    Nothing is normalised: ``X`` is the file's raw values (float32 CSR); the spatial keeps its
    ``obs``/``obsm``, the cell-split references lose their coordinates as in :func:`load_pair`.
    """
    root = root or data_dir()
    if root is None:
        raise FileNotFoundError("shared data folder not found (set NSI_DATA_DIR)")
    if name == "merfish_hypothalamus":
        ref = ad.read_h5ad(root / name / "reference.h5ad")
        spa = ad.read_h5ad(root / name / "spatial.h5ad")
        return ref, spa
    if name == "starmap_mpfc":
        a = ad.read_h5ad(root / name / "spatial.h5ad")
        b = a.obs["batch"].astype(float)
        ref = _strip_reference(a[b.isin([0.0, 1.0]).to_numpy()])
        spa = a[(b == 2.0).to_numpy()].copy()
        return ref, spa
    if name == "osmfish_sscortex":
        a = ad.read_h5ad(root / name / "spatial.h5ad")
        a = a[(a.obs["Valid"] == 1).to_numpy()].copy()
        counts = a.obs["Region"].astype(str).value_counts()
        ranked = list(counts.sort_values(ascending=False, kind="stable").index)
        reg = a.obs["Region"].astype(str)
        ref = _strip_reference(a[reg.isin(ranked[0::2]).to_numpy()])
        spa = a[reg.isin(ranked[1::2]).to_numpy()].copy()
        return ref, spa
    raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")


def _with_x(template: ad.AnnData, X: np.ndarray | sp.spmatrix) -> ad.AnnData:
    """A copy of ``template`` (obs, var, obsm) with ``X`` replaced (float32 CSR)."""
    out = ad.AnnData(
        X=sp.csr_matrix(X, dtype=np.float32),
        obs=template.obs.copy(),
        var=pd.DataFrame(index=template.var_names.copy()),
    )
    for k, v in template.obsm.items():
        out.obsm[k] = np.asarray(v).copy()
    return out


def quantile_normalize(X: np.ndarray | sp.spmatrix) -> np.ndarray:
    """Quantile normalisation across cells (rows): each cell's values are replaced by the mean
    sorted profile (over all cells) at the cell's ranks; ties get the mean profile at their
    average rank (linear interpolation), so a cell's zeros stay equal to each other."""
    from scipy.stats import rankdata

    D = np.asarray(X.toarray() if sp.issparse(X) else X, dtype=np.float64)
    mean_sorted = np.sort(D, axis=1).mean(axis=0)
    ranks = rankdata(D, method="average", axis=1) - 1.0  # 0-based, fractional for ties
    grid = np.arange(D.shape[1], dtype=np.float64)
    return np.interp(ranks.ravel(), grid, mean_sorted).reshape(D.shape)


def zscore_genes(X: np.ndarray | sp.spmatrix) -> np.ndarray:
    """Each column centred and scaled to unit variance (constant columns: centred only)."""
    D = np.asarray(X.toarray() if sp.issparse(X) else X, dtype=np.float64)
    sd = D.std(axis=0)
    return (D - D.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


#: reference variants of :func:`reference_variant`
REFERENCE_VARIANTS = ("log1p", "quantile", "zscore", "zscore_shift")


def reference_variant(raw: ad.AnnData, protocol: ad.AnnData, variant: str) -> ad.AnnData:
    """A differently preprocessed reference, as other pipelines and portals distribute it.

    ``raw``: the reference's raw counts; ``protocol``: the same cells log-normalised by the
    protocol (:func:`normalize_log1p`). Variants: ``log1p`` (log1p of raw counts, no size
    normalisation), ``quantile`` (:func:`quantile_normalize` of the raw counts, then log1p),
    ``zscore`` (the protocol's values z-scored per gene: negative values), ``zscore_shift``
    (the same minus each gene's minimum, so non-negative).
    """
    if not np.array_equal(raw.obs_names, protocol.obs_names):
        raise ValueError("raw and protocol references hold different cells")
    if variant == "log1p":
        R = sp.csr_matrix(raw.X, dtype=np.float32)
        R.data = np.log1p(R.data)
        return _with_x(protocol, R)
    if variant == "quantile":
        return _with_x(protocol, np.log1p(quantile_normalize(raw.X)))
    if variant in ("zscore", "zscore_shift"):
        Z = zscore_genes(protocol.X)
        if variant == "zscore_shift":
            Z = Z - Z.min(axis=0)
        return _with_x(protocol, Z)
    raise ValueError(
        f"unknown reference variant {variant!r}; known: {', '.join(REFERENCE_VARIANTS)}"
    )


def simulate_platform(
    raw: ad.AnnData, seed: int = 0, sigma: float = 1.0, mu: float = 0.0
) -> tuple[ad.AnnData, np.ndarray]:
    """Raw counts re-measured through a simulated platform: a per-gene detection efficiency
    ``min(1, lognormal(mu, sigma))`` (seeded) and binomial thinning of every count with it.
    Returns ``(thinned copy, efficiencies)``; ``obs``/``obsm`` kept, nothing normalised."""
    rng = np.random.default_rng(seed)
    eff = np.minimum(1.0, rng.lognormal(mu, sigma, size=raw.n_vars))
    X = sp.csr_matrix(raw.X, dtype=np.float64).tocoo()
    n = np.rint(X.data).astype(np.int64)
    data = rng.binomial(n, eff[X.col]).astype(np.float32)
    T = sp.csr_matrix((data, (X.row, X.col)), shape=X.shape)
    T.eliminate_zeros()
    return _with_x(raw, T), eff
