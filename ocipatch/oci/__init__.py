"""Images: references, media types, the lazy image model, sources and destinations."""
