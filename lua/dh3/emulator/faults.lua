-- Injected faults, for testing clients against a misbehaving service. A fault replaces the
-- handling of an API request entirely: nothing is created, nothing is charged. All but one:
-- "create_close" lets a create be handled as usual (the task is made, counted and charged) and
-- then closes its connection without the answer, so the client cannot know the id: what a
-- crash or a proxy's timeout does to a create that was taken. Rolls come from their own seeded
-- stream, so with --seed the same request sequence meets the same faults.
local M = {}

-- Rolled in this order; the first that hits wins.
M.KINDS = { "drop", "5xx", "429", "malformed", "create_close" }

local OPTION = {
  drop = "fault_drop", ["5xx"] = "fault_5xx", ["429"] = "fault_429", malformed = "fault_malformed",
  create_close = "fault_create_close",
}

-- Kinds that apply to one endpoint only; the others are not rolled for it (a rate of 0 draws
-- nothing either, so adding a kind does not shift a seeded sequence that does not use it).
local ONLY = { create_close = "create" }

--- True when kind lets the request be handled, and only the answer is lost.
function M.after_handling(kind)
  return kind == "create_close"
end

local GET_5XX = {
  { 500, "internal server error" },
  { 502, "bad gateway" },
  { 503, "service unavailable" },
}

--- The fault to inject for one request to endpoint ("create" or "get"), or nil.
function M.roll(rng, opts, endpoint)
  for _, kind in ipairs(M.KINDS) do
    local only = ONLY[kind]
    if (only == nil or only == endpoint) and rng:chance(opts[OPTION[kind]]) then return kind end
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
