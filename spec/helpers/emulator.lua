-- Starts a dh3-emulator for a spec on a free loopback port, and stops it.
--   local emulator = require "helpers.emulator"
--   local emu = emulator.start{"--queue-time", "0", "--process-time", "0.1"}
--   emu.url, emu.key, emu:stats(), emu:stop()
local M = {}

local process = require "dh3.emulator.process"
local lua = require "helpers.lua"

local KEY = "spec-key-0123456789"

-- an emulator process (url, pid, stop) with the spec's own conveniences
local Emulator = setmetatable({}, { __index = process.Process })
Emulator.__index = Emulator

--- args: array of extra command-line flags. The emulator is Lua 5.4 only: it runs under lua5.4 (or
-- DH3_SPEC_EMULATOR_LUA), whichever Lua runs the specs. Unless args.keys is false, the emulator accepts
-- exactly one key, emu.key. With --tls-cert CERT (HTTPS), emu.ca_file is CERT: the certificate a
-- client must trust (a self-signed one is its own authority).
function M.start(args)
  args = args or {}
  local argv = {}
  if args.keys ~= false then
    argv[1], argv[2] = "--keys", KEY
  end
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local emu = assert(process.start(argv, { lua = lua.emulator }))
  emu.key = KEY
  for i, a in ipairs(argv) do
    if a == "--tls-cert" then emu.ca_file = argv[i + 1] end
  end
  return setmetatable(emu, Emulator)
end

--- Makes a plain HTTP request to the emulator with luasocket (independent of the client under test;
-- over HTTPS with luasec, trusting emu.ca_file). Returns status, body, headers.
function Emulator:http(method, path, body, headers)
  local https = self.url:match("^https:") ~= nil
  local http = require(https and "ssl.https" or "socket.http")
  local ltn12 = require "ltn12"
  local out = {}
  headers = headers or {}
  if body then headers["content-length"] = tostring(#body) end
  local _, status, resp_headers = http.request{
    url = self.url .. path, method = method, headers = headers,
    source = body and ltn12.source.string(body) or nil,
    sink = ltn12.sink.table(out),
    cafile = https and self.ca_file or nil, verify = https and "peer" or nil,
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
