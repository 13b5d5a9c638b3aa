"""One root exception and a few typed subclasses, each with its own documented exit code.

The CLI prints `str(error)` as one line and exits with `error.exit_code`; a traceback is shown
only with --debug. docs/cli.md lists the codes; keep the two in step.
"""

from __future__ import annotations


class OcipatchError(Exception):
    """Root of every error ocipatch reports to a user."""

    exit_code = 1


class UsageError(OcipatchError):
    """Bad input on the command line: a malformed reference, an unknown transport, a bad flag."""

    exit_code = 2


class RegistryError(OcipatchError):
    """A registry answered with an error, or could not be reached after the retries."""

    exit_code = 3

    def __init__(
        self,
        message: str,
        *,
        registry: str = "",
        repository: str = "",
        digest: str = "",
        status: int | None = None,
        retryable: bool = False,
    ) -> None:
        parts = [message]
        where = "/".join(p for p in (registry, repository) if p)
        if where:
            parts.append(f"registry {where}")
        if digest:
            parts.append(digest)
        if status is not None:
            parts.append(f"HTTP {status}")
        super().__init__(
            ": ".join(parts[:1]) + (" (" + ", ".join(parts[1:]) + ")" if parts[1:] else "")
        )
        self.registry = registry
        self.repository = repository
        self.digest = digest
        self.status = status
        self.retryable = retryable


class AuthError(RegistryError):
    """Credentials were missing or refused (HTTP 401/403). Never retried."""

    exit_code = 4


class NotFoundError(OcipatchError):
    """The image, tag, digest, layout or archive does not exist."""

    exit_code = 5


class PlatformError(OcipatchError):
    """The requested platform is not in the image index."""

    exit_code = 6


class IntegrityError(OcipatchError):
    """Content did not match its digest or size, or a signature did not verify."""

    exit_code = 7


class ImageFormatError(OcipatchError):
    """A manifest, config, layout or archive is malformed or of an unknown media type."""

    exit_code = 8


class UnsupportedError(OcipatchError):
    """The image uses something ocipatch does not handle (yet), e.g. a package manager."""

    exit_code = 9


class ReportError(OcipatchError):
    """A scanner report is unreadable, of an unknown schema, or for another OS or architecture."""

    exit_code = 10


class ResolveError(OcipatchError):
    """The required package versions cannot be found in the package repositories."""

    exit_code = 11


class ApplyError(OcipatchError):
    """The package manager failed while installing the updates."""

    exit_code = 12


class VerifyError(OcipatchError):
    """After applying, the package database does not show the required versions."""

    exit_code = 13


class SandboxError(OcipatchError):
    """No sandbox backend could run here, or the chosen one failed to start."""

    exit_code = 14


class UnsafeArchiveError(IntegrityError):
    """A layer tries to write outside the root (traversal, symlinked parent, hardlink escape)."""


class OutOfSpaceError(OcipatchError):
    """A directory ocipatch writes to filled up (ENOSPC) or hit its quota (EDQUOT); the message
    names the directory and the setting that moves that work elsewhere."""

    exit_code = 15
