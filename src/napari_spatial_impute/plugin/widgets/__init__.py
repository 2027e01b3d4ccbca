"""The Qt widgets."""
