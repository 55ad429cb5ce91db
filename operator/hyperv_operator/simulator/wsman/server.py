"""A WS-Management (WinRM) endpoint over HTTP/HTTPS in front of a cmdlet executor.

    server = WSManServer(executor, username="operator", password="secret")
    server.start(tls=(cert_pem, key_pem))      # background thread; port 0 picks a free port
    ... WinRMClient(WinRMSettings(server="127.0.0.1", port=server.port, ...)) ...
    server.stop()

Authentication: Basic (username/password from the constructor) and, when `ntlm=True`, NTLM/Negotiate
through pyspnego's acceptor with WinRM message encryption (multipart/encrypted bodies) over HTTP.
`kerberos_keytab` adds Kerberos (Negotiate choosing Kerberos, and the `Kerberos` scheme) with that
service keytab through gssapi; `credssp=True` adds CredSSP (pyspnego's acceptor, NTLM inside TLS), after
which the session holds the user's delegated credential; `client_certificates` (HTTPS only) maps client
certificates issued by `client_ca` to users by their subject's common name, like WinRM's certificate
mapping (`auth.SessionIdentity` records who each shell is and how it authenticated).
A failed or missing authentication is answered like Windows: HTTP 401, empty body, one
`WWW-Authenticate` header per enabled scheme.

Test hooks: `drop_next(n)` closes the TCP connection of the next n requests without an answer,
`set_drop_rate(rate, seed)` drops each request with that probability (seeded; `dropped_requests` counts),
`delay_next(seconds, n)` holds the next n requests before handling them (read timeouts),
`delay_next_output_reply(seconds)` handles the next Receive that carries output at once and answers it
late (its output is gone from the host when the client gives up),
`request_count` counts HTTP requests, `pipeline_requests[command_id]` the SOAP requests per pipeline,
`received` logs every decoded pipeline (statements with all parameters, as they arrived).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import random
import re
import socket
import ssl
import struct
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from hyperv_operator.hyperv.commands import Command
from hyperv_operator.simulator.identity import SessionIdentity
from hyperv_operator.simulator.jea import RestrictedExecutor
from hyperv_operator.simulator.wsman import soap
from hyperv_operator.simulator.wsman.psrp import Executor, PipelineSession, ReceivedPipeline, ShellSession

log = logging.getLogger(__name__)

_MAX_RECEIVE_BYTES = 96 * 1024
_DEFAULT_CONFIGURATIONS = ("Microsoft.PowerShell",)


class WSManServer:
    def __init__(
        self,
        executor: Executor,
        *,
        username: str,
        password: str,
        basic: bool = True,
        ntlm: bool = False,
        machine: str = "HYPERV-SIM",
        configurations: Iterable[str] = _DEFAULT_CONFIGURATIONS,
        max_receive_wait: float | None = None,
        jea_configurations: Iterable[str] = (),
        kerberos_keytab: str | None = None,
        credssp: bool = False,
        client_ca: str | None = None,
        client_certificates: dict[str, str] | None = None,
    ) -> None:
        """`max_receive_wait` caps how long a Receive waits for output (default: the client's
        OperationTimeout, like Windows)."""
        self.executor = executor
        self.username = username
        self._password = password
        self.basic = basic
        self.ntlm = ntlm
        self.machine = machine
        self.jea_configurations = {c.lower() for c in jea_configurations}
        """Configurations that are JEA endpoints with the operator's role (`simulator.jea`)."""
        self.configurations = {c.lower() for c in configurations} | self.jea_configurations
        self.max_receive_wait = max_receive_wait
        self.kerberos_keytab = kerberos_keytab
        self.credssp = credssp
        self.client_ca = client_ca
        self.client_certificates = {k.lower(): v for k, v in (client_certificates or {}).items()}
        self.identities: list[SessionIdentity] = []
        """The identity of every shell created, in order."""

        self.shells: dict[str, ShellSession] = {}
        self.received: list[ReceivedPipeline] = []
        self.pipeline_requests: dict[str, int] = {}
        self.request_count = 0
        self.auth_failures = 0
        self.encrypted_requests = 0
        """Requests that arrived as multipart/encrypted (NTLM message encryption)."""

        self._lock = threading.Lock()
        self._drops = 0
        self._drop_rate = 0.0
        self._drop_rng = random.Random(0)
        self.dropped_requests = 0
        """Requests dropped by `set_drop_rate` (not those of `drop_next`)."""
        self._delays: list[float] = []
        self._output_reply_delays: list[tuple[float, threading.Event | None]] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._scheme = "http"
        self._host = "127.0.0.1"
        self._ntlm_dir: tempfile.TemporaryDirectory[str] | None = None

    # -- lifecycle --

    def start(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: tuple[str, str] | None = None,
    ) -> WSManServer:
        if self._httpd is not None:
            raise RuntimeError("server already started")
        if self.ntlm or self.credssp:
            self._setup_ntlm_store()
        if self.kerberos_keytab:
            # gssapi's acceptor reads the service keys from the default keytab.
            os.environ["KRB5_KTNAME"] = "FILE:" + self.kerberos_keytab
        httpd = _HTTPServer((host, port), _Handler)
        httpd.wsman = self
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(tls[0], tls[1])
            if self.client_ca:
                context.verify_mode = ssl.CERT_OPTIONAL
                context.load_verify_locations(self.client_ca)
            httpd.tls_context = context
            self._scheme = "https"
        self._host = host
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True, name=f"wsman-{self.port}"
        )
        self._thread.start()
        log.info("simulated WinRM listening on %s", self.url)
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        # Never hold the server lock while taking a shell's: a request thread holds its shell's lock
        # while it records into the server (lock order shell -> server), so the reverse deadlocks.
        with self._lock:
            shells = list(self.shells.values())
            self.shells.clear()
        for shell in shells:
            with shell.cond:
                shell.cond.notify_all()
        if self._ntlm_dir is not None:
            self._ntlm_dir.cleanup()
            self._ntlm_dir = None

    def __enter__(self) -> WSManServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("server not started")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"{self._scheme}://{self._host}:{self.port}/wsman"

    # -- fault injection and observation --

    def drop_next(self, n: int = 1) -> None:
        """Close the connection of the next `n` requests without answering them."""
        with self._lock:
            self._drops += n

    def set_drop_rate(self, rate: float, seed: int = 0) -> None:
        """Drop each following request (close its connection unanswered) with probability `rate`,
        drawn from a generator seeded with `seed`; 0 turns it off. `drop_next` drops come first."""
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"drop rate {rate} is not between 0 and 1")
        with self._lock:
            self._drop_rate = rate
            self._drop_rng = random.Random(seed)

    def delay_next(self, seconds: float, n: int = 1) -> None:
        """Hold the next `n` requests for `seconds` before handling them (answers arrive late)."""
        with self._lock:
            self._delays.extend([seconds] * n)

    def delay_next_output_reply(self, seconds: float, *, taken: threading.Event | None = None) -> None:
        """Test control, not a Windows behaviour: the next Receive whose answer carries pipeline
        output is handled at once (the output leaves the host's queue, as on Windows once a Receive
        is answered) and its answer is sent `seconds` later, so a client with a shorter read timeout
        never sees that output. `taken` is set when the output has been taken."""
        with self._lock:
            self._output_reply_delays.append((seconds, taken))

    def _output_reply_delay(self, action: str, body: str) -> float:
        if action != soap.ACTION_RECEIVE or "<rsp:Stream " not in body or "CommandId=" not in body:
            return 0.0
        with self._lock:
            if not self._output_reply_delays:
                return 0.0
            seconds, taken = self._output_reply_delays.pop(0)
        if taken is not None:
            taken.set()
        return seconds

    @property
    def received_commands(self) -> list[Command]:
        """Every command received, in order, with its parameters exactly as decoded."""
        with self._lock:
            return [c for p in self.received for s in p.statements for c in s.commands]

    def clear_log(self) -> None:
        with self._lock:
            self.received.clear()
            self.pipeline_requests.clear()
            self.request_count = 0

    def _record(self, pipeline: ReceivedPipeline) -> None:
        with self._lock:
            self.received.append(pipeline)
        log.info("received pipeline %s: %s", pipeline.pipeline_id, " ; ".join(str(s) for s in pipeline.statements))

    def _take_injection(self) -> tuple[bool, float]:
        with self._lock:
            self.request_count += 1
            if self._drops > 0:
                self._drops -= 1
                return True, 0.0
            if self._drop_rate > 0.0 and self._drop_rng.random() < self._drop_rate:
                self.dropped_requests += 1
                return True, 0.0
            return False, self._delays.pop(0) if self._delays else 0.0

    def _count_pipeline(self, command_id: str) -> None:
        with self._lock:
            key = command_id.upper()
            self.pipeline_requests[key] = self.pipeline_requests.get(key, 0) + 1

    # -- auth --

    def check_basic(self, header: str) -> str | None:
        """The authenticated user name, or None."""
        if not self.basic:
            return None
        try:
            user, _, password = base64.b64decode(header.split(" ", 1)[1].strip()).decode("utf-8").partition(":")
        except (ValueError, IndexError, UnicodeDecodeError):
            return None
        bare = user.rsplit("\\", 1)[-1]
        if bare.lower() == self.username.lower() and password == self._password:
            return user
        return None

    def _setup_ntlm_store(self) -> None:
        self._ntlm_dir = tempfile.TemporaryDirectory(prefix="wsman-ntlm-")
        path = Path(self._ntlm_dir.name) / "users"
        # Heimdal format DOMAIN:USER:PASSWORD; the domain must match what the client sends.
        lines = [f":{self.username}:{self._password}", f"{self.machine}:{self.username}:{self._password}"]
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o600)
        os.environ["NTLM_USER_FILE"] = str(path)

    def certificate_user(self, der: bytes | None) -> str | None:
        """The user a verified client certificate maps to (by its subject's common name), or None."""
        if not der or not self.client_certificates:
            return None
        from cryptography import x509

        names = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        return self.client_certificates.get(str(names[0].value).lower()) if names else None

    def auth_schemes(self) -> list[str]:
        schemes = []
        if self.ntlm or self.kerberos_keytab:
            schemes.append("Negotiate")
        if self.kerberos_keytab:
            schemes.append("Kerberos")
        if self.credssp:
            schemes.append("CredSSP")
        if self.basic:
            schemes.append('Basic realm="WSMAN"')
        return schemes

    # -- SOAP dispatch --

    def handle_soap(
        self, data: bytes, user: str, client_ip: str, identity: SessionIdentity | None = None
    ) -> tuple[int, bytes]:
        request: soap.Request | None = None
        try:
            request = soap.parse_request(data)
            action = request.action
            if action == soap.ACTION_CREATE:
                body = self._create(request, user, client_ip, identity)
            elif action == soap.ACTION_COMMAND:
                body = self._command(request)
            elif action == soap.ACTION_RECEIVE:
                body = self._receive(request)
            elif action == soap.ACTION_SEND:
                body = self._send(request)
            elif action == soap.ACTION_SIGNAL:
                body = self._signal(request)
            elif action == soap.ACTION_DELETE:
                body = self._delete(request)
            elif action == soap.ACTION_GET:
                body = self._get(request, user, client_ip)
            else:
                raise soap.action_not_supported(action)
            late = self._output_reply_delay(action, body)
            if late:
                log.info("test control: answering this Receive %.1fs late", late)
                time.sleep(late)
            return 200, soap.envelope(action + "Response", request.message_id, body)
        except soap.SoapError as err:
            log.info("WS-Management fault %s: %s", err.subcode, err.message)
            return 500, soap.fault(request.message_id if request else "", err, self.machine)

    def _shell(self, request: soap.Request) -> ShellSession:
        shell_id = request.selectors.get("ShellId", "").upper()
        with self._lock:
            shell = self.shells.get(shell_id)
        if shell is None:
            raise soap.shell_not_found(shell_id)
        return shell

    def _create(self, request: soap.Request, user: str, client_ip: str, identity: SessionIdentity | None) -> str:
        uri = request.resource_uri
        if not uri.startswith(soap.POWERSHELL_URI_PREFIX):
            raise soap.action_not_supported(f"Create {uri}")
        configuration = uri[len(soap.POWERSHELL_URI_PREFIX) :]
        if configuration.lower() not in self.configurations:
            raise soap.unknown_configuration(configuration, self.machine)
        body = request.body
        if body is None:
            raise soap.SoapError("w:InvalidMessageInformationHeader", 2150858817, "The Create request has no shell.")
        shell_id = (body.attrib.get("ShellId") or str(uuid.uuid4())).upper()
        creation = body.find("pwsh:creationXml", soap.NS)
        executor: Executor = self.executor
        if configuration.lower() in self.jea_configurations:
            executor = RestrictedExecutor(self.executor)
        # One pipeline at a time per shell (a runspace runs one pipeline at a time), shells at the same
        # time: on Windows each shell is a process of its own (wsmprovhost.exe), so one session's
        # slow command does not hold another's. The host model keeps its state under its own lock.
        shell = ShellSession(shell_id, uri, executor, threading.Lock(), self._record)
        shell.identity = identity
        with self._lock:
            self.shells[shell_id] = shell
            if identity is not None:
                self.identities.append(identity)
        if creation is not None and creation.text:
            shell.feed(base64.b64decode(creation.text))
        return soap.create_response(self.url, shell_id, uri, user, client_ip)

    def _command(self, request: soap.Request) -> str:
        shell = self._shell(request)
        body = request.body
        if body is None:
            raise soap.SoapError("w:InvalidMessageInformationHeader", 2150858817, "The Command request has no body.")
        command_id = (body.attrib.get("CommandId") or "").upper()
        args = body.find("rsp:Arguments", soap.NS)
        data = base64.b64decode(args.text or "") if args is not None else b""
        pipeline_id = _pipeline_id_of(data) or (uuid.UUID(command_id) if command_id else uuid.uuid4())
        command_id = command_id or str(pipeline_id).upper()
        self._count_pipeline(command_id)
        session = shell.new_pipeline(pipeline_id, command_id)
        if data:
            shell.feed(data, session)
        return soap.command_response(command_id)

    def _pipeline(self, shell: ShellSession, command_id: str) -> PipelineSession:
        with shell.cond:
            session = shell.pipelines.get(command_id.upper())
        if session is None:
            raise soap.command_not_found(command_id)
        return session

    def _send(self, request: soap.Request) -> str:
        shell = self._shell(request)
        stream = request.body.find("rsp:Stream", soap.NS) if request.body is not None else None
        if stream is None:
            raise soap.SoapError("w:InvalidMessageInformationHeader", 2150858817, "The Send request has no stream.")
        data = base64.b64decode(stream.text or "")
        command_id = stream.attrib.get("CommandId")
        if stream.attrib.get("Name") == "pr":  # host call responses: nothing to do
            return "<rsp:SendResponse/>"
        if command_id:
            self._count_pipeline(command_id)
            shell.feed(data, self._pipeline(shell, command_id))
        else:
            shell.feed(data)
        return "<rsp:SendResponse/>"

    def _receive(self, request: soap.Request) -> str:
        shell = self._shell(request)
        desired = request.body.find("rsp:DesiredStream", soap.NS) if request.body is not None else None
        command_id = desired.attrib.get("CommandId") if desired is not None else None
        session = None
        if command_id:
            self._count_pipeline(command_id)
            session = self._pipeline(shell, command_id)
        wait = request.operation_timeout if request.operation_timeout is not None else 20.0
        if self.max_receive_wait is not None:
            wait = min(wait, self.max_receive_wait)
        deadline = time.monotonic() + wait
        with shell.cond:
            while not shell.has_data(session) and not (session is not None and session.finished):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._httpd is None:
                    raise soap.operation_timed_out()
                shell.cond.wait(remaining)
            chunks = shell.take(session, _MAX_RECEIVE_BYTES)
            state = None
            if session is not None:
                done = session.finished and not shell.has_data(session)
                state = soap.STATE_DONE if done else soap.STATE_RUNNING
                if done:  # Windows keeps it until Terminate; we forget it once Done has been delivered
                    shell.pipelines.pop(session.command_id.upper(), None)
                    shell.pool.pipeline_table.pop(session.pipeline.pipeline_id, None)
        streams = [base64.b64encode(c).decode("ascii") for c in chunks]
        return soap.receive_response(streams, command_id.upper() if command_id else None, state)

    def _signal(self, request: soap.Request) -> str:
        shell = self._shell(request)
        body = request.body
        command_id = body.attrib.get("CommandId", "") if body is not None else ""
        code_el = body.find("rsp:Code", soap.NS) if body is not None else None
        code = (code_el.text or "").strip() if code_el is not None else ""
        self._count_pipeline(command_id)
        with shell.cond:
            session = shell.pipelines.get(command_id.upper())
        if session is not None:
            if code in (soap.SIGNAL_PS_CTRL_C, soap.SIGNAL_CTRL_C):
                shell.stop(session)
            else:
                shell.terminate(session)
        return "<rsp:SignalResponse/>"

    def _delete(self, request: soap.Request) -> str:
        shell = self._shell(request)
        with self._lock:
            self.shells.pop(shell.shell_id, None)
        with shell.cond:
            shell.cond.notify_all()
        return ""

    def _get(self, request: soap.Request, user: str, client_ip: str) -> str:
        shell = self._shell(request)
        return soap.shell_xml(shell.shell_id, shell.resource_uri, user, client_ip)


def _pipeline_id_of(data: bytes) -> uuid.UUID | None:
    """The PID of the first PSRP message in a fragment stream (fragment header 21 bytes, then
    destination 4, type 4, RPID 16, PID 16)."""
    if len(data) < 21 + 40:
        return None
    return uuid.UUID(bytes_le=data[21 + 24 : 21 + 40])


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    wsman: WSManServer
    tls_context: ssl.SSLContext | None = None

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls_context is not None:
            try:
                request.settimeout(10)
                request = self.tls_context.wrap_socket(request, server_side=True)
                request.settimeout(None)
            except (ssl.SSLError, OSError) as err:
                log.info("TLS handshake with %s failed: %s", client_address, err)
                return
        super().finish_request(request, client_address)


_BOUNDARY = "Encrypted Boundary"
_CERT_AUTH_SCHEME = "http://schemas.dmtf.org/wbem/wsman/1/wsman/secprofile/https/mutual"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer
    server_version = "Microsoft-HTTPAPI/2.0"
    sys_version = ""
    # Without TCP_NODELAY a reply that leaves in two writes (headers, then body) waits for the
    # client's delayed ACK of the first segment (Nagle): ~40 ms added to every WinRM request, which
    # real WinRM (HTTP.sys) does not add. StreamRequestHandler.setup() sets the option when this is True.
    disable_nagle_algorithm = True
    _headers_buffer: list[bytes]  # BaseHTTPRequestHandler's own buffer (send_response/send_header fill it)

    def setup(self) -> None:
        super().setup()
        self._ntlm_ctx: Any = None
        self._ntlm_user = ""
        self._identity: SessionIdentity | None = None
        self._final_auth: str | None = None  # the acceptor's last token (Kerberos mutual auth), sent with 200

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - " + format, self.client_address[0], *args)

    def do_POST(self) -> None:
        wsman = self.server.wsman
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length) if length else b""
        drop, delay = wsman._take_injection()
        if drop:
            log.info("fault injection: dropping the connection")
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        if delay:
            log.info("fault injection: delaying the answer by %.1fs", delay)
            time.sleep(delay)
        if self.path.split("?", 1)[0].rstrip("/").lower() != "/wsman":
            self._reply(404, b"", "text/html")
            return

        auth = self.headers.get("Authorization", "")
        scheme = auth.split(" ", 1)[0].lower() if auth else ""
        user: str | None = None
        if scheme == "basic":
            user = wsman.check_basic(auth)
            if user is None:
                wsman.auth_failures += 1
                self._unauthorized()
                return
            self._identity = SessionIdentity(user, "basic")
        elif scheme in ("negotiate", "ntlm", "kerberos") and (wsman.ntlm or wsman.kerberos_keytab):
            if not self._ntlm_step(auth):
                return
            user = self._ntlm_user
        elif scheme == "credssp" and wsman.credssp:
            if not self._ntlm_step(auth, protocol="credssp"):
                return
            user = self._ntlm_user
        elif scheme == _CERT_AUTH_SCHEME and wsman.client_certificates and self.server.tls_context is not None:
            der = self.connection.getpeercert(binary_form=True) if hasattr(self.connection, "getpeercert") else None
            user = wsman.certificate_user(der)
            if user is None:
                wsman.auth_failures += 1
                self._unauthorized()
                return
            # WinRM's certificate mapping stores the mapped account's password and logs it on with it, so
            # the session holds a credential of its own (not a bare network logon).
            self._identity = SessionIdentity(user, "certificate", delegated_credential=True)
        elif self._ntlm_ctx is not None and self._ntlm_ctx.complete:
            user = self._ntlm_user  # connection-based auth: already authenticated on this connection
        else:
            self._unauthorized()
            return

        content_type = self.headers.get("Content-Type", "")
        encrypted = content_type.startswith("multipart/encrypted")
        if encrypted:
            if self._ntlm_ctx is None or not self._ntlm_ctx.complete:
                self._unauthorized()
                return
            data = self._unwrap(data)
            wsman.encrypted_requests += 1
        elif self._ntlm_ctx is not None and data and self.server.tls_context is None:
            # Windows refuses unencrypted bodies on an NTLM connection over HTTP
            self._reply(400, b"", "text/html")
            return
        if not data:
            self._reply(200, b"", "application/soap+xml;charset=UTF-8")
            return
        status, body = wsman.handle_soap(data, user, self.client_address[0], self._identity)
        if encrypted:
            protocol = "application/HTTP-SPNEGO-session-encrypted"
            if "credssp" in content_type.lower():
                protocol = "application/HTTP-CredSSP-session-encrypted"
            elif "kerberos-session" in content_type.lower():
                protocol = "application/HTTP-Kerberos-session-encrypted"
            payload = self._wrap(body, protocol)
            self._reply(status, payload, f'multipart/encrypted;protocol="{protocol}";boundary="{_BOUNDARY}"')
        else:
            self._reply(status, body, "application/soap+xml;charset=UTF-8")

    def _reply(self, status: int, body: bytes, content_type: str, headers: Iterable[tuple[str, str]] = ()) -> None:
        self.send_response(status)
        if self._final_auth is not None and status != 401:
            self.send_header("WWW-Authenticate", self._final_auth)
            self._final_auth = None
        for name, value in headers:
            self.send_header(name, value)
        if body or status != 401:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        # Status line, headers and body leave in ONE write (end_headers() would flush the headers on
        # their own first): one send per reply, as HTTP.sys answers.
        self._headers_buffer.append(b"\r\n")
        if body:
            self._headers_buffer.append(body)
        self.flush_headers()

    def _unauthorized(self, token: bytes | None = None, scheme: str = "Negotiate") -> None:
        wsman = self.server.wsman
        if token is not None:
            headers = [("WWW-Authenticate", f"{scheme} " + base64.b64encode(token).decode("ascii"))]
        else:
            headers = [("WWW-Authenticate", s) for s in wsman.auth_schemes()]
        self._reply(401, b"", "", headers)

    # -- NTLM (pyspnego acceptor) with WinRM message encryption --

    def _ntlm_step(self, auth: str, protocol: str | None = None) -> bool:
        """One leg of NTLM, Kerberos (raw or inside SPNEGO) or CredSSP; True once authenticated."""
        import spnego

        wsman = self.server.wsman
        try:
            token = base64.b64decode(auth.split(" ", 1)[1].strip())
        except (IndexError, ValueError):
            self._unauthorized()
            return False
        try:
            if self._ntlm_ctx is None or self._ntlm_ctx.complete:
                if protocol is None:
                    protocol = "negotiate" if token.startswith(b"\x60") else "ntlm"
                self._ntlm_ctx = spnego.server(protocol=protocol)
            out = self._ntlm_ctx.step(token)
        except Exception as err:  # spnego raises its own error family for bad credentials
            log.info("%s authentication failed: %s", protocol or "NTLM", err)
            wsman.auth_failures += 1
            self._ntlm_ctx = None
            self._unauthorized()
            return False
        if not self._ntlm_ctx.complete:
            self._unauthorized(out, auth.split(" ", 1)[0])
            return False
        ctx = self._ntlm_ctx
        if out:
            scheme = auth.split(" ", 1)[0]
            self._final_auth = f"{scheme} " + base64.b64encode(out).decode("ascii")
        self._ntlm_user = str(getattr(ctx, "client_principal", "") or wsman.username)
        if protocol == "credssp":
            delegated = ctx.get_extra_info("client_credential") is not None
            self._identity = SessionIdentity(self._ntlm_user, "credssp", delegated_credential=delegated)
        else:
            method = "kerberos" if str(getattr(ctx, "negotiated_protocol", "")).lower() == "kerberos" else "ntlm"
            self._identity = SessionIdentity(self._ntlm_user, method)
        return True

    def _unwrap(self, data: bytes) -> bytes:
        parts = re.split(rb"--\s*" + re.escape(_BOUNDARY.encode()) + rb"(?:--)?\r\n", data)
        parts = [p for p in parts if p]
        message = b""
        for i in range(0, len(parts) - 1, 2):
            payload = parts[i + 1].replace(b"\tContent-Type: application/octet-stream\r\n", b"")
            header_len = struct.unpack("<i", payload[:4])[0]
            header = payload[4 : 4 + header_len]
            message += bytes(self._ntlm_ctx.unwrap_winrm(header, payload[4 + header_len :]))
        return message

    def _wrap(self, message: bytes, protocol: str) -> bytes:
        header, wrapped, padding = self._ntlm_ctx.wrap_winrm(message)
        header, wrapped, padding = bytes(header), bytes(wrapped), int(padding)
        return (
            "\r\n".join(
                [
                    f"--{_BOUNDARY}",
                    f"\tContent-Type: {protocol}",
                    f"\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length={len(message) + padding}",
                    f"--{_BOUNDARY}",
                    "\tContent-Type: application/octet-stream",
                    "",
                ]
            ).encode()
            + struct.pack("<i", len(header))
            + header
            + wrapped
            + f"--{_BOUNDARY}--\r\n".encode()
        )
