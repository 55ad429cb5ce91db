"""How a simulated cmdlet fails: the fields of a PowerShell ErrorRecord."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from hyperv_operator.hyperv.commands import HostObject, Statement


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


class BatchError(CmdletError):
    """A batch of statements that ran to its end with failed statements among them (Windows runs the
    next statement after a statement-terminating error). It is the first failure (what a caller that
    raises on any error reports), and carries every failure and the output of the statements that
    succeeded: the WS-Man server sends them as Windows does, output and error records in their streams
    and the pipeline Completed."""

    def __init__(self, errors: list[CmdletError], output: list[HostObject]) -> None:
        first = errors[0]
        super().__init__(first.message, category=first.category, fq_error_id=first.fq_error_id,
                         target=first.target, exception_type=first.exception_type)
        self.errors = errors
        self.output = output
        self.command: str = str(getattr(first, "command", "") or "")


def run_batch(statements: Sequence[Statement], run: Callable[[Statement], list[HostObject]]) -> list[HostObject]:
    """Run each statement with `run`, as Windows runs a batch: a failed statement does not end it (only
    an ActionPreferenceStopException would; which Hyper-V failures are statement-terminating is not
    documented, so every failure is taken as one: the stricter reading for a caller). The output of
    the statements that succeeded, or a BatchError with every failure once the batch is through."""
    output: list[HostObject] = []
    errors: list[CmdletError] = []
    for statement in statements:
        try:
            output.extend(run(statement))
        except BatchError as err:
            errors += err.errors
            output += err.output
        except CmdletError as err:
            errors.append(err)
    if errors:
        raise BatchError(errors, output)
    return output
