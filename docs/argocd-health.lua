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

local ready = condition(status, "Ready")
local detail = ""
if ready ~= nil and ready.message ~= nil then
  detail = ready.message
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
