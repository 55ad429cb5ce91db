"""Test data: the start script as it was before the fidelity pass (bare `powershell.exe` for
Win32_Process.Create, "Running" status written before the process exists). The simulated host
recognises it by its hash and runs it as Windows would (Create returns 9)."""

OLD_START_BACKGROUND_COPY = r"""
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


OLD_COPY_WORKER = r"""
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
"""Test data: the copy worker before the fidelity pass. It replaced its status file with
`Move-Item -Force` (Windows PowerShell 5.1: delete, then move) under ErrorActionPreference Stop, so a
reader holding the status file made a progress write throw and abort the copy. The simulated host
recognises it by its hash."""
