"""Errors from a Hyper-V host, classified once, so callers decide only between retry and stall."""

from __future__ import annotations


class HostError(Exception):
    """A command failed on the host, or the host could not be reached."""

    def __init__(
        self,
        message: str,
        *,
        fq_error_id: str = "",
        category: str = "",
        target: str = "",
        exception_type: str = "",
        command: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.fq_error_id = fq_error_id
        self.category = category
        self.target = target
        self.exception_type = exception_type
        self.command = command

    def __str__(self) -> str:
        where = f" ({self.command})" if self.command else ""
        return f"{self.message}{where}"


class TransientHostError(HostError):
    """Retrying later can succeed: object in use, busy, timeouts, dropped connections."""


class PermanentHostError(HostError):
    """Retrying cannot fix it: not found, invalid argument, access denied, unknown command."""


class HostUnreachableError(TransientHostError):
    """The WinRM endpoint could not be reached or refused the connection (TLS, auth, network)."""


class ClientClosedError(TransientHostError):
    """The client was closed (replaced after a HyperVHost or Secret edit) before or during the call.
    Transient by construction: the next attempt gets the new client; the VM never fails for it."""


_TRANSIENT_CATEGORIES = frozenset({"ResourceBusy", "ResourceUnavailable", "OperationTimeout", "ConnectionError"})
_PERMANENT_CATEGORIES = frozenset(
    {
        "ObjectNotFound",
        "InvalidArgument",
        "InvalidData",
        "PermissionDenied",
        "SecurityError",
        "NotImplemented",
        "InvalidType",
        "ParserError",
        "SyntaxError",
        "NotInstalled",
        "AuthenticationError",
        "MetadataError",
    }
)
_TRANSIENT_MARKERS = (
    "object is in use",
    "being used by another process",
    "0x80070020",
    "resource busy",
    "timed out",
    "timeout",
    "try again",
)


def classify(
    message: str,
    *,
    fq_error_id: str = "",
    category: str = "",
    target: str = "",
    exception_type: str = "",
    command: str = "",
) -> HostError:
    """Map a PowerShell ErrorRecord's fields to a transient or permanent error.

    Unknown categories are permanent: a wrong guess towards "transient" would retry forever with
    no reason shown, while a wrong guess towards "permanent" stalls with the host's own message.
    """
    kwargs = dict(fq_error_id=fq_error_id, category=category, target=target, exception_type=exception_type,
                  command=command)
    lowered = message.lower()
    if category in _TRANSIENT_CATEGORIES or any(marker in lowered for marker in _TRANSIENT_MARKERS):
        return TransientHostError(message, **kwargs)
    if category in _PERMANENT_CATEGORIES or fq_error_id.startswith("CommandNotFoundException"):
        return PermanentHostError(message, **kwargs)
    if category == "ResourceExists" or category == "InvalidOperation" or category == "WriteError":
        return PermanentHostError(message, **kwargs)
    return PermanentHostError(message, **kwargs)
