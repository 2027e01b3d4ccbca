"""Command line: ``napari-spatial-impute map | evaluate | demo``.

Runs the same API as a notebook. Errors from bad input print one line and exit with status 2;
nothing is written on failure (outputs are written through a temporary file and a rename).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from napari_spatial_impute._errors import (
    CommittedInterrupt,
    InputError,
    InputWarning,
    MappingCancelled,
)

PROG = "napari-spatial-impute"


#: What the command line adds to a setting's help (MappingSettings' help is for every front end).
_CLI_NOTES = {
    "genes": "; on the command line a file of gene names, or names separated by commas",
}
#: Settings that ``evaluate`` does not take: the cross-validation chooses the training genes.
_NOT_EVALUATED = ("genes", "n_markers")


def _add_mapping_options(
    p: argparse.ArgumentParser,
    epochs_default: int = 1000,
    skip: Sequence[str] = (),
    defaults: dict[str, Any] | None = None,
) -> None:
    """``--reference``, ``--spatial`` and one ``--kebab-case`` option per mapping setting.

    The settings' options, types, choices, defaults and help all come from
    :class:`~napari_spatial_impute.core.settings.MappingSettings`; ``defaults`` replaces the
    default of some (``evaluate``'s ``--transform auto``).
    """
    from napari_spatial_impute.core.settings import setting_specs

    p.add_argument(
        "--reference", "-r", required=True, help="reference .h5ad (single cells, all genes)"
    )
    p.add_argument(
        "--spatial",
        "-s",
        required=True,
        help="spatial .h5ad with obsm['spatial'], or a SpatialData .zarr store",
    )
    p.add_argument(
        "--table", default=None, help="SpatialData store: the cell table (default: its only one)"
    )
    p.add_argument(
        "--coordinate-system",
        default=None,
        help="SpatialData store: where cells are placed (default: global, else the only one)",
    )
    for spec in setting_specs():
        if spec.name in skip:
            continue
        flag = "--" + spec.name.replace("_", "-")
        default = epochs_default if spec.name == "epochs" else spec.default
        default = (defaults or {}).get(spec.name, default)
        help_text = spec.help + _CLI_NOTES.get(spec.name, "")
        if spec.type is bool:  # --uncertainty / --no-uncertainty
            p.add_argument(
                flag,
                dest=spec.name,
                action=argparse.BooleanOptionalAction,
                default=default,
                help=help_text.replace("%", "%%") + " (default: %(default)s)",
            )
            continue
        if default is not None:
            help_text += " (default: %(default)s)"
        elif spec.unset:
            help_text += f" (default: {spec.unset})"
        p.add_argument(
            flag,
            dest=spec.name,
            type=spec.type,
            default=default,
            choices=None if spec.names_ok else spec.choices,
            help=help_text.replace("%", "%%").replace("%%(default)s", "%(default)s"),
        )


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error in one line (the problem, and where the help is)."""

    def error(self, message: str) -> Any:
        raise InputError(f"{message} (see {self.prog} --help)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Map a single-cell reference onto spatial cells (the ensemble map by "
        "default, or a Tangram map), impute every reference gene in space and project reference "
        "clusters.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    m = sub.add_parser("map", help="learn the mapping and write the imputed spatial data")
    _add_mapping_options(m)
    m.add_argument(
        "--out",
        "-o",
        default=None,
        help="output .h5ad, or a new .zarr (a copy of the --spatial store with the results "
        "table); default for a store: the results table is added to the store itself",
    )
    m.add_argument(
        "--result-table",
        default=None,
        help="SpatialData store: name of the results table (default: spatial_impute)",
    )
    m.add_argument(
        "--overwrite",
        action="store_true",
        help="SpatialData store: replace a results table of that name written earlier",
    )
    m.add_argument(
        "--impute",
        default=None,
        help="impute only these genes (file of names or comma-separated); default all",
    )
    m.add_argument(
        "--projection",
        choices=["auto", "neighbours", "probabilistic", "argmax"],
        default="auto",
        help="imputation: auto (the map's own: W S for the ensemble map, M^T S for a Tangram "
        "map), neighbours (W S, ensemble map only), probabilistic (M^T S of the map) or argmax "
        "(the best-mapped reference cell)",
    )
    m.add_argument("--fov-key", default=None, help="spatial obs column with the field of view")
    m.add_argument(
        "--sample-key",
        default=None,
        help="spatial obs column with the sample/section (each shown as its own layers, side by "
        "side when they share coordinates); default: a column named sample, section, slice...; "
        "'' for none",
    )
    b = m.add_argument_group(
        "batches (atlas scale)",
        "map each section on its own, on a Dask cluster, writing the output batch by batch",
    )
    b.add_argument(
        "--batch-key",
        default=None,
        help="spatial obs column naming each cell's section/slice/sample: each maps against the "
        "reference on its own; --out is then a new .h5ad or an AnnData .zarr",
    )
    b.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes of the local Dask cluster (default: one per core, at most one per "
        "batch; 0: run the batches in this process)",
    )
    b.add_argument(
        "--memory-limit",
        default=None,
        help="memory per worker, e.g. 4GB (default: Dask's share of the RAM)",
    )
    b.add_argument(
        "--scheduler",
        default=None,
        help="address of a running Dask scheduler (tcp://host:8786) instead of a local cluster; "
        "its workers need this package and the input files' paths",
    )

    e = sub.add_parser("evaluate", help="k-fold leave-genes-out cross-validation")
    # scored values: raw counts normalised and log1p'd (Pearson on raw counts rewards cell size)
    _add_mapping_options(
        e, epochs_default=1000, skip=_NOT_EVALUATED, defaults={"transform": "auto"}
    )
    e.add_argument("--folds", type=int, default=10)
    e.add_argument(
        "--fold-order",
        choices=["random", "sorted"],
        default="random",
        help="random: genes permuted with --seed; sorted: genes sorted by name, consecutive "
        "blocks (Li et al. 2022's KFold without shuffling) (default: %(default)s)",
    )
    e.add_argument("--out", "-o", required=True, help="output .csv (one row per held-out gene)")
    e.add_argument(
        "--projection",
        choices=["auto", "neighbours", "probabilistic", "argmax"],
        default="auto",
        help="how held-out genes are imputed (default: the map's own projection)",
    )

    d = sub.add_parser("demo", help="map the bundled MERFISH hypothalamus pair (offline)")
    d.add_argument("--out", "-o", default=None, help="output .h5ad (default: a temporary folder)")
    d.add_argument(
        "--method",
        choices=["auto", "ensemble", "tangram"],
        default="auto",
        help="the map: ensemble (default via auto, no training) or tangram (trained for --epochs)",
    )
    d.add_argument("--epochs", type=int, default=500, help="Tangram map only (default: 500)")
    d.add_argument(
        "--folds", type=int, default=10, help="folds of the cross-validation summary (0: skip)"
    )
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--device", default="cpu")
    d.add_argument("--view", action="store_true", help="open napari with the result and the plugin")
    return parser


class _Progress:
    """A tqdm bar on a terminal (epochs, score); silent when stderr is not a terminal or when
    nothing is trained (``total`` 0: the ensemble map)."""

    def __init__(self, total: int, desc: str) -> None:
        self.bar = None
        if total > 0 and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="epoch", leave=False, dynamic_ncols=True)

    def __call__(self, info: Any) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if info.epoch % 10 == 0 or info.epoch == info.n_epochs:
                self.bar.set_postfix(score=f"{info.score:.3f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _trains(args: argparse.Namespace) -> bool:
    """Whether the command's map is trained (a Tangram map) rather than the ensemble."""
    from napari_spatial_impute.core.settings import resolve_map_method

    return (
        resolve_map_method(getattr(args, "method", "auto"), getattr(args, "mode", "cells"))
        == "tangram"
    )


def _map_summary(result: Any) -> str:
    """The map that ran: how it was chosen, its training-gene score, how training ended, its time.

    With ``--method auto`` the first line says which map the held-out training genes chose and
    the figures it chose by. A Tangram map also says how many epochs ran and why training
    stopped (a plateau of the training score, or every epoch), and, when ``--engine auto`` chose
    the engine, the measured costs it chose by.
    """
    from napari_spatial_impute.core.settings import describe_stop

    params, t = result.params, result.timings
    lines = [str(params["map_choice"])] if params.get("map_choice") else []
    if params.get("method") == "ensemble":
        lines.append(
            f"ensemble map (no training): training-gene score {result.training_score:.3f} "
            f"({t.get('build_s', 0.0):.1f} s matching cells, {t['total_s']:.1f} s in all)"
        )
    else:
        lines.append(
            f"Tangram map: training score {result.training_score:.3f}, {describe_stop(params)}, "
            f"{params['engine']} engine ({t['train_s']:.1f} s training, {t['total_s']:.1f} s in "
            "all)"
        )
        if params.get("engine_note"):
            lines.append(str(params["engine_note"]))
    return "\n".join(lines)


def _check_projection(args: argparse.Namespace) -> None:
    """Refuse, before any work, ``--projection neighbours`` for a Tangram map (it has no W)."""
    if getattr(args, "projection", "auto") != "neighbours":
        return
    from napari_spatial_impute._errors import InputError

    if _trains(args):
        raise InputError(
            "--projection neighbours needs the ensemble map, but a Tangram map will be made "
            "(--method tangram, or clusters/constrained mode); use --projection auto."
        )
    if getattr(args, "method", "auto") == "auto":
        raise InputError(
            "--projection neighbours needs the ensemble map, but --method auto may choose the "
            "Tangram map; add --method ensemble, or use --projection auto (the chosen map's own)."
        )


def _mapping_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of ``map_cells_to_space`` given on the command line, checked.

    Every setting the command has an option for (see :func:`_add_mapping_options`); ``--genes``
    may name a file. Bad settings are refused here, before any data is read.
    """
    from napari_spatial_impute.core.settings import MappingSettings, setting_names

    _check_projection(args)
    kwargs = {name: getattr(args, name) for name in setting_names() if hasattr(args, name)}
    if "genes" in kwargs:
        kwargs["genes"] = _gene_arg(kwargs["genes"])
    MappingSettings(**kwargs).validate()
    return kwargs


def _check_out(path: str, suffix: str, inputs: Sequence[str | None] = ()) -> Path:
    """Refuse, before any work, an output that cannot be written or would replace an input."""
    out = Path(path)
    if out.suffix.lower() != suffix:
        raise InputError(f"output {path!r} must end in {suffix}.")
    if out.is_dir():
        raise InputError(f"output {path!r} is an existing folder; give a file name for --out.")
    from napari_spatial_impute.io.files import check_output_folder

    check_output_folder(out, "choose another --out")
    for given in inputs:
        if given and _same_file(out, Path(given)):
            raise InputError(
                f"output {path!r} is the input file {given!r}; writing it would replace your data: "
                "choose another --out."
            )
    return out


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (also through symlinks, hard links or other spellings)."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def _gene_arg(value: str | None, one_gene: bool = False) -> str | list[str] | None:
    from napari_spatial_impute.core.genes import read_gene_list

    if value is None or value in ("overlap", "markers"):
        return value
    if os.path.exists(value):
        return read_gene_list(value)
    if "," in value:
        return [g for g in value.split(",") if g]
    if one_gene and os.sep not in value and not value.lower().endswith((".txt", ".csv", ".tsv")):
        return [value]  # --impute GENE
    raise InputError(f"gene list {value!r} is neither 'overlap', 'markers' nor an existing file.")


def _spatial_is_zarr(args: argparse.Namespace) -> bool:
    """Whether ``--spatial`` is a SpatialData store, or a ``.zarr`` folder read as one (which
    then says in one line why it is not a store)."""
    from napari_spatial_impute.io.sdata import is_store

    folder = Path(args.spatial)
    return is_store(folder) or (folder.is_dir() and folder.suffix.lower() == ".zarr")


def _read_spatial(args: argparse.Namespace) -> Any:
    """The spatial input: an ``.h5ad`` file or a SpatialData store (``--table``, ``--coordinate-system``)."""
    from napari_spatial_impute.io.files import read_h5ad
    from napari_spatial_impute.io.sdata import read_spatial

    if _spatial_is_zarr(args):
        return read_spatial(args.spatial, args.table, args.coordinate_system)
    if args.table is not None or args.coordinate_system is not None:
        raise InputError(
            "--table and --coordinate-system are for a SpatialData store; --spatial "
            f"{args.spatial!r} is not one."
        )
    return read_h5ad(args.spatial, "spatial")


def _map_target(args: argparse.Namespace) -> tuple[Path | None, Path | None, str]:
    """``(h5ad output, store to write, its results table)`` of ``map``, checked before any work."""
    from napari_spatial_impute.io.schema import RESULT_TABLE
    from napari_spatial_impute.io.sdata import is_store, open_store
    from napari_spatial_impute.io.sdata_write import check_table_target

    inputs = [args.reference, args.spatial, args.genes, args.impute]
    name = RESULT_TABLE if args.result_table is None else args.result_table
    store = args.spatial if is_store(args.spatial) else None
    if store is None and _spatial_is_zarr(args):
        open_store(args.spatial)  # a .zarr folder that is not a store: one line saying so
    if args.out is not None and not str(args.out).lower().rstrip("/").endswith(".zarr"):
        if args.result_table is not None or args.overwrite:
            raise InputError("--result-table and --overwrite are for a .zarr output; --out is not.")
        return _check_out(args.out, ".h5ad", inputs), None, name
    if store is None:
        if not os.path.exists(args.spatial):
            raise InputError(f"spatial input {args.spatial!r} does not exist; check the path.")
        if args.out is None:
            raise InputError("--out is required: give the output .h5ad.")
        raise InputError(
            f"--out {args.out!r} is a .zarr store, but --spatial is not a SpatialData store; "
            "write .h5ad."
        )
    return None, check_table_target(store, name, out=args.out, overwrite=args.overwrite), name


def cmd_map(args: argparse.Namespace) -> int:
    from napari_spatial_impute.core.mapping import map_cells_to_space
    from napari_spatial_impute.io.files import find_fov_key, find_sample_key, read_h5ad

    if args.batch_key is not None:
        return _map_batches(args)
    if args.workers is not None or args.memory_limit is not None or args.scheduler is not None:
        raise InputError(
            "--workers, --memory-limit and --scheduler run batches; give --batch-key (the "
            "spatial obs column with each cell's section)."
        )
    out, store_out, table_name = _map_target(args)
    kwargs = _mapping_kwargs(args)
    if store_out is not None:
        from napari_spatial_impute.io.sdata_write import check_cluster_column

        check_cluster_column(kwargs.get("cluster_key"))
    spatial = _read_spatial(args)  # a damaged store is refused before the reference is read
    reference = read_h5ad(args.reference, "reference")
    fov = find_fov_key(spatial, args.fov_key)
    sample = (
        None if args.sample_key == "" else find_sample_key(spatial, fov, args.sample_key or None)
    )
    impute = _gene_arg(args.impute, one_gene=True) if args.impute else None
    if isinstance(impute, list):
        from napari_spatial_impute.core.genes import resolve_gene_names

        resolve_gene_names(reference.var_names, impute)  # refuse unknown genes before the mapping
    bar = _Progress(args.epochs if _trains(args) else 0, "mapping")
    try:
        result = map_cells_to_space(reference, spatial, callback=bar, **kwargs)
    finally:
        bar.close()
    from napari_spatial_impute.core.export import write_result, write_result_to_store

    extra = {"fov_key": fov or "", "sample_key": sample or ""}
    genes = impute if isinstance(impute, list) else None
    if out is not None:
        adata = write_result(result, out, genes=genes, method=args.projection, extra_uns=extra)
    else:
        adata = write_result_to_store(
            result,
            args.spatial,
            table_name,
            out=args.out,
            overwrite=args.overwrite,
            genes=genes,
            method=args.projection,
            extra_uns=extra,
        )
        out = store_out
    where = f"{out}" if store_out is None else f"table {table_name!r} of {out}"
    try:
        _print_map_report(result, adata, where)
    except SystemExit as exc:  # SIGTERM while reporting: the output is complete
        raise CommittedInterrupt(
            f"stopped after the result was written to {where}", signum=15
        ) from exc
    except KeyboardInterrupt:
        raise CommittedInterrupt(f"stopped after the result was written to {where}") from None
    return 0


def _print_map_report(result: Any, adata: Any, where: str) -> None:
    print(result.genes.summary())
    print(
        result.params.get("values_note")
        or f"values: reference {result.params['reference_values']}, spatial "
        f"{result.params['spatial_values']}; transform applied: {result.params['transform']}"
    )
    print(_map_summary(result))
    n_clusters = (
        adata.obsm["cluster_probabilities"].shape[1] if "cluster_probabilities" in adata.obsm else 0
    )
    print(
        f"wrote {adata.n_obs} spatial cells x {adata.n_vars} imputed genes"
        + (f" and {n_clusters} cluster probabilities" if n_clusters else "")
        + f" to {where}"
    )


def _batch_out(args: argparse.Namespace) -> Path:
    from napari_spatial_impute.io.batch_out import is_zarr_path, refuse_dangling_link
    from napari_spatial_impute.io.files import check_output_folder

    if args.out is None:
        raise InputError(
            "--out is required with --batch-key: give a new .h5ad or .zarr (AnnData) file."
        )
    if args.result_table is not None or args.overwrite:
        raise InputError(
            "--result-table and --overwrite write into a SpatialData store; with --batch-key the "
            "results go to --out (.h5ad or an AnnData .zarr)."
        )
    refuse_dangling_link(args.out, "choose another --out")
    if not is_zarr_path(args.out):
        return _check_out(args.out, ".h5ad", [args.reference, args.spatial, args.genes])
    out = Path(args.out)
    if os.path.lexists(out):
        raise InputError(f"output {args.out!r} exists; choose another --out or remove it.")
    check_output_folder(out, "choose another --out")
    return out


def _map_batches(args: argparse.Namespace) -> int:
    """``map --batch-key``: each section on its own (:func:`~napari_spatial_impute.core.batch_run.map_batches`),
    an ``.h5ad`` spatial file read batch by batch. With ``--method auto`` one line first says which
    map was chosen once for all the sections and on which cells; then one line per finished batch."""
    import logging

    from napari_spatial_impute.core.batch_run import BatchProgress, map_batches
    from napari_spatial_impute.core.batch_run import log as batch_log
    from napari_spatial_impute.core.cluster import check_cluster_options, parse_memory
    from napari_spatial_impute.io.files import find_fov_key, find_sample_key, read_h5ad

    out = _batch_out(args)
    kwargs = _mapping_kwargs(args)
    parse_memory(args.memory_limit)  # a bad size is refused before any data is read
    if args.workers is not None and args.workers < 0:
        raise InputError(f"--workers must be 0 (this process) or more, got {args.workers}.")
    if args.scheduler is not None and (args.workers is not None or args.memory_limit):
        raise InputError(
            "--workers and --memory-limit size a local cluster; a --scheduler's cluster has its "
            "own workers: give one or the other."
        )
    check_cluster_options(args.workers, args.scheduler, args.memory_limit)
    reference = read_h5ad(args.reference, "reference")
    spatial: Any
    if _spatial_is_zarr(args):
        from napari_spatial_impute.io.sdata import read_spatial

        spatial = read_spatial(args.spatial, args.table, args.coordinate_system)
        obs_source = spatial
    else:
        if args.table is not None or args.coordinate_system is not None:
            raise InputError(
                "--table and --coordinate-system are for a SpatialData store; --spatial "
                f"{args.spatial!r} is not one."
            )
        from napari_spatial_impute.core.batches import SpatialSource

        source = SpatialSource(args.spatial)
        spatial, obs_source = source.adata, source.light()
    fov = find_fov_key(obs_source, args.fov_key)
    sample = (
        None if args.sample_key == "" else find_sample_key(obs_source, fov, args.sample_key or None)
    )
    impute = _gene_arg(args.impute, one_gene=True) if args.impute else None
    seen: set[str] = set()

    def report(p: BatchProgress) -> None:
        print(p.describe(), flush=True)

    class _Print(logging.Handler):  # the map chosen once, before any batch
        def emit(self, record: logging.LogRecord) -> None:
            print(record.getMessage(), flush=True)

    handler, level = _Print(logging.INFO), batch_log.level
    batch_log.addHandler(handler)
    batch_log.setLevel(logging.INFO)
    try:
        run = map_batches(
            reference,
            spatial,
            args.batch_key,
            out,
            impute=impute if isinstance(impute, list) else None,
            projection=args.projection,
            workers=args.workers,
            scheduler=args.scheduler,
            memory_limit=args.memory_limit,
            progress=report,
            extra_uns={"fov_key": fov or "", "sample_key": sample or ""},
            **kwargs,
        )
    finally:
        batch_log.removeHandler(handler)
        batch_log.setLevel(level)
    try:
        _print_batch_report(run, out, seen)
    except SystemExit as exc:  # SIGTERM while reporting: the output is complete
        raise CommittedInterrupt(f"stopped after the result was written to {out}", 15) from exc
    except KeyboardInterrupt:
        raise CommittedInterrupt(f"stopped after the result was written to {out}") from None
    return 0


def _print_batch_report(run: Any, out: Path, seen: set[str]) -> None:
    for name, text in run.warnings:
        if text not in seen:
            seen.add(text)
            print(f"{PROG}: warning: batch {name!r}: {text}", file=sys.stderr)
    table = run.batches
    mapped = int((table["status"] == "mapped").sum())
    print(
        f"mapped {mapped} of {len(table)} batches ({int(table['n_cells'].sum()):,} cells) on "
        f"{run.workers} worker{'s' if run.workers != 1 else ''} in {run.seconds:.1f} s; "
        f"median training score {table['training_score'].median():.3f}"
    )
    for skipped, row in run.skipped.iterrows():
        print(f"skipped batch {str(skipped)!r} ({row['n_cells']:,} cells): {row['reason']}")
    print(f"wrote {out}")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from napari_spatial_impute.core.evaluate import cross_validate, summarize_cv
    from napari_spatial_impute.core.preprocess import describe_transform
    from napari_spatial_impute.io.files import read_h5ad

    out = _check_out(args.out, ".csv", [args.reference, args.spatial])
    kwargs = _mapping_kwargs(args)
    reference = read_h5ad(args.reference, "reference")
    spatial = _read_spatial(args)
    scored = describe_transform(reference, spatial, kwargs["transform"])
    bar = _Progress(args.folds * args.epochs if _trains(args) else 0, "cross-validation")

    def progress(fold: int, n: int, info: Any) -> None:
        if info is not None:
            bar(info)
        elif bar.bar is not None:  # a fold ended, perhaps at a plateau before its last epoch
            bar.bar.n = fold * args.epochs
            bar.bar.refresh()

    try:
        df = cross_validate(
            reference,
            spatial,
            folds=args.folds,
            progress=progress,
            projection=args.projection,
            fold_order=args.fold_order,
            **kwargs,
        )
    finally:
        bar.close()
    _write_csv_atomic(df, out)
    s = summarize_cv(df)
    print(f"values scored (--transform {kwargs['transform']}): {scored}")
    print(
        f"{s['n_genes']} held-out genes in {args.folds} folds: median pearson {s['median_pearson']:.3f}, "
        f"mean {s['mean_pearson']:.3f} ({s['n_nan']} NaN)"
    )
    size, knn = s["median_size_pearson"], s["median_knn_pearson"]
    print(
        f"trivial predictors, same folds: size baseline (each cell's total over the training "
        f"genes) median pearson {size:.3f}; 10-NN (mean of the 10 nearest reference cells) "
        f"{knn:.3f}"
    )
    # "above" at the precision printed: a map that only matches the size baseline is warned of
    if math.isfinite(size) and not round(s["median_pearson"], 3) > round(size, 3):
        fix = (
            "score normalised values with --transform auto"
            if kwargs["transform"] == "none"
            else "check whether the values used as given still carry cell size"
        )
        print(
            f"{PROG}: warning: the median pearson ({s['median_pearson']:.3f}) is not above the "
            f"size baseline's ({size:.3f}): these figures measure cell size more than imputed "
            f"expression; {fix}",
            file=sys.stderr,
        )
    if "mean_coverage_90" in s:
        print(
            f"prediction intervals on held-out genes: 90% covers {100 * s['mean_coverage_90']:.1f}%, "
            f"67% covers {100 * s['mean_coverage_67']:.1f}%; reliability ranking Spearman "
            f"{s.get('reliability_spearman', float('nan')):.2f}"
        )
    elif not _trains(args) and args.projection in ("auto", "neighbours"):
        print(
            "prediction intervals not scored (--uncertainty calibrates each fold's map and "
            "scores them on the held-out genes)"
        )
    print(f"wrote {out}")
    return 0


def _write_csv_atomic(df: Any, out: Path) -> None:
    from napari_spatial_impute.io.files import atomic_output

    with atomic_output(out) as tmp:
        df.to_csv(tmp, index=False)


def cmd_demo(args: argparse.Namespace) -> int:
    from napari_spatial_impute.core.evaluate import cross_validate, summarize_cv
    from napari_spatial_impute.core.export import result_to_anndata
    from napari_spatial_impute.core.mapping import map_cells_to_space
    from napari_spatial_impute.io.datasets import load_merfish_hypothalamus
    from napari_spatial_impute.io.files import write_h5ad_atomic

    if args.out is None:
        folder = Path(tempfile.gettempdir()) / "napari-spatial-impute-demo"
        folder.mkdir(parents=True, exist_ok=True)
        out = folder / "merfish_hypothalamus_imputed.h5ad"
    else:
        out = _check_out(args.out, ".h5ad")
    reference, spatial = load_merfish_hypothalamus()
    print(
        f"bundled MERFISH hypothalamus pair (Moffitt et al. 2018): reference {reference.n_obs} cells, "
        f"spatial {spatial.n_obs} cells, {spatial.n_vars} genes"
    )
    bar = _Progress(args.epochs if _trains(args) else 0, "mapping")
    try:
        result = map_cells_to_space(
            reference,
            spatial,
            method=args.method,
            cluster_key="cell_type",
            epochs=args.epochs,
            seed=args.seed,
            device=args.device,
            callback=bar,
        )
    finally:
        bar.close()
    adata = result_to_anndata(result)
    write_h5ad_atomic(adata, out)
    print(f"imputed {adata.n_vars} genes at {adata.n_obs} cells; {_map_summary(result)}")
    top = adata.obs["cell_type_predicted"].value_counts().head(3)
    print("most common projected cell types: " + ", ".join(f"{k} ({v})" for k, v in top.items()))
    if args.folds:
        cv = cross_validate(
            reference,
            spatial,
            folds=args.folds,
            seed=args.seed,
            method=args.method,
            epochs=args.epochs,
            device=args.device,
        )
        s = summarize_cv(cv)
        print(
            f"{args.folds}-fold leave-genes-out CV: median pearson {s['median_pearson']:.3f}, "
            f"mean {s['mean_pearson']:.3f}"
            + (
                f"; 90% intervals cover {100 * s['mean_coverage_90']:.1f}%"
                if "mean_coverage_90" in s
                else ""
            )
        )
    print(f"wrote {out}")
    if args.view:
        from napari_spatial_impute.plugin.viewer import open_result_in_napari

        open_result_in_napari(out, reference=reference)
    return 0


def _show_input_warning(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    if issubclass(category, InputWarning):
        print(f"{PROG}: warning: {message}", file=sys.stderr)
    else:
        _default_showwarning(message, category, *args, **kwargs)


_default_showwarning = warnings.showwarning


def _terminate_as_exit() -> Any:
    """SIGTERM ends the command as Ctrl-C does (exit 143 after the clean-up: temporary files
    removed, a Dask cluster closed), not at once with worker processes left to complain.
    Returns the handler it replaced (``None`` when it replaced none)."""
    import signal
    import threading

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    if threading.current_thread() is not threading.main_thread():
        return None
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return None
    return signal.signal(signal.SIGTERM, terminate)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-spatial-impute`` command."""
    replaced = _terminate_as_exit()
    try:
        parser = _parser()
        args = parser.parse_args(argv)
        handlers = {"map": cmd_map, "evaluate": cmd_evaluate, "demo": cmd_demo}
        with warnings.catch_warnings():
            warnings.showwarning = _show_input_warning
            warnings.simplefilter("always", InputWarning)
            return handlers[args.command](args)
    except InputError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except CommittedInterrupt as exc:
        print(f"{PROG}: cancelled; {exc}", file=sys.stderr)
        return 128 + exc.signum
    except (MappingCancelled, KeyboardInterrupt):
        print(f"{PROG}: cancelled; nothing written", file=sys.stderr)
        return 130
    except SystemExit as exc:
        if exc.code == 128 + 15:  # SIGTERM (raised before any output was in place)
            print(f"{PROG}: terminated; nothing written", file=sys.stderr)
        raise
    except MemoryError:
        print(
            f"{PROG}: error: ran out of memory; use --mode clusters or fewer cells", file=sys.stderr
        )
        return 2
    finally:
        if replaced is not None:
            import signal

            signal.signal(signal.SIGTERM, replaced)


if __name__ == "__main__":
    raise SystemExit(main())
