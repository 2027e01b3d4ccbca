"""The small per-cell and per-gene parts of a batched run's result, gathered batch by batch.

:class:`Collector` keeps each batch's new ``obs`` columns, ``var`` and run record as they arrive
(the large per-cell arrays go to the output through the batches' staging files,
:mod:`napari_spatial_impute.io.batch_out`) and gives the file's ``obs``, ``var`` and ``uns``,
the same whatever order the batches finish in.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from napari_spatial_impute.core.batches import BatchOutput, SpatialSource, peak_rss_gib

if TYPE_CHECKING:
    from napari_spatial_impute.core.batch_sample import BatchChoice

#: ``var`` columns that differ between batches (stored per batch in ``uns``, their median in ``var``).
PER_BATCH_VAR = ("train_score", "sparsity_sp", "sparsity_diff", "predicted_pearson")


class Collector:
    """The small per-cell and per-gene parts of the result, gathered batch by batch.

    What it gives does not depend on the order the batches arrive in (on a cluster, the order
    they finish): the run's ``var`` and ``uns`` start from the first mapped batch of the plan,
    per-batch tables are in plan order, and a categorical column's categories are those of every
    batch when all have the same (the reference's cluster order), else their union, sorted.
    """

    def __init__(self, source: SpatialSource, genes: list[str]) -> None:
        self.source = source
        self.n = source.adata.n_obs
        self.genes = genes
        #: Per-cell values; for a categorical column, each cell's code among its batch's categories.
        self.columns: dict[str, np.ndarray] = {}
        #: Categorical column -> batch index -> that batch's categories.
        self.categories: dict[str, dict[int, list[str]]] = {}
        self.rows: dict[int, np.ndarray] = {}
        self.names: dict[int, str] = {}
        self.per_gene: dict[int, pd.DataFrame] = {}
        self.infos: dict[int, dict[str, Any]] = {}

    def add(self, output: BatchOutput) -> None:
        if output.status != "mapped" or output.obs is None:
            return
        rows = output.rows
        for name, col in output.obs.items():
            if isinstance(col.dtype, pd.CategoricalDtype):
                cats = self.categories.setdefault(str(name), {})
                cats[output.index] = [str(c) for c in col.cat.categories]
                target = self.columns.setdefault(str(name), np.full(self.n, -1, dtype=np.int64))
                target[rows] = col.cat.codes.to_numpy()
            else:
                values = col.to_numpy()
                if str(name) not in self.columns:
                    fill = np.nan if values.dtype.kind == "f" else -1
                    self.columns[str(name)] = np.full(self.n, fill, dtype=values.dtype)
                self.columns[str(name)][rows] = values
        self.rows[output.index] = rows
        self.names[output.index] = output.name
        if output.var is not None:
            self.per_gene[output.index] = output.var
        self.infos[output.index] = output.info

    def _categorical(self, name: str) -> pd.Categorical:
        """A categorical column over all cells, its categories in a fixed order."""
        per_batch = self.categories[name]
        lists = [per_batch[i] for i in sorted(per_batch)]
        same = all(cats == lists[0] for cats in lists)
        categories = lists[0] if same else sorted(set().union(*lists))
        position = {c: i for i, c in enumerate(categories)}
        local = self.columns[name]
        codes = np.full(self.n, -1, dtype=np.int64)
        for index, cats in per_batch.items():
            rows = self.rows[index]
            if not cats:
                continue
            lookup = np.asarray([position[c] for c in cats], dtype=np.int64)
            batch_codes = local[rows]
            codes[rows] = np.where(batch_codes >= 0, lookup[np.maximum(batch_codes, 0)], -1)
        return pd.Categorical.from_codes(codes, categories=pd.Index(categories))  # type: ignore[arg-type]

    def obs(self) -> pd.DataFrame:
        obs = self.source.obs.copy()
        for name, values in self.columns.items():
            obs[name] = self._categorical(name) if name in self.categories else values
        return obs

    def _frames(self) -> list[pd.DataFrame]:
        """Each mapped batch's ``var``, in plan order."""
        return [self.per_gene[i] for i in sorted(self.per_gene)]

    def var(self) -> pd.DataFrame:
        """The first mapped batch's ``var`` (in plan order); per-batch scores as their median over
        the batches, ``is_training`` when the gene trained any batch (each batch's values:
        :meth:`per_batch`)."""
        frames = self._frames()
        var = frames[0].copy()
        var["is_training"] = np.any([f["is_training"].to_numpy(bool) for f in frames], axis=0)
        for col in PER_BATCH_VAR:
            if col in var:
                stacked = np.vstack([f[col].to_numpy(np.float64) for f in frames])
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN genes stay NaN
                    var[col] = np.nanmedian(stacked, axis=0)
        return var

    def per_batch(self) -> dict[str, pd.DataFrame]:
        """Genes x batches (plan order) of each per-batch ``var`` column (a column per batch: a
        file stores a table column by column, and an atlas has far fewer batches than genes)."""
        out = {}
        order = sorted(self.per_gene)
        for col in PER_BATCH_VAR:
            if all(col in self.per_gene[i] for i in order):
                out[col] = pd.DataFrame(
                    {self.names[i]: self.per_gene[i][col].to_numpy(np.float64) for i in order},
                    index=pd.Index(self.genes, name="gene"),
                )
        return out

    def uns(
        self,
        table: pd.DataFrame,
        batch_key: str,
        seconds: float,
        n_workers: int,
        extra: dict[str, Any] | None,
        chosen: BatchChoice | None = None,
        timings: dict[str, float] | None = None,
        calibrated_once: bool = False,
    ) -> dict[str, Any]:
        from napari_spatial_impute.io.schema import UNS_KEY

        first = self.infos[min(self.infos)]  # the first mapped batch of the plan
        info = {k: v for k, v in first.items() if k not in ("timings",)}
        mapped = table[table["status"] == "mapped"]
        info["training_score"] = float(np.nanmean(mapped["training_score"].to_numpy()))
        info["timings"] = {"total_s": float(seconds), **(timings or {})}
        if chosen is not None:  # every batch made the map chosen once
            info["params"] = {**info.get("params", {}), "map_choice": chosen.describe()}
            info["map_choice"] = chosen.record()
            info["timings"]["choice_s"] = float(chosen.seconds)
        info["batch_key"] = batch_key
        info["batches"] = {
            "table": table.reset_index().astype({"reason": str, "worker": str}),
            "workers": int(n_workers),
            "client_peak_rss_gib": peak_rss_gib(),
            "client_cpu_s": client_cpu_s(),
            "runs": {str(i): self.infos[int(b)] for i, b in enumerate(mapped["index"])},
            **self.per_batch(),
        }
        if calibrated_once and "uncertainty" in info:
            info["uncertainty"] = {
                **info["uncertainty"],
                "scope": "calibrated once for all batches, on the cells the map was chosen on",
            }
        if extra:
            info.update(extra)
        return {UNS_KEY: info}


def client_cpu_s() -> float:
    """CPU seconds (user and system) of this process so far, its children not counted."""
    try:
        import resource

        use = resource.getrusage(resource.RUSAGE_SELF)
        return float(use.ru_utime + use.ru_stime)
    except (ImportError, OSError):
        return float("nan")
