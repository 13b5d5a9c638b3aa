"""pytest fixtures: images."""
