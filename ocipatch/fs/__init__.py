"""Filesystems and layers: whiteouts, the merged view, safe extraction, diff, layer writer."""
