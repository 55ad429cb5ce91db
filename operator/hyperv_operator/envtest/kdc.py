"""A throwaway MIT Kerberos realm on loopback for the integration suite and the demo.

    kdc = KDC(realm="HV.TEST").start()           # krb5kdc from Debian's krb5-kdc, on a free port
    kdc.add_principal("operator", password="...")  # user principal (password kept valid)
    kdc.add_service("HTTP/localhost")             # random key, written to a keytab
    kdc.keytab("HTTP/localhost")                   # -> Path of that keytab
    kdc.env                                        # KRB5_CONFIG etc. for clients in other processes
    kdc.stop()

Everything (database, stash, krb5.conf, kdc.conf, keytabs, log) lives in one temporary folder that
`stop()` removes. The packages come from `scripts/install-system-deps.sh` (run by `make venv`).
`start()` sets KRB5_CONFIG in this process too, so in-process clients and acceptors see the realm.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from hyperv_operator.envtest.controlplane import free_port

_SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")


def _tool(name: str) -> str:
    found = shutil.which(name) or next((f"{d}/{name}" for d in _SBIN if os.access(f"{d}/{name}", os.X_OK)), None)
    if found is None:
        raise RuntimeError(f"{name} not found: run scripts/install-system-deps.sh (make venv does)")
    return found


class KDC:
    def __init__(self, realm: str = "HV.TEST") -> None:
        self.realm = realm
        self.port = 0
        self.dir = Path(tempfile.mkdtemp(prefix="hyperv-kdc-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self._previous_env: dict[str, str | None] = {}
        self.startup_seconds = 0.0
        """Wall time of `start()` (database creation + KDC up), for the suite's note."""

    @property
    def krb5_conf(self) -> Path:
        return self.dir / "krb5.conf"

    @property
    def env(self) -> dict[str, str]:
        return {"KRB5_CONFIG": str(self.krb5_conf), "KRB5_KDC_PROFILE": str(self.dir / "kdc.conf")}

    def start(self) -> KDC:
        began = time.monotonic()
        self.port = free_port()
        d = self.dir
        self.krb5_conf.write_text(
            "[libdefaults]\n"
            f"  default_realm = {self.realm}\n"
            "  dns_lookup_kdc = false\n  dns_lookup_realm = false\n"
            # Service names are used as written (HTTP/localhost), never canonicalised through DNS.
            "  rdns = false\n  dns_canonicalize_hostname = false\n"
            "  udp_preference_limit = 1\n  forwardable = true\n"
            "[realms]\n"
            f"  {self.realm} = {{\n    kdc = 127.0.0.1:{self.port}\n  }}\n"
            "[domain_realm]\n"
            f"  localhost = {self.realm}\n"
        )
        (d / "kdc.conf").write_text(
            "[kdcdefaults]\n"
            f"  kdc_ports = {self.port}\n  kdc_tcp_ports = {self.port}\n"
            "[realms]\n"
            f"  {self.realm} = {{\n"
            f"    database_name = {d}/principal\n"
            f"    key_stash_file = {d}/stash\n"
            f"    acl_file = {d}/kadm5.acl\n"
            f"    kdc_listen = 127.0.0.1:{self.port}\n    kdc_tcp_listen = 127.0.0.1:{self.port}\n"
            "    max_life = 10h 0m 0s\n"
            "    supported_enctypes = aes256-cts-hmac-sha1-96:normal aes128-cts-hmac-sha1-96:normal\n"
            "  }\n"
            "[logging]\n"
            f"  kdc = FILE:{d}/kdc.log\n"
        )
        (d / "kadm5.acl").write_text("")
        env = dict(os.environ, **self.env)
        subprocess.run(
            [_tool("kdb5_util"), "create", "-s", "-r", self.realm, "-P", secrets.token_urlsafe(16)],
            env=env, check=True, capture_output=True,
        )
        self._proc = subprocess.Popen(
            [_tool("krb5kdc"), "-n", "-r", self.realm], env=env,
            stdout=subprocess.DEVNULL, stderr=open(d / "kdc.stderr", "wb"),  # noqa: SIM115
        )
        for name, value in self.env.items():
            self._previous_env[name] = os.environ.get(name)
            os.environ[name] = value
        self._wait_listening()
        self.startup_seconds = time.monotonic() - began
        return self

    def _wait_listening(self) -> None:
        import socket

        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"krb5kdc exited: {(self.dir / 'kdc.stderr').read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("krb5kdc did not start listening within 15 s")

    def kadmin(self, query: str) -> str:
        result = subprocess.run(
            [_tool("kadmin.local"), "-r", self.realm, "-q", query],
            env=dict(os.environ, **self.env), check=True, capture_output=True, text=True,
        )
        if "error" in result.stderr.lower() or "unable" in result.stderr.lower():
            raise RuntimeError(f"kadmin.local {query.split()[0]} failed: {result.stderr.strip()}")
        return result.stdout

    def add_principal(self, name: str, *, password: str, keytab: bool = False) -> str:
        """A user principal; with `keytab` also its keys in a keytab (the password stays valid)."""
        self.kadmin(f"addprinc -pw {password} {name}")
        if keytab:
            self.kadmin(f"ktadd -k {self.keytab(name)} -norandkey {name}")
        return f"{name}@{self.realm}"

    def add_service(self, name: str) -> Path:
        """A service principal (e.g. HTTP/localhost) with a random key, exported to its keytab."""
        self.kadmin(f"addprinc -randkey {name}")
        self.kadmin(f"ktadd -k {self.keytab(name)} {name}")
        return self.keytab(name)

    def keytab(self, name: str) -> Path:
        return self.dir / (name.replace("/", "_") + ".keytab")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for name, value in self._previous_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> KDC:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
