"""OpenVEX output: schema-valid, deterministic, and only what the patch really fixed."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import jsonschema
import pytest

from ocipatch.reports.load import load_report
from ocipatch.vex import (
    FixedVuln,
    apk_purl,
    build_vex,
    deb_purl,
    fixed_vulns,
    oci_purl,
    package_purl,
    rpm_purl,
    vex_json,
)

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures" / "reports"
SCHEMA_PATH = ROOT.parent / "shared" / "schemas" / "openvex_json_schema_0.2.0.json"

DIGEST = "sha256:" + "ab" * 32
IMAGE = oci_purl("registry.example:5000/team/app", DIGEST, tag="1.0-patched", arch="amd64")
TS = "2024-05-01T12:00:00Z"


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    if not SCHEMA_PATH.is_file():
        pytest.skip(f"{SCHEMA_PATH} is absent")
    schema = json.loads(SCHEMA_PATH.read_text())
    cls = jsonschema.validators.validator_for(schema)
    assert cls is jsonschema.Draft202012Validator  # the schema's own $schema
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _check(validator: jsonschema.protocols.Validator, doc: dict[str, Any]) -> None:
    validator.validate(doc)
    # jsonschema checks "date-time" and "iri" only with optional packages; check them here.
    datetime.fromisoformat(doc["timestamp"].replace("Z", "+00:00"))
    iris = [doc["@id"]]
    for st in doc["statements"]:
        iris += [st["vulnerability"].get("@id", "https://x/")]
        for product in st["products"]:
            iris.append(product["@id"])
            iris += [s["@id"] for s in product.get("subcomponents", [])]
    for iri in iris:
        assert urlsplit(iri).scheme in ("https", "pkg"), iri
        assert " " not in iri


def test_purls() -> None:
    assert IMAGE == (
        "pkg:oci/app@sha256:"
        + "ab" * 32
        + "?arch=amd64&repository_url=registry.example:5000%2Fteam%2Fapp&tag=1.0-patched"
    )
    assert deb_purl("debian", "openssl", "3.0.15-1~deb12u1", "amd64", "12") == (
        "pkg:deb/debian/openssl@3.0.15-1~deb12u1?arch=amd64&distro=debian-12"
    )
    # '+' is percent-encoded, ':' (an epoch) never is
    assert deb_purl("Ubuntu", "libstdc++6", "1:12.3.0-1ubuntu1+22.04", "arm64", "22.04") == (
        "pkg:deb/ubuntu/libstdc%2B%2B6@1:12.3.0-1ubuntu1%2B22.04?arch=arm64&distro=ubuntu-22.04"
    )
    assert apk_purl("alpine", "musl", "1.2.5-r9", "x86_64", "3.21.3") == (
        "pkg:apk/alpine/musl@1.2.5-r9?arch=x86_64&distro=alpine-3.21.3"
    )
    # the rpm purl type carries the epoch as a qualifier
    assert rpm_purl("rocky", "openssl-libs", "1:1.1.1k-5.el8_5", "x86_64", "8.5") == (
        "pkg:rpm/rocky/openssl-libs@1.1.1k-5.el8_5?arch=x86_64&distro=rocky-8.5&epoch=1"
    )
    assert package_purl("deb", "debian", "curl", "7.88.1-10+deb12u8", None, None) == (
        "pkg:deb/debian/curl@7.88.1-10%2Bdeb12u8?distro=debian"
    )
    assert oci_purl("", DIGEST, name="App") == "pkg:oci/app@" + DIGEST
    with pytest.raises(ValueError):
        oci_purl("", DIGEST)
    with pytest.raises(ValueError):
        package_purl("pacman", "arch", "x", "1", None, None)


def test_purl_version_round_trips() -> None:
    version = "1:2.3+dfsg~rc1-4+b1 x/y?z#%"
    purl = deb_purl("debian", "p", version, None, None)
    encoded = purl.split("@", 1)[1].split("?", 1)[0]
    assert unquote(encoded) == version
    assert all(c.isalnum() or c in ".-_~:%" for c in encoded)


def test_document(validator: jsonschema.protocols.Validator) -> None:
    libssl = deb_purl("debian", "libssl3", "3.0.15-1~deb12u1", "amd64", "12")
    openssl = deb_purl("debian", "openssl", "3.0.15-1~deb12u1", "amd64", "12")
    fixed = [
        FixedVuln("CVE-2024-5535", [openssl, libssl]),
        FixedVuln("DSA-5764-1", [openssl]),
        FixedVuln("CVE-2024-0727", [libssl]),
        FixedVuln("CVE-2024-5535", [openssl]),  # repeated: merged, not duplicated
    ]
    doc = build_vex(IMAGE, fixed, timestamp=TS)
    _check(validator, doc)
    broken = json.loads(json.dumps(doc))
    broken["statements"][0]["status"] = "patched"
    assert not validator.is_valid(broken)  # the schema check has teeth
    assert doc["@context"] == "https://openvex.dev/ns/v0.2.0"
    assert doc["@id"].startswith("https://openvex.dev/docs/public/vex-")
    assert (doc["author"], doc["version"], doc["timestamp"]) == ("ocipatch", 1, TS)
    assert [s["vulnerability"]["name"] for s in doc["statements"]] == [
        "CVE-2024-0727",
        "CVE-2024-5535",
        "DSA-5764-1",
    ]
    first = doc["statements"][1]
    assert first == {
        "vulnerability": {
            "@id": "https://nvd.nist.gov/vuln/detail/CVE-2024-5535",
            "name": "CVE-2024-5535",
        },
        "products": [{"@id": IMAGE, "subcomponents": [{"@id": libssl}, {"@id": openssl}]}],
        "status": "fixed",
    }
    assert doc["statements"][2]["vulnerability"] == {"name": "DSA-5764-1"}

    # Deterministic: same input (in any order) -> same bytes; another time -> another @id.
    again = build_vex(IMAGE, list(reversed(fixed)), timestamp=TS)
    assert vex_json(again) == vex_json(doc)
    assert build_vex(IMAGE, fixed, timestamp="2024-05-02T00:00:00Z")["@id"] != doc["@id"]
    assert vex_json(doc).endswith("}\n")


def test_only_what_the_patch_fixed(validator: jsonschema.protocols.Validator) -> None:
    manifest = load_report(FIXTURES / "trivy-debian-rules.json")
    pairs = [
        (u, deb_purl(manifest.os_type, u.name, u.fixed_version, "amd64", "12"))
        for u in manifest.updates
        if u.name != "libtilde0"  # say this one could not be updated: it must not appear
    ]
    doc = build_vex(IMAGE, fixed_vulns(pairs), author="ci@example.org", timestamp=TS)
    _check(validator, doc)
    names = [s["vulnerability"]["name"] for s in doc["statements"]]
    assert names == [
        "CVE-2023-0001",
        "CVE-2023-0002",
        "CVE-2023-0006",
        "CVE-2024-0001",
        "CVE-2024-0002",
    ]
    # never: a satisfied entry (0003), epoch-satisfied (0004), skipped update (0005),
    # no fix (0007, bash's CVE), language packages (lodash, node-fetch)
    for absent in (
        "CVE-2023-0003",
        "CVE-2023-0004",
        "CVE-2023-0005",
        "CVE-2023-0007",
        "CVE-2019-18276",
        "CVE-2021-23337",
        "CVE-2022-0235",
    ):
        assert absent not in names
    openssl_stmt = doc["statements"][0]
    assert openssl_stmt["products"][0]["subcomponents"] == [
        {"@id": "pkg:deb/debian/openssl@3.0.15-1~deb12u1?arch=amd64&distro=debian-12"}
    ]


def test_nothing_fixed_is_no_document() -> None:
    with pytest.raises(ValueError, match="needs one statement"):
        build_vex(IMAGE, [], timestamp=TS)


def test_timestamp_from_source_date_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    doc = build_vex(IMAGE, [FixedVuln("CVE-2024-1", [])])
    assert doc["timestamp"] == "2023-11-14T22:13:20Z"
    assert doc["statements"][0]["products"] == [{"@id": IMAGE}]
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    now = build_vex(IMAGE, [FixedVuln("CVE-2024-1", [])])["timestamp"]
    assert datetime.fromisoformat(now.replace("Z", "+00:00")).year >= 2024
