-- The emulator's options: one table for the command line (--queue-time), POST /_emulator/config
-- (queue_time) and programmatic use (emulator.new{queue_time = 0}), with one checker per kind.
local tasks = require "dh3.emulator.tasks"

local M = {}

-- name, kind, default, help; runtime = may change through POST /_emulator/config.
M.SPECS = {
  { "host", "host", "127.0.0.1", "address to listen on" },
  { "port", "port", 8080, "port to listen on; 0 picks a free one" },
  { "public_url", "url", nil, "base of the image URLs it hands out (default http://HOST:PORT)" },
  { "keys", "keys", nil, "comma-separated accepted API keys (default: any non-empty key)" },
  { "credits", "credits", nil, "creates each key may make; then 402 (default: unlimited)", runtime = true },
  { "create_qps", "count", 3, "creates accepted per key in any sliding second; then 429 (0: no limit)",
    runtime = true },
  { "queue_time", "seconds", 0.5, "seconds a task spends queuing", runtime = true },
  { "process_time", "seconds", 2, "seconds a task spends processing", runtime = true },
  { "fail_rate", "rate", 0, "share of tasks that fail with \"Upstream model error\" (0..1)", runtime = true },
  { "seed", "integer", nil, "makes every random choice reproducible (outcomes, faults, colours, ids)" },
  { "latency", "seconds", 0, "extra seconds before each API answer (other connections go on)", runtime = true },
  { "create_answer_delay", "seconds", 0, "seconds a create's answer is held after its task exists "
    .. "(its callback may come first)", runtime = true },
  { "fault_5xx", "rate", 0, "share of API requests answered 503 (create) or 500/502/503 (get)", runtime = true },
  { "fault_429", "rate", 0, "share of API requests answered 429 with Retry-After: 1", runtime = true },
  { "fault_drop", "rate", 0, "share of API requests whose connection is closed unanswered", runtime = true },
  { "fault_malformed", "rate", 0, "share of API requests answered 200 with truncated JSON", runtime = true },
  { "fault_create_close", "rate", 0, "share of creates taken (the task is made and counted), then "
    .. "closed unanswered", runtime = true },
  { "errors_in_body", "flag", false, "answer errors as HTTP 200, the code only in the body", runtime = true },
  { "callback_timeout", "positive", 5, "seconds a callback receiver has to answer", runtime = true },
  { "callback_retry_delay", "seconds", 1, "first delay between callback attempts (then x2, x4)", runtime = true },
  { "idle_timeout", "positive", 30, "seconds before an idle connection is closed" },
  { "max_body", "count", 1024 * 1024, "largest request body in bytes; larger ones get 413" },
  { "download_rate", "count", 0, "send each image file at this many bytes per second (0: at full "
    .. "speed), to watch progress bars or test timeouts; other connections go on", runtime = true,
    argname = "<BYTES_PER_SECOND>" },
  { "log", "flag", false, "log each request to stderr: the API, image files (when sent), /_emulator" },
  { "tls_cert", "file", nil, "serve HTTPS with this PEM certificate (chain); needs --tls-key and luasec" },
  { "tls_key", "file", nil, "the PEM private key of --tls-cert" },
}

M.BY_NAME = {}
for _, spec in ipairs(M.SPECS) do
  M.BY_NAME[spec[1]] = { name = spec[1], kind = spec[2], default = spec[3], help = spec[4], runtime = spec.runtime,
    argname = spec.argname }
end

local function number_of(v)
  if type(v) == "string" then v = tonumber(v) end
  if type(v) ~= "number" or v ~= v or v == math.huge or v == -math.huge then return nil end
  return v
end

-- Checkers take a command-line string or a JSON value; return the value to use, or nil, reason.
local CHECK = {
  seconds = function(v)
    v = number_of(v)
    if not v or v < 0 then return nil, "must be a number of seconds >= 0" end
    return v
  end,
  positive = function(v)
    v = number_of(v)
    if not v or v <= 0 then return nil, "must be a number of seconds > 0" end
    return v
  end,
  rate = function(v)
    v = number_of(v)
    if not v or v < 0 or v > 1 then return nil, "must be a number from 0 to 1" end
    return v
  end,
  count = function(v)
    v = number_of(v)
    v = v and math.tointeger(v)
    if not v or v < 0 then return nil, "must be a whole number >= 0" end
    return v
  end,
  credits = function(v)
    if v == nil or v == "unlimited" or (type(v) == "userdata") then return false end -- JSON null
    v = number_of(v)
    v = v and math.tointeger(v)
    if not v or v < 0 then return nil, "must be a whole number >= 0, or null for unlimited" end
    return v
  end,
  integer = function(v)
    v = number_of(v)
    v = v and math.tointeger(v)
    if not v then return nil, "must be a whole number" end
    return v
  end,
  port = function(v)
    v = number_of(v)
    v = v and math.tointeger(v)
    if not v or v < 0 or v > 65535 then return nil, "must be a port number (0..65535)" end
    return v
  end,
  host = function(v)
    if type(v) ~= "string" or v == "" then return nil, "must be an address" end
    return v
  end,
  url = function(v)
    if type(v) ~= "string" or not v:match("^[Hh][Tt][Tt][Pp][Ss]?://[^/%s]+$") then
      return nil, "must be http(s)://HOST[:PORT], without a path"
    end
    return v
  end,
  keys = function(v)
    if type(v) ~= "string" then return nil, "must be a comma-separated list of keys" end
    local set, any = {}, false
    for key in v:gmatch("[^,]+") do
      key = key:match("^%s*(.-)%s*$")
      if key ~= "" then set[key], any = true, true end
    end
    if not any then return nil, "must name at least one key" end
    return set
  end,
  file = function(v)
    if type(v) ~= "string" or v == "" then return nil, "must be a file path" end
    return v
  end,
  flag = function(v)
    if type(v) ~= "boolean" then return nil, "must be true or false" end
    return v
  end,
}

--- Checks one option value. Returns the value to store (false for "unlimited" credits), or
-- nil, reason.
function M.check(name, value)
  local spec = M.BY_NAME[name]
  if not spec then return nil, "unknown option" end
  return CHECK[spec.kind](value)
end

--- A table of every option at its default (credits false = unlimited; keys nil = any key).
function M.defaults()
  local out = {}
  for _, spec in ipairs(M.SPECS) do out[spec[1]] = spec[3] end
  out.credits = false
  return out
end

local ARGNAMES = {
  seconds = "<SECONDS>", positive = "<SECONDS>", rate = "<RATE>", count = "<N>", credits = "<N>",
  integer = "<N>", port = "<PORT>", host = "<HOST>", url = "<URL>", keys = "<K1,K2,...>", file = "<FILE>",
}

--- The argparse parser for the command line (--help and --version print and exit).
function M.parser()
  local argparse = require "argparse"
  local parser = argparse("dh3-emulator", "A local stand-in for the DH3 image-generation API.")
  parser:epilog(tasks.MARKERS_HELP .. [[


Introspection (no key needed): GET /_emulator/stats, POST /_emulator/reset,
GET or POST /_emulator/config (a JSON object of the options marked *, with _ for -,
e.g. {"fault_5xx": 0.5, "credits": null}).
The first line printed is "listening on http://HOST:PORT" (https with --tls-cert).]])
  parser:help_max_width(100)
  parser:flag("--version", "print the version and exit"):action(function()
    io.stdout:write("dh3-emulator ", require("dh3").VERSION, "\n")
    os.exit(0)
  end)
  for _, spec in ipairs(M.SPECS) do
    local name, kind, default, help = spec[1], spec[2], spec[3], spec[4]
    local flag = "--" .. name:gsub("_", "-")
    local text = help .. (spec.runtime and " *" or "")
    if kind == "flag" then
      parser:flag(flag, text)
    else
      local option = parser:option(flag, text):argname(spec.argname or ARGNAMES[kind])
      if default ~= nil then option:default(tostring(default)):show_default(true) end
      option:convert(function(v)
        local value, reason = CHECK[kind](v)
        if value == nil then return nil, ("%s %s"):format(flag, reason) end
        return value
      end)
    end
  end
  return parser
end

--- Parses command-line arguments. Returns the options table, or nil and a message with usage.
function M.parse_args(argv)
  local parser = M.parser()
  local args = {}
  for i = 1, #argv do args[i] = argv[i] end
  local ok, result = parser:pparse(args)
  if not ok then return nil, ("%s\n\nError: %s"):format(parser:get_usage(), result) end
  local opts = M.defaults()
  for name in pairs(M.BY_NAME) do
    if result[name] ~= nil then opts[name] = result[name] end
  end
  if (opts.tls_cert == nil) ~= (opts.tls_key == nil) then
    return nil, ("%s\n\nError: --tls-cert and --tls-key go together"):format(parser:get_usage())
  end
  return opts
end

return M
