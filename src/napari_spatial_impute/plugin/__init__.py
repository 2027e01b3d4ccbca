"""Everything napari.yaml points to: reader, writer, samples, the shared model, workers, widgets."""
