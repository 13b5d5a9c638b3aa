"""Scanner reports -> UpdateManifest: real Trivy/copa reports, hand-made rule fixtures, bad input."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from ocipatch.errors import ReportError, UnsupportedError
from ocipatch.reports.load import (
    check_report_matches,
    ecosystem_for_os,
    load_report,
    normalize_arch,
    parse_report,
)
from ocipatch.reports.model import UpdateManifest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures" / "reports"
REAL = ROOT.parent / "shared" / "scanner-reports"

needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"{REAL} (shared reports) is absent")


def _write(tmp_path: Path, doc: Any, name: str = "report.json") -> Path:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def _updates(m: UpdateManifest) -> dict[str, tuple[str, tuple[str, ...]]]:
    return {u.name: (u.fixed_version, u.vulnerability_ids) for u in m.updates}


# --- real reports -----------------------------------------------------------------------------

# file -> (os_type, os_version, arch, ecosystem, number of updates, lang findings ignored)
REAL_REPORTS = {
    "trivy_debian-buster.json.golden": ("debian", "10.1", "amd64", "deb", 1, 0),
    "trivy_ubuntu-1804.json.golden": ("ubuntu", "18.04", "amd64", "deb", 4, 0),
    "trivy_rockylinux-8.json.golden": ("rocky", "8.5", "amd64", "rpm", 1, 0),
    "trivy_amazon-2.json.golden": ("amazon", "2 (Karoo)", "amd64", "rpm", 1, 0),
    "trivy_opensuse-leap-151.json.golden": ("opensuse-leap", "15.1", "amd64", "rpm", 2, 0),
    "copa_alpine-report.json": ("alpine", "3.21.0", "amd64", "apk", 4, 0),
    "copa_mariner.json": ("cbl-mariner", "2.0.20220527", "arm64", "rpm", 5, 0),
    "copa_vulnerable-node-app-report.json": ("alpine", "3.21.3", "amd64", "apk", 0, 8),
}


@needs_real
def test_every_real_report_is_covered() -> None:
    present = {p.name for p in REAL.iterdir() if p.name != "SOURCES.txt"}
    assert present == set(REAL_REPORTS)


@needs_real
@pytest.mark.parametrize("name", sorted(REAL_REPORTS))
def test_real_report(name: str) -> None:
    os_type, os_version, arch, ecosystem, n_updates, n_lang = REAL_REPORTS[name]
    m = load_report(REAL / name)
    assert (m.os_type, m.os_version, m.arch, m.variant) == (os_type, os_version, arch, None)
    assert m.ecosystem == ecosystem
    assert len(m.updates) == n_updates
    assert m.lang_updates_ignored == n_lang
    assert [u.name for u in m.updates] == sorted(u.name for u in m.updates)

    # Independently: every fixable os-pkgs package in the file, and only those, is an update
    # (none of these real reports lists an already satisfied entry).
    doc = json.loads((REAL / name).read_text())
    expected_names = {
        v["PkgName"]
        for r in doc.get("Results", [])
        if r.get("Class") == "os-pkgs"
        for v in r.get("Vulnerabilities") or []
        if v.get("FixedVersion")
    }
    assert {u.name for u in m.updates} == expected_names


@needs_real
def test_real_debian_and_ubuntu_requirements() -> None:
    buster = _updates(load_report(REAL / "trivy_debian-buster.json.golden"))
    assert buster == {"libidn2-0": ("2.0.5-1+deb10u1", ("CVE-2019-18224",))}  # bash has no fix

    bionic = load_report(REAL / "trivy_ubuntu-1804.json.golden")
    assert _updates(bionic)["e2fsprogs"] == ("1.44.1-1ubuntu1.2", ("CVE-2019-5094",))
    assert bionic.update_for("e2fsprogs") is not None
    assert bionic.update_for("bash") is None
    assert {u.installed_version for u in bionic.updates} == {"1.44.1-1ubuntu1.1"}


@needs_real
def test_real_apk_and_rpm_requirements() -> None:
    alpine = _updates(load_report(REAL / "copa_alpine-report.json"))
    # Two CVEs: 3.3.2-r5 and 3.3.3-r0 -> the higher one, both IDs.
    assert alpine["libcrypto3"] == ("3.3.3-r0", ("CVE-2024-12797", "CVE-2024-13176"))
    assert alpine["musl"] == ("1.2.5-r9", ("CVE-2025-26519",))

    mariner = _updates(load_report(REAL / "copa_mariner.json"))
    fixed, ids = mariner["openssl"]
    assert fixed == "1.1.1k-29.cm2"  # highest of -17 ... -29, numerically
    assert len(ids) == 12
    assert mariner["glibc"][0] == "2.35-7.cm2"

    rocky = _updates(load_report(REAL / "trivy_rockylinux-8.json.golden"))
    assert rocky["openssl-libs"] == ("1:1.1.1k-5.el8_5", ("CVE-2021-3712",))
    amazon = _updates(load_report(REAL / "trivy_amazon-2.json.golden"))
    assert amazon["curl"] == ("7.61.1-12.amzn2.0.1", ("CVE-2019-5436", "CVE-2019-5481"))
    suse = _updates(load_report(REAL / "trivy_opensuse-leap-151.json.golden"))
    assert suse["openssl-1_1"] == ("1.1.0i-lp151.8.6.1", ("openSUSE-SU-2020:0062-1",))


# --- the requirement rules on hand-made reports -----------------------------------------------


def test_trivy_rules() -> None:
    m = load_report(FIXTURES / "trivy-debian-rules.json")
    assert (m.os_type, m.os_version, m.arch, m.variant, m.ecosystem) == (
        "debian",
        "12.5",
        "amd64",
        None,
        "deb",
    )
    assert _updates(m) == {
        # "1.2.3-1, 1.3.1-1" from 1.2.0-1: the lowest listed version above the installed one
        "libfoo1": ("1.2.3-1", ("CVE-2024-0001",)),
        # the same list from 1.2.5-1: 1.2.3-1 is below, so 1.3.1-1
        "libbar1": ("1.3.1-1", ("CVE-2024-0002",)),
        # three CVEs: the highest requirement wins; the one already satisfied adds no ID
        "openssl": ("3.0.15-1~deb12u1", ("CVE-2023-0001", "CVE-2023-0002")),
        "libtilde0": ("2.0-1", ("CVE-2023-0005",)),
        # a duplicated entry counts once
        "libc6": ("2.36-9+deb12u7", ("CVE-2023-0006",)),
    }
    # zlib1g (epoch 1 beats the fix), bash (no fix), login (empty fix): not updates
    assert m.update_for("libfoo1") is not None
    assert m.update_for("libfoo1").source == "foo"  # type: ignore[union-attr]
    assert m.update_for("libfoo1").installed_version == "1.2.0-1"  # type: ignore[union-attr]
    assert m.lang_updates_ignored == 2  # lodash, node-fetch; left-pad has no fix


def test_trivy_apk_rules() -> None:
    m = load_report(FIXTURES / "trivy-alpine-rules.json")
    assert (m.arch, m.variant, m.ecosystem) == ("arm", "v7", "apk")
    assert _updates(m) == {
        "busybox": ("1.36.1-r31", ("CVE-2024-1001", "CVE-2024-1002")),
        "ssl_client": ("1.36.1_p1-r0", ("CVE-2024-1003",)),
    }


def test_native_v1alpha1() -> None:
    m = load_report(FIXTURES / "native-v1alpha1.json")
    assert (m.os_type, m.os_version, m.arch, m.variant) == ("debian", "12", "amd64", None)
    assert _updates(m) == {
        "libssl3": ("3.0.15-1~deb12u1", ("CVE-2024-0727", "CVE-2024-5535")),
        "curl": ("7.88.1-10+deb12u8", ("CVE-2024-7264",)),
    }
    assert m.lang_updates_ignored == 1


def test_native_v1alpha2() -> None:
    m = load_report(FIXTURES / "native-v1alpha2.json")
    assert (m.os_type, m.os_version, m.arch, m.variant) == ("ubuntu", "22.04", "arm64", "v8")
    assert _updates(m) == {
        "libc-bin": ("2.35-0ubuntu3.8", ("CVE-2024-2961",)),
        "libc6": ("2.35-0ubuntu3.8", ("CVE-2024-2961", "CVE-2024-33599")),
    }
    assert m.lang_updates_ignored == 2


def test_native_keys_match_case_insensitively_and_apiversion_may_be_absent(
    tmp_path: Path,
) -> None:
    doc = json.loads((FIXTURES / "native-v1alpha2.json").read_text())
    doc["osUpdates"] = doc.pop("osupdates")
    doc["LangUpdates"] = doc.pop("langupdates")
    doc["metadata"]["OS"] = doc["metadata"].pop("os")
    want = load_report(FIXTURES / "native-v1alpha2.json")
    assert load_report(_write(tmp_path, doc)) == want
    del doc["apiVersion"]
    assert load_report(_write(tmp_path, doc)) == want


def test_zero_os_updates_is_a_valid_report(tmp_path: Path) -> None:
    doc = json.loads((FIXTURES / "trivy-debian-rules.json").read_text())
    doc["Results"] = [{"Target": "x (debian 12.5)", "Class": "os-pkgs", "Type": "debian"}]
    m = load_report(_write(tmp_path, doc))
    assert m.updates == []
    assert m.lang_updates_ignored == 0
    doc.pop("Results")  # Trivy leaves Results out when it found nothing at all
    assert load_report(_write(tmp_path, doc)).updates == []


def test_result_without_class_is_os_when_type_is_the_family(tmp_path: Path) -> None:
    doc = json.loads((FIXTURES / "trivy-debian-rules.json").read_text())
    for result in doc["Results"]:
        del result["Class"]
    m = load_report(_write(tmp_path, doc))
    assert "openssl" in _updates(m)
    assert m.lang_updates_ignored == 2


def test_alpine_and_rpm_reports_parse_with_their_ecosystem(tmp_path: Path) -> None:
    doc = {
        "SchemaVersion": 2,
        "Metadata": {
            "OS": {"Family": "redhat", "Name": "9.3"},
            "ImageConfig": {"architecture": "amd64"},
        },
        "Results": [
            {
                "Class": "os-pkgs",
                "Type": "redhat",
                "Vulnerabilities": [
                    {
                        "VulnerabilityID": "CVE-2024-1",
                        "PkgName": "openssl-libs",
                        "InstalledVersion": "1:3.0.7-24.el9",
                        "FixedVersion": "1:3.0.7-25.el9_3",
                    },
                    {
                        "VulnerabilityID": "CVE-2024-2",
                        "PkgName": "openssl-libs",
                        "InstalledVersion": "1:3.0.7-24.el9",
                        "FixedVersion": "3.0.9-1.el9",
                    },
                ],
            }
        ],
    }
    m = load_report(_write(tmp_path, doc))
    assert m.ecosystem == "rpm"
    # 3.0.9-1.el9 has epoch 0: below the installed 1:3.0.7, so that entry is satisfied.
    assert _updates(m) == {"openssl-libs": ("1:3.0.7-25.el9_3", ("CVE-2024-1",))}


@pytest.mark.parametrize(
    ("family", "ecosystem"),
    [
        ("debian", "deb"),
        ("Ubuntu", "deb"),
        ("alpine", "apk"),
        ("wolfi", "apk"),
        ("chainguard", "apk"),
        ("redhat", "rpm"),
        ("centos", "rpm"),
        ("rocky", "rpm"),
        ("alma", "rpm"),
        ("amazon", "rpm"),
        ("oracle", "rpm"),
        ("fedora", "rpm"),
        ("cbl-mariner", "rpm"),
        ("azurelinux", "rpm"),
        ("sles", "rpm"),
        ("opensuse-leap", "rpm"),
        ("opensuse-tumbleweed", "rpm"),
        ("suse linux enterprise server", "rpm"),
    ],
)
def test_ecosystem_for_os(family: str, ecosystem: str) -> None:
    assert ecosystem_for_os(family) == ecosystem


def test_unknown_os_is_unsupported(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedError, match="bottlerocket"):
        ecosystem_for_os("bottlerocket")
    doc = {"SchemaVersion": 2, "Metadata": {"OS": {"Family": "bottlerocket", "Name": "1.19"}}}
    with pytest.raises(UnsupportedError) as info:
        load_report(_write(tmp_path, doc))
    assert info.value.exit_code == 9


# --- bad reports ------------------------------------------------------------------------------

_GOOD_TRIVY: dict[str, Any] = json.loads((FIXTURES / "trivy-debian-rules.json").read_text())


def _trivy_with(change: Any) -> dict[str, Any]:
    doc = copy.deepcopy(_GOOD_TRIVY)
    change(doc)
    return doc


BAD_REPORTS: list[tuple[str, Any, str]] = [
    ("not-json", "{not json", "is not JSON (Expecting property name"),
    ("empty", "", "is empty"),
    ("blank", " \n\t", "is empty"),
    ("number", "42", "not a Trivy JSON report nor a copa update manifest"),
    ("unknown-object", {"foo": 1}, "no SchemaVersion"),
    ("schema-1", {"SchemaVersion": 1, "Results": []}, "SchemaVersion 1; only SchemaVersion 2"),
    ("schema-3", {"SchemaVersion": 3}, "SchemaVersion 3"),
    ("old-trivy-list", [{"Target": "x", "Vulnerabilities": []}], "old Trivy report"),
    ("cyclonedx", {"bomFormat": "CycloneDX", "specVersion": "1.5"}, "CycloneDX SBOM"),
    ("sarif", {"version": "2.1.0", "runs": []}, "SARIF"),
    ("grype", {"matches": [], "descriptor": {"name": "grype"}}, "Grype report"),
    ("no-os", _trivy_with(lambda d: d["Metadata"].pop("OS")), "has no Metadata.OS"),
    ("no-metadata", _trivy_with(lambda d: d.pop("Metadata")), "has no Metadata.OS"),
    ("results-not-list", _trivy_with(lambda d: d.update(Results={})), "Results is not a list"),
    (
        "vuln-without-name",
        _trivy_with(lambda d: d["Results"][0]["Vulnerabilities"][0].pop("PkgName")),
        "Results[0].Vulnerabilities[0] has no PkgName",
    ),
    (
        "bad-version",
        _trivy_with(
            lambda d: d["Results"][0]["Vulnerabilities"][0].update(InstalledVersion="1.0 beta")
        ),
        "package libfoo1 has a version that cannot be compared",
    ),
    (
        "os-family-not-string",
        _trivy_with(lambda d: d["Metadata"]["OS"].update(Family=12)),
        "Metadata.OS.Family is not a string",
    ),
    ("native-unknown-api", {"apiVersion": "v2", "metadata": {}}, "apiVersion 'v2'"),
    (
        "native-no-os",
        {"apiVersion": "v1alpha2", "metadata": {}, "osupdates": []},
        "no metadata.os.type",
    ),
    (
        "native-updates-not-list",
        {"apiVersion": "v1alpha1", "metadata": {"os": {"type": "debian"}}, "updates": {}},
        "updates is not a list",
    ),
]


@pytest.mark.parametrize(
    ("case", "content", "message"), BAD_REPORTS, ids=[c[0] for c in BAD_REPORTS]
)
def test_bad_report(tmp_path: Path, case: str, content: Any, message: str) -> None:
    path = _write(tmp_path, content, f"{case}.json")
    with pytest.raises(ReportError) as info:
        load_report(path)
    text = str(info.value)
    assert message in text
    assert str(path) in text
    assert "\n" not in text
    assert info.value.exit_code == 10


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "binary.json"
    path.write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(ReportError, match="is not JSON"):
        load_report(path)


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + (FIXTURES / "native-v1alpha1.json").read_bytes())
    assert load_report(path).os_type == "debian"


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="does not exist"):
        load_report(tmp_path / "nope.json")
    with pytest.raises(ReportError, match="multi-platform images, not supported yet"):
        load_report(tmp_path)


def test_parse_report_in_memory() -> None:
    m = parse_report(json.loads((FIXTURES / "native-v1alpha1.json").read_text()))
    assert m.os_type == "debian"


# --- report vs image --------------------------------------------------------------------------


def _manifest(os_type: str, version: str, arch: str, variant: str | None = None) -> UpdateManifest:
    return UpdateManifest(os_type, version, arch, variant, [], 0)


MATCHING = [
    (_manifest("debian", "12.5", "amd64"), ("debian", "12", "amd64", None)),
    (_manifest("Debian", "12.5", "amd64"), ("DEBIAN", "12", "amd64", None)),
    (_manifest("ubuntu", "18.04", "amd64"), ("ubuntu", "18.04", "amd64", None)),
    (_manifest("alpine", "3.21.0", "amd64"), ("alpine", "3.21.3", "amd64", None)),
    (_manifest("rocky", "8.5", "amd64"), ("rocky", "8.9", "amd64", None)),
    (_manifest("amazon", "2 (Karoo)", "amd64"), ("amzn", "2", "amd64", None)),
    (_manifest("redhat", "9.3", "amd64"), ("rhel", "9.3", "amd64", None)),
    (_manifest("cbl-mariner", "2.0.20220527", "arm64"), ("mariner", "2.0", "arm64", "v8")),
    (_manifest("wolfi", "20230201", "amd64"), ("wolfi", "20240101", "amd64", None)),
    (_manifest("debian", "12", "x86_64"), ("debian", "12", "amd64", None)),
    (_manifest("debian", "12", "aarch64"), ("debian", "12", "arm64", None)),
    (_manifest("debian", "12", "arm", "v7"), ("debian", "12", "arm", "v7")),
    (_manifest("debian", "12", "arm"), ("debian", "12", "arm", "v7")),
    (_manifest("debian", "12", ""), ("debian", "12", "s390x", None)),  # no arch in the report
    (_manifest("debian", "trixie/sid", "amd64"), ("debian", "", "amd64", None)),
]


@pytest.mark.parametrize(("manifest", "image"), MATCHING)
def test_report_matches(manifest: UpdateManifest, image: tuple[str, str, str, str | None]) -> None:
    check_report_matches(manifest, *image)


MISMATCHING = [
    (
        _manifest("debian", "11", "amd64"),
        ("debian", "12", "arm64", None),
        "the report is for a debian 11 image (amd64) but the image is debian 12 (arm64): "
        "scan this image and pass its report",
    ),
    (
        _manifest("debian", "12.5", "amd64"),
        ("ubuntu", "22.04", "amd64", None),
        "report is for a debian 12.5 image (amd64) but the image is ubuntu 22.04 (amd64)",
    ),
    (
        _manifest("ubuntu", "22.04", "amd64"),
        ("ubuntu", "22.10", "amd64", None),
        "the report is for an ubuntu 22.04 image",
    ),
    (
        _manifest("alpine", "3.20.1", "amd64"),
        ("alpine", "3.21.0", "amd64", None),
        "but the image is alpine 3.21.0",
    ),
    (_manifest("debian", "12", "amd64"), ("debian", "12", "arm64", None), "(amd64) but"),
    (_manifest("debian", "12", "arm", "v7"), ("debian", "12", "arm", "v6"), "(arm/v7) but"),
    (_manifest("debian", "12", "x86_64"), ("debian", "12", "386", None), "(386)"),
]


@pytest.mark.parametrize(("manifest", "image", "message"), MISMATCHING)
def test_report_mismatch(
    manifest: UpdateManifest, image: tuple[str, str, str, str | None], message: str
) -> None:
    with pytest.raises(ReportError) as info:
        check_report_matches(manifest, *image)
    assert message in str(info.value)
    assert str(info.value).endswith("scan this image and pass its report")
    assert info.value.exit_code == 10


@needs_real
def test_real_report_against_its_image() -> None:
    m = load_report(REAL / "copa_mariner.json")
    check_report_matches(m, "mariner", "2.0", "arm64", None)
    with pytest.raises(ReportError, match=r"\(arm64\) but the image is mariner 2.0 \(amd64\)"):
        check_report_matches(m, "mariner", "2.0", "amd64", None)


@pytest.mark.parametrize(
    ("arch", "variant", "want"),
    [
        ("x86_64", None, ("amd64", None)),
        ("amd64", None, ("amd64", None)),
        ("aarch64", None, ("arm64", None)),
        ("arm64", "v8", ("arm64", None)),
        ("armhf", None, ("arm", "v7")),
        ("armv7l", None, ("arm", "v7")),
        ("i686", None, ("386", None)),
        ("ppc64el", None, ("ppc64le", None)),
        ("s390x", None, ("s390x", None)),
    ],
)
def test_normalize_arch(arch: str, variant: str | None, want: tuple[str, str | None]) -> None:
    assert normalize_arch(arch, variant) == want
