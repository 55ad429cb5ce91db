"""Who a WinRM session is on the simulated host, and whether it can reach a file server (the second hop).

A WinRM logon with Kerberos, NTLM or Basic is a *network logon*: the host holds no credential it could
present to another machine, so `\\\\FS\\share` answers access denied (the "second hop"). Two things give
the session a credential for the file server:

- CredSSP: the client delegates the user's credential to the host, which then logs on to FS as the user.
- Kerberos constrained delegation from the host to the file server (`Enable-SmbDelegation -SmbServer FS
  -SmbClient HV01`, resource-based, needs a Kerberos logon to start from).

Everything that runs *inside* the session uses its identity: file cmdlets, the Hyper-V cmdlets that
create or read a VHD on the share (VMMS impersonates the caller), and processes the session starts
through `Win32_Process.Create` (they run with the caller's token — the detached copy worker). A running
VM's disk I/O on the share is done as the Hyper-V host's computer account (Hyper-V over SMB grants the
host's computer account full control of the share), so a started VM is never affected.

`SecondHop` is off unless a test turns it on (`SimulatedHost.second_hop`): the default host behaves as
a host whose share is reachable by any session.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SessionIdentity:
    user: str
    auth: str
    """How the session authenticated: basic, ntlm, kerberos, credssp or certificate."""
    delegated_credential: bool = False
    """CredSSP handed the user's credential to the host (TSPasswordCreds)."""


@dataclass
class SecondHop:
    """The domain around the simulated host: which servers are file servers across a second hop, and
    which of them the host may delegate Kerberos tickets to (`Enable-SmbDelegation`)."""

    host_name: str = "HV01"
    file_servers: set[str] = field(default_factory=lambda: {"FS"})
    kerberos_delegation_to: set[str] = field(default_factory=set)

    def enable_smb_delegation(self, smb_server: str) -> None:
        self.kerberos_delegation_to.add(smb_server.upper())

    def may_reach(self, identity: SessionIdentity | None, server: str) -> bool:
        server = server.upper()
        if identity is None or server not in {s.upper() for s in self.file_servers}:
            return True  # not a WinRM session (test harness), or not a remote file server
        if identity.delegated_credential:
            return True
        return identity.auth == "kerberos" and server in {s.upper() for s in self.kerberos_delegation_to}


def unc_server(path: str) -> str | None:
    """`\\\\FS\\share\\x` -> `FS`; None for a local path."""
    if not path.startswith("\\\\") or path.startswith("\\\\?\\") or path.startswith("\\\\.\\"):
        return None
    server = path[2:].split("\\", 1)[0]
    return server or None


_current = threading.local()


def current() -> SessionIdentity | None:
    """The identity of the WinRM session whose pipeline runs on this thread (None outside one)."""
    value = getattr(_current, "identity", None)
    return value if isinstance(value, SessionIdentity) else None


@contextlib.contextmanager
def acting_as(identity: SessionIdentity | None) -> Iterator[None]:
    previous = getattr(_current, "identity", None)
    _current.identity = identity
    try:
        yield
    finally:
        _current.identity = previous
