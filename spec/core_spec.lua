-- Specs of the C core, `dh3.core`: the JSON bridge, the engine and its requests.
-- Transfers go to a tiny HTTP/1.1 server on loopback, started by this file in a child
-- process (luasocket, coroutines), that serves fixed answers: status codes with
-- Retry-After, slow answers, reset connections, bodies of N bytes with a right or wrong
-- Content-Length, a slow drip, redirects, oversized headers, an echo.
local core = require "dh3.core"
local files = require "helpers.files"
local shell_quote, make_tmpdir = files.quote, files.tmpdir
local read_file, write_file = files.read_file, files.write_file
local lua = require "helpers.lua"

-- Timing bounds are generous, and more so under valgrind or the sanitizers.
local SLOW = require("helpers.timing").SLOW

-- {=====================================================================
-- The test server
-- ======================================================================
local SERVER = [=[
local socket = require "socket"
local cjson = require "cjson"
local srv = assert(socket.bind("127.0.0.1", 0))
srv:settimeout(0)
local _, port = srv:getsockname()
io.stdout:write(port, "\n")
io.stdout:flush()

local threads = {}

local function recv(c, pattern)
  local acc = ""
  while true do
    local data, err, partial = c:receive(pattern, acc)
    if data then return data end
    if err ~= "timeout" then return nil, err end
    acc = partial or acc
    coroutine.yield("read", c)
  end
end

local function send(c, data)
  local i = 1
  while i <= #data do
    local last, err, partial = c:send(data, i)
    if last then
      i = last + 1
    elseif err == "timeout" then
      i = partial + 1
      coroutine.yield("write", c)
    else
      return nil, err
    end
  end
  return true
end

local function sleep(s) coroutine.yield("sleep", socket.gettime() + s) end

local REASONS = { [200] = "OK", [302] = "Found", [404] = "Not Found", [429] = "Too Many Requests",
                  [500] = "Internal Server Error", [503] = "Service Unavailable" }

local function head(status, headers)
  local out = { ("HTTP/1.1 %d %s\r\n"):format(status, REASONS[status] or "Status") }
  for _, h in ipairs(headers) do out[#out + 1] = h .. "\r\n" end
  out[#out + 1] = "\r\n"
  return table.concat(out)
end

local function pattern_bytes(n)
  local chunk = ("0123456789abcdef"):rep(64) -- 1 KiB
  local parts = {}
  for _ = 1, math.floor(n / 1024) do parts[#parts + 1] = chunk end
  parts[#parts + 1] = chunk:sub(1, n % 1024)
  return table.concat(parts)
end

local function respond(c, status, body, extra)
  local headers = { "Content-Length: " .. #body, "Content-Type: text/plain" }
  for _, h in ipairs(extra or {}) do headers[#headers + 1] = h end
  return send(c, head(status, headers) .. body)
end

-- returns true to keep the connection open
local function route(c, method, path, query, reqh, body)
  local n, m
  n = path:match("^/status/(%d+)$")
  if n then
    local extra = {}
    if query.retry_after then extra[1] = "Retry-After: " .. query.retry_after end
    respond(c, tonumber(n), "status " .. n, extra)
    return true
  end
  n = path:match("^/slow/(%d+)$")
  if n then
    sleep(tonumber(n) / 1000)
    respond(c, 200, "slow")
    return true
  end
  if path == "/reset" then
    c:setoption("linger", { on = true, timeout = 0 })
    return false
  end
  n = path:match("^/bytes/(%d+)$")
  if n then
    n = tonumber(n)
    local cl = query.cl and tonumber(query.cl) or n
    local status = query.status and tonumber(query.status) or 200
    send(c, head(status, { "Content-Length: " .. cl, "Content-Type: application/octet-stream" })
      .. (method == "HEAD" and "" or pattern_bytes(n)))
    return cl == n
  end
  n = path:match("^/nolength/(%d+)$")
  if n then
    send(c, head(200, { "Connection: close" }) .. pattern_bytes(tonumber(n)))
    return false
  end
  n, m = path:match("^/drip/(%d+)/(%d+)$")
  if n then
    n, m = tonumber(n), tonumber(m)
    if not send(c, head(200, { "Content-Length: " .. n })) then return false end
    local data = pattern_bytes(n)
    for i = 1, n, 1024 do
      if not send(c, data:sub(i, i + 1023)) then return false end
      sleep(m / 1000)
    end
    return true
  end
  if path == "/redirect" then
    respond(c, 302, "moved", { "Location: /bytes/10" })
    return true
  end
  if path == "/goto" then
    respond(c, 302, "elsewhere", { "Location: " .. query.to:gsub("%%(%x%x)", function(h)
      return string.char(tonumber(h, 16)) end) })
    return true
  end
  if path == "/loop" then
    respond(c, 302, "again", { "Location: /loop" })
    return true
  end
  n = path:match("^/headers/(%d+)$")
  if n then
    local extra = {}
    for i = 1, tonumber(n) do extra[i] = ("X-Filler-%d: %s"):format(i, ("x"):rep(100)) end
    respond(c, 200, "many headers", extra)
    return true
  end
  if path == "/json" then
    respond(c, 200, '{"code":200,"n":5,"x":null,"list":[1,2.5,"3"]}', { "Content-Type: application/json" })
    return true
  end
  if path == "/echo" then
    respond(c, 200, cjson.encode{ method = method, path = path, headers = reqh, body = body })
    return true
  end
  respond(c, 404, "no route " .. path)
  return true
end

local function serve(c)
  while true do
    local line = recv(c, "*l")
    if not line then break end
    if line ~= "" then
      local method, target = line:match("^(%u+) (%S+)")
      local reqh = {}
      while true do
        local h = recv(c, "*l")
        if not h then c:close() return end
        if h == "" then break end
        local k, v = h:match("^([^:]+):%s*(.-)%s*$")
        if k then -- a repeated header joined as HTTP does, so that a duplicate shows
          k = k:lower()
          reqh[k] = reqh[k] and reqh[k] .. ", " .. v or v
        end
      end
      local body = ""
      local len = tonumber(reqh["content-length"] or "0")
      if len and len > 0 then
        body = recv(c, len)
        if not body then break end
      end
      local path, qs = target:match("^([^?]*)%??(.*)$")
      local query = {}
      for k, v in qs:gmatch("([^&=]+)=([^&]*)") do query[k] = v end
      local ok, keep = pcall(route, c, method, path, query, reqh, body)
      if not ok then io.stderr:write("server: ", tostring(keep), "\n") keep = false end
      if not keep then break end
    end
  end
  c:close()
end

while true do
  local reads, writes, wake = { srv }, {}, math.huge
  for _, t in ipairs(threads) do
    if t.kind == "read" then reads[#reads + 1] = t.arg
    elseif t.kind == "write" then writes[#writes + 1] = t.arg
    elseif t.kind == "sleep" then wake = math.min(wake, t.arg) end
  end
  local timeout = math.max(0, math.min(wake - socket.gettime(), 0.05))
  local r, w = socket.select(reads, writes, timeout)
  while true do
    local c = srv:accept()
    if not c then break end
    c:settimeout(0)
    c:setoption("tcp-nodelay", true)
    threads[#threads + 1] = { co = coroutine.create(serve), kind = "start", arg = c }
  end
  local now, live = socket.gettime(), {}
  for _, t in ipairs(threads) do
    local ready = t.kind == "start" or (t.kind == "read" and r[t.arg]) or
      (t.kind == "write" and w[t.arg]) or (t.kind == "sleep" and now >= t.arg)
    if ready then
      local ok, kind, arg = coroutine.resume(t.co, t.arg)
      if not ok then io.stderr:write("server: ", tostring(kind), "\n") end
      t.kind, t.arg = kind, arg
    end
    if coroutine.status(t.co) ~= "dead" then live[#live + 1] = t end
  end
  threads = live
end
]=]

local Server = {}
Server.__index = Server

local function start_server()
  local script = os.tmpname()
  local f = assert(io.open(script, "w"))
  f:write(SERVER)
  f:close()
  -- the shell prints its pid, then becomes the server (exec), so that pid is the server's; the
  -- server stands in for the service, as the emulator does: it runs under Lua 5.4
  local pipe = assert(io.popen("echo $$; exec " .. shell_quote(lua.emulator) .. " " .. shell_quote(script) .. " 2>&1", "r"))
  local pid = tonumber(pipe:read("*l"))
  local port = tonumber(pipe:read("*l"))
  os.remove(script)
  assert(pid and port, "the test server did not start")
  return setmetatable({ pid = pid, port = port, pipe = pipe,
                        url = "http://127.0.0.1:" .. port }, Server)
end

function Server:stop()
  if not self.pipe then return end
  os.execute("kill " .. self.pid .. " 2>/dev/null")
  self.pipe:close()
  self.pipe = nil
end
-- }=====================================================================

-- {=====================================================================
-- Helpers
-- ======================================================================
local closed_port = files.closed_port

local temp_files = files.temp_files

-- What the server sends for /bytes/N.
local function pattern_bytes(n)
  local chunk = ("0123456789abcdef"):rep(64)
  return (chunk:rep(math.floor(n / 1024) + 1)):sub(1, n)
end

-- Performs until nothing is in flight or waiting; returns the delivered {result, context}.
local function drain(engine, limit)
  local out = {}
  local deadline = core.now() + (limit or 10) * SLOW
  while true do
    engine:perform(0.05)
    while true do
      local res, ctx = engine:next_done()
      if not res then break end
      out[#out + 1] = { res, ctx }
    end
    local active, waiting = engine:pending()
    if active == 0 and waiting == 0 then break end
    assert(core.now() < deadline, "transfers did not finish in time")
  end
  return out
end

-- One request to completion: result, context.
local function fetch(engine, opts)
  local req, err = engine:request(opts)
  assert(req, err)
  local got = drain(engine)
  assert(#got == 1, "expected one result, got " .. #got)
  return got[1][1], got[1][2]
end

-- A request's state as its __tostring says it: "active", "done", "delivered", "cancelled".
local function state_of(req)
  return (tostring(req):match(", (%a+)%)$"))
end

-- Performs until fn() is true (or fails after a while).
local function perform_until(engine, fn)
  local deadline = core.now() + 10 * SLOW
  while not fn() do
    engine:perform(0.01)
    assert(core.now() < deadline, "condition not reached in time")
  end
end
-- }=====================================================================

describe("dh3.core", function()
  local server, tmpdir

  lazy_setup(function()
    server = start_server()
    tmpdir = make_tmpdir()
  end)

  lazy_teardown(function()
    if server then server:stop() end
    if tmpdir then os.execute("rm -rf " .. shell_quote(tmpdir)) end
  end)

  describe("module", function()
    it("has VERSION and curl_version", function()
      assert.are.equal("0.1.0", core.VERSION)
      assert.matches("^libcurl/7%.", core.curl_version)
    end)

    it("now() is a monotonic float", function()
      local a = core.now()
      local b = core.now()
      if lua.integers then assert.are.equal("float", math.type(a)) end -- below 5.3 every number is one
      assert.is_true(b >= a)
    end)

    it("parse_http_date() returns epoch seconds or nil", function()
      assert.are.equal(784111777, core.parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"))
      assert.are.equal("integer", lua.math_type(core.parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT")))
      assert.is_nil(core.parse_http_date("not a date"))
    end)

    it("loads again in the same state with a private cjson of its own", function()
      local cjson = require "cjson"
      local depth_before = cjson.decode_max_depth()
      package.loaded["dh3.core"] = nil
      local again = require "dh3.core"
      package.loaded["dh3.core"] = core
      assert.are_not.equal(core, again)
      assert.are.same({ a = 1 }, again.json_decode('{"a":1}'))
      assert.are.same({ a = 1 }, core.json_decode('{"a":1}'))
      assert.are.equal(depth_before, cjson.decode_max_depth())
      local e = again.engine()
      assert.are.equal("dh3.engine", getmetatable(e).__name)
      e:close()
    end)
  end)

  describe("without lua-cjson", function()
    it("loads, and its json functions raise a clear error", function()
      local saved_loaded, saved_preload = package.loaded.cjson, package.preload.cjson
      package.loaded.cjson = nil
      package.preload.cjson = function() error("no cjson in this test") end
      package.loaded["dh3.core"] = nil
      local ok, mod = pcall(require, "dh3.core")
      package.loaded["dh3.core"] = core
      package.loaded.cjson, package.preload.cjson = saved_loaded, saved_preload
      assert.is_true(ok, mod)
      assert.has_error(function() mod.json_decode("{}") end)
      local _, err = pcall(mod.json_encode, {})
      assert.matches("lua%-cjson is not available %(.*no cjson in this test", err)
      mod.engine():close()
    end)
  end)

  describe("json_decode()", function()
    local deep = ("["):rep(65) .. ("]"):rep(65)
    local ok_deep = ("["):rep(64) .. ("]"):rep(64)
    local rows = {
      { "an object", '{"a":"x","b":true}', { a = "x", b = true } },
      { "integers as integers", '{"w":1024,"n":-3,"z":0}', { w = 1024, n = -3, z = 0 } },
      { "floats stay floats", '{"f":2.5,"g":-0.125}', { f = 2.5, g = -0.125 } },
      { "an exact float becomes an integer", '{"x":5.0,"e":1e3}', { x = 5, e = 1000 } },
      { "2^53 becomes an integer", '[9007199254740992]', { 9007199254740992 } },
      { "beyond 2^53 stays a float", '[18014398509481984]', { 18014398509481984.0 } },
      { "null in an object drops the key", '{"a":null,"b":1}', { b = 1 } },
      { "null in an array leaves a hole", '[1,null,3]', { [1] = 1, [3] = 3 } },
      { "nested", '{"o":{"p":[{"q":null,"r":2}]}}', { o = { p = { { r = 2 } } } } },
      { "numbers as strings stay strings", '{"file_size":"2456789"}', { file_size = "2456789" } },
      { "top-level string", '"hello"', "hello" },
      { "top-level integer", '42', 42 },
      { "top-level float", '4.5', 4.5 },
      { "top-level boolean", 'false', false },
      { "depth 64", ok_deep, "table" },
    }
    for _, row in ipairs(rows) do
      local name, input, expected = row[1], row[2], row[3]
      it(name, function()
        local got, err = core.json_decode(input)
        assert.is_nil(err)
        if expected == "table" then
          assert.are.equal("table", type(got))
        else
          assert.are.same(expected, got)
          if lua.math_type(expected) then assert.are.equal(lua.math_type(expected), lua.math_type(got)) end
          if type(expected) == "table" then
            for k, v in pairs(expected) do
              if lua.math_type(v) then assert.are.equal(lua.math_type(v), lua.math_type(got[k]), k) end
            end
          end
        end
      end)
    end

    it("keeps integer types inside nested tables", function()
      local t = core.json_decode('{"images":[{"width":1024,"height":768.0,"ratio":1.5}]}')
      assert.are.equal("integer", lua.math_type(t.images[1].width))
      assert.are.equal("integer", lua.math_type(t.images[1].height))
      assert.are.equal("float", lua.math_type(t.images[1].ratio))
    end)

    local refused = {
      { "a NUL byte", '{"a":1}\0garbage', "NUL" },
      { "too deep", deep, "" },
      { "malformed", '{"a":', "" },
      { "empty", "", "" },
      { "NaN", '[NaN]', "" },
      { "hex numbers", '[0x10]', "" },
      { "a top-level null", "null", "null" },
    }
    for _, row in ipairs(refused) do
      it("refuses " .. row[1], function()
        local got, err = core.json_decode(row[2])
        assert.is_nil(got)
        assert.are.equal("string", type(err))
        assert.matches(row[3], err, 1, true)
      end)
    end

    it("refuses a text over max_bytes before decoding", function()
      local got, err = core.json_decode('{"a":"' .. ("x"):rep(100) .. '"}', 50)
      assert.is_nil(got)
      assert.matches("too large", err)
      assert.are.same({ a = 1 }, core.json_decode('{"a":1}', 7))
    end)

    it("refuses over 4 MiB by default", function()
      local big = '"' .. ("x"):rep(4 * 1024 * 1024) .. '"'
      local got, err = core.json_decode(big)
      assert.is_nil(got)
      assert.matches("too large", err)
    end)

    it("raises on a wrong argument type", function()
      assert.has_error(function() core.json_decode({}) end)
      assert.has_error(function() core.json_decode("1", -1) end)
    end)
  end)

  describe("json_encode()", function()
    it("encodes tables that decode back the same", function()
      local v = { model = "nano-banana-pro", input = { prompt = "a cat", image_urls = { "u1", "u2" } }, n = 3 }
      local s = assert(core.json_encode(v))
      assert.are.same(v, core.json_decode(s))
    end)

    it("encodes scalars", function()
      assert.are.equal('"x"', core.json_encode("x"))
      assert.are.equal("true", core.json_encode(true))
    end)

    local refused = {
      { "NaN", { 0 / 0 } },
      { "infinity", { math.huge } },
      { "a function", { f = print } },
      { "too deep", (function()
          local t = {}
          local cur = t
          for _ = 1, 70 do cur[1] = {} cur = cur[1] end
          return t
        end)() },
    }
    for _, row in ipairs(refused) do
      it("returns nil, msg for " .. row[1], function()
        local s, err = core.json_encode(row[2])
        assert.is_nil(s)
        assert.are.equal("string", type(err))
      end)
    end
  end)

  describe("dh3.engine", function()
    it("is created with defaults or options and says what it is", function()
      local e = core.engine()
      assert.matches("^dh3%.engine %(.*0 in flight, 0 done%)$", tostring(e))
      e:close()
      assert.matches("closed", tostring(e))
      local e2 = core.engine{ user_agent = "spec/1", max_body = 1000, max_connections = 4 }
      local res = fetch(e2, { url = server.url .. "/echo" })
      assert.are.equal("spec/1", core.json_decode(res.body).headers["user-agent"])
      e2:close()
    end)

    it("sends no User-Agent without user_agent (the Lua layer always gives one)", function()
      local e = core.engine()
      local res = fetch(e, { url = server.url .. "/echo" })
      assert.is_nil(core.json_decode(res.body).headers["user-agent"])
      e:close()
    end)

    it("sends the caller's own User-Agent instead of its own, once", function()
      local e = core.engine{ user_agent = "spec/1" }
      local res = fetch(e, { url = server.url .. "/echo", headers = { "user-agent: mine/2" } })
      assert.are.equal("mine/2", core.json_decode(res.body).headers["user-agent"])
      e:close()
    end)

    it("sends each request its own headers while requests with other headers are in flight", function()
      -- four header sets, more than the engine keeps lists for (DH3_HEADER_CACHE), all in flight at once
      local e = core.engine{ user_agent = "spec/1" }
      local sets = { { "X-Set: a" }, { "X-Set: b", "X-More: 1" }, {}, { "X-Set: a" }, { "X-Set: c" }, { "X-Set: b", "X-More: 1" } }
      for i, h in ipairs(sets) do
        assert(e:request{ url = server.url .. "/echo", headers = h, context = i })
      end
      local got = drain(e)
      assert.are.equal(#sets, #got)
      for _, pair in ipairs(got) do
        local seen = core.json_decode(pair[1].body).headers
        local want = sets[pair[2]]
        assert.are.equal(want[1] and want[1]:match(": (.*)") or nil, seen["x-set"])
        assert.are.equal(want[2] and "1" or nil, seen["x-more"])
        assert.are.equal("spec/1", seen["user-agent"]) -- once
      end
      e:close()
    end)

    it("raises on a misspelt option, naming it", function()
      assert.has_error(function() core.engine{ max_conections = 4 } end,
        "bad argument #1 to 'engine' (unknown field 'max_conections')")
      assert.has_error(function() core.engine{ max_body = "big" } end)
      assert.has_error(function() core.engine{ max_body = 0 } end)
      assert.has_error(function() core.engine{ proxy = 1 } end)
      assert.has_error(function() core.engine("x") end)
    end)

    it("raises from every method once closed; close is idempotent", function()
      local e = core.engine()
      e:close()
      e:close()
      for _, call in ipairs{
        function() e:perform(0) end,
        function() e:next_done() end,
        function() e:pending() end,
        function() e:request{ url = server.url } end,
      } do
        assert.has_error(call, "dh3.engine: attempt to use a closed engine")
      end
    end)

    it("closes at the end of a <close> scope", function()
      if not lua.close_variables then
        pending("to-be-closed variables are Lua 5.4's: there close() is called explicitly")
        return
      end
      -- compiled at run time: the other Luas cannot parse <close>
      local req = assert(load([[
        local core, url = ...
        local req
        do
          local e <close> = core.engine()
          req = assert(e:request{ url = url })
          e:perform(0)
        end
        return req
      ]]))(core, server.url .. "/slow/2000")
      assert.are.equal("cancelled", state_of(req))
    end)

    describe("request()", function()
      local e
      before_each(function() e = core.engine() end)
      after_each(function() e:close() end)

      it("raises on a misspelt option, naming it", function()
        assert.has_error(function() e:request{ url = server.url, metod = "GET" } end,
          "bad argument #1 to 'request' (unknown field 'metod')")
        assert.are.same({ 0, 0 }, { e:pending() })
      end)

      local bad = {
        { "no url", {}, "field 'url' is required" },
        { "a url of the wrong type", { url = 5 }, "field 'url' must be a string" },
        { "an unknown method", { url = "http://x/", method = "PUT" }, "field 'method'" },
        { "a body without POST", { url = "http://x/", body = "{}" }, "field 'body' needs method POST" },
        { "headers that are not strings", { url = "http://x/", headers = { 1 } }, "field 'headers'" },
        { "a header with CR LF", { url = "http://x/", headers = { "A: b\r\nC: d" } }, "CR or LF" },
        { "more than 100 headers", { url = "http://x/", headers = (function()
          local h = {}
          for i = 1, 101 do h[i] = "X-" .. i .. ": y" end
          return h
        end)() }, "more than 100 items" },
        { "a negative timeout", { url = "http://x/", timeout = -1 }, "field 'timeout'" },
        { "a zero connect_timeout", { url = "http://x/", connect_timeout = 0 }, "field 'connect_timeout'" },
        { "a string follow_redirects", { url = "http://x/", follow_redirects = "yes" }, "field 'follow_redirects'" },
        { "a float expect_size", { url = "http://x/", expect_size = 1.5 }, "field 'expect_size'" },
        { "a zero max_body", { url = "http://x/", max_body = 0 }, "field 'max_body'" },
        { "a HEAD download", { url = "http://x/", method = "HEAD", download_to = "/tmp/x" }, "field 'download_to'" },
        { "a url with a NUL byte", { url = "http://x/\0y" }, "NUL" },
      }
      for _, row in ipairs(bad) do
        it("raises on " .. row[1], function()
          local ok, err = pcall(e.request, e, row[2])
          assert.is_false(ok)
          assert.matches(row[3], err, 1, true)
          assert.are.same({ 0, 0 }, { e:pending() })
        end)
      end

      it("returns nil, errmsg when the temp file cannot be created", function()
        local req, err = e:request{ url = server.url .. "/bytes/10", download_to = tmpdir .. "/missing/dir/x.bin" }
        assert.is_nil(req)
        assert.matches("cannot create a temporary file", err)
        assert.are.same({ 0, 0 }, { e:pending() })
      end)

      it("says what it is", function()
        local req = assert(e:request{ url = server.url .. "/bytes/1" })
        assert.matches("^dh3%.request %(.*GET, active%)$", tostring(req))
        assert.are.equal("active", state_of(req))
        assert.is_nil(req:info()) -- no diagnostics before the transfer ends
        drain(e)
        assert.are.equal("delivered", state_of(req))
        assert.are.equal(1, req:info().connects)
      end)
    end)

    describe("perform() and next_done()", function()
      local e
      before_each(function() e = core.engine() end)
      after_each(function() e:close() end)

      it("makes a round trip and hands back the context", function()
        local ctx = { id = 7 }
        local req = assert(e:request{
          method = "POST", url = server.url .. "/echo", body = '{"a":1}',
          headers = { "Content-Type: application/json", "X-Test: yes" },
          timeout = 5, connect_timeout = 2, context = ctx,
        })
        local got = drain(e)
        assert.are.equal(1, #got)
        local res, c = got[1][1], got[1][2]
        assert.are.equal(ctx, c)
        assert.are.equal(req, res.request)
        assert.is_true(res.ok)
        assert.are.equal(200, res.status)
        assert.are.equal("integer", lua.math_type(res.status))
        assert.are.equal(0, res.curl_code)
        assert.is_nil(res.curl_error)
        assert.is_nil(res.message)
        assert.are.equal("text/plain", req:info().content_type)
        assert.are.equal(#res.body, req:info().content_length)
        assert.are.equal(#res.body, res.bytes)
        assert.is_nil(res.too_large)
        assert.is_nil(res.size_mismatch)
        assert.is_nil(res.path)
        -- a success's result holds what the caller acts on, in one small table
        local n = 0
        for _ in pairs(res) do n = n + 1 end
        assert.are.equal(7, n)
        -- the diagnostics are the request's
        local info = req:info()
        assert.are.equal("1.1", info.http_version)
        assert.are.equal(res.time, info.time)
        assert.is_true(info.time > 0 and info.time >= info.time_starttransfer
          and info.time_starttransfer >= info.time_connect)
        assert.is_true(info.request_size > 0)
        assert.are.equal(1, info.connects)
        local echo = core.json_decode(res.body)
        assert.are.equal("POST", echo.method)
        assert.are.equal('{"a":1}', echo.body)
        assert.are.equal("yes", echo.headers["x-test"])
        assert.are.equal("application/json", echo.headers["content-type"])
        assert.is_nil(echo.headers["expect"])
        assert.is_nil(e:next_done())
        assert.are.same({ 0, 0 }, { e:pending() })
      end)

      it("sends a binary body exactly", function()
        local res = fetch(e, { method = "POST", url = server.url .. "/echo", body = "a\0b\255" })
        assert.are.equal("a\0b\255", core.json_decode(res.body).body)
        local empty = fetch(e, { method = "POST", url = server.url .. "/echo" })
        assert.are.equal("", core.json_decode(empty.body).body)
      end)

      it("allocates nothing when there is nothing to do", function()
        e:perform(0)
        -- LuaJIT counts the memory of the traces it compiles: not the engine's
        if jit then jit.off() end
        finally(function() if jit then jit.on() end end)
        collectgarbage()
        collectgarbage("stop")
        local before = collectgarbage("count")
        for _ = 1, 1000 do
          e:perform(0)
          e:next_done()
          e:pending()
        end
        local after = collectgarbage("count")
        collectgarbage("restart")
        assert.are.equal(before, after)
      end)

      it("sends HEAD without a body and GET by default", function()
        local res = fetch(e, { url = server.url .. "/bytes/100", method = "HEAD" })
        assert.are.equal(200, res.status)
        assert.are.equal(100, res.request:info().content_length)
        assert.are.equal("", res.body)
        local res2 = fetch(e, { url = server.url .. "/echo" })
        assert.are.equal("GET", core.json_decode(res2.body).method)
      end)

      it("delivers many concurrent transfers, each with its own context", function()
        for i = 1, 20 do
          assert(e:request{ url = server.url .. "/bytes/" .. (i * 100), context = i })
        end
        assert.are.same({ 20, 0 }, { e:pending() })
        local got = drain(e)
        assert.are.equal(20, #got)
        local seen = {}
        for _, pair in ipairs(got) do
          local res, i = pair[1], pair[2]
          assert.is_true(res.ok)
          assert.are.equal(i * 100, #res.body)
          assert.are.equal(pattern_bytes(i * 100), res.body)
          seen[i] = true
        end
        for i = 1, 20 do assert.is_true(seen[i]) end
      end)

      it("perform(0) returns promptly while the server is slow", function()
        assert(e:request{ url = server.url .. "/slow/1000" })
        for _ = 1, 5 do
          local t0 = core.now()
          assert.are.equal(1, e:perform(0))
          assert.is_true(core.now() - t0 < 0.05 * SLOW, "perform(0) took too long")
        end
        assert.is_nil(e:next_done())
      end)

      it("perform(t) never blocks longer than t while a transfer is slow", function()
        assert(e:request{ url = server.url .. "/slow/2000" })
        local t0 = core.now()
        assert.are.equal(1, e:perform(0.2))
        local dt = core.now() - t0
        assert.is_true(dt >= 0.15, "returned too early: " .. dt)
        assert.is_true(dt < 0.2 + 0.05 * SLOW, "blocked too long: " .. dt)
      end)

      it("perform(t) with nothing to do sleeps about t", function()
        local t0 = core.now()
        assert.are.equal(0, e:perform(0.1))
        local dt = core.now() - t0
        assert.is_true(dt >= 0.09, "returned too early: " .. dt)
        assert.is_true(dt < 0.1 + 0.05 * SLOW, "slept too long: " .. dt)
        t0 = core.now()
        e:perform(0)
        assert.is_true(core.now() - t0 < 0.01 * SLOW)
      end)

      it("perform(t) returns as soon as a transfer finishes", function()
        assert(e:request{ url = server.url .. "/slow/100" })
        local t0 = core.now()
        local deadline = t0 + 5 * SLOW
        while e:pending() == 1 and core.now() < deadline do e:perform(3) end
        assert.is_true(core.now() - t0 < 1.5 * SLOW)
        assert.is_truthy(e:next_done())
      end)

      it("reuses the connection for a second request to the same server", function()
        local first = fetch(e, { url = server.url .. "/bytes/10" })
        local second = fetch(e, { url = server.url .. "/bytes/10" })
        assert.are.equal(1, first.request:info().connects)
        assert.are.equal(0, second.request:info().connects)
      end)

      it("reports COULDNT_CONNECT on a closed port, with nothing sent", function()
        local res = fetch(e, { url = "http://127.0.0.1:" .. closed_port() .. "/", connect_timeout = 2 })
        assert.is_false(res.ok)
        assert.are.equal("COULDNT_CONNECT", res.curl_error)
        assert.are.equal(7, res.curl_code)
        assert.are.equal(0, res.request_size)
        assert.are.equal(0, res.status)
        assert.is_nil(res.body)
        assert.matches("connect", res.message)
      end)

      it("reports OPERATION_TIMEDOUT", function()
        local t0 = core.now()
        local res = fetch(e, { url = server.url .. "/slow/3000", timeout = 0.3 })
        assert.is_true(core.now() - t0 < 2 * SLOW)
        assert.is_false(res.ok)
        assert.are.equal("OPERATION_TIMEDOUT", res.curl_error)
        assert.is_true(res.request_size > 0)
      end)

      it("reports a reset connection", function()
        local res = fetch(e, { url = server.url .. "/reset" })
        assert.is_false(res.ok)
        assert.is_truthy(({ RECV_ERROR = true, GOT_NOTHING = true })[res.curl_error], res.curl_error)
      end)

      it("refuses an unsupported protocol", function()
        local res = fetch(e, { url = "file:///etc/passwd" })
        assert.is_false(res.ok)
        assert.are.equal("UNSUPPORTED_PROTOCOL", res.curl_error)
        assert.is_nil(res.body)
      end)

      it("aborts a body over max_body with too_large", function()
        local res = fetch(e, { url = server.url .. "/bytes/100000", max_body = 1000 })
        assert.is_false(res.ok)
        assert.is_true(res.too_large)
        assert.is_nil(res.body)
        assert.matches("larger than the limit of 1000 bytes", res.message)
        local e2 = core.engine{ max_body = 500 }
        local res2 = fetch(e2, { url = server.url .. "/bytes/501" })
        assert.is_true(res2.too_large)
        e2:close()
      end)

      it("applies expect_size to a memory body", function()
        local more = fetch(e, { url = server.url .. "/bytes/2000", expect_size = 1000 })
        assert.is_true(more.too_large)
        assert.is_false(more.ok)
        local fewer = fetch(e, { url = server.url .. "/bytes/900", expect_size = 1000 })
        assert.is_true(fewer.size_mismatch)
        assert.is_false(fewer.ok)
        local exact = fetch(e, { url = server.url .. "/bytes/1000", expect_size = 1000 })
        assert.is_true(exact.ok)
      end)

      it("keeps the status, body and Retry-After of an error answer", function()
        local res = fetch(e, { url = server.url .. "/status/429?retry_after=7" })
        assert.is_true(res.ok) -- the transfer worked; the Lua layer judges the status
        assert.are.equal(429, res.status)
        assert.are.equal("status 429", res.body)
        assert.are.equal("7", res.retry_after)
      end)

      it("follows redirects only when asked, and at most 5", function()
        local no = fetch(e, { url = server.url .. "/redirect" })
        assert.are.equal(302, no.status)
        assert.are.equal("moved", no.body)
        local yes = fetch(e, { url = server.url .. "/redirect", follow_redirects = true })
        assert.are.equal(200, yes.status)
        assert.are.equal(pattern_bytes(10), yes.body)
        assert.are.equal("application/octet-stream", yes.request:info().content_type)
        local loop = fetch(e, { url = server.url .. "/loop", follow_redirects = true })
        assert.are.equal("TOO_MANY_REDIRECTS", loop.curl_error)
      end)

      it("never follows with the Authorization header to another host", function()
        local auth = { "Authorization: Bearer secret-key" }
        local same = fetch(e, { url = server.url .. "/goto?to=%2Fecho", headers = auth, follow_redirects = true })
        assert.are.equal("Bearer secret-key", core.json_decode(same.body).headers.authorization)
        local other = "http://localhost:" .. server.port .. "/echo"
        local res = fetch(e, { url = server.url .. "/goto?to=" .. other:gsub("[:/]", function(ch)
          return ("%%%02X"):format(ch:byte()) end), headers = auth, follow_redirects = true })
        assert.are.equal(200, res.status)
        assert.is_nil(core.json_decode(res.body).headers.authorization)
      end)

      it("aborts when the response headers pass 16 KiB", function()
        local fine = fetch(e, { url = server.url .. "/headers/10" })
        assert.is_true(fine.ok)
        local res = fetch(e, { url = server.url .. "/headers/200" })
        assert.is_false(res.ok)
        assert.is_true(res.too_large)
        assert.matches("headers", res.message)
      end)

      it("reports progress with the Content-Length as total", function()
        local req = assert(e:request{ url = server.url .. "/drip/20480/20" })
        assert.are.same({ 0 }, { req:progress() })
        perform_until(e, function() return req:progress() > 0 end)
        local got, total = req:progress()
        assert.is_true(got > 0 and got < 20480)
        assert.are.equal(20480, total)
        drain(e)
        assert.are.same({ 20480, 20480 }, { req:progress() })
        local req2 = assert(e:request{ url = server.url .. "/nolength/100", expect_size = 100 })
        drain(e)
        assert.are.same({ 100, 100 }, { req2:progress() })
      end)
    end)

    describe("one pooled easy handle, request after request", function()
      -- max_connections = 1: the pool keeps one idle handle, and requests made one after
      -- another all go through it (info().handle_uses counts its transfers). Each row's
      -- options differ from the row before, and each row checks that none of the earlier
      -- ones stayed on the handle.
      local e
      before_each(function() e = core.engine{ max_connections = 1, user_agent = "spec/1" } end)
      after_each(function()
        e:close()
        assert.are.same({}, temp_files(tmpdir))
      end)

      local function echo(res) return core.json_decode(res.body) end

      local rows = {
        { "a POST with a body and headers of its own",
          { method = "POST", url = "/echo", body = "a\0body", headers = { "X-Extra: yes" } },
          function(res, info)
            local got = echo(res)
            assert.are.equal("POST", got.method)
            assert.are.equal("a\0body", got.body)
            assert.are.equal("yes", got.headers["x-extra"])
            assert.are.equal(1, info.connects) -- a create goes on a connection of its own
            assert.are.equal("1.1", info.http_version)
          end },
        { "then a GET: no body, not a POST, none of those headers, a reused connection",
          { url = "/echo" },
          function(res, info)
            local got = echo(res)
            assert.are.equal("GET", got.method)
            assert.are.equal("", got.body)
            assert.is_nil(got.headers["content-length"])
            assert.is_nil(got.headers["x-extra"])
            assert.is_nil(got.headers["expect"])
            assert.are.equal("spec/1", got.headers["user-agent"])
            assert.are.equal(0, info.connects) -- FRESH_CONNECT went with the POST
          end },
        { "a HEAD",
          { method = "HEAD", url = "/bytes/100" },
          function(res, info)
            assert.are.equal(200, res.status)
            assert.are.equal("", res.body)
            assert.are.equal(100, info.content_length)
          end },
        { "then a GET of the same: the body comes",
          { url = "/bytes/100" },
          function(res)
            assert.are.equal(pattern_bytes(100), res.body)
          end },
        { "a HEAD again, then a POST: it sends its body",
          { method = "HEAD", url = "/bytes/10" },
          function(res) assert.are.equal("", res.body) end },
        { "(the POST)",
          { method = "POST", url = "/echo", body = "{}" },
          function(res)
            local got = echo(res)
            assert.are.equal("POST", got.method)
            assert.are.equal("{}", got.body)
          end },
        { "a download that follows a redirect",
          { url = "/redirect", follow_redirects = true, download_to = "pooled.bin", expect_size = 10 },
          function(res)
            assert.is_true(res.ok, res.message)
            assert.are.equal(pattern_bytes(10), read_file(res.path))
            os.remove(res.path)
          end },
        { "then an API GET that does not: it gets the redirect itself, in memory",
          { url = "/redirect" },
          function(res)
            assert.are.equal(302, res.status)
            assert.are.equal("moved", res.body)
            assert.is_nil(res.path)
          end },
        { "a request with a short timeout",
          { url = "/slow/600", timeout = 0.2 },
          function(res)
            assert.are.equal("OPERATION_TIMEDOUT", res.curl_error)
          end },
        { "then one without: it waits as long as the answer takes",
          { url = "/slow/600" },
          function(res)
            assert.is_true(res.ok, res.message)
            assert.are.equal("slow", res.body)
          end },
      }

      it("sends each request with its own options and nothing of the one before", function()
        local failed = {} -- every row runs, so that a failure names each option that leaked
        for i, row in ipairs(rows) do
          local opts = {}
          for k, v in pairs(row[2]) do opts[k] = v end
          opts.url = server.url .. opts.url
          if opts.download_to then opts.download_to = tmpdir .. "/" .. opts.download_to end
          local res = fetch(e, opts)
          local info = res.request:info()
          assert.are.equal(i, info.handle_uses, row[1]) -- the same handle, its ith transfer
          local ok, err = pcall(row[3], res, info)
          if not ok then failed[#failed + 1] = i .. " " .. row[1] .. ": " .. tostring(err) end
        end
        assert.are.same({}, failed)
      end)

      it("counts a new handle's first transfer as 1, and a second handle's apart", function()
        local a = assert(e:request{ url = server.url .. "/slow/100" })
        local b = assert(e:request{ url = server.url .. "/bytes/1" })
        drain(e)
        assert.are.same({ 1, 1 }, { a:info().handle_uses, b:info().handle_uses })
        -- both went back, but the pool keeps one: the next request reuses it
        assert.are.equal(2, fetch(e, { url = server.url .. "/bytes/1" }).request:info().handle_uses)
      end)
    end)

    describe("downloads", function()
      local e
      before_each(function() e = core.engine() end)
      after_each(function()
        e:close()
        assert.are.same({}, temp_files(tmpdir))
      end)

      it("stream to a temp file beside the destination, then rename it", function()
        local dest = tmpdir .. "/ok.bin"
        local req = assert(e:request{ url = server.url .. "/drip/50000/5", download_to = dest, expect_size = 50000 })
        perform_until(e, function() return req:progress() > 0 end)
        assert.are.equal(1, #temp_files(tmpdir))
        assert.is_nil(read_file(dest))
        local got = drain(e)
        assert.are.equal(1, #got)
        assert.is_true(got[1][1].ok)
        assert.are.equal(dest, got[1][1].path)
        assert.are.equal("delivered", state_of(req))
        assert.are.equal(pattern_bytes(50000), read_file(dest))
        os.remove(dest)
      end)

      it("delivers a finished download with its path, size right, no temp left", function()
        local dest = tmpdir .. "/image.png"
        local res = fetch(e, { url = server.url .. "/bytes/30000", download_to = dest, expect_size = 30000 })
        assert.is_true(res.ok)
        assert.are.equal(dest, res.path)
        assert.are.equal(30000, res.bytes)
        assert.is_nil(res.body)
        assert.are.equal(pattern_bytes(30000), read_file(dest))
        assert.are.same({}, temp_files(tmpdir))
        os.remove(dest)
      end)

      it("leaves the destination untouched on a 404, with the body available", function()
        local dest = tmpdir .. "/keep.png"
        write_file(dest, "original")
        local res = fetch(e, { url = server.url .. "/status/404", download_to = dest })
        assert.is_false(res.ok)
        assert.are.equal(404, res.status)
        assert.are.equal("status 404", res.body)
        assert.is_nil(res.path)
        assert.matches("404", res.message)
        assert.are.equal("original", read_file(dest))
        os.remove(dest)
      end)

      it("fails on fewer bytes than expect_size", function()
        local dest = tmpdir .. "/short.bin"
        local res = fetch(e, { url = server.url .. "/bytes/5000", download_to = dest, expect_size = 6000 })
        assert.is_false(res.ok)
        assert.is_true(res.size_mismatch)
        assert.are.equal(0, res.curl_code)
        assert.matches("received 5000 bytes, expected 6000", res.message)
        assert.is_nil(read_file(dest))
      end)

      it("aborts as soon as more bytes than expect_size arrive", function()
        local dest = tmpdir .. "/long.bin"
        local res = fetch(e, { url = server.url .. "/bytes/50000", download_to = dest, expect_size = 4000 })
        assert.is_false(res.ok)
        assert.is_true(res.too_large)
        assert.is_true(res.bytes <= 4000)
        assert.is_nil(read_file(dest))
      end)

      it("fails when the connection ends before Content-Length", function()
        local dest = tmpdir .. "/partial.bin"
        local res = fetch(e, { url = server.url .. "/bytes/5000?cl=6000", download_to = dest })
        assert.is_false(res.ok)
        assert.are.equal("PARTIAL_FILE", res.curl_error)
        assert.is_nil(read_file(dest))
      end)

      it("fails when Content-Length disagrees with expect_size", function()
        local dest = tmpdir .. "/cl.bin"
        local res = fetch(e, { url = server.url .. "/bytes/5000?cl=4000", download_to = dest, expect_size = 5000 })
        assert.is_false(res.ok)
        assert.is_true(res.size_mismatch)
        assert.is_nil(read_file(dest))
      end)

      it("reports a destination it cannot rename to", function()
        local dest = tmpdir .. "/adir"
        os.execute("mkdir " .. shell_quote(dest) .. " && touch " .. shell_quote(dest .. "/x"))
        local res = fetch(e, { url = server.url .. "/bytes/10", download_to = dest })
        assert.is_false(res.ok)
        assert.are.equal(0, res.curl_code)
        assert.matches("cannot rename", res.message)
        os.execute("rm -rf " .. shell_quote(dest))
      end)

      it("cancel() mid-transfer removes the temp file and never delivers", function()
        local dest = tmpdir .. "/cancelled.bin"
        local req = assert(e:request{ url = server.url .. "/drip/200000/10", download_to = dest, context = "c" })
        perform_until(e, function() return req:progress() > 0 end)
        assert.are.equal(1, #temp_files(tmpdir))
        assert.is_true(req:cancel())
        assert.are.equal("cancelled", state_of(req))
        assert.are.same({}, temp_files(tmpdir))
        assert.are.same({ 0, 0 }, { e:pending() })
        e:perform(0.1)
        assert.is_nil(e:next_done())
        assert.is_false(req:cancel())
        assert.is_nil(read_file(dest))
        -- the engine goes on working
        assert.is_true(fetch(e, { url = server.url .. "/bytes/10" }).ok)
      end)

      it("cancel() of a finished, undelivered request drops it from the queue", function()
        local req = assert(e:request{ url = server.url .. "/bytes/10" })
        perform_until(e, function() return select(2, e:pending()) == 1 end)
        assert.are.equal("done", state_of(req))
        assert.is_true(req:cancel())
        assert.are.same({ 0, 0 }, { e:pending() })
        assert.is_nil(e:next_done())
      end)
    end)

    describe("against dh3-emulator", function()
      local emu, e
      lazy_setup(function()
        emu = require("helpers.emulator").start{ "--queue-time", "0", "--process-time", "0.1", "--seed", "7" }
      end)
      lazy_teardown(function() if emu then emu:stop() end end)
      before_each(function() e = core.engine() end)
      after_each(function() e:close() end)

      it("creates a task, polls it over one connection and downloads its image", function()
        local headers = { "Authorization: Bearer " .. emu.key, "Content-Type: application/json" }
        local created = fetch(e, {
          method = "POST", url = emu.url .. "/api/v1/task/create", headers = headers, timeout = 10,
          body = assert(core.json_encode{ model = "nano-banana-pro",
            nano_banana_pro_input = { prompt = "a lighthouse at dawn", aspect_ratio = "4:3" } }),
        })
        assert.are.equal(200, created.status)
        local doc = assert(core.json_decode(created.body))
        assert.are.equal(200, doc.code)
        assert.are.equal("integer", lua.math_type(doc.code))
        local id = doc.task_id
        local out
        local deadline = core.now() + 10 * SLOW
        repeat
          e:perform(0.05) -- the Lua layer's sleep
          local res = fetch(e, { url = emu.url .. "/api/v1/task/get?task_id=" .. id, headers = headers })
          assert.are.equal(200, res.status)
          assert.are.equal(0, res.request:info().connects)
          out = assert(core.json_decode(res.body)).nano_banana_pro_output
        until out.status == "success" or out.status == "fail" or core.now() > deadline
        assert.are.equal("success", out.status)
        local image = out.images[1]
        local size = tonumber(image.file_size)
        assert.are.equal("integer", lua.math_type(size))
        local dest = tmpdir .. "/" .. image.file_name
        local res = fetch(e, { url = image.url, download_to = dest, expect_size = size, follow_redirects = true })
        assert.is_true(res.ok, res.message)
        assert.are.equal(dest, res.path)
        local data = read_file(dest)
        assert.are.equal(size, #data)
        assert.are.equal("\137PNG\r\n\26\n", data:sub(1, 8))
        assert.are.same({}, temp_files(tmpdir))
        os.remove(dest)
      end)

      it("answers a wrong key with 401 and a JSON body", function()
        local res = fetch(e, { url = emu.url .. "/api/v1/task/get?task_id=x", headers = { "Authorization: Bearer nope" } })
        assert.are.equal(401, res.status)
        assert.are.equal(401, assert(core.json_decode(res.body)).code)
      end)
    end)

    describe("close() and lifetimes", function()
      it("close() with transfers in flight cancels them and removes temp files", function()
        local e = core.engine()
        local r1 = assert(e:request{ url = server.url .. "/drip/200000/10", download_to = tmpdir .. "/a.bin" })
        local r2 = assert(e:request{ url = server.url .. "/slow/2000" })
        local r3 = assert(e:request{ url = server.url .. "/bytes/10" })
        perform_until(e, function() return r1:progress() > 0 and state_of(r3) == "done" end)
        assert.are.equal(1, #temp_files(tmpdir))
        e:close()
        assert.are.equal("cancelled", state_of(r1))
        assert.are.equal("cancelled", state_of(r2))
        assert.are.equal("cancelled", state_of(r3))
        assert.is_false(r1:cancel())
        assert.are.same({}, temp_files(tmpdir))
        assert.is_nil(read_file(tmpdir .. "/a.bin"))
      end)

      it("a dropped engine with transfers in flight is collected and cancels them", function()
        local weak = setmetatable({}, { __mode = "v" })
        do
          local e = core.engine()
          weak.engine = e
          weak.req = assert(e:request{ url = server.url .. "/drip/200000/10", download_to = tmpdir .. "/b.bin" })
          assert(e:request{ url = server.url .. "/slow/2000" })
          perform_until(e, function() return weak.req:progress() > 0 end)
          assert.are.equal(1, #temp_files(tmpdir))
        end
        collectgarbage()
        collectgarbage()
        assert.is_nil(weak.engine)
        assert.is_nil(weak.req)
        assert.are.same({}, temp_files(tmpdir))
        assert.is_nil(read_file(tmpdir .. "/b.bin"))
      end)

      it("a request kept by the caller outlives its dropped engine", function()
        local req
        do
          local e = core.engine()
          req = assert(e:request{ url = server.url .. "/drip/200000/10", download_to = tmpdir .. "/c.bin" })
          perform_until(e, function() return req:progress() > 0 end)
        end
        collectgarbage()
        collectgarbage()
        assert.are.equal("cancelled", state_of(req))
        assert.is_false(req:cancel())
        assert.are.same({}, temp_files(tmpdir))
      end)

      it("a request dropped by the caller while in flight still completes and is delivered", function()
        local e = core.engine()
        local weak = setmetatable({}, { __mode = "v" })
        weak.req = assert(e:request{ url = server.url .. "/slow/200", context = "mine" })
        collectgarbage()
        collectgarbage()
        assert.is_not_nil(weak.req)
        local got = drain(e)
        assert.are.equal(1, #got)
        assert.are.equal("mine", got[1][2])
        assert.are.equal("delivered", state_of(got[1][1].request))
        assert.are.equal(200, got[1][1].status)
        got = nil -- luacheck: ignore 311 (dropped for the collector)
        collectgarbage()
        collectgarbage()
        assert.is_nil(weak.req) -- delivered and dropped: no longer anchored
        e:close()
      end)

      it("a request closed with <close> is cancelled and then refuses methods", function()
        if not lua.close_variables then
          pending("to-be-closed variables are Lua 5.4's: there close() is called explicitly")
          return
        end
        local e = core.engine()
        finally(function() e:close() end)
        -- compiled at run time: the other Luas cannot parse <close>
        local outer = assert(load([[
          local e, url = ...
          local outer
          do
            local req <close> = assert(e:request{ url = url })
            outer = req
          end
          return outer
        ]]))(e, server.url .. "/slow/2000")
        assert.are.same({ 0, 0 }, { e:pending() })
        assert.matches("closed", tostring(outer))
        assert.has_error(function() outer:progress() end, "dh3.request: attempt to use a closed request")
        assert.has_error(function() outer:cancel() end)
      end)

      it("survives lua_close of a state with transfers in flight", function()
        -- a child Lua: engine and requests finalized in whatever order lua_close picks
        local script = ([[
          local core = require "dh3.core"
          local e = core.engine()
          KEEP = {}
          for i = 1, 4 do
            KEEP[i] = e:request{ url = %q, download_to = %q .. i }
          end
          e:request{ url = %q }
          local t = core.now() + 5
          while KEEP[1]:progress() == 0 and core.now() < t do e:perform(0.01) end
          print("ok")
        ]]):format(server.url .. "/drip/200000/10", tmpdir .. "/d", server.url .. "/slow/2000")
        local p = lua.popen(lua.command("-e", script) .. " 2>&1")
        local out = p:read("*a")
        local ok = p:close()
        assert.are.equal("ok\n", out)
        assert.is_true(ok)
        assert.are.same({}, temp_files(tmpdir))
      end)
    end)
  end)

  describe("C sources", function()
    -- The code of src/NAME.c without its comments.
    local function code_of(name)
      return (assert(read_file("src/" .. name .. ".c"), name):gsub("/%*.-%*/", " "))
    end

    -- Which files each file may call (dh3.h draws the same tree): functions are named
    -- dh3_<file>_<verb>, so a call into another file names that file.
    local calls = {
      core = { engine = true, journal = true, json = true, fs = true, interrupt = true, util = true },
      engine = { request = true, pool = true, util = true },
      request = { pool = true, util = true },
      pool = {}, util = {}, json = {}, journal = {}, fs = {}, interrupt = {},
    }

    it("call down the tree that dh3.h draws, never up or sideways", function()
      local wrong = {}
      for name, allowed in pairs(calls) do
        for callee in code_of(name):gmatch("dh3_(%l+)_[%w_]+") do
          if calls[callee] and callee ~= name and not allowed[callee] then
            wrong[#wrong + 1] = name .. ".c calls " .. callee .. ".c"
          end
        end
      end
      assert.are.same({}, wrong)
      -- and every C file of src/ is in that tree
      local p = io.popen("ls src/*.c")
      for path in p:lines() do
        assert.is_truthy(calls[path:match("([%w_]+)%.c$")], path .. " is not in the tree")
      end
      p:close()
    end)

    it("change a request's flight (state, lists, anchor) in engine.c only", function()
      for name in pairs(calls) do
        if name ~= "engine" then assert.is_nil(code_of(name):find("flight", 1, true), name) end
      end
    end)

    it("set a request's libcurl options through request.c's table only", function()
      -- pool.c sets the engine's options, once per handle; request.c sets options only in
      -- the expansions of DH3_REQUEST_OPTIONS, whose option parameter is named `option`
      local n = 0
      for args in code_of("request"):gmatch("curl_easy_setopt%(([^,]*,[^,]*),") do
        assert.are.equal("h, option", args)
        n = n + 1
      end
      assert.are.equal(2, n) -- setting a request's values, and putting the defaults back
      for name in pairs(calls) do
        if name ~= "request" and name ~= "pool" then
          assert.is_nil(code_of(name):find("curl_easy_setopt", 1, true), name)
        end
      end
    end)
  end)
end)
