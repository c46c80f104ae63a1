-- Argo CD health for modelship.io/ModelDeployment (resource.customizations.health.modelship.io_ModelDeployment).
-- Healthy: Ready, or asleep at zero replicas by the autoscaler (the next request wakes it).
-- Suspended: `replicas: 0` set on purpose, without autoscaling.
-- Degraded: the operator says the spec cannot work or the download failed (phase Failed), or the
-- pods crash; the condition's message says why. Progressing: everything on the way there
-- (resolving, downloading with its progress, starting, rolling out, waking from zero).
-- Argo CD runs it with the base and table libraries only: no string or math library here.
local hs = {status = "Progressing", message = "Waiting for the operator to read this ModelDeployment"}
local status = obj.status
if status == nil then
  return hs
end
local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.message = "Waiting for the operator to act on generation " .. tostring(generation)
  return hs
end
local ready = nil
if status.conditions ~= nil then
  for _, c in ipairs(status.conditions) do
    if c.type == "Ready" then
      ready = c
    end
  end
end
if ready == nil then
  return hs
end
local message = ready.message or ""
local function said(reason)
  if message ~= "" then
    return reason .. ": " .. message
  end
  return reason
end
if ready.status == "True" then
  if ready.reason == "ScaledToZero" then
    local spec = obj.spec or {}
    if spec.maxReplicas == nil then
      return {status = "Suspended", message = said("ScaledToZero")}
    end
  end
  return {status = "Healthy", message = said(ready.reason or "Ready")}
end
if status.phase == "Failed" then
  return {status = "Degraded", message = said(ready.reason or "Failed")}
end
if ready.reason == "CrashLoopBackOff" then
  return {status = "Degraded", message = said(ready.reason)}
end
local function mib(bytes)
  local tenths = bytes * 10 / 1048576
  tenths = tenths - tenths % 1
  return tostring((tenths - tenths % 10) / 10) .. "." .. tostring(tenths % 10)
end
local download = status.download
if ready.reason == "Downloading" and download ~= nil and (download.bytesTotal or 0) > 0 then
  local left = ""
  if download.etaSeconds ~= nil then
    left = ", about " .. tostring(download.etaSeconds) .. " s left"
  end
  return {status = "Progressing", message = "Downloading: " .. tostring(download.percent or 0) .. "% (" ..
    mib(download.bytesDone or 0) .. " of " .. mib(download.bytesTotal) .. " MiB" .. left .. ")"}
end
return {status = "Progressing", message = said(ready.reason or (status.phase or "Progressing"))}
