-- The emulator's endpoints: the two API calls exactly as dh3-api.md describes them, the image
-- files, and the /_emulator introspection. Returns a handler for dh3.emulator.server.
--
-- Choices where the documentation is silent (clients must cope either way):
--   * 400: the body is not a JSON object. 422: any field missing, of the wrong type or refused,
--     with a message "field.path: reason". 401 comes before anything else is looked at; then 429
--     (create pacing), then the body, then 402 (credits).
--   * A task can only be read with the key that created it; any other key gets 404.
--   * --errors-in-body turns error statuses into HTTP 200 on the API paths and unknown paths;
--     /files and /_emulator always answer with real statuses.
--   * Stats count an answer under the code the body carries (also with --errors-in-body), or as
--     "dropped" / "malformed" for those faults, or "closed" for a create taken and then closed
--     unanswered (--fault-create-close; a create refused anyway, 401/422/429/402, is answered).
--     Not counted: /_emulator requests, and requests the HTTP layer refuses before routing (400
--     malformed, 413, 431, ...).
--   * --log writes one line per request routed here: API calls, /_emulator calls, other paths,
--     and image files once they are sent (with their size and how long sending took: with
--     --download-rate that is the pacing, seen from this side).
local contract = require "dh3.contract"
local json = require "dh3.emulator.json"
local server = require "dh3.emulator.server"
local images = require "dh3.emulator.images"
local faults = require "dh3.emulator.faults"
local callbacks = require "dh3.emulator.callbacks"
local options = require "dh3.emulator.options"

local M = {}

local JSON_HEADERS = { ["Content-Type"] = "application/json" }

local function error_doc(code, message)
  return { code = code, message = message }
end

-- The key of "Authorization: Bearer KEY", or nil, 401 document.
local function authorize(emu, req)
  local header = req.headers["authorization"]
  local key = header and header:match("^[Bb][Ee][Aa][Rr][Ee][Rr][ \t]+(.-)[ \t]*$")
  if not key or key == "" then return nil, error_doc(401, "missing API key") end
  if emu.opts.keys and not emu.opts.keys[key] then return nil, error_doc(401, "invalid API key") end
  return key
end

-- Sliding one-second window of accepted creates per key.
local function pacing_allows(emu, key, now)
  local qps = emu.opts.create_qps
  if qps == 0 then return true end
  local window = emu.windows[key]
  if not window then return true end
  local kept = {}
  for _, t in ipairs(window) do
    if t > now - 1.0 then kept[#kept + 1] = t end
  end
  emu.windows[key] = kept
  return #kept < qps
end

-- Each input problem names its field by its full path in the body.
local function field_path(field)
  if field == "callback_url" or field == "nano_banana_pro_input" then return field end
  return "nano_banana_pro_input." .. field
end

-- Checks a create body. Returns the decoded document, or nil, error document.
local function check_create_body(body)
  if not body:match("^[ \t\r\n]*{") then
    return nil, error_doc(400, "request body must be a JSON object")
  end
  local doc, err = json.decode(body)
  if type(doc) ~= "table" then
    return nil, error_doc(400, "request body is not valid JSON: " .. tostring(err))
  end
  local model = doc.model
  if model == nil then return nil, error_doc(422, "model: is required") end
  if type(model) ~= "string" then return nil, error_doc(422, "model: must be a string") end
  if model ~= contract.MODEL then
    return nil, error_doc(422, ('model: must be "%s", got "%s"'):format(contract.MODEL, model))
  end
  if doc.nano_banana_pro_input == nil then
    return nil, error_doc(422, "nano_banana_pro_input: is required")
  end
  local field, reason = contract.check_input(doc.nano_banana_pro_input, doc.callback_url)
  if field then return nil, error_doc(422, field_path(field) .. ": " .. reason) end
  return doc
end

-- POST /api/v1/task/create. Returns status, document, headers.
local function create(emu, req)
  local key, denied = authorize(emu, req)
  if not key then return 401, denied end
  local now = emu.loop:now()
  if not pacing_allows(emu, key, now) then
    return 429, error_doc(429, ("rate limited: at most %d creates per second"):format(emu.opts.create_qps)),
      { ["Retry-After"] = "1" }
  end
  local doc, refused = check_create_body(req.body)
  if not doc then return refused.code, refused end
  local credits = emu.credits[key]
  if credits == nil then credits = emu.opts.credits end
  if credits and credits <= 0 then return 402, error_doc(402, "insufficient credits") end

  if credits then emu.credits[key] = credits - 1 end
  local window = emu.windows[key] or {}
  window[#window + 1] = now
  emu.windows[key] = window
  local task = emu.tasks:create(key, doc.nano_banana_pro_input, doc.callback_url, now)
  emu.stats.creates = emu.stats.creates + 1
  if task.callback_url then callbacks.schedule(emu, task) end
  return 200, { code = 200, message = "ok", task_id = task.id }
end

-- GET /api/v1/task/get?task_id=ID
local function get(emu, req)
  local key, denied = authorize(emu, req)
  if not key then return 401, denied end
  local id = server.parse_query(req.query).task_id
  if not id or id == "" then return 422, error_doc(422, "task_id: is required") end
  local task = emu.tasks:find(id)
  if not task or task.key ~= key then return 404, error_doc(404, "task not found") end
  return 200, emu.tasks:document(task, emu.loop:now())
end

local API = {
  [contract.CREATE_PATH] = { path = contract.CREATE_PATH, method = "POST", name = "create", handle = create },
  [contract.GET_PATH] = { path = contract.GET_PATH, method = "GET", name = "get", handle = get },
}

-- Encodes and sends a JSON answer; in errors-in-body mode (for API answers), errors go out as
-- HTTP 200 and only the document's code tells.
local function send_json(emu, respond, status, doc, headers, api_answer)
  local out = {}
  for k, v in pairs(headers or {}) do out[k] = v end
  out["Content-Type"] = "application/json"
  if api_answer and status ~= 200 and emu.opts.errors_in_body then status = 200 end
  respond(status, out, json.encode(doc))
end

-- Runs an API endpoint: in-flight gauge, fault injection, latency, stats, and a 500 (logged)
-- when the endpoint itself breaks.
local function api_call(emu, req, respond, route)
  local endpoint = req.method .. " " .. route.path
  emu.stats:enter()
  local function finish(stat_status)
    -- emu.stats, not a local: a reset during a latency wait replaces it (keeping the gauge)
    emu.stats:leave()
    emu.stats:request(endpoint, stat_status)
    emu:log("%s %s -> %s", req.method, req.target, stat_status)
  end
  local fault = faults.roll(emu.rng.faults, emu.opts, route.name)
  if emu.opts.latency > 0 then emu.loop:sleep(emu.opts.latency) end
  if fault and not faults.after_handling(fault) then
    emu.stats:fault(fault)
    if fault == "drop" then
      finish("dropped")
      return respond(nil)
    end
    local status, doc, headers, text = faults.answer(fault, route.name, emu.rng.faults)
    if text then
      finish("malformed")
      return respond(status, headers, text)
    end
    finish(status)
    return send_json(emu, respond, status, doc, headers, true)
  end
  local ok, status, doc, headers = pcall(route.handle, emu, req)
  if not ok then
    emu:log_error(("%s %s: %s"):format(req.method, req.path, tostring(status)))
    status, doc, headers = 500, error_doc(500, "internal error"), nil
  end
  if fault and doc.code == 200 then
    -- taken: the task exists and is counted; only its answer is lost
    emu.stats:fault(fault)
    finish("closed")
    return respond(nil)
  end
  -- the task exists and its clock runs: a quick one's callback can overtake this answer
  if route.name == "create" and status == 200 and emu.opts.create_answer_delay > 0 then
    emu.loop:sleep(emu.opts.create_answer_delay)
  end
  finish(doc.code)
  send_json(emu, respond, status, doc, headers, true)
end

-- GET/HEAD /files/<task_id>.<ext>: no key needed, and a client that sends one anyway is counted.
local function files(emu, req, respond)
  local endpoint = req.method .. " /files"
  if req.headers["authorization"] then emu.stats.files_with_auth = emu.stats.files_with_auth + 1 end
  if req.method ~= "GET" and req.method ~= "HEAD" then
    emu.stats:request(endpoint, 405)
    emu:log("%s %s -> 405", req.method, req.path)
    return send_json(emu, respond, 405, error_doc(405, "method not allowed"), { Allow = "GET, HEAD" })
  end
  local id, ext = req.path:match("^/files/(%x+)%.(%a+)$")
  local task = id and emu.tasks:find(id)
  if not task or task.format ~= ext or emu.tasks:state(task, emu.loop:now()) ~= "success" then
    emu.stats:request(endpoint, 404)
    emu:log("%s %s -> 404", req.method, req.path)
    return send_json(emu, respond, 404, error_doc(404, "file not found"))
  end
  local bytes = emu.tasks:image(task)
  emu.stats:request(endpoint, 200)
  local rate = emu.opts.download_rate
  local started = emu.loop:now()
  local how = {
    rate = rate > 0 and req.method == "GET" and rate or nil,
    on_sent = function(sent)
      local took = emu.loop:now() - started
      if req.method == "HEAD" then
        emu:log("HEAD %s -> 200 (%d bytes announced)", req.path, #bytes)
      elseif sent then
        emu:log("GET %s -> 200 (%d bytes sent in %.3fs)", req.path, #bytes, took)
      else
        emu:log("GET %s -> 200 (%d bytes; the client left after %.3fs)", req.path, #bytes, took)
      end
    end,
  }
  respond(200, { ["Content-Type"] = images.CONTENT_TYPES[task.format], ["Cache-Control"] = "no-store" }, bytes, how)
end

local function current_config(emu)
  local out = {}
  for _, spec in ipairs(options.SPECS) do
    if spec.runtime then
      local v = emu.opts[spec[1]]
      if v == false and spec[2] == "credits" then v = json.null end
      out[spec[1]] = v
    end
  end
  return out
end

-- POST /_emulator/config: every key is checked before any is applied.
local function configure(emu, body)
  local doc = body:match("^[ \t\r\n]*{") and json.decode(body)
  if type(doc) ~= "table" then return 400, error_doc(400, "config: body must be a JSON object") end
  local changes = {}
  for name, value in pairs(doc) do
    local spec = options.BY_NAME[name]
    if type(name) ~= "string" or not spec or not spec.runtime then
      return 400, error_doc(400, ("config: unknown key %q"):format(tostring(name)))
    end
    local checked, reason = options.check(name, value)
    if checked == nil then return 400, error_doc(400, ("config: %s %s"):format(name, reason)) end
    changes[name] = checked
  end
  for name, value in pairs(changes) do
    emu.opts[name] = value
    -- a new credit budget starts over for every key
    if name == "credits" then emu.credits = {} end
  end
  return 200, current_config(emu)
end

local INTROSPECTION = {
  ["/_emulator/stats"] = { GET = function(emu)
    local now = emu.loop:now()
    return 200, nil, emu.stats:encode(emu.tasks:counts(now), emu.server:counts())
  end },
  ["/_emulator/reset"] = { POST = function(emu)
    emu:reset()
    return 200, { code = 200, message = "reset" }
  end },
  ["/_emulator/config"] = {
    GET = function(emu) return 200, current_config(emu) end,
    POST = function(emu, req) return configure(emu, req.body) end,
  },
}

local function introspect(emu, req, respond, methods)
  local fn = methods[req.method]
  if not fn then
    local allow = {}
    for m in pairs(methods) do allow[#allow + 1] = m end
    table.sort(allow)
    emu:log("%s %s -> 405", req.method, req.target)
    return send_json(emu, respond, 405, error_doc(405, "method not allowed"), { Allow = table.concat(allow, ", ") })
  end
  local status, doc, text = fn(emu, req)
  emu:log("%s %s -> %d", req.method, req.target, status)
  if text then return respond(status, JSON_HEADERS, text) end
  send_json(emu, respond, status, doc)
end

--- The request handler for emulator emu.
function M.handler(emu)
  return function(req, respond)
    local route = API[req.path]
    if route then
      if req.method ~= route.method then
        emu.stats:request(req.method .. " " .. req.path, 405)
        emu:log("%s %s -> 405", req.method, req.target)
        return send_json(emu, respond, 405, error_doc(405, "method not allowed"), { Allow = route.method }, true)
      end
      return api_call(emu, req, respond, route)
    end
    if req.path:sub(1, 7) == "/files/" then return files(emu, req, respond) end
    local methods = INTROSPECTION[req.path]
    if methods then return introspect(emu, req, respond, methods) end
    emu.stats:request("other", 404)
    emu:log("%s %s -> 404", req.method, req.target)
    send_json(emu, respond, 404, error_doc(404, "not found"), nil, true)
  end
end

return M
