"""apt repositories: sources, signed Release/Packages indices, resolution, the download cache."""
