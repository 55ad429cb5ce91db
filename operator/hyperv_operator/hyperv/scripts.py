"""The operator's fixed PowerShell scripts.

A script is used only where no cmdlet does the job (a copy that must outlive the WinRM session).
Each is a constant with a `param()` block; user values travel as typed parameters, never as text
inside the script. The simulator recognises these scripts by their exact text (see `SCRIPT_IDS`).

Background copy protocol (the host side writes, the operator polls `StatusPath` with Get-Content):
    {"state": "Running"|"Completed"|"Failed", "bytesCopied": int, "bytesTotal": int,
     "processId": int, "startedAt": ISO-8601, "updatedAt": ISO-8601, "finishedAt": ISO-8601|null,
     "error": str|null}
The copy is written to `PartialPath` and renamed to `Destination` only once complete, so a file at
`Destination` is always a whole copy. The source is opened read-only (FileShare.Read).
"""

from __future__ import annotations

import hashlib

from hyperv_operator.hyperv.commands import Command, Statement, pipe, script

# The detached worker: runs in its own powershell.exe (Win32_Process.Create), so it survives the
# WinRM session. Its arguments arrive base64-encoded as JSON through -EncodedCommand's sibling
# environment variable, never spliced into its source.
COPY_WORKER = r"""
$ErrorActionPreference = 'Stop'
$a = [System.Text.Encoding]::UTF8.GetString([System.Convert]::FromBase64String($env:HVOP_COPY_ARGS)) | ConvertFrom-Json
function Write-CopyStatus([string]$State, [long]$Done, [long]$Total, [string]$Err, $Finished) {
    $s = [ordered]@{ state = $State; bytesCopied = $Done; bytesTotal = $Total; processId = $PID;
        startedAt = $a.startedAt; updatedAt = (Get-Date).ToUniversalTime().ToString('o');
        finishedAt = $Finished; error = $Err }
    $tmp = $a.statusPath + '.tmp'
    [System.IO.File]::WriteAllText($tmp, ($s | ConvertTo-Json -Compress))
    Move-Item -LiteralPath $tmp -Destination $a.statusPath -Force
}
$total = 0
try {
    $src = [System.IO.File]::Open($a.source, 'Open', 'Read', 'Read')
    $total = $src.Length
    $dst = [System.IO.File]::Open($a.partialPath, 'Create', 'Write', 'None')
    $buffer = New-Object byte[] (8MB)
    $done = 0
    $last = [DateTime]::UtcNow
    while (($n = $src.Read($buffer, 0, $buffer.Length)) -gt 0) {
        $dst.Write($buffer, 0, $n)
        $done += $n
        if (([DateTime]::UtcNow - $last).TotalSeconds -ge 1) {
            Write-CopyStatus 'Running' $done $total $null $null
            $last = [DateTime]::UtcNow
        }
    }
    $dst.Flush($true); $dst.Close(); $src.Close()
    Move-Item -LiteralPath $a.partialPath -Destination $a.destination
    Write-CopyStatus 'Completed' $done $total $null ((Get-Date).ToUniversalTime().ToString('o'))
} catch {
    Write-CopyStatus 'Failed' 0 $total $_.Exception.Message ((Get-Date).ToUniversalTime().ToString('o'))
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
$null = Get-Item -LiteralPath $Source
$now = (Get-Date).ToUniversalTime().ToString('o')
$copyArgs = [ordered]@{ source = $Source; destination = $Destination; partialPath = $PartialPath;
    statusPath = $StatusPath; startedAt = $now }
$argsJson = $copyArgs | ConvertTo-Json -Compress
$encodedArgs = [System.Convert]::ToBase64String([System.Text.Encoding]::UTF8.GetBytes($argsJson))
$encodedWorker = [System.Convert]::ToBase64String([System.Text.Encoding]::Unicode.GetBytes($Worker))
$initial = [ordered]@{ state = 'Running'; bytesCopied = 0; bytesTotal = (Get-Item -LiteralPath $Source).Length;
    processId = 0; startedAt = $now; updatedAt = $now; finishedAt = $null; error = $null }
[System.IO.File]::WriteAllText($StatusPath, ($initial | ConvertTo-Json -Compress))
$startup = New-CimInstance -ClassName Win32_ProcessStartup -ClientOnly -Property @{
    EnvironmentVariables = [string[]]@("HVOP_COPY_ARGS=$encodedArgs", "SystemRoot=$env:SystemRoot") }
$result = Invoke-CimMethod -ClassName Win32_Process -MethodName Create -Arguments @{
    CommandLine = "powershell.exe -NoProfile -NonInteractive -EncodedCommand $encodedWorker";
    ProcessStartupInformation = $startup }
if ($result.ReturnValue -ne 0) { throw "Win32_Process.Create failed with code $($result.ReturnValue)" }
[pscustomobject]@{ ProcessId = [int]$result.ProcessId; StatusPath = $StatusPath; PartialPath = $PartialPath }
"""


def _script_id(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


SCRIPT_IDS: dict[str, str] = {_script_id(START_BACKGROUND_COPY): "StartBackgroundCopy"}
"""sha256 of each fixed script's exact text -> its name, for hosts (the simulator) that dispatch on it."""


def script_name(text: str) -> str | None:
    return SCRIPT_IDS.get(_script_id(text))


def start_background_copy(source: str, destination: str, partial_path: str, status_path: str) -> Statement:
    """Output: one object with ProcessId, StatusPath, PartialPath. Fails if `destination` exists."""
    command: Command = script(
        START_BACKGROUND_COPY,
        Source=source,
        Destination=destination,
        PartialPath=partial_path,
        StatusPath=status_path,
        Worker=COPY_WORKER,
    )
    return pipe(command)
