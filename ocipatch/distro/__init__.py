"""Package managers: OS detection and one adapter per package manager."""
