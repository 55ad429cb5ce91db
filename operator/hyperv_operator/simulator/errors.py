"""How a simulated cmdlet fails: the fields of a PowerShell ErrorRecord."""

from __future__ import annotations


class CmdletError(Exception):
    """A terminating error, shaped like the ErrorRecord Windows would return.

    `category` is a System.Management.Automation.ErrorCategory name (ObjectNotFound, InvalidArgument,
    ResourceBusy, PermissionDenied, ResourceExists, InvalidOperation, WriteError, ...);
    `fq_error_id` is the FullyQualifiedErrorId ("ObjectNotFound,Microsoft.HyperV.PowerShell.Commands.GetVM");
    `exception_type` the .NET exception type name.
    """

    def __init__(
        self,
        message: str,
        *,
        category: str,
        fq_error_id: str,
        target: str = "",
        exception_type: str = "Microsoft.HyperV.PowerShell.VirtualizationException",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.category = category
        self.fq_error_id = fq_error_id
        self.target = target
        self.exception_type = exception_type
