-- Argo CD health check for hyperv-operator.io/VirtualMachine.
-- Follows the kstatus conditions the operator writes (Reconciling, Stalled, Ready) and
-- status.observedGeneration; Suspended means "powered off on purpose".
local hs = {}

local function condition(conditions, ctype)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

local function is_true(c)
  return c ~= nil and c.status == "True"
end

local function message_of(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

local status = obj.status
if status == nil or status.conditions == nil or #status.conditions == 0 then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end

local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local spec = obj.spec or {}
local ready = condition(status.conditions, "Ready")
local reconciling = condition(status.conditions, "Reconciling")
local stalled = condition(status.conditions, "Stalled")
local phase = status.phase or "Unknown"

if is_true(stalled) then
  hs.status = "Degraded"
  hs.message = message_of(stalled, "Stalled: " .. (stalled.reason or "a retry cannot fix it"))
  return hs
end

if is_true(reconciling) then
  hs.status = "Progressing"
  local progress = ""
  if status.copy ~= nil and status.copy.percent ~= nil and status.copy.finishedAt == nil then
    progress = string.format(" (copy %d%%)", math.floor(status.copy.percent))
  end
  hs.message = message_of(reconciling, "Phase " .. phase) .. progress
  return hs
end

if is_true(ready) then
  if spec.powerState == "Off" and status.powerState == "Off" then
    hs.status = "Suspended"
    hs.message = "Powered off on purpose (spec.powerState: Off)"
    return hs
  end
  -- Independent: the VM no longer needs the base disk (Copy at once, Quick after the merge;
  -- Differencing never is).
  local independent = condition(status.conditions, "Independent")
  local independent_now
  if independent ~= nil then
    independent_now = independent.status == "True"
  else
    independent_now = status.timings ~= nil and status.timings.independentAt ~= nil
  end
  hs.status = "Healthy"
  if independent_now then
    hs.message = "Ready; independent of the base disk"
  else
    hs.message = "Ready; depends on the base disk " .. tostring(spec.baseVhd or "")
  end
  if status.powerState ~= nil then
    hs.message = hs.message .. " (" .. status.powerState .. ")"
  end
  return hs
end

if ready ~= nil and ready.status == "False" then
  hs.status = "Degraded"
  hs.message = message_of(ready, "Not ready: " .. (ready.reason or phase))
  return hs
end

hs.status = "Progressing"
hs.message = message_of(ready, "Phase " .. phase)
return hs
