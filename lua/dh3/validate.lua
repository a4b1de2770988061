-- Checks what callers pass in. A wrong type or an unknown key is the caller's bug and raises
-- (at the caller's level); a well-typed value the service would refuse is returned as an
-- `invalid_request` error before any request is made.
local contract = require "dh3.contract"
local errors = require "dh3.errors"
local compat = require "dh3.compat"

local M = {}

-- Closest known key, to say "did you mean" for a misspelt one.
local function suggest(key, known)
  local best, best_score = nil, 0
  for k in pairs(known) do
    local score = 0
    if k:find(key, 1, true) or key:find(k, 1, true) then score = 2 end
    if k:sub(1, 3) == key:sub(1, 3) then score = score + 1 end
    if score > best_score then best, best_score = k, score end
  end
  return best
end

--- Raises when `t` has a key not in `schema`, or a value whose type is not the schema's.
-- schema: {key = "string" | {"number", "boolean"} ...}. `level` is error()'s level as seen from
-- check_table itself (3: the caller of the function that called check_table).
function M.check_table(what, t, schema, level)
  for k, v in pairs(t) do
    local want = schema[k]
    if type(k) ~= "string" or not want then
      local hint = type(k) == "string" and suggest(k, schema)
      error(("%s: unknown field '%s'%s"):format(what, tostring(k),
        hint and (" (did you mean '" .. hint .. "'?)") or ""), level)
    end
    local got = type(v)
    local ok = false
    if type(want) == "table" then
      for _, w in ipairs(want) do ok = ok or got == w end
      want = table.concat(want, " or ")
    else
      ok = got == want
    end
    if not ok then
      error(("%s: field '%s' must be a %s, got %s"):format(what, k, want, got), level)
    end
  end
end

local INPUT_SCHEMA = {
  prompt = "string", image_urls = "table", aspect_ratio = "string", resolution = "string",
  output_format = "string", callback_url = "string",
}

--- The caller's task input -> the wire body for create, or nil, err (invalid_request): what the
-- service would refuse (its contract, dh3.contract), and a blank prompt, which it would not.
-- Raises on unknown keys and wrong types, at `level` as seen from task_input.
function M.task_input(input, level)
  M.check_table("task", input, INPUT_SCHEMA, level + 1)
  local wire = {
    prompt = input.prompt, aspect_ratio = input.aspect_ratio, resolution = input.resolution,
    output_format = input.output_format,
  }
  if input.image_urls then
    local urls = {}
    for k, v in pairs(input.image_urls) do
      if not compat.is_integer(k) or type(v) ~= "string" then
        error("task: field 'image_urls' must be an array of strings", level)
      end
      urls[k] = v
    end
    -- an empty Lua table would encode as {} (an object), not []: leave it out
    if #urls > 0 then wire.image_urls = urls end
  end
  if wire.prompt == nil then
    return nil, errors.new("invalid_request", "prompt is required")
  end
  local field, reason = contract.check_input(wire, input.callback_url)
  if field then
    return nil, errors.new("invalid_request", field .. " " .. reason)
  end
  -- the service takes any 3 characters, spaces too, and charges for an image of nothing
  if not wire.prompt:find("%S") then
    return nil, errors.new("invalid_request", "prompt is blank: it has nothing but whitespace")
  end
  local body = { model = contract.MODEL, nano_banana_pro_input = wire, callback_url = input.callback_url }
  return body
end

-- {======================================================================
-- Numbers of options: the one place that says which values a number option takes
-- ======================================================================

-- The longest time any timeout may be: what the C core (and libcurl's 32-bit milliseconds) take.
M.MAX_SECONDS = 2000000

-- The shortest pause between two status reads of one task: a smaller one floods the service.
M.MIN_INTERVAL = 0.01

local function finite(v) return v == v and v > -math.huge and v < math.huge end

-- Each rule: (value) -> true when acceptable, and the phrase that says what is.
local RULES = {
  seconds = { function(v) return finite(v) and v > 0 and v <= M.MAX_SECONDS end,
    ("a number of seconds above 0 and at most %d"):format(M.MAX_SECONDS) },
  duration = { function(v) return finite(v) and v >= 0 and v <= M.MAX_SECONDS end,
    ("a number of seconds from 0 to %d"):format(M.MAX_SECONDS) },
  interval = { function(v) return finite(v) and v >= M.MIN_INTERVAL and v <= M.MAX_SECONDS end,
    ("a number of seconds from %g to %d"):format(M.MIN_INTERVAL, M.MAX_SECONDS) },
  count = { function(v) return compat.is_integer(v) and v >= 0 end, "a whole number >= 0" },
  positive_count = { function(v) return compat.is_integer(v) and v >= 1 end, "a whole number >= 1" },
}

--- Raises (at `level` as seen from here) unless each field of `t` named in `rules` ({field =
-- rule name}) is nil or takes a value its rule accepts. Types are check_table's: call it first.
function M.check_numbers(what, t, rules, level)
  for field, rule_name in pairs(rules) do
    local v = t[field]
    if v ~= nil then
      local rule = RULES[rule_name]
      if type(v) ~= "number" or not rule[1](v) then
        error(("%s: %s must be %s, got %s"):format(what, field, rule[2], tostring(v)), level)
      end
    end
  end
end

--- The options of every wait for tasks (task:wait, client:wait_all, watch, as_completed,
-- wait_any): their types and their values, checked in one place.
M.WAIT_RULES = { timeout = "duration", interval = "interval", max_interval = "interval",
  max_concurrency = "positive_count" }

-- }======================================================================

--- `url` with any user name and password replaced by "***" (for display and for what is written
-- to disk: a URL may carry credentials, which are as secret as the API key).
function M.redact_url(url)
  if type(url) ~= "string" then return url end
  return (url:gsub("^(%a[%w+.-]*://)[^/?#]*@", "%1***@"))
end

-- A task id goes into a URL: keep it to what ids look like.
function M.task_id(id)
  return type(id) == "string" and #id >= 1 and #id <= 128 and not id:find("[^%w%-_%.]")
end

return M
