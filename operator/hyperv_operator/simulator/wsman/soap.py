"""WS-Management SOAP envelopes shaped like the ones a Windows WinRM service sends.

Templates follow real responses recorded from Windows (pypsrp's tests/tests_pypsrp/responses/*.yml):
prefixes s/a/x/w/rsp/p, `wsa:RelatesTo` echoing the request's MessageID, faults as `s:Fault` with a
`w:WSManFault` (Code, Machine, Message) in `s:Detail`, sent with HTTP 500.
"""

from __future__ import annotations

import re
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "wsa": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "wsman": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell",
    "pwsh": "http://schemas.microsoft.com/powershell",
    "wst": "http://schemas.xmlsoap.org/ws/2004/09/transfer",
}

ACTION_CREATE = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Create"
ACTION_DELETE = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Delete"
ACTION_GET = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Get"
ACTION_COMMAND = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Command"
ACTION_RECEIVE = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Receive"
ACTION_SEND = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Send"
ACTION_SIGNAL = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Signal"
ACTION_FAULT = "http://schemas.dmtf.org/wbem/wsman/1/wsman/fault"

STATE_DONE = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandState/Done"
STATE_RUNNING = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandState/Running"
SIGNAL_TERMINATE = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/signal/Terminate"
SIGNAL_PS_CTRL_C = "powershell/signal/ctrl_c"
SIGNAL_CTRL_C = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/signal/ctrl_c"

ANONYMOUS = "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous"
POWERSHELL_URI_PREFIX = "http://schemas.microsoft.com/powershell/"

_ENVELOPE_OPEN = (
    '<s:Envelope xml:lang="en-US" xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
    'xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" '
    'xmlns:x="http://schemas.xmlsoap.org/ws/2004/09/transfer" '
    'xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd" '
    'xmlns:rsp="http://schemas.microsoft.com/wbem/wsman/1/windows/shell" '
    'xmlns:p="http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd">'
)


class SoapError(Exception):
    """A request the WinRM service answers with a SOAP fault."""

    def __init__(self, subcode: str, code: int, message: str, *, sender: bool = True, detail: str = "") -> None:
        super().__init__(message)
        self.subcode = subcode
        self.code = code
        self.message = message
        self.sender = sender
        self.detail = detail


@dataclass
class Request:
    action: str
    message_id: str
    resource_uri: str
    operation_timeout: float | None
    selectors: dict[str, str] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)
    body: ET.Element | None = None


_DURATION = re.compile(r"^PT(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?$")


def parse_duration(text: str | None) -> float | None:
    if not text:
        return None
    match = _DURATION.match(text.strip())
    if not match:
        return None
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def parse_request(data: bytes) -> Request:
    try:
        root = ET.fromstring(data)  # noqa: S314 - loopback test endpoint; expat >= 2.4 caps entity expansion
    except ET.ParseError as err:
        raise SoapError(
            "w:InvalidMessageInformationHeader", 2150858817, f"The request is not valid XML: {err}."
        ) from err
    header = root.find("s:Header", NS)
    if header is None:
        raise SoapError("w:InvalidMessageInformationHeader", 2150858817, "The SOAP envelope has no header.")

    def text(path: str) -> str:
        el = header.find(path, NS)
        return (el.text or "").strip() if el is not None else ""

    request = Request(
        action=text("wsa:Action"),
        message_id=text("wsa:MessageID"),
        resource_uri=text("wsman:ResourceURI"),
        operation_timeout=parse_duration(text("wsman:OperationTimeout")),
    )
    for sel in header.findall("wsman:SelectorSet/wsman:Selector", NS):
        request.selectors[sel.attrib.get("Name", "")] = (sel.text or "").strip()
    for opt in header.findall("wsman:OptionSet/wsman:Option", NS):
        request.options[opt.attrib.get("Name", "")] = (opt.text or "").strip()
    body = root.find("s:Body", NS)
    request.body = body[0] if body is not None and len(body) else None
    return request


def envelope(action: str, relates_to: str, body: str) -> bytes:
    return (
        f"{_ENVELOPE_OPEN}<s:Header><a:Action>{escape(action)}</a:Action>"
        f"<a:MessageID>uuid:{str(uuid.uuid4()).upper()}</a:MessageID>"
        f"<a:To>{ANONYMOUS}</a:To><a:RelatesTo>{escape(relates_to)}</a:RelatesTo></s:Header>"
        f"<s:Body>{body}</s:Body></s:Envelope>"
    ).encode()


def fault(relates_to: str, error: SoapError, machine: str) -> bytes:
    code = "s:Sender" if error.sender else "s:Receiver"
    msg = escape(error.message)
    detail = f"<w:FaultDetail>{escape(error.detail)}</w:FaultDetail>" if error.detail else ""
    body = (
        f"<s:Fault><s:Code><s:Value>{code}</s:Value><s:Subcode><s:Value>{escape(error.subcode)}</s:Value>"
        f'</s:Subcode></s:Code><s:Reason><s:Text xml:lang="en-US">{msg} </s:Text></s:Reason><s:Detail>{detail}'
        f'<f:WSManFault xmlns:f="http://schemas.microsoft.com/wbem/wsman/1/wsmanfault" Code="{error.code}" '
        f'Machine="{escape(machine)}"><f:Message>{msg} </f:Message></f:WSManFault></s:Detail></s:Fault>'
    )
    return envelope(ACTION_FAULT, relates_to, body)


def shell_xml(shell_id: str, resource_uri: str, owner: str, client_ip: str, *, with_ns: bool = True) -> str:
    ns = ' xmlns:rsp="http://schemas.microsoft.com/wbem/wsman/1/windows/shell"' if with_ns else ""
    return (
        f"<rsp:Shell{ns}><rsp:ShellId>{shell_id}</rsp:ShellId><rsp:ResourceUri>{escape(resource_uri)}</rsp:ResourceUri>"
        f"<rsp:Owner>{escape(owner)}</rsp:Owner><rsp:ClientIP>{escape(client_ip)}</rsp:ClientIP>"
        f"<rsp:ProcessId>4242</rsp:ProcessId><rsp:IdleTimeOut>PT7200.000S</rsp:IdleTimeOut>"
        f"<rsp:InputStreams>stdin pr</rsp:InputStreams><rsp:OutputStreams>stdout</rsp:OutputStreams>"
        f"<rsp:MaxIdleTimeOut>PT2147483.647S</rsp:MaxIdleTimeOut><rsp:Locale>en-US</rsp:Locale>"
        f"<rsp:DataLocale>en-US</rsp:DataLocale><rsp:CompressionMode>NoCompression</rsp:CompressionMode>"
        f"<rsp:ProfileLoaded>Yes</rsp:ProfileLoaded><rsp:Encoding>UTF8</rsp:Encoding>"
        f"<rsp:BufferMode>Block</rsp:BufferMode><rsp:State>Connected</rsp:State>"
        f"<rsp:ShellRunTime>P0DT0H0M0S</rsp:ShellRunTime><rsp:ShellInactivity>P0DT0H0M0S</rsp:ShellInactivity>"
        f"</rsp:Shell>"
    )


def create_response(address: str, shell_id: str, resource_uri: str, owner: str, client_ip: str) -> str:
    return (
        f"<x:ResourceCreated><a:Address>{escape(address)}</a:Address><a:ReferenceParameters>"
        f"<w:ResourceURI>{escape(resource_uri)}</w:ResourceURI><w:SelectorSet>"
        f'<w:Selector Name="ShellId">{shell_id}</w:Selector></w:SelectorSet></a:ReferenceParameters>'
        f"</x:ResourceCreated>{shell_xml(shell_id, resource_uri, owner, client_ip)}"
    )


def command_response(command_id: str) -> str:
    return f"<rsp:CommandResponse><rsp:CommandId>{escape(command_id)}</rsp:CommandId></rsp:CommandResponse>"


def receive_response(streams: list[str], command_id: str | None, state: str | None) -> str:
    cid = f' CommandId="{escape(command_id)}"' if command_id else ""
    parts = [f'<rsp:Stream Name="stdout"{cid}>{s}</rsp:Stream>' for s in streams]
    if state is not None and command_id:
        exit_code = "<rsp:ExitCode>0</rsp:ExitCode>" if state == STATE_DONE else ""
        parts.append(
            f'<rsp:CommandState CommandId="{escape(command_id)}" State="{state}">{exit_code}</rsp:CommandState>'
        )
    return f"<rsp:ReceiveResponse>{''.join(parts)}</rsp:ReceiveResponse>"


# Fault catalogue (messages and codes as Windows words them).
def shell_not_found(shell_id: str) -> SoapError:
    return SoapError(
        "w:InvalidSelectors",
        2150858843,
        f"The request for the Windows Remote Shell with ShellId {shell_id} failed because the shell was not found on "
        "the server. Possible causes are: the specified ShellId is incorrect or the shell no longer exists on the "
        "server. Provide the correct ShellId or create a new shell and retry the operation.",
        detail="http://schemas.dmtf.org/wbem/wsman/1/wsman/faultDetail/UnexpectedSelectors",
    )


def command_not_found(command_id: str) -> SoapError:
    return SoapError(
        "w:InvalidSelectors",
        2150858843,
        f"The request for the Windows Remote Shell command with CommandId {command_id} failed because the command "
        "was not found on the server.",
    )


def operation_timed_out() -> SoapError:
    return SoapError(
        "w:TimedOut",
        2150858793,
        "The WS-Management service cannot complete the operation within the time specified in OperationTimeout.",
        sender=False,
    )


def action_not_supported(action: str) -> SoapError:
    return SoapError(
        "a:ActionNotSupported",
        2150858755,
        f"The action is not supported by the service: {action}.",
    )


def unknown_configuration(name: str, machine: str) -> SoapError:
    return SoapError(
        "w:InvalidResourceURI",
        2150858770,
        f"The WS-Management service cannot process the request. Cannot find the {name} session configuration in "
        f"the WSMan: drive on the {machine} computer.",
    )
