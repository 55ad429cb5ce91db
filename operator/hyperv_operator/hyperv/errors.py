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



# pypsrp exceptions that mean the client's PSRP state and the host's no longer agree: a fragment out of
# order (the continuation of a reply that was lost to a read timeout), a pool or pipeline in a state
# the next step cannot follow. The session is at fault, not the command or the host, so these are
# transient: the pool is retired and the retry runs on a fresh one (never permanent, never a stall).
#
# - FragmentError ("Fragment Id: 3 != Expected Fragment Id: 0"): the Receive after a lost reply gets its
#   continuation, because Windows processes a Receive without wsmv:OperationID as new, never as a
#   replay (MS-WSMV 3.1.4.1.39 Robust Connection Support,
#   https://learn.microsoft.com/en-us/openspecs/windows_protocols/ms-wsmv/ba368905-7832-4777-a9dc-d851b440eb31);
#   a pool reused after a read timeout fails (jborean93/pypsrp#21).
# - InvalidRunspacePoolStateError, InvalidPipelineStateError, InvalidPSRPOperation: pypsrp refuses the
#   next step on a pool or pipeline left mid-way (pypsrp.exceptions; same pypsrp#21).
PROTOCOL_DESYNC_ERRORS = frozenset({
    "FragmentError",
    "InvalidRunspacePoolStateError",
    "InvalidPipelineStateError",
    "InvalidPSRPOperation",
})


# How a PowerShell ErrorRecord is classified. The FullyQualifiedErrorId (`<ErrorId>,<command type>`), the
# exception's .NET type and the CategoryInfo category decide; the message text never does (it is
# localized, and "...try again." ends the permanent CommandNotFound message). Real ids, with sources:
#
# - CommandNotFoundException; ObjectNotFound / CommandNotFoundException: no such cmdlet (the Hyper-V
#   module is missing) -> permanent, never "not found". seflerZ/oneclick-gpu-pv#4
# - InvalidParameter,Microsoft.HyperV.PowerShell.Commands.GetVM; InvalidArgument / VirtualizationException:
#   Get-VM found no such VM -> not found. pluralsight/PS-AutoLab-Env#133
# - ObjectNotFound,Microsoft.HyperV.PowerShell.Commands.<cmdlet>; ObjectNotFound -> not found. same issue
# - PathNotFound,...GetItemCommand; ObjectNotFound / ItemNotFoundException -> not found. Get-Item docs
# - OperationFailed,Microsoft.HyperV.PowerShell.Commands.StopVM; NotSpecified: "Failed to stop." (no
#   shutdown integration service, guest too slow) -> permanent. MattHodge/PackerTemplates#18
# - ParameterArgumentValidationError,...; InvalidData / ParameterBindingValidationException -> permanent.
#   microsoft/MSLab#518
# - NamedParameterNotFound,...; InvalidArgument / ParameterBindingException -> permanent.
#   MicrosoftDocs/azure-docs#85995
# - Unspecified,...Commands.GetVM; NotSpecified (a localized access-denied text) -> permanent.
#   kubernetes/minikube#13111
# - JobFailure; OperationStopped / PSRemotingTransportException: a value over the endpoint's
#   MaximumReceivedObjectSizeMB -> permanent. dpaulson45/ExchangeLogCollector#29
# - ObjectInUse / *IOError with System.IO.IOException, ResourceBusy: in use -> transient. Get-VHD docs

_NOT_FOUND_EXCEPTIONS = frozenset({
    "System.Management.Automation.ItemNotFoundException",
    "System.IO.FileNotFoundException",
    "System.IO.DirectoryNotFoundException",
})
_PERMANENT_IDS = frozenset({
    "CommandNotFoundException",  # a host without the Hyper-V module: retrying cannot load it
    "ParameterArgumentValidationError",
    "NamedParameterNotFound",
    "MissingMandatoryParameter",
    "ParameterBindingFailed",
    "JobFailure",  # a parameter value over the endpoint's MaximumReceivedObjectSizeMB
    "ScriptNotRecognized",
})
_TRANSIENT_IDS = frozenset({"ObjectInUse", "OperationTimeout", "ResourceBusy"})
_TRANSIENT_CATEGORIES = frozenset({"ResourceBusy", "ResourceUnavailable", "OperationTimeout", "ConnectionError"})
_TRANSIENT_EXCEPTIONS = frozenset({"System.TimeoutException"})
# Sharing violations surface as System.IO.IOException with category WriteError/ReadError and an id
# like RemoveFileSystemItemIOError (the same exception type also carries "disk full"), and from
# Hyper-V as a VirtualizationException, e.g. New-VHD -Differencing while another New-VHD has the same
# parent open ("Failed to create the virtual hard disk ... being used by another process",
# microsoft/openvmm#1600: several differencing disks made at once from one base). The HResult
# (0x80070020) is not part of the record's fields we receive, so a sharing violation is told apart by
# its HRESULT when Hyper-V prints it, else by .NET's ERROR_SHARING_VIOLATION text (English hosts only:
# elsewhere it stays permanent and stalls with the host's message, the safe direction).
_SHARING_VIOLATION_EXCEPTIONS = frozenset({"System.IO.IOException",
                                           "Microsoft.HyperV.PowerShell.VirtualizationException"})
_SHARING_VIOLATION = ("0x80070020", "being used by another process")


def error_id(fq_error_id: str) -> str:
    """The ErrorId part of a FullyQualifiedErrorId ("InvalidParameter,Microsoft...GetVM" -> "InvalidParameter")."""
    return fq_error_id.split(",", 1)[0].strip()


def command_type(fq_error_id: str) -> str:
    """The command type part of a FullyQualifiedErrorId ("" when absent)."""
    return fq_error_id.split(",", 1)[1].strip() if "," in fq_error_id else ""


def is_not_found(error: HostError) -> bool:
    """The object the command addressed does not exist (by id, type and category, never by text).

    `Get-VM -Id <guid>` of a VM that is gone fails with InvalidParameter / InvalidArgument (not
    ObjectNotFound), so that id counts as not found when Get-VM raised it."""
    eid = error_id(error.fq_error_id)
    if eid == "CommandNotFoundException":
        return False  # category ObjectNotFound, but the *command* is missing, not the object
    if error.category == "ObjectNotFound" or error.exception_type in _NOT_FOUND_EXCEPTIONS:
        return True
    if eid in ("ObjectNotFound", "PathNotFound", "ItemNotFound"):
        return True
    return eid == "InvalidParameter" and command_type(error.fq_error_id).endswith(".GetVM") and (
        error.category == "InvalidArgument")


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

    Unknown ids and categories are permanent: a wrong guess towards "transient" would retry forever
    with no reason shown, while a wrong guess towards "permanent" stalls with the host's own message.
    """
    kwargs = dict(fq_error_id=fq_error_id, category=category, target=target, exception_type=exception_type,
                  command=command)
    eid = error_id(fq_error_id)
    if eid in _PERMANENT_IDS:
        return PermanentHostError(message, **kwargs)
    if (eid in _TRANSIENT_IDS or category in _TRANSIENT_CATEGORIES or exception_type in _TRANSIENT_EXCEPTIONS
            or (exception_type in _SHARING_VIOLATION_EXCEPTIONS and any(m in message for m in _SHARING_VIOLATION))):
        return TransientHostError(message, **kwargs)
    return PermanentHostError(message, **kwargs)
