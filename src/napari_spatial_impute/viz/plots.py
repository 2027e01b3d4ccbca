"""Matplotlib diagnostics of a result (no Qt, no pyplot: they draw into a given ``Figure``).

* :func:`plot_training_scores`: tangram-sc's ``plot_training_scores`` (score histogram; score vs
  sparsity in the reference, in space, and vs the sparsity difference), one dot per training
  gene, plus the training score per epoch.
* :func:`plot_cell_type_validation`: the seed's per-cell-type check of marker genes, measured
  vs predicted expression level (each min-max normalised over cell types).
* :func:`plot_reliability`: per-gene predicted Pearson, and how well it ranks the genes
  (against a cross-validation's held-out Pearson, or the calibration's inner one).
* :func:`map_choice_of`, :func:`map_choice_text`, :func:`plot_map_choice`: which map
  ``method="auto"`` made and the held-out scores it was chosen on (a sixth training panel).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from napari_spatial_impute.io.schema import UNS_KEY, history_frame, training_genes_frame

MEASURED_COLOR = "#1f77b4"
PREDICTED_COLOR = "#ff7f0e"
#: Colour of the candidate maps that were not chosen.
OTHER_COLOR = "#b0b0b0"
#: Panels of :func:`plot_training_scores` (one more with a map choice, :func:`training_panels`).
TRAINING_PANELS = 5


# ---------------------------------------------------------------------------------------------
# the map choice of method="auto"


@dataclass(frozen=True)
class MapChoiceView:
    """What a result records of ``method="auto"``'s choice (``uns['spatial_impute']['map_choice']``).

    Attributes
    ----------
    chosen
        The map that was made (``"ensemble"`` or ``"tangram"``).
    candidates, scores
        The candidate maps and each one's median Pearson on the held-out training genes (same
        order; empty when no choice was measured).
    size_baseline
        The median Pearson of the held-out genes predicted by the cell's total count alone.
    n_held, n_cells
        Held-out training genes and spatial cells the choice was measured on.
    reason
        Why no choice was made (too few training genes), else ``""``.
    summary
        The core's one line (``"map: ensemble, chosen on 33 held-out ..."``).
    warning
        The weak-imputation warning, else ``""``.
    """

    chosen: str
    candidates: tuple[str, ...] = ()
    scores: tuple[float, ...] = ()
    size_baseline: float = float("nan")
    n_held: int = 0
    n_cells: int = 0
    reason: str = ""
    summary: str = ""
    warning: str = ""

    @property
    def measured(self) -> bool:
        """Whether candidates were scored (a bar per candidate can be drawn)."""
        return bool(self.candidates) and not self.reason


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def map_choice_of(result: ad.AnnData | None) -> MapChoiceView | None:
    """The map choice a result records, or ``None`` (no choice ran: a forced method, another
    mode, an older file). A result with only the one-line ``params['map_choice']`` gives a view
    with that summary and no scores."""
    if result is None:
        return None
    info = result.uns.get(UNS_KEY, {})
    params = info.get("params", {})
    rec = info.get("map_choice")
    if isinstance(rec, dict) and rec.get("chosen"):
        names = tuple(str(n) for n in np.atleast_1d(np.asarray(rec.get("candidates", []))))
        scores = np.atleast_1d(np.asarray(rec.get("inner_median_pearson", []), dtype=np.float64))
        if len(scores) != len(names):
            names, scores = (), np.zeros(0)
        return MapChoiceView(
            chosen=str(_plain(rec["chosen"])),
            candidates=names,
            scores=tuple(float(x) for x in scores),
            size_baseline=float(_plain(rec.get("size_baseline", np.nan))),
            n_held=len(np.atleast_1d(np.asarray(rec.get("held_genes", [])))),
            n_cells=int(_plain(rec.get("n_cells", 0))),
            reason=str(_plain(rec.get("reason", ""))),
            summary=str(_plain(rec.get("summary", ""))),
            warning=str(_plain(rec.get("warning", ""))),
        )
    summary = str(_plain(params.get("map_choice", "")) or "")
    if summary:
        return MapChoiceView(chosen=str(_plain(params.get("method", ""))), summary=summary)
    return None


def _score(x: float) -> str:
    return f"{x:.3f}" if np.isfinite(x) else "n/a"


def map_choice_text(choice: MapChoiceView | None) -> str:
    """A few lines on the choice for the Diagnostics tab (``""`` without one): each candidate's
    held-out median Pearson (the chosen one marked) and the size baseline."""
    if choice is None:
        return ""
    if not choice.measured:
        return choice.summary or f"map: {choice.chosen}"
    scores = ", ".join(
        f"{name} {_score(score)}" + (" (chosen)" if name == choice.chosen else "")
        for name, score in zip(choice.candidates, choice.scores, strict=True)
    )
    return (
        f"Map chosen on {choice.n_held} held-out training genes ({choice.n_cells:,} cells): "
        f"median Pearson {scores}; size baseline {_score(choice.size_baseline)} (each held-out "
        "gene predicted by the cell's total count alone)."
    )


def training_panels(result: ad.AnnData | None) -> int:
    """Panels :func:`plot_training_scores` draws for ``result``: five, six with both a map
    choice and a score per epoch (without epochs the choice takes the epoch panel)."""
    if result is None:
        return TRAINING_PANELS
    choice = map_choice_of(result)
    measured = choice is not None and choice.measured
    return TRAINING_PANELS + int(measured and _score_history(result) is not None)


def plot_map_choice(ax: Any, choice: MapChoiceView) -> None:
    """Bars of each candidate's held-out median Pearson (the chosen one coloured), with the size
    baseline as a dashed line, into one matplotlib ``Axes``."""
    x = np.arange(len(choice.candidates))
    heights = np.nan_to_num(np.asarray(choice.scores, dtype=np.float64), nan=0.0)
    colors = [MEASURED_COLOR if n == choice.chosen else OTHER_COLOR for n in choice.candidates]
    ax.bar(x, heights, 0.6, color=colors)
    for xi, score in zip(x, choice.scores, strict=True):
        ax.annotate(
            _score(score),
            (xi, max(float(np.nan_to_num(score)), 0.0)),
            xytext=(0, 2),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    values = [*heights, 0.0]
    if np.isfinite(choice.size_baseline):
        ax.axhline(
            choice.size_baseline,
            color=PREDICTED_COLOR,
            ls="--",
            lw=1.2,
            label=f"size baseline {choice.size_baseline:.3f}",
        )
        values.append(choice.size_baseline)
        ax.legend(fontsize=7, loc="upper right")
    ax.set_xticks(x)
    ax.set_xticklabels(
        [f"{n} (chosen)" if n == choice.chosen else n for n in choice.candidates], fontsize=8
    )
    low, high = min(values), max(values)
    ax.set_ylim(min(0.0, low * 1.2), max(high * 1.35, 0.05))
    ax.set_ylabel("median held-out Pearson")
    ax.set_title(f"map choice ({choice.n_held} held-out genes)")


def panel_grid(fig: Figure, n: int, ncols: int | None = None, sharey: bool = False) -> np.ndarray:
    """``n`` axes in rows of ``ncols`` (default: one row when the figure is wide, else 3 columns);
    axes past ``n`` in the last row are switched off. Returns all axes, row by row."""
    if ncols is None:
        ncols = n if fig.get_figwidth() > 2 * fig.get_figheight() else min(3, n)
    ncols = max(1, min(int(ncols), n))
    nrows = -(-n // ncols)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False, sharey=sharey).ravel())
    for extra in axes[n:]:
        extra.set_axis_off()
    return axes


def plot_training_scores(
    fig: Figure, result: ad.AnnData, bins: int = 20, alpha: float = 0.5, ncols: int | None = None
) -> list:
    """Draw the training-score panels; every scatter is pickable (``artist.genes`` names its dots).

    tangram-sc's four panels, then the score per epoch and, when ``method="auto"`` chose the map,
    the choice (:func:`plot_map_choice`); a map that trained nothing has no epoch panel then, the
    choice takes its place (:func:`training_panels`). ``ncols``: panels per row (default: all in
    a row in a wide figure, else three).

    Returns
    -------
    The scatter artists (one per sparsity panel).
    """
    fig.clear()
    df = training_genes_frame(result)
    choice = map_choice_of(result)
    axes = panel_grid(fig, training_panels(result), ncols)
    score = df["train_score"].to_numpy(dtype=np.float64)
    ax = axes[0]
    ax.hist(
        score[np.isfinite(score)], bins=bins, alpha=alpha, color=MEASURED_COLOR, edgecolor="white"
    )
    ax.set_title("training scores")
    ax.set_xlabel("score")
    ax.set_ylabel("genes")
    scatters = []
    for ax, col, title in zip(
        axes[1:4],
        ("sparsity_sc", "sparsity_sp", "sparsity_diff"),
        (
            "score vs sparsity (reference)",
            "score vs sparsity (spatial)",
            "score vs sparsity difference",
        ),
        strict=True,
    ):
        sc = ax.scatter(df[col], score, s=12, alpha=alpha, color=MEASURED_COLOR, picker=5)
        sc.genes = list(map(str, df.index))  # type: ignore[attr-defined]
        ax.set_title(title)
        ax.set_xlabel(col.replace("_", " "))
        ax.set_ylabel("score")
        scatters.append(sc)
    hist = _score_history(result)
    ensemble = result.uns.get(UNS_KEY, {}).get("params", {}).get("method") == "ensemble"
    rest = list(axes[4:])
    if hist is not None or choice is None or not choice.measured:  # the epoch panel
        ax = rest.pop(0)
        if hist is not None:
            ax.plot(np.arange(1, len(hist) + 1), hist, color=MEASURED_COLOR)
            ax.set_title(f"score per epoch (last {hist[-1]:.3f})")
            ax.set_xlabel("epoch")
            ax.set_ylabel("score")
        else:
            ax.set_axis_off()
            if ensemble:  # the ensemble map trains nothing
                ax.text(
                    0.5, 0.5, "ensemble map:\nno epochs", ha="center", va="center", color="grey"
                )
    if choice is not None and choice.measured:
        plot_map_choice(rest[0], choice)
    fig.tight_layout()
    return scatters


def _score_history(result: ad.AnnData) -> np.ndarray | None:
    """The training score per epoch of a result, or ``None`` (nothing trained)."""
    if "history" not in result.uns.get(UNS_KEY, {}):
        return None
    hist = history_frame(result)
    if "main_loss" not in hist or not len(hist):
        return None
    return hist["main_loss"].to_numpy(dtype=np.float64)


def plot_cell_type_validation(
    fig: Figure, table: pd.DataFrame, max_types: int = 30, ncols: int | None = None
) -> None:
    """Draw one panel per marker: measured and predicted level per cell type (the seed's plot).

    Parameters
    ----------
    fig
        Figure to draw into (cleared first).
    table
        :func:`~napari_spatial_impute.validate_cell_types` output.
    max_types
        Cell types shown (the most frequent ones).
    ncols
        Panels per row (default: all in one row).
    """
    fig.clear()
    genes = list(dict.fromkeys(table["gene"]))
    if not genes:
        ax = fig.subplots()
        ax.text(0.5, 0.5, "no marker genes", ha="center", va="center")
        ax.set_axis_off()
        return
    counts = table.drop_duplicates("cell_type").set_index("cell_type")["n_cells"]
    types = list(counts.sort_values(ascending=False).index[:max_types])
    axes = panel_grid(fig, len(genes), ncols or len(genes), sharey=True)[: len(genes)]
    x = np.arange(len(types))
    width = 0.4
    for ax, gene in zip(axes, genes, strict=True):
        sub = table[table["gene"] == gene].set_index("cell_type").reindex(types)
        ax.bar(
            x - width / 2, sub["measured"].fillna(0), width, color=MEASURED_COLOR, label="measured"
        )
        ax.bar(
            x + width / 2,
            sub["predicted"].fillna(0),
            width,
            color=PREDICTED_COLOR,
            label="predicted",
        )
        ax.set_title(gene)
        ax.set_xticks(x)
        ax.set_xticklabels(types, rotation=90, fontsize=7)
        ax.set_ylim(0, 1.05)
    per_row = ncols or len(genes)
    for ax in axes[::per_row]:
        ax.set_ylabel("expression level (0-1)")
    axes[-1].legend(fontsize=7, loc="upper right")
    fig.tight_layout()


def _reliability_pairs(
    result: ad.AnnData, cv: pd.DataFrame | None
) -> tuple[list[str], np.ndarray, np.ndarray, str]:
    """(genes, predicted, observed, observed label) for the reliability scatter."""
    if cv is not None and {"predicted_pearson", "pearson", "gene"} <= set(cv.columns):
        return (
            list(map(str, cv["gene"])),
            cv["predicted_pearson"].to_numpy(dtype=np.float64),
            pd.to_numeric(cv["pearson"], errors="coerce").to_numpy(dtype=np.float64),
            "held-out Pearson (cross-validation)",
        )
    info = result.uns.get("spatial_impute", {}).get("uncertainty", {})
    cal = [str(g) for g in info.get("calibration_genes", [])]
    inner_r = np.asarray(info.get("inner_pearson", []), dtype=np.float64)
    inner = dict(zip(cal, inner_r, strict=False))
    genes = [g for g in cal if g in result.var_names and g in inner]
    pred = result.var.loc[genes, "predicted_pearson"].to_numpy(dtype=np.float64)
    return genes, pred, np.array([inner[g] for g in genes]), "inner-fold Pearson (calibration)"


def plot_reliability(fig: Figure, result: ad.AnnData, cv: pd.DataFrame | None = None) -> list:
    """Draw the predicted Pearson of every gene and how it compares with an observed Pearson.

    Left: histogram of the predicted held-out Pearson, training and other genes stacked. Right:
    predicted against observed Pearson per gene: the held-out Pearson of ``cv`` when it has a
    ``predicted_pearson`` column, else the calibration's inner-fold Pearson of the training
    genes; the title gives their Spearman correlation. The scatter is pickable
    (``artist.genes``).

    Returns
    -------
    The scatter artists.
    """
    from napari_spatial_impute.core.metrics import spearman_per_gene

    fig.clear()
    if "predicted_pearson" not in result.var.columns:
        ax = fig.subplots()
        ax.text(
            0.5,
            0.5,
            "no reliability estimates:\na cells-mode map with uncertainty has them",
            ha="center",
            va="center",
        )
        ax.set_axis_off()
        return []
    ax1, ax2 = fig.subplots(1, 2)
    p = result.var["predicted_pearson"].to_numpy(dtype=np.float64)
    train = (
        result.var["is_training"].astype(bool).to_numpy()
        if "is_training" in result.var
        else np.zeros(len(p), dtype=bool)
    )
    bins = np.linspace(min(-0.1, np.nanmin(p)), max(1.0, np.nanmax(p)), 23)
    ax1.hist(
        [p[train], p[~train]],
        bins=bins,
        stacked=True,
        color=[MEASURED_COLOR, PREDICTED_COLOR],
        label=["training genes", "other genes"],
        edgecolor="white",
    )
    ax1.set_xlabel("predicted held-out Pearson")
    ax1.set_ylabel("genes")
    ax1.set_title("per-gene reliability")
    ax1.legend(fontsize=8)
    genes, pred, obs, label = _reliability_pairs(result, cv)
    ok = np.isfinite(pred) & np.isfinite(obs)
    sc = ax2.scatter(pred[ok], obs[ok], s=14, alpha=0.6, color=MEASURED_COLOR, picker=5)
    sc.genes = [g for g, k in zip(genes, ok, strict=True) if k]  # type: ignore[attr-defined]
    lo = float(min(np.nanmin(pred[ok], initial=0), np.nanmin(obs[ok], initial=0), 0))
    ax2.plot([lo, 1], [lo, 1], color="0.6", lw=1, ls="--")
    rho = (
        float(spearman_per_gene(pred[ok, None], obs[ok, None])[0]) if ok.sum() > 2 else float("nan")
    )
    ax2.set_title(f"predicted vs observed (Spearman {rho:.2f}, {int(ok.sum())} genes)")
    ax2.set_xlabel("predicted Pearson")
    ax2.set_ylabel(label)
    fig.tight_layout()
    return [sc]


def default_markers(result: ad.AnnData, n: int = 6, cell_type_key: str | None = None) -> list[str]:
    """One measured marker for each of the ``n`` most frequent predicted clusters.

    The marker of a cluster is the shared gene whose measured mean in that cluster is highest
    relative to its mean over all cells (ties and repeats skipped).
    """
    info = result.uns.get("spatial_impute", {})
    key = cell_type_key or (f"{info['cluster_key']}_predicted" if info.get("cluster_key") else None)
    if key is None or key not in result.obs or "measured" not in result.obsm:
        return []
    shared = result.var_names[result.var["is_shared"].astype(bool).to_numpy()]
    names = result.var.loc[shared, "measured_name"].astype(str).to_numpy()
    meas = result.obsm["measured"][list(names)].to_numpy(dtype=np.float64)
    overall = meas.mean(0) + 1e-9
    types = result.obs[key].astype(str)
    chosen: list[str] = []
    for ct in types.value_counts().index:
        if len(chosen) >= n:
            break
        ratio = meas[(types == ct).to_numpy()].mean(0) / overall
        for j in np.argsort(-ratio):
            gene = str(shared[j])
            if gene not in chosen:
                chosen.append(gene)
                break
    return chosen


def cv_summary_text(table: pd.DataFrame) -> str:
    """``"median Pearson 0.31 over 134 genes (2 NaN)"`` for a cross-validation table.

    With the uncertainty columns of a newer table, the mean coverage of each interval level and
    the Spearman correlation of predicted and held-out Pearson follow, e.g. ``"; 90% interval
    coverage 0.89, 67%: 0.66; reliability Spearman 0.52"``.
    """
    from napari_spatial_impute.core.evaluate import summarize_cv

    p = pd.to_numeric(table["pearson"], errors="coerce").to_numpy(dtype=np.float64)
    finite = p[np.isfinite(p)]
    med = float(np.median(finite)) if finite.size else float("nan")
    nan = int(np.isnan(p).sum())
    text = f"median Pearson {med:.3f} over {len(p)} held-out genes" + (
        f" ({nan} NaN)" if nan else ""
    )
    if not any(c.startswith("coverage_") for c in table.columns) and (
        "predicted_pearson" not in table.columns
    ):
        return text
    summary = summarize_cv(table.assign(pearson=p))
    prefix = "mean_coverage_"
    cov = [(k[len(prefix) :], v) for k, v in summary.items() if k.startswith(prefix)]
    cov.sort(key=lambda kv: -int(kv[0]) if kv[0].isdigit() else 0)
    if cov:
        text += "; interval coverage " + ", ".join(f"{lv}%: {v:.2f}" for lv, v in cov)
    if "reliability_spearman" in summary:
        text += f"; reliability Spearman {summary['reliability_spearman']:.2f}"
    return text


def marker_list(text: str, available: Sequence[str]) -> list[str]:
    """Marker genes parsed from comma/space separated text, matched case-insensitively."""
    lower = {g.lower(): g for g in map(str, available)}
    out = []
    for token in text.replace(",", " ").split():
        hit = lower.get(token.lower())
        if hit and hit not in out:
            out.append(hit)
    return out


#: File formats a figure is saved in (by the file's suffix).
FIGURE_FORMATS: tuple[str, ...] = ("png", "svg", "pdf")


def save_figure(fig: Figure, path: str | Path, dpi: int = 200) -> Path:
    """Save ``fig`` as PNG, SVG or PDF (by the suffix of ``path``), atomically.

    An earlier file at ``path`` stays as it was if the saving fails. A suffix that is none of
    :data:`FIGURE_FORMATS` is an :class:`~napari_spatial_impute.InputError`.
    """
    from napari_spatial_impute._errors import InputError
    from napari_spatial_impute.io.files import atomic_output

    out = Path(path)
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in FIGURE_FORMATS:
        raise InputError(
            f"cannot save a figure as {out.name!r}; end the name with "
            f"{', '.join('.' + f for f in FIGURE_FORMATS)}."
        )
    with atomic_output(out) as tmp, warnings.catch_warnings():
        # a panel too small for its labels is saved as drawn (the figure panels say the same)
        warnings.filterwarnings("ignore", message="Tight layout not applied")
        fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight")
    return out
