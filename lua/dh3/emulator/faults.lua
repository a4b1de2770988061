-- Injected faults, for testing clients against a misbehaving service. A fault replaces the
-- handling of an API request entirely: nothing is created, nothing is charged. Rolls come from
-- their own seeded stream, so with --seed the same request sequence meets the same faults.
local M = {}

-- Rolled in this order; the first that hits wins.
M.KINDS = { "drop", "5xx", "429", "malformed" }

local OPTION = { drop = "fault_drop", ["5xx"] = "fault_5xx", ["429"] = "fault_429", malformed = "fault_malformed" }

local GET_5XX = {
  { 500, "internal server error" },
  { 502, "bad gateway" },
  { 503, "service unavailable" },
}

--- The fault to inject for one request, or nil.
function M.roll(rng, opts)
  for _, kind in ipairs(M.KINDS) do
    if rng:chance(opts[OPTION[kind]]) then return kind end
  end
  return nil
end

--- The injected answer for kind on endpoint ("create" or "get"): status, document (a table to
-- encode as JSON), headers; or for "malformed" status, nil, headers, raw body text.
-- "drop" has no answer: the caller closes the connection.
function M.answer(kind, endpoint, rng)
  if kind == "5xx" then
    if endpoint == "create" then
      -- the message says what a client most needs to know: retrying cannot pay twice
      return 503, { code = 503, message = "service unavailable; task not created" }
    end
    local pick = GET_5XX[rng:range(1, #GET_5XX)]
    return pick[1], { code = pick[1], message = pick[2] }
  elseif kind == "429" then
    return 429, { code = 429, message = "too many requests" }, { ["Retry-After"] = "1" }
  elseif kind == "malformed" then
    -- a body cut off mid-way, as after a proxy's truncation
    local text = endpoint == "create" and '{"code":200,"message":"ok","task_id":"76808142f5'
      or '{"code":200,"message":"Ok","nano_banana_pro_output":{"task_id":"7680'
    return 200, nil, { ["Content-Type"] = "application/json" }, text
  end
  error("faults.answer: no answer for " .. tostring(kind))
end

return M
