"""Sandboxes: one interface to run a command over an unpacked rootfs."""
