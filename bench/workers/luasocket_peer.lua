-- The usual pure-Lua way: luasocket's socket.http with lua-cjson.
--   lua5.4 luasocket_peer.lua BASE_URL N     N sequential status reads of one task
-- socket.http.request opens a new TCP connection for every request (it sends
-- "Connection: close" and has no connection pool): that is the honest pure-Lua baseline, and why
-- it pays a connect per call where the other peers reuse one connection.
-- Prints "wall=<s> cpu=<s> n=<N>" (wall from socket.gettime, cpu from os.clock).
local http = require "socket.http"
local ltn12 = require "ltn12"
local socket = require "socket"
local cjson = require "cjson"

local base, n = arg[1], tonumber(arg[2])
local url = base .. "/api/v1/task/get?task_id=bench-1"
local headers = { authorization = "Bearer bench-key", accept = "application/json" }

local t0, c0 = socket.gettime(), os.clock()
for _ = 1, n do
  local chunks = {}
  local ok, code = http.request{ url = url, headers = headers, sink = ltn12.sink.table(chunks) }
  if not ok or code ~= 200 then error("request failed: " .. tostring(code)) end
  local doc = cjson.decode(table.concat(chunks))
  if doc.code ~= 200 or doc.nano_banana_pro_output.status ~= "success" then error("unexpected answer") end
end
print(("wall=%.6f cpu=%.6f n=%d"):format(socket.gettime() - t0, os.clock() - c0, n))
