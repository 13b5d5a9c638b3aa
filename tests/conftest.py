"""Shared pytest set-up: fixtures live in tests/plugins/, one module per area."""

pytest_plugins = [
    "tests.plugins.registry",
    "tests.plugins.images",
    "tests.plugins.aptrepo",
    "tests.plugins.apkimages",
    "tests.plugins.rpmimages",
]
