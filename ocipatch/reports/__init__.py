"""Scanner reports converted to one internal model."""
