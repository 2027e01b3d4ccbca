"""Gene harmonisation."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from napari_spatial_impute import InputError, plan_genes
from napari_spatial_impute.core.genes import match_genes, read_gene_list


def test_case_insensitive_matching_keeps_user_names(synthetic):
    ref, spa = synthetic
    plan = plan_genes(ref, spa)
    assert plan.shared_reference[:2] == ["Gene0", "Gene1"]
    assert plan.shared_spatial[:2] == ["gene0", "gene1"]
    assert len(plan.shared_reference) == spa.n_vars
    assert match_genes(["Gad1", "X"], ["gad1", "y"]) == [("Gad1", "gad1")]


def test_no_shared_genes_names_both_styles(synthetic):
    ref, spa = synthetic
    spa.var_names = [f"ENSMUSG{i:011d}" for i in range(spa.n_vars)]
    with pytest.raises(InputError) as e:
        plan_genes(ref, spa)
    msg = str(e.value)
    assert "no shared genes" in msg and "Ensembl ids" in msg and "mixed-case symbols" in msg


def test_zero_genes_dropped_from_training_and_reported(synthetic):
    ref, spa = synthetic
    X = spa.X.toarray()
    X[:, 3] = 0
    spa.X = sp.csr_matrix(X)
    R = ref.X.toarray()
    R[:, 5] = 0
    ref.X = sp.csr_matrix(R)
    plan = plan_genes(ref, spa)
    assert plan.dropped == {"Gene3": "no counts in spatial data", "Gene5": "no counts in reference"}
    assert "Gene3" not in plan.training_reference and "Gene3" in plan.shared_reference


def test_user_list_any_case_and_missing_reported(synthetic):
    ref, spa = synthetic
    plan = plan_genes(ref, spa, genes=["GENE1", "gene2", "Nope"])
    assert plan.training_reference == ["Gene1", "Gene2"]
    assert plan.not_shared == ["Nope"]
    with pytest.raises(InputError, match="none of the 1 requested"):
        plan_genes(ref, spa, genes=["Nope"])


def test_marker_genes(merfish):
    ref, spa = merfish
    plan = plan_genes(ref, spa, genes="markers", cluster_key="cell_type", n_markers=3)
    assert plan.source == "markers"
    assert 3 <= len(plan.training_reference) <= 14 * 3
    assert set(plan.training_reference) <= set(ref.var_names)
    with pytest.raises(InputError, match="cluster key"):
        plan_genes(ref, spa, genes="markers")
    with pytest.raises(InputError, match="columns there are"):
        plan_genes(ref, spa, genes="markers", cluster_key="nope")


def test_read_gene_list(tmp_path):
    f = tmp_path / "genes.txt"
    f.write_text("# my genes\nGad1, Slc17a6\nOxt\n")
    assert read_gene_list(str(f)) == ["Gad1", "Slc17a6", "Oxt"]
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(InputError, match="no gene names"):
        read_gene_list(str(tmp_path / "empty.txt"))
    assert np.all([isinstance(g, str) for g in read_gene_list(str(f))])
