"""The operator's fixed PowerShell scripts.

A script is used only where no cmdlet does the job (a copy that must outlive the WinRM session).
Each is a constant with a `param()` block; user values travel as typed parameters, never as text
inside the script. The simulator recognises these scripts by their exact text (see `SCRIPT_IDS`).

Background copy protocol (the host side writes, the operator polls `StatusPath` with Get-Content):
    {"state": "Running"|"Completed"|"Failed", "bytesCopied": int, "bytesTotal": int,
     "processId": int, "processCreatedAt": ISO-8601, "startedAt": ISO-8601, "updatedAt": ISO-8601,
     "finishedAt": ISO-8601|null, "error": str|null}
The copy is written to `PartialPath` and renamed to `Destination` only once complete, so a file at
`Destination` is always a whole copy.

Why this shape (Windows facts, see docs/windows-fidelity.md):
- The copy is CopyFileEx (kernel32), the API Windows' own copy engine uses: it offloads to the
  storage (ODX) or to the SMB server (server-side copy) when both ends allow it, and its progress
  routine reports the bytes really transferred (the destination's length cannot: CopyFileEx sizes
  the destination up front). A Read/Write loop in PowerShell moves every byte through the host.
- The worker is started with `Win32_Process.Create` (it outlives the WinRM session) by the FULL
  path of powershell.exe: a bare `powershell.exe` can fail with 9, path not found
  (ansible/ansible#70655). `Win32_ProcessStartup.EnvironmentVariables` REPLACES the child's
  environment, so it carries what powershell.exe and Add-Type need (SystemRoot, windir, TEMP, TMP).
- The starter writes the first status only after Create returned 0 (no stale "Running" file when
  Create fails), with the child's PID and creation time: the operator confirms a process is its
  worker (command line and creation time) before it ever stops one, because PIDs are reused.
- Windows PowerShell 5.1 `Move-Item -Force` onto an existing file deletes, then moves: a reader
  holding the file (Get-Content: FileShare.ReadWrite, no Delete) makes the delete fail. The worker
  replaces the status with [IO.File]::Replace and never lets a status write abort the copy: a
  progress write that fails is skipped (the next one follows a second later), the final one is
  retried for up to 30 s.
"""

from __future__ import annotations

import base64
import hashlib

from hyperv_operator.hyperv.commands import Command, Statement, pipe, script

# The detached worker: its arguments arrive base64-encoded as JSON through an environment variable,
# never spliced into its source.
COPY_WORKER = r"""
$ErrorActionPreference = 'Stop'
$a = [Text.Encoding]::UTF8.GetString([Convert]::FromBase64String($env:HVOP_COPY_ARGS)) | ConvertFrom-Json
$created = [Diagnostics.Process]::GetCurrentProcess().StartTime.ToUniversalTime().ToString('o')
function Write-CopyStatus([string]$State, [long]$Done, [string]$Err, $Finished, [int]$Tries) {
    $json = [ordered]@{ state = $State; bytesCopied = $Done; bytesTotal = $script:total; processId = $PID;
        processCreatedAt = $created; startedAt = $a.startedAt; updatedAt = [DateTime]::UtcNow.ToString('o');
        finishedAt = $Finished; error = $Err } | ConvertTo-Json -Compress
    $tmp = $a.statusPath + '.tmp'
    for ($i = 1; $i -le $Tries; $i++) {
        try {
            [IO.File]::WriteAllText($tmp, $json)
            if ([IO.File]::Exists($a.statusPath)) { [IO.File]::Replace($tmp, $a.statusPath, $null) }
            else { [IO.File]::Move($tmp, $a.statusPath) }
            return
        } catch { Start-Sleep -Milliseconds 300 }
    }
}
$script:total = 0
$script:last = [DateTime]::MinValue
try {
    $script:total = (New-Object IO.FileInfo $a.source).Length
    Add-Type -TypeDefinition @'
using System; using System.Runtime.InteropServices;
public delegate uint HvopCopyProgress(long total, long done, long streamSize, long streamDone, uint stream,
    uint reason, IntPtr source, IntPtr destination, IntPtr data);
public static class HvopCopy {
    [DllImport("kernel32.dll", SetLastError = true, CharSet = CharSet.Unicode)]
    public static extern bool CopyFileEx(string source, string destination, HvopCopyProgress progress, IntPtr data,
        IntPtr cancel, uint flags);
}
'@
    $progress = [HvopCopyProgress]{
        param($total, $done)
        if (([DateTime]::UtcNow - $script:last).TotalSeconds -ge 1) {
            Write-CopyStatus 'Running' $done $null $null 1
            $script:last = [DateTime]::UtcNow
        }
        return [uint32]0
    }
    if (-not [HvopCopy]::CopyFileEx($a.source, $a.partialPath, $progress, [IntPtr]::Zero, [IntPtr]::Zero, 0)) {
        throw (New-Object ComponentModel.Win32Exception ([Runtime.InteropServices.Marshal]::GetLastWin32Error()))
    }
    [IO.File]::Move($a.partialPath, $a.destination)
    Write-CopyStatus 'Completed' $script:total $null ([DateTime]::UtcNow.ToString('o')) 100
} catch {
    Write-CopyStatus 'Failed' 0 $_.Exception.Message ([DateTime]::UtcNow.ToString('o')) 100
}
"""

START_BACKGROUND_COPY = r"""
param(
    [Parameter(Mandatory)][string]$Source,
    [Parameter(Mandatory)][string]$Destination,
    [Parameter(Mandatory)][string]$PartialPath,
    [Parameter(Mandatory)][string]$StatusPath,
    [Parameter(Mandatory)][string]$Worker
)
$ErrorActionPreference = 'Stop'
if (Test-Path -LiteralPath $Destination) {
    throw [System.IO.IOException]::new("The copy destination '$Destination' already exists.")
}
$total = (Get-Item -LiteralPath $Source).Length
$now = [DateTime]::UtcNow.ToString('o')
$copyArgs = [ordered]@{ source = $Source; destination = $Destination; partialPath = $PartialPath;
    statusPath = $StatusPath; startedAt = $now } | ConvertTo-Json -Compress
$encodedArgs = [Convert]::ToBase64String([Text.Encoding]::UTF8.GetBytes($copyArgs))
$encodedWorker = [Convert]::ToBase64String([Text.Encoding]::Unicode.GetBytes($Worker))
$exe = Join-Path $env:SystemRoot 'System32\WindowsPowerShell\v1.0\powershell.exe'
$startup = New-CimInstance -ClassName Win32_ProcessStartup -ClientOnly -Property @{
    EnvironmentVariables = [string[]]@("HVOP_COPY_ARGS=$encodedArgs", "SystemRoot=$env:SystemRoot",
        "windir=$env:windir", "TEMP=$env:TEMP", "TMP=$env:TMP") }
$result = Invoke-CimMethod -ClassName Win32_Process -MethodName Create -Arguments @{
    CommandLine = "`"$exe`" -NoProfile -NonInteractive -EncodedCommand $encodedWorker";
    ProcessStartupInformation = $startup }
if ($result.ReturnValue -ne 0) { throw "Win32_Process.Create failed with code $($result.ReturnValue)" }
$id = [int]$result.ProcessId
$created = (Get-CimInstance -ClassName Win32_Process -Filter "ProcessId = $id").CreationDate
$createdAt = if ($created) { $created.ToUniversalTime().ToString('o') } else { $null }
$initial = [ordered]@{ state = 'Running'; bytesCopied = 0; bytesTotal = $total; processId = $id;
    processCreatedAt = $createdAt; startedAt = $now; updatedAt = $now; finishedAt = $null; error = $null }
try {
    # CreateNew: if the worker already wrote its own status (it failed at once), keep that one.
    $file = [IO.File]::Open($StatusPath, 'CreateNew', 'Write', 'Read')
    $bytes = [Text.Encoding]::UTF8.GetBytes(($initial | ConvertTo-Json -Compress))
    $file.Write($bytes, 0, $bytes.Length); $file.Close()
} catch [IO.IOException] { }
[pscustomobject]@{ ProcessId = $id; ProcessCreatedAt = $createdAt; StatusPath = $StatusPath;
    PartialPath = $PartialPath }
"""

WORKER_COMMAND_LINE_TAIL = "-EncodedCommand " + base64.b64encode(COPY_WORKER.encode("utf-16-le")).decode("ascii")
"""How the worker's command line ends: what identifies a process as our copy worker (with its
creation time), before the operator stops it."""


def _script_id(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


SCRIPT_IDS: dict[str, str] = {
    _script_id(START_BACKGROUND_COPY): "StartBackgroundCopy",
    _script_id(COPY_WORKER): "CopyWorker",
}
"""sha256 of each fixed script's exact text -> its name, for hosts (the simulator) that dispatch on it."""


def script_name(text: str) -> str | None:
    return SCRIPT_IDS.get(_script_id(text))


def start_background_copy(source: str, destination: str, partial_path: str, status_path: str) -> Statement:
    """Output: one object with ProcessId, ProcessCreatedAt, StatusPath, PartialPath. Fails if
    `destination` exists, or if Win32_Process.Create does not return 0 (then no status file)."""
    command: Command = script(
        START_BACKGROUND_COPY,
        Source=source,
        Destination=destination,
        PartialPath=partial_path,
        StatusPath=status_path,
        Worker=COPY_WORKER,
    )
    return pipe(command)
