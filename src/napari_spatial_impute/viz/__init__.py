"""Napari layer data and matplotlib figures, without widgets or a viewer."""
