"""One full mapping at a large size, timed end to end (issue 5, target 3: the lean engine).

``--method tangram`` (default) trains the Tangram map as in issue 5; ``--method auto`` is the
default run (the ensemble map, nothing trained).

Simulates a pair with ``common.simulate_pair``, maps it with the default engine choice
(``auto`` → lean at this size), early stopping ``--tol`` over 25 epochs, clusters projected, then
writes three imputed genes with ``write_result``. Prints the score every 25 epochs and the phase
timings; run it under ``/usr/bin/time -v`` for the peak resident memory::

    /usr/bin/time -v python benchmarks/large_run.py --n-ref 20000 --n-sp 200000 --n-genes 300 --epochs 400
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import simulate_pair

import napari_spatial_impute as nsi
from napari_spatial_impute.core.export import write_result


def _rss_gib() -> float:
    """Current resident memory of this process (Linux; NaN elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 1024**3
    except OSError:
        return float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-ref", type=int, default=20000)
    p.add_argument("--n-sp", type=int, default=200000)
    p.add_argument("--n-genes", type=int, default=300)
    p.add_argument(
        "--method",
        default="tangram",
        choices=["auto", "ensemble", "tangram"],
        help="the map (default tangram: the lean-engine run of issue 5; auto: the default run)",
    )
    p.add_argument("--epochs", type=int, default=400)
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument(
        "--panel-genes",
        type=int,
        default=None,
        help="the spatial assay measures only this many of the genes (a seeded random panel); "
        "default all",
    )
    p.add_argument(
        "--all-genes", action="store_true", help="write every reference gene (default: three)"
    )
    p.add_argument("--out", default="/tmp/large_run_result.h5ad")
    p.add_argument("--json", default=None, help="write history and timings here")
    args = p.parse_args(argv)
    t0 = time.time()
    ref, spa = simulate_pair(args.n_ref, args.n_sp, args.n_genes, seed=0)
    if args.panel_genes:
        import numpy as np

        keep = np.sort(np.random.default_rng(1).choice(spa.n_vars, args.panel_genes, replace=False))
        spa = spa[:, keep].copy()
    t1 = time.time()
    print("simulated", round(t1 - t0, 1), flush=True)
    hist = []

    def cb(info: nsi.EpochInfo) -> None:
        hist.append((info.epoch, info.score, time.time() - t1))
        if info.epoch % 25 == 0:
            print(
                info.epoch,
                round(info.score, 4),
                round(time.time() - t1, 1),
                f"rss {_rss_gib():.2f} GiB",
                flush=True,
            )

    r = nsi.map_cells_to_space(
        ref,
        spa,
        method=args.method,
        epochs=args.epochs,
        engine="auto",
        tol=args.tol,
        patience=25,
        callback=cb,
        cluster_key="cell_type",
    )
    t2 = time.time()
    print(f"rss after mapping {_rss_gib():.2f} GiB", flush=True)
    print(
        "mapped",
        r.params["engine"],
        r.params["epochs_done"],
        round(r.training_score, 4),
        r.timings,
        flush=True,
    )
    written = None if args.all_genes else ["Gene0000", "Gene0001", "Gene0002"]
    write_result(r, args.out, genes=written)
    t3 = time.time()
    n_written = ref.n_vars if written is None else len(written)
    print(f"wrote {n_written} genes", round(t3 - t2, 1), "total", round(t3 - t0, 1), flush=True)
    if args.json:
        Path(args.json).write_text(
            json.dumps({"history": hist, "timings": r.timings, "total_s": t3 - t0})
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
