"""ocipatch: patch the OS packages of container images with no daemon and no root."""

__version__ = "0.1.0"
