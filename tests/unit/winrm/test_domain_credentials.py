"""Domain credentials: the Secret's keys per auth, and how a keytab reaches pypsrp/pyspnego."""

from __future__ import annotations

import asyncio
import base64

import pytest

from hyperv_operator.api import HyperVHostSpec
from hyperv_operator.hosts import HostConfigError, SecretCache, load_credentials
from hyperv_operator.hyperv.winrm import WinRMSettings


def _spec(auth: str) -> HyperVHostSpec:
    return HyperVHostSpec.from_dict({"address": "hv01.corp.example", "auth": auth,
                                     "credentialsSecretRef": {"name": "creds"},
                                     "defaultVmPath": "\\\\FS\\VMSHARE\\VMs"})


def _reader(data: dict[str, bytes]):  # type: ignore[no-untyped-def]
    encoded = {k: base64.b64encode(v).decode() for k, v in data.items()}
    return SecretCache(lambda namespace, name: encoded)


def test_kerberos_secret_with_a_keytab_instead_of_a_password() -> None:
    creds = asyncio.run(load_credentials(_spec("kerberos"), "ns",
                                         _reader({"username": b"svc-hv@CORP.EXAMPLE", "keytab": b"\x05\x02kt"})))
    assert creds.username == "svc-hv@CORP.EXAMPLE" and creds.keytab == b"\x05\x02kt" and creds.password is None
    rotated = asyncio.run(load_credentials(_spec("kerberos"), "ns",
                                           _reader({"username": b"svc-hv@CORP.EXAMPLE", "keytab": b"\x05\x02k2"})))
    assert rotated.fingerprint() != creds.fingerprint()  # a rotated keytab rebuilds the client


def test_kerberos_secret_needs_a_password_or_a_keytab() -> None:
    with pytest.raises(HostConfigError, match="username and password \\(or keytab\\)"):
        asyncio.run(load_credentials(_spec("kerberos"), "ns", _reader({"username": b"svc-hv@CORP.EXAMPLE"})))


def test_a_keytab_is_ignored_for_ntlm() -> None:
    with pytest.raises(HostConfigError, match="needs keys username and password"):
        asyncio.run(load_credentials(_spec("ntlm"), "ns", _reader({"username": b"u", "keytab": b"kt"})))


def test_keytab_goes_to_pyspnego_as_a_credential_and_the_spn_is_http() -> None:
    import spnego

    settings = WinRMSettings(server="hv01.corp.example", auth="kerberos", username="svc-hv@CORP.EXAMPLE",
                             keytab="/tmp/kt")
    kwargs = settings.wsman_kwargs()
    assert kwargs["username"] == spnego.KerberosKeytab(keytab="/tmp/kt", principal="svc-hv@CORP.EXAMPLE")
    assert kwargs["password"] is None and kwargs["negotiate_service"] == "HTTP"


@pytest.mark.parametrize("auth", ["ntlm", "credssp", "basic"])
def test_keytab_with_other_auths_is_refused(auth: str) -> None:
    with pytest.raises(ValueError, match="keytab works only with kerberos or negotiate"):
        WinRMSettings(server="h", auth=auth, username="u", password="p", keytab="/tmp/kt")
