"""Byte-level entry points for atheris (libFuzzer, coverage-guided), one per hypothesis target
family: the same check functions, fed raw bytes. Used by `tools/fuzz --atheris TARGET`; any
exception but an OcipatchError escaping one of these is a crash."""

from __future__ import annotations

from collections.abc import Callable

from tests.fuzz import (
    test_fuzz_apt,
    test_fuzz_archive,
    test_fuzz_dpkg,
    test_fuzz_reference,
    test_fuzz_reports,
    test_fuzz_tar,
)


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _os_release(data: bytes) -> None:
    test_fuzz_dpkg.read_os_release(test_fuzz_dpkg.DictView({"etc/os-release": data}))


# name -> (check of one input, seed inputs)
TARGETS: dict[str, tuple[Callable[[bytes], None], list[bytes]]] = {
    "reports": (test_fuzz_reports.check_load, test_fuzz_reports.SEED_BYTES),
    "reference": (
        lambda b: test_fuzz_reference.check(_text(b)),
        [s.encode() for s in test_fuzz_reference.SEEDS],
    ),
    "os-release": (_os_release, [s.encode() for s in test_fuzz_dpkg.OS_RELEASE]),
    "dpkg": (
        lambda b: test_fuzz_dpkg.check_dpkg(b, [b]),
        [test_fuzz_dpkg.STATUS_SEED.encode(), test_fuzz_dpkg.STATUS_D_SEED.encode()],
    ),
    "tar": (lambda b: test_fuzz_tar.check_layers([b]), test_fuzz_tar.SEEDS),
    "docker-archive": (
        lambda b: test_fuzz_archive.check_archive_bytes(b, True),
        [test_fuzz_archive.SEED_DOCKER],
    ),
    "oci-archive": (
        lambda b: test_fuzz_archive.check_archive_bytes(b, False),
        [test_fuzz_archive.SEED_OCI],
    ),
    "release": (lambda b: test_fuzz_apt.check_release(_text(b)), [test_fuzz_apt.RELEASE.encode()]),
    "packages": (test_fuzz_apt.check_packages, [test_fuzz_apt.PACKAGES.encode()]),
}
