-- Per-call costs of the pieces of one `task:status()` in dh3's Lua layer, on a canned answer
-- (no network): where the sequential gap to the C floor goes, piece by piece.
--   lua5.4 bench/tools/micro.lua [N]
local TREE = os.getenv("BENCH_TREE") or "."
package.path = TREE .. "/lua/?.lua;" .. TREE .. "/lua/?/init.lua;" .. package.path
package.cpath = TREE .. "/?.so;" .. package.cpath
local core = require "dh3.core"
local errors = require "dh3.errors"
local output = require "dh3.output"
local contract = require "dh3.contract"

local N = tonumber(arg[1]) or 200000
local BODY = '{"code":200,"message":"Ok","nano_banana_pro_output":{"task_id":"bench-1","status":"success",'
  .. '"images":[{"url":"http://127.0.0.1:8080/files/result.png","content_type":"image/png",'
  .. '"file_name":"result.png","file_size":"2456789","width":"1024","height":"1024"}]}}'
local res = { ok = true, status = 200, curl_code = 0, body = BODY, headers = {}, time = 0.0001 }
local doc = core.json_decode(BODY)

local function bench(name, fn)
  collectgarbage(); collectgarbage()
  local c0 = os.clock()
  for _ = 1, N do fn() end
  local us = (os.clock() - c0) / N * 1e6
  print(("%-58s %6.2f µs"):format(name, us))
end

bench("core.json_decode(body)", function() return core.json_decode(BODY) end)
bench("errors.from_response(res) (includes json_decode)", function() return errors.from_response(res) end)
bench("  errors.sanitize('Ok', 300)", function() return errors.sanitize("Ok", 300) end)
bench("output.parse(doc.nano_banana_pro_output)", function() return output.parse(doc.nano_banana_pro_output) end)
bench("  contract.is_http_url(url)", function() return contract.is_http_url("http://127.0.0.1:8080/files/result.png") end)
bench("  ('2456789'):match('^%d+$') and tonumber", function() return math.tointeger(tonumber(("2456789"):match("^%d+$"))) end)
bench("a 20-field result table like the C core's", function()
  return { request = res, ok = true, status = 200, curl_code = 0, curl_error = nil, message = nil, body = BODY,
    bytes = 250, headers = { content_type = "application/json" }, time = 1e-4, time_connect = 0,
    time_starttransfer = 1e-4, request_size = 100, connects = 0, http_version = "1.1",
    too_large = false, size_mismatch = false }
end)
bench("an options table and a URL concatenation per call", function()
  local url = "http://127.0.0.1:8080" .. "/api/v1/task/get" .. ("?task_id=" .. "bench-1")
  return { method = "GET", url = url, headers = res, body = nil, timeout = 60, connect_timeout = 10 },
    { task_id = "bench-1", deadline = nil, token = res }
end)
