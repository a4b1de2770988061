-- A host's own event loop: the engine in libcurl's socket-action mode (the descriptors to watch,
-- the next timeout, the entry point the host calls), and dh3.luv, which drives a client from a
-- luv loop with no polling timer. Needs luv (Debian: lua-luv, built for 5.1 to 5.4; LuaJIT
-- cannot load Debian's 5.1 build, which links liblua5.1): pending without it.
local dh3 = require "dh3"
local core = require "dh3.core"
local emulator = require "helpers.emulator"
local files = require "helpers.files"

local has_luv, uv = pcall(require, "luv")

local function png(path)
  local bytes = files.read_file(path)
  return bytes ~= nil and bytes:sub(1, 8) == "\137PNG\r\n\26\n"
end

describe("a host's own event loop", function()
  local emu, out
  setup(function()
    emu = emulator.start{ "--queue-time", "0", "--process-time", "0.3" }
  end)
  teardown(function()
    if emu then emu:stop() end
  end)
  before_each(function() out = files.tmpdir() end)
  after_each(function() files.rm_rf(out) end)

  describe("dh3.core engine in socket-action mode", function()
    it("records descriptors and a timeout, and finishes transfers through socket_action alone", function()
      local e = core.engine{ socket_action = true }
      assert.is_true(e:socket_mode())
      local t = {}
      assert.are.equal(0, e:watched(t))
      assert.is_nil(e:timeout())
      local req = assert(e:request{ method = "GET", url = emu.url .. "/_emulator/stats" })
      -- adding a transfer asks for a timeout action at once
      assert.is_true(e:timeout() <= 0.01)
      local watched, deadline = {}, core.now() + 10
      while e:pending() > 0 and core.now() < deadline do
        local n = e:watched(t)
        for i = 1, 2 * n, 2 do watched[t[i]] = t[i + 1] ~= "" and t[i + 1] or nil end
        -- a crude host: tells libcurl every watched descriptor may be ready
        for fd, events in pairs(watched) do e:socket_action(fd, events) end
        local left = e:timeout()
        if left and left <= 0 then e:socket_action() end
      end
      local _, done = e:pending()
      assert.are.equal(1, done)
      local res = assert(e:next_done())
      assert.are.equal(200, res.status)
      assert.are.equal(req, res.request)
      e:close()
    end)

    it("reports nothing, and allocates nothing, when nothing changed", function()
      local e = core.engine{ socket_action = true }
      local t = { "keep" }
      local function grew()
        collectgarbage("stop")
        local before = collectgarbage("count")
        for _ = 1, 1000 do e:watched(t) end
        local after = collectgarbage("count")
        collectgarbage("restart")
        return after - before
      end
      -- LuaJIT's compiler would count its traces as memory (whenever it chose to compile): this
      -- counts what e:watched allocates, so the loop is interpreted
      if jit then jit.off(); jit.flush() end
      finally(function() if jit then jit.on() end end)
      grew() -- warmed up
      assert.are.equal(0, grew())
      assert.are.equal("keep", t[1])
      e:close()
    end)

    it("keeps perform working, so blocking calls and update() still run", function()
      local client = assert(dh3.new{ api_key = emu.key, base_url = emu.url, loop = "host" })
      local task = assert(client:create{ prompt = "a lighthouse" })
      assert(task:wait{ timeout = 20 })
      local paths = assert(task:download(out .. "/"))
      assert.is_true(png(paths[1]))
      client:close()
    end)

    it("refuses to switch while transfers are in flight, and raises when not in that mode", function()
      assert.has_error(function() core.engine{ socket_action = 1 } end)
      local idle = core.engine()
      idle:use_socket_action()
      assert.is_true(idle:socket_mode())
      idle:close()
      local e = core.engine()
      assert.is_false(e:socket_mode())
      assert.has_error(function() e:watched({}) end)
      assert.has_error(function() e:socket_action() end)
      assert(e:request{ method = "GET", url = emu.url .. "/_emulator/stats" })
      assert.has_error(function() e:use_socket_action() end,
        "dh3.engine: use_socket_action: transfers are in flight")
      e:close()
    end)
  end)

  describe("dh3.luv", function()
    if not has_luv then
      it("needs luv", function() pending("luv is not installed (Debian: lua-luv)") end)
      return
    end
    local dh3luv = require "dh3.luv"

    -- runs the loop until done() or `seconds` pass; returns whether done() came true
    local function run_until(done, seconds)
      local guard = uv.new_timer()
      local timed_out = false
      guard:start(seconds * 1000, 0, function() timed_out = true end)
      guard:unref() -- the driver's handles alone keep the loop alive
      while not done() and not timed_out do
        if not uv.run("once") then break end
      end
      guard:stop()
      guard:close()
      uv.run("nowait")
      return done()
    end

    it("creates, waits and downloads with the loop driving everything, then leaves it idle", function()
      local client = assert(dh3.new{ api_key = emu.key, base_url = emu.url })
      local driver = dh3luv.attach(client, uv)
      local paths, failure
      client:spawn(function()
        local task, err = client:create{ prompt = "a lighthouse at dawn" }
        if task then task, err = task:wait{ timeout = 20 } end
        if task then paths, err = task:download(out .. "/") end
        failure = err
      end)
      driver:sync() -- started outside the loop's callbacks: arm the handles before it runs
      assert.is_true(run_until(function() return paths ~= nil or failure ~= nil end, 20))
      assert.is_nil(failure)
      assert.is_true(png(paths[1]))
      assert.is_true(driver.counts.poll > 0)

      -- idle: an idle second of the loop runs none of the driver's callbacks
      local before = driver.counts.poll + driver.counts.timer
      local idle = uv.new_timer()
      idle:start(1000, 0, function() idle:close() end)
      uv.run("default")
      assert.are.equal(0, driver.counts.poll + driver.counts.timer - before)
      assert.is_nil(client:next_timeout())

      driver:close()
      uv.run("nowait") -- luv: closed handles finish closing in a turn of the loop
      client:close()
    end)

    it("wakes a sleeping coroutine with a luv timer", function()
      local client = assert(dh3.new{ api_key = emu.key, base_url = emu.url, loop = "host" })
      local driver = dh3luv.attach(client, uv)
      local woke
      client:spawn(function()
        client:sleep(0.2)
        woke = core.now()
      end)
      driver:sync()
      local t0 = core.now()
      assert.is_true(run_until(function() return woke ~= nil end, 5))
      assert.is_true(woke - t0 >= 0.19)
      assert.are.equal(1, driver.counts.timer)
      assert.are.equal(0, driver.counts.poll)
      driver:close()
      uv.run("nowait")
      client:close()
    end)

    it("serves a webhook receiver from the loop: a delivery ends the wait", function()
      local client = assert(dh3.new{ api_key = emu.key, base_url = emu.url, loop = "host" })
      local listener = assert(client:listen{})
      local driver = dh3luv.attach(client, uv)
      local state, failure
      client:spawn(function()
        local task, err = client:create{ prompt = "pushed to me" }
        -- polls an hour apart cannot end the wait before its timeout: only the delivery can
        if task then task, err = task:wait{ timeout = 60, interval = 3600 } end
        state, failure = task and task.state, err
      end)
      driver:sync()
      assert.is_true(run_until(function() return state ~= nil or failure ~= nil end, 70))
      assert.is_nil(failure)
      assert.are.equal("success", state)
      assert.are.equal(1, listener.counts.accepted)
      listener:close()
      driver:sync()
      assert.are.equal(0, client:watched({})) -- the receiver's sockets were let go of
      driver:close()
      uv.run("nowait")
      client:close()
    end)

    it("lets go of a closed client", function()
      local client = assert(dh3.new{ api_key = emu.key, base_url = emu.url })
      local driver = dh3luv.attach(client, uv)
      client:close()
      driver:sync()
      assert.is_true(driver.closed)
      uv.run("nowait")
    end)
  end)
end)
