-- Argo CD health check for hyperv-operator.io/HyperVHost: Healthy when the operator reached the
-- host over WinRM (Reachable=True), Degraded when it could not (Reachable=False).
local hs = {}

local reachable = nil
if obj.status ~= nil and obj.status.conditions ~= nil then
  for _, c in ipairs(obj.status.conditions) do
    if c.type == "Reachable" then
      reachable = c
    end
  end
end

local generation = obj.metadata and obj.metadata.generation
local observed = obj.status and obj.status.observedGeneration
if reachable == nil or (generation ~= nil and observed ~= nil and observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to probe the host"
  return hs
end

if reachable.status == "True" then
  hs.status = "Healthy"
  local version = obj.status.hyperVVersion
  if version ~= nil then
    hs.message = "Reachable; Hyper-V " .. version
  else
    hs.message = reachable.message or "Reachable"
  end
  return hs
end

if reachable.status == "False" then
  hs.status = "Degraded"
  if reachable.message ~= nil and reachable.message ~= "" then
    hs.message = reachable.message
  else
    hs.message = "Unreachable: " .. (reachable.reason or "unknown reason")
  end
  return hs
end

hs.status = "Progressing"
hs.message = reachable.message or "Reachability unknown"
return hs
