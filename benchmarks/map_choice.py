"""Issue 22: the map the data choose — interval coverage of each map, and the cost of choosing.

Two measurements, each written to ``--out`` (docs/bench/map_choice/):

* ``coverage``: per pair and map (``ensemble``, ``tangram``, ``auto``), a 10-fold cross-validation
  over genes with ``uncertainty=True`` (:func:`napari_spatial_impute.cross_validate`): each fold's
  map is calibrated on its own training genes only (the ensemble: four inner folds; a Tangram
  map: the quarter held out of it), and its 90 % / 67 % intervals are scored on the fold's
  held-out genes: the fraction of cells whose measured value lies inside (mean over genes), the
  median held-out Pearson, the reliability's Spearman against the held-out Pearson, and which
  map ``auto`` made in each fold. Pairs: the benchmark pairs (:func:`common.load_pair`, already
  log-normalised, ``transform="none"``) and ``profiles`` (tests/_data.make_profile_pair: one
  reference cell per type, where the ensemble loses).
* ``cost``: whole-process wall time and peak RSS (``/usr/bin/time``) of the default
  ``napari-spatial-impute map`` at the seed's shape (``benchmarks/seed_shape.py``; writes the
  result of all 2,000 genes) and of the default 10-fold ``evaluate`` of the bundled MERFISH pair,
  at this checkout and, with ``--baseline DIR`` (a checkout of the commit before issue 22, e.g.
  ``git worktree add /tmp/base 1489550``), the same commands there, interleaved, ``--repeats``
  times each, with the 1-minute load average beside each row.

Usage::

    python benchmarks/map_choice.py coverage --pairs merfish_hypothalamus starmap_mpfc osmfish_sscortex profiles
    python benchmarks/map_choice.py cost --baseline /tmp/base --repeats 3
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import common
from common import log

ROOT = Path(__file__).resolve().parents[1]


def _pair(name: str):
    if name == "profiles":
        from _data import make_profile_pair

        ref, spa = make_profile_pair(n_types=16, per_type=1, n_sp=600, n_genes=60, seed=1)
        return ref, spa
    p = common.load_pair(name)
    return p.reference, p.spatial


def coverage(args: argparse.Namespace) -> pd.DataFrame:
    import napari_spatial_impute as nsi

    rows = []
    for name in args.pairs:
        ref, spa = _pair(name)
        for method in args.methods:
            t0 = time.perf_counter()
            chosen: list[str] = []
            from napari_spatial_impute.core import evaluate

            orig = evaluate.map_cells_to_space

            def spy(*a, _orig=orig, _chosen=chosen, **k):
                r = _orig(*a, **k)
                _chosen.append(str(r.params["method"]))
                return r

            evaluate.map_cells_to_space = spy
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    df = nsi.cross_validate(
                        ref,
                        spa,
                        folds=args.folds,
                        seed=args.seed,
                        method=method,
                        transform="none",
                        uncertainty=True,
                        baselines=False,
                    )
            finally:
                evaluate.map_cells_to_space = orig
            s = nsi.summarize_cv(df)
            row = {
                "pair": name,
                "map": method,
                "median_pearson": s["median_pearson"],
                "coverage_90": s.get("mean_coverage_90", np.nan),
                "coverage_67": s.get("mean_coverage_67", np.nan),
                "reliability_spearman": s.get("reliability_spearman", np.nan),
                "maps_made": ",".join(f"{m}:{chosen.count(m)}" for m in sorted(set(chosen))),
                "seconds": time.perf_counter() - t0,
                "loadavg_1m": common.loadavg(),
            }
            log(str(row))
            rows.append(row)
    return pd.DataFrame(rows)


def _timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    out = subprocess.run(
        ["/usr/bin/time", "-f", "%e %M", *cmd],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    wall, kb = out.stderr.strip().splitlines()[-1].split()
    return float(wall), float(kb) / 2**20


def cost(args: argparse.Namespace) -> pd.DataFrame:
    shape = Path(args.shape_dir)
    if not (shape / "spatial.h5ad").exists():
        subprocess.run(
            [sys.executable, str(ROOT / "benchmarks/seed_shape.py"), "--out", str(shape)],
            check=True,
        )
    from napari_spatial_impute.io.datasets import load_merfish_hypothalamus

    pair_dir = Path(args.scratch) / "merfish"
    pair_dir.mkdir(parents=True, exist_ok=True)
    ref, spa = load_merfish_hypothalamus()
    ref.write_h5ad(pair_dir / "ref.h5ad")
    spa.write_h5ad(pair_dir / "sp.h5ad")
    trees = {"this": ROOT}
    if args.baseline:
        trees["baseline"] = Path(args.baseline)
    rows = []
    for rep in range(args.repeats):
        for label, tree in trees.items():
            env = {**os.environ, "PYTHONPATH": str(tree / "src")}
            exe = [sys.executable, "-m", "napari_spatial_impute.cli"]
            out = Path(args.scratch) / f"{label}.h5ad"
            out.unlink(missing_ok=True)
            cmds = {
                "map (seed shape)": [
                    *exe,
                    "map",
                    "-r",
                    str(shape / "reference.h5ad"),
                    "-s",
                    str(shape / "spatial.h5ad"),
                    "-o",
                    str(out),
                    "--cluster-key",
                    "cell_type",
                ],
                "evaluate (MERFISH, 10 folds)": [
                    *exe,
                    "evaluate",
                    "-r",
                    str(pair_dir / "ref.h5ad"),
                    "-s",
                    str(pair_dir / "sp.h5ad"),
                    "--folds",
                    "10",
                    "--seed",
                    "0",
                    "--out",
                    str(Path(args.scratch) / f"{label}_cv.csv"),
                ],
            }
            for what, cmd in cmds.items():
                load = common.loadavg()
                wall, gib = _timed(cmd, tree, env)
                out.unlink(missing_ok=True)
                row = {"run": rep, "code": label, "command": what, "wall_s": wall}
                row.update({"peak_gib": gib, "loadavg_1m": load})
                log(str(row))
                rows.append(row)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    c = sub.add_parser("coverage")
    c.add_argument(
        "--pairs",
        nargs="+",
        default=["merfish_hypothalamus", "starmap_mpfc", "osmfish_sscortex", "profiles"],
    )
    c.add_argument("--methods", nargs="+", default=["ensemble", "tangram", "auto"])
    c.add_argument("--folds", type=int, default=10)
    c.add_argument("--seed", type=int, default=0)
    k = sub.add_parser("cost")
    k.add_argument("--baseline", default=None, help="a checkout to compare with")
    k.add_argument("--repeats", type=int, default=2)
    k.add_argument("--shape-dir", default="/tmp/seed_shape")
    k.add_argument("--scratch", default="/tmp/map_choice_cost")
    for q in (c, k):
        q.add_argument("--out", default=str(ROOT / "docs/bench/map_choice"))
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df = coverage(args) if args.what == "coverage" else cost(args)
    common.write_csv(df, out / f"{args.what}.csv")
    common.write_json({**common.machine_info(), "args": vars(args)}, out / f"{args.what}.json")
    print(common.md_table(df))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
