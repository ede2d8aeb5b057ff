-- Argo CD health check for serving.rerank.dev/RerankModel.
-- Install it in argocd-cm under the key: resource.customizations.health.serving.rerank.dev_RerankModel
--
-- The operator reports what the runtime pods actually serve (status.servingVersion), so "Healthy" means the
-- version the spec asks for is served by every ready pod, not merely that a rollout was requested.
hs = {}

local function condition(status, kind)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

if obj.status == nil or obj.status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to pick up the RerankModel"
  return hs
end

local status = obj.status
if status.observedGeneration == nil or status.observedGeneration < obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe the latest spec"
  return hs
end

-- The same order as kstatus (what Flux's health checks use): Stalled=True is a failure, Reconciling=True work
-- in progress, then Ready decides. Statuses without these conditions (older operators) fall back to phase.
local ready = condition(status, "Ready")
local stalled = condition(status, "Stalled")
local reconciling = condition(status, "Reconciling")
local detail = ""
if ready ~= nil and ready.message ~= nil then
  detail = ready.message
end

if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  local reason = stalled.message or stalled.reason or ""
  if status.servingVersion ~= nil then
    hs.message = "Still serving version " .. tostring(status.servingVersion) .. "; " .. reason
  else
    hs.message = reason
  end
  return hs
end
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = (reconciling.reason or status.phase) .. ": " .. (reconciling.message or detail)
  return hs
end
if stalled ~= nil or reconciling ~= nil then
  if ready ~= nil and ready.status == "True" then
    hs.status = "Healthy"
    hs.message = "Serving version " .. tostring(status.servingVersion)
  else
    hs.status = "Progressing"
    hs.message = status.phase .. ": " .. detail
  end
  return hs
end

if status.phase == "Ready" then
  hs.status = "Healthy"
  hs.message = "Serving version " .. tostring(status.servingVersion)
elseif status.phase == "Degraded" then
  hs.status = "Degraded"
  hs.message = "Still serving version " .. tostring(status.servingVersion) .. "; " .. detail
elseif status.phase == "Failed" then
  hs.status = "Degraded"
  hs.message = detail
else
  -- Pending and Exporting: an export, a promotion or a rollout is under way.
  hs.status = "Progressing"
  hs.message = status.phase .. ": " .. detail
end
return hs
