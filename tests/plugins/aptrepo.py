"""pytest fixtures: aptrepo."""
