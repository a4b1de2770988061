-- Starts a dh3-emulator for a spec on a free loopback port, and stops it.
--   local emulator = require "helpers.emulator"
--   local emu = emulator.start{"--queue-time", "0", "--process-time", "0.1"}
--   emu.url, emu.key, emu:stats(), emu:stop()
local M = {}

local LUA = os.getenv("DH3_SPEC_LUA") or "lua5.4"
local KEY = "spec-key-0123456789"

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", [['\'']]) .. "'"
end

local Emulator = {}
Emulator.__index = Emulator

--- args: array of extra command-line flags. Unless args.keys is false, the emulator accepts
-- exactly one key, emu.key.
function M.start(args)
  args = args or {}
  local argv = { LUA, "bin/dh3-emulator", "--host", "127.0.0.1", "--port", "0" }
  if args.keys ~= false then
    argv[#argv + 1] = "--keys"
    argv[#argv + 1] = KEY
  end
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local quoted = {}
  for i, a in ipairs(argv) do quoted[i] = shell_quote(a) end
  -- the shell prints its pid, then becomes the emulator (exec), so that pid is the emulator's
  local cmd = "echo $$; exec " .. table.concat(quoted, " ") .. " 2>&1"
  local pipe = assert(io.popen(cmd, "r"))
  local pid = tonumber(pipe:read("l"))
  local first = pipe:read("l")
  local url = first and first:match("^listening on (http://%S+)")
  if not (pid and url) then
    pipe:close()
    error("dh3-emulator did not start: " .. tostring(first), 2)
  end
  return setmetatable({ pid = pid, url = url, key = KEY, pipe = pipe }, Emulator)
end

--- Stops the emulator (SIGTERM) and waits for it; returns whatever else it printed.
function Emulator:stop()
  if not self.pipe then return "" end
  os.execute("kill " .. self.pid .. " 2>/dev/null")
  local rest = self.pipe:read("a")
  self.pipe:close()
  self.pipe = nil
  return rest
end

--- Makes a plain HTTP request to the emulator with luasocket (independent of the client under test).
-- Returns status, body, headers.
function Emulator:http(method, path, body, headers)
  local http = require "socket.http"
  local ltn12 = require "ltn12"
  local out = {}
  headers = headers or {}
  if body then headers["content-length"] = tostring(#body) end
  local _, status, resp_headers = http.request{
    url = self.url .. path, method = method, headers = headers,
    source = body and ltn12.source.string(body) or nil,
    sink = ltn12.sink.table(out),
  }
  return status, table.concat(out), resp_headers
end

--- The emulator's counters (GET /_emulator/stats), decoded.
function Emulator:stats()
  local status, body = self:http("GET", "/_emulator/stats")
  assert(status == 200, "stats: HTTP " .. tostring(status))
  return require("cjson").decode(body)
end

--- Resets the counters and the tasks (POST /_emulator/reset).
function Emulator:reset()
  local status = self:http("POST", "/_emulator/reset", "")
  assert(status == 200, "reset: HTTP " .. tostring(status))
end

--- Changes options at run time (POST /_emulator/config), e.g. {fault_5xx = 0.5}.
function Emulator:config(opts)
  local status, body = self:http("POST", "/_emulator/config", require("cjson").encode(opts))
  assert(status == 200, "config: HTTP " .. tostring(status) .. " " .. tostring(body))
end

return M
