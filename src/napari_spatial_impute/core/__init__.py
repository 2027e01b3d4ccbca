"""The science: genes, engines, projection, uncertainty, evaluation (never imports napari, Qt or matplotlib)."""
