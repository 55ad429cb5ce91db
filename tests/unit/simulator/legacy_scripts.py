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
