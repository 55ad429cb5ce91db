"""The SMB second hop: a WinRM session on a Hyper-V host reading `\\\\FS\\share` on a file server.

A WinRM logon by Kerberos (without delegation), NTLM or Basic holds no credential the host could
present to the file server, so every file and VHD operation on the share is denied — and `Test-Path`
answers `$false`, which looks exactly like "not found". `read_denied` tells the two apart with a second
read (Get-Item raises an UnauthorizedAccess / PermissionDenied error for a path it may not read);
`fix` is the sentence the operator puts in status and `check-host` prints.
"""

from __future__ import annotations

from hyperv_operator.hyperv import cmdlets
from hyperv_operator.hyperv.client import HyperVClient
from hyperv_operator.hyperv.errors import ClientClosedError, HostError

REASON = "BaseDiskAccessDenied"


def unc_server(path: str) -> str | None:
    """`\\\\FS\\share\\x` -> `FS`; None for a local or device path."""
    if not path.startswith("\\\\") or path.startswith(("\\\\?\\", "\\\\.\\")):
        return None
    return path[2:].split("\\", 1)[0] or None


def is_access_denied(error: HostError) -> bool:
    return error.category == "PermissionDenied" or "UnauthorizedAccess" in error.fq_error_id


async def read_denied(client: HyperVClient, path: str) -> bool:
    """True if the host answers access denied (not not-found) when reading `path`."""
    try:
        await client.run([cmdlets.get_item(path)])
    except ClientClosedError:
        raise  # not an answer about the path: the call never reached the host
    except HostError as error:
        return is_access_denied(error)
    return False


def fix(file_server: str, host_computer: str) -> str:
    """Both fixes, with the names filled in."""
    return (
        f"either use auth: credssp (on the host: Enable-WSManCredSSP -Role Server; the operator delegates the "
        f"credential), or let the host delegate Kerberos to the file server (on a domain controller or with "
        f"the AD module: Enable-SmbDelegation -SmbServer {file_server} -SmbClient {host_computer}) and use auth: "
        f"kerberos"
    )


def denied_message(path: str, host: str, host_computer: str | None = None) -> str:
    server = unc_server(path) or "the file server"
    return (
        f"base disk {path} cannot be read from host {host}: access denied on {server}, not missing. The WinRM "
        f"session is a second hop to {server} and holds no credential for it; {fix(server, host_computer or host)}. "
        f"Nothing was created (see docs/domain-hosts.md)"
    )
