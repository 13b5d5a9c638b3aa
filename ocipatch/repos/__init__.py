"""Package repositories: signed index readers and the package download cache."""
