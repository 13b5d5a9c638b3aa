"""Checking a repository's signed Release with Debian's `gpgv`, against the image's keys.

The keys come from the image, never the host: the keyring files named by Signed-By (or an
inline key block), else /etc/apt/trusted.gpg and /etc/apt/trusted.gpg.d/*, all read inside
the rootfs. Armored keys are dearmored here (gpgv reads binary keyrings only). A Release is
accepted as apt accepts it: at least one good signature (GOODSIG + VALIDSIG) from an allowed
key, and no bad one. The text used afterwards is what gpgv says was signed, never the raw file,
so nothing unsigned can be slipped around the signed part.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ocipatch import runs
from ocipatch.distro.deb.repos.sources import AptSource, image_path
from ocipatch.errors import IntegrityError, UnsupportedError

GPGV_TIMEOUT = 60.0
_ARMOR = re.compile(
    r"-----BEGIN PGP PUBLIC KEY BLOCK-----(.*?)-----END PGP PUBLIC KEY BLOCK-----", re.S
)
_FINGERPRINT = re.compile(r"^[0-9A-F]{16,40}$")


@dataclass(frozen=True)
class Keyrings:
    """Binary OpenPGP keyrings ready for gpgv, and the signer fingerprints allowed (empty:
    any key in them), as Signed-By restricts them."""

    rings: tuple[tuple[str, bytes], ...]  # (name shown in messages, keyring bytes)
    fingerprints: frozenset[str] = frozenset()

    def describe(self) -> str:
        names = ", ".join(name for name, _ in self.rings)
        if self.fingerprints:
            names += " (keys " + ", ".join(sorted(self.fingerprints)) + ")"
        return names


def gpgv_binary() -> str:
    found = shutil.which("gpgv")
    if found is None:
        raise UnsupportedError(
            "gpgv is not installed, so repository signatures cannot be checked: install "
            "Debian's gpgv package (apt-get install gpgv)"
        )
    return found


def dearmor(text: str, what: str) -> bytes:
    """The binary packets of every ASCII-armored public key block in `text`."""
    out = b""
    for block in _ARMOR.findall(text):
        lines = [ln.strip() for ln in block.splitlines()]
        while lines and not lines[0]:
            lines.pop(0)
        # Armor headers ("Version: ...") end at the first empty line; base64 has no ':'.
        if "" in lines:
            head = lines[: lines.index("")]
            if all(":" in h for h in head):
                lines = lines[len(head) + 1 :]
        body = "".join(ln for ln in lines if ln and not ln.startswith("="))
        try:
            out += base64.b64decode(body, validate=True)
        except ValueError:
            raise IntegrityError(f"{what}: the armored key block is not valid base64") from None
    if not out:
        raise IntegrityError(f"{what}: no PGP public key block found")
    return out


def _keyring_bytes(data: bytes, what: str) -> bytes:
    head = data.lstrip()[:64]
    if head.startswith(b"-----BEGIN PGP"):
        return dearmor(data.decode("ascii", "replace"), what)
    return data


def image_keyrings(rootfs: Path, source: AptSource) -> Keyrings:
    """The keys that may sign `source`'s Release, read inside the image rootfs."""
    if source.inline_key:
        what = f"{source.where}: inline Signed-By key"
        return Keyrings(((what, dearmor(source.signed_by, what)),))
    words = source.signed_by.split()
    paths = [w for w in words if w.startswith("/")]
    fingerprints = frozenset(w.rstrip("!").upper() for w in words if not w.startswith("/"))
    bad = sorted(f for f in fingerprints if not _FINGERPRINT.match(f))
    if bad:
        raise UnsupportedError(
            f"{source.where}: Signed-By value {bad[0]!r} is neither an absolute keyring path "
            "nor a key fingerprint"
        )
    if not paths:
        paths = _default_keyrings(rootfs)
        if not paths:
            raise IntegrityError(
                f"{source.where}: no key to check the repository's signature with: no Signed-By "
                "and no /etc/apt/trusted.gpg or /etc/apt/trusted.gpg.d/* in the image"
            )
    rings = []
    for p in paths:
        host = image_path(rootfs, p)
        if not host.is_file():
            raise IntegrityError(
                f"{source.where}: keyring {p} (Signed-By) is not in the image: install the "
                "package that ships it, or fix the sources entry"
            )
        rings.append((p, _keyring_bytes(host.read_bytes(), p)))
    return Keyrings(tuple(rings), fingerprints)


def _default_keyrings(rootfs: Path) -> list[str]:
    found = []
    if image_path(rootfs, "/etc/apt/trusted.gpg").is_file():
        found.append("/etc/apt/trusted.gpg")
    parts = image_path(rootfs, "/etc/apt/trusted.gpg.d")
    if parts.is_dir():
        found += [
            f"/etc/apt/trusted.gpg.d/{n}"
            for n in sorted(os.listdir(parts))
            if n.endswith((".gpg", ".asc"))
        ]
    return found


@dataclass
class _Sig:
    status: set[str]
    keyid: str = ""
    fingerprint: str = ""
    primary: str = ""


def _signatures(status: str) -> list[_Sig]:
    sigs: list[_Sig] = []
    for line in status.splitlines():
        words = line.split()
        if len(words) < 2 or words[0] != "[GNUPG:]":
            continue
        kw = words[1]
        if kw == "NEWSIG" or not sigs:
            sigs.append(_Sig(set()))
            if kw == "NEWSIG":
                continue
        sig = sigs[-1]
        sig.status.add(kw)
        if kw in ("GOODSIG", "BADSIG", "EXPKEYSIG", "REVKEYSIG", "EXPSIG", "ERRSIG"):
            if len(words) > 2 and not sig.keyid:
                sig.keyid = words[2]
        elif kw == "NO_PUBKEY" and len(words) > 2:
            sig.keyid = words[2]
        elif kw == "VALIDSIG" and len(words) > 2:
            sig.fingerprint = words[2].upper()
            sig.primary = words[-1].upper() if len(words) >= 12 else sig.fingerprint
    return sigs


def _check(status: str, keyrings: Keyrings, what: str) -> None:
    sigs = _signatures(status)
    if any("BADSIG" in s.status for s in sigs):
        raise IntegrityError(
            f"{what}: BAD signature (key {next(s.keyid for s in sigs if 'BADSIG' in s.status)}): "
            "the file was altered or corrupted; do not use this repository until it is fixed"
        )
    good = [s for s in sigs if {"GOODSIG", "VALIDSIG"} <= s.status]
    if keyrings.fingerprints:
        allowed = keyrings.fingerprints
        good = [
            s
            for s in good
            if any(f and f.endswith(k) for k in allowed for f in (s.fingerprint, s.primary))
        ]
    if good:
        return
    reasons = []
    for s in sigs:
        if "NO_PUBKEY" in s.status:
            reasons.append(f"signed by key {s.keyid}, which is not in {keyrings.describe()}")
        elif "EXPKEYSIG" in s.status:
            reasons.append(f"signed by key {s.keyid}, which has expired")
        elif "REVKEYSIG" in s.status:
            reasons.append(f"signed by key {s.keyid}, which was revoked")
        elif {"GOODSIG", "VALIDSIG"} <= s.status:
            reasons.append(f"signed by {s.fingerprint}, not one of the keys Signed-By allows")
    detail = "; ".join(reasons) or "no signature found"
    raise IntegrityError(
        f"{what}: signature does not verify with {keyrings.describe()}: {detail}; update the "
        "image's archive keyring or fix Signed-By"
    )


def _gpgv(args: list[str], keyrings: Keyrings, tmp: Path, what: str) -> str:
    argv = [gpgv_binary(), "--status-fd", "1"]
    for i, (_name, data) in enumerate(keyrings.rings):
        ring = tmp / f"keyring-{i}.gpg"
        ring.write_bytes(data)
        argv += ["--keyring", str(ring)]
    home = tmp / "home"
    home.mkdir(mode=0o700)
    try:
        proc = subprocess.run(
            argv + args,
            capture_output=True,
            env={**os.environ, "GNUPGHOME": str(home), "LC_ALL": "C"},
            timeout=GPGV_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise IntegrityError(f"{what}: gpgv did not finish in {GPGV_TIMEOUT:.0f} s") from None
    # The status lines echo bytes of the signature (armor headers, user ids): not always UTF-8.
    return proc.stdout.decode("utf-8", "replace")


def _check_clearsigned_shape(data: bytes, what: str) -> None:
    """One signed message, nothing before or after it (as apt insists): gpgv alone would also
    accept text outside the signed part."""
    lines = [ln.rstrip(b"\r") for ln in data.strip().split(b"\n")]
    begin = b"-----BEGIN PGP SIGNED MESSAGE-----"
    ok = (
        lines
        and lines[0] == begin
        and lines.count(begin) == 1
        and lines.count(b"-----BEGIN PGP SIGNATURE-----") == 1
        and lines[-1] == b"-----END PGP SIGNATURE-----"
    )
    if not ok:
        raise IntegrityError(
            f"{what}: not a single clearsigned message (text outside the signature, or no "
            "signature): the file was altered or the server returned something else"
        )


def verify_clearsigned(data: bytes, keyrings: Keyrings, what: str) -> bytes:
    """The signed text of an InRelease file, after gpgv accepted its signature."""
    _check_clearsigned_shape(data, what)
    with tempfile.TemporaryDirectory(prefix=runs.owned_prefix("ocipatch-gpgv-")) as t:
        tmp = Path(t)
        (tmp / "InRelease").write_bytes(data)
        out = tmp / "signed"
        status = _gpgv(["--output", str(out), str(tmp / "InRelease")], keyrings, tmp, what)
        _check(status, keyrings, what)
        return out.read_bytes()


def verify_detached(data: bytes, signature: bytes, keyrings: Keyrings, what: str) -> bytes:
    """`data` (a Release file), after gpgv accepted `signature` (Release.gpg) for it."""
    with tempfile.TemporaryDirectory(prefix=runs.owned_prefix("ocipatch-gpgv-")) as t:
        tmp = Path(t)
        (tmp / "Release").write_bytes(data)
        (tmp / "Release.gpg").write_bytes(signature)
        status = _gpgv([str(tmp / "Release.gpg"), str(tmp / "Release")], keyrings, tmp, what)
        _check(status, keyrings, what)
        return data
