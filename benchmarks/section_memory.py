"""One section mapped in one process (issue 25): peak memory per step, CLI and GUI paths.

Data from ``atlas_scale.py make --sections 1`` (a reference and one spatial section)::

    python benchmarks/atlas_scale.py make --cells 1000000 --sections 1 --reference-cells 50000 \\
        --genes 2000 --panel 300 --out /tmp/sec1m
    python benchmarks/section_memory.py --data /tmp/sec1m --path cli
    python benchmarks/section_memory.py --data /tmp/sec1m --path gui

Runs what ``napari-spatial-impute map`` runs (``--path cli``: read both files,
``map_cells_to_space`` with its defaults, ``write_result``) or what the Map widget's worker runs
(``--path gui``: ``map_cells_to_space``, ``lazy_result``, the layer data of
``plugin.workers.layers_of_result`` without a viewer, one gene read), or both (``--path
both``: the GUI's objects dropped before the write), in this process. A
thread samples the resident set size (``/proc/self/statm``) every 10 ms; each step of the
mapping (the functions ``map_cells_to_space`` calls, wrapped here) is labelled, and the peak RSS
seen during each step is recorded with the step's seconds. Appends one JSON object to
``docs/bench/section_memory.json`` (a JSON list) unless ``--no-save``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

OUT = common.BENCH_OUT / "section_memory.json"
PAGE = os.sysconf("SC_PAGE_SIZE")


class Sampler:
    """Peak RSS per labelled step, sampled by a thread."""

    def __init__(self, every: float = 0.01) -> None:
        self.every = every
        self.step = "start"
        self.peaks: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        self.order: list[str] = []
        self._t = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE

    def _run(self) -> None:
        while not self._stop.is_set():
            self._note()
            time.sleep(self.every)

    def _note(self) -> None:
        r = self.rss()
        step = self.step
        if r > self.peaks.get(step, 0):
            self.peaks[step] = r

    def enter(self, step: str) -> str:
        self._note()
        now = time.perf_counter()
        prev = self.step
        self.seconds[prev] = self.seconds.get(prev, 0.0) + now - self._t
        self._t = now
        if step not in self.order:
            self.order.append(step)
        # progress on stderr: the step ended, its peak so far, the process's peak
        print(
            f"[{time.strftime('%H:%M:%S')}] {prev}: peak {self.peaks.get(prev, 0) / 1024**3:.3f} "
            f"GiB, {self.seconds[prev]:.1f} s; -> {step}",
            file=sys.stderr,
            flush=True,
        )
        self.step = step
        self._note()
        return prev

    def stop(self) -> None:
        self.enter("end")
        self._stop.set()
        self._thread.join()

    def table(self) -> list[dict[str, Any]]:
        return [
            {
                "step": s,
                "peak_rss_gib": round(self.peaks.get(s, 0) / 1024**3, 3),
                "seconds": round(self.seconds.get(s, 0.0), 2),
            }
            for s in self.order
        ]


def wrap(sampler: Sampler, module: Any, name: str, step: str) -> None:
    """Label the calls of ``module.name`` as ``step`` (nested calls: the outer label returns)."""
    fn: Callable[..., Any] = getattr(module, name)

    def labelled(*args: Any, **kwargs: Any) -> Any:
        prev = sampler.enter(step)
        try:
            return fn(*args, **kwargs)
        finally:
            sampler.enter(f"{prev}" if prev != "start" else "other")

    setattr(module, name, labelled)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="folder with reference.h5ad and spatial.h5ad")
    p.add_argument("--path", choices=("cli", "gui", "both"), default="cli")
    p.add_argument("--out", default=None, help="the CLI path's output .h5ad (default: a temp)")
    p.add_argument("--no-save", action="store_true")
    p.add_argument("--note", default="")
    args = p.parse_args(argv)

    from napari_spatial_impute.core import mapping
    from napari_spatial_impute.core.maps import registry

    sampler = Sampler()
    wrap(sampler, mapping, "prepare_problem", "prepare_problem")
    wrap(sampler, mapping, "choose_map", "choose_map")
    wrap(sampler, mapping, "assemble_result", "assemble_result")
    wrap(sampler, mapping, "calibrate_map", "calibrate_map")
    get_map = registry.get_map

    def get_map_labelled(name: str) -> Any:
        kind = get_map(name)

        class Labelled:
            def __getattr__(self, attr: str) -> Any:
                return getattr(kind, attr)

            def build(self, *a: Any, **k: Any) -> Any:
                prev = sampler.enter("build")
                try:
                    return kind.build(*a, **k)
                finally:
                    sampler.enter(prev)

        return Labelled()

    mapping.get_map = get_map_labelled

    from napari_spatial_impute.io.files import read_h5ad

    data = Path(args.data)
    sampler.enter("read")
    spatial = read_h5ad(str(data / "spatial.h5ad"), "spatial")
    reference = read_h5ad(str(data / "reference.h5ad"), "reference")
    sampler.enter("map_other")
    t0 = time.perf_counter()
    result = mapping.map_cells_to_space(reference, spatial)
    t_map = time.perf_counter() - t0
    tmp = None
    if args.path in ("gui", "both"):
        from napari_spatial_impute.core.lazy_result import lazy_result
        from napari_spatial_impute.io.lazy import clear_cache, column
        from napari_spatial_impute.plugin.workers import layers_of_result

        sampler.enter("lazy_result")
        adata = lazy_result(result)
        sampler.enter("layers_of_result")  # the worker's layer data (no viewer)
        _, layers = layers_of_result(adata)
        sampler.enter("read_one_gene")
        column(adata.X, 0)
        sampler.enter("gui_done")
        del adata, layers
        clear_cache()
        gc.collect()  # an AnnData is in reference cycles (its axis arrays point back at it)
    if args.path in ("cli", "both"):
        from napari_spatial_impute.core.export import write_result

        sampler.enter("write_result")
        out = args.out
        if out is None:
            tmp = tempfile.TemporaryDirectory()
            out = os.path.join(tmp.name, "out.h5ad")
        write_result(result, out)
    sampler.stop()
    if tmp is not None:
        tmp.cleanup()
    peak = max(sampler.peaks.values())
    record = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "path": args.path,
        "data": str(data),
        "reference": list(reference.shape),
        "spatial": list(spatial.shape),
        "method": result.params.get("method"),
        "search": result.params.get("search"),
        "n_pairs": result.params.get("n_pairs"),
        "map_s": round(t_map, 1),
        "peak_rss_gib": round(peak / 1024**3, 3),
        "ru_maxrss_gib": round(common.peak_rss_bytes() / 1024**3, 3),
        "load": os.getloadavg(),
        "note": args.note,
        "steps": sampler.table(),
        "timings": {k: round(float(v), 2) for k, v in result.timings.items()},
    }
    print(json.dumps(record, indent=1))
    if not args.no_save:
        rows = json.loads(OUT.read_text()) if OUT.exists() else []
        rows.append(record)
        OUT.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
