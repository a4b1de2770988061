-- Results pushed by the service: parsing, de-duplication, and the receiver on the client's engine,
-- driven by the emulator's real callbacks (with the documented retry policy).
local dh3 = require "dh3"
local core = require "dh3.core"
local webhook = require "dh3.webhook"
local emulator = require "helpers.emulator"
local SLOW = require("helpers.timing").SLOW
local lua = require "helpers.lua"

-- Runs a Lua script in a child process (so this client can serve its requests meanwhile) while
-- turning the client's loop; returns what the child printed. The scripts only use luasocket (they
-- play another party, not the library): they run under the emulator's Lua, 5.4.
local function in_child(client, script, seconds)
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(script)
  f:close()
  local p = io.popen(lua.emulator .. " " .. path .. " 2>&1")
  local t0 = core.now()
  while core.now() - t0 < (seconds or 1) do client:update(); os.execute("sleep 0.01") end
  local out = p:read("*a")
  p:close()
  os.remove(path)
  return out
end

local function body(output, code)
  return core.json_encode{ code = code or 200, message = "ok", nano_banana_pro_output = output }
end

local ID = "76808142f56692acea353e2d1dc90e9e"
local IMAGE = { url = "https://files.example/result.png", content_type = "image/png", file_name = "result.png",
  file_size = "2456789", width = "1024", height = "1024" }

describe("dh3.webhook", function()
  describe("parse()", function()
    local rows = {
      { "a success", body{ task_id = ID, status = "success", images = { IMAGE } },
        { task_id = ID, state = "success", images = { { url = IMAGE.url, content_type = "image/png",
          file_name = "result.png", file_size = 2456789, width = 1024, height = 1024 } } } },
      { "a fail", body{ task_id = ID, status = "fail", err_msg = "Upstream model error" },
        { task_id = ID, state = "fail", error = "Upstream model error" } },
      { "extra fields", body{ task_id = ID, status = "fail", err_msg = "x", extra = { 1, 2 } },
        { task_id = ID, state = "fail", error = "x" } },
      { "no task_id", body{ status = "fail" }, nil },
      { "a task_id with a slash", body{ task_id = "../x", status = "fail" }, nil },
      { "an unknown status", body{ task_id = ID, status = "done" }, nil },
      { "success without images", body{ task_id = ID, status = "success" }, nil },
      { "a size that is not a number", body{ task_id = ID, status = "success",
          images = { { url = IMAGE.url, file_size = "12ab", width = "1", height = "1" } } }, nil },
      { "a file_size over the cap", body{ task_id = ID, status = "success",
          images = { { url = IMAGE.url, file_size = "2000000000", width = "1", height = "1" } } }, nil },
      { "an image URL that is not http", body{ task_id = ID, status = "success",
          images = { { url = "file:///etc/passwd", file_size = "1", width = "1", height = "1" } } }, nil },
      { "not JSON", "{\"code\":200,", nil },
      { "a JSON array", "[1,2,3]", nil },
      { "no output", '{"code":200,"message":"ok"}', nil },
      { "a body over the cap", ('{"pad":"%s"}'):format(("x"):rep(webhook.MAX_BODY)), nil },
    }
    for _, row in ipairs(rows) do
      it((row[3] and "reads " or "refuses ") .. row[1], function()
        local result, err = webhook.parse(row[2])
        if row[3] then
          assert.is_nil(err)
          assert.are.same(row[3], result)
        else
          assert.is_nil(result)
          assert.are.equal("protocol", err.kind)
          assert.matches("^callback body: ", err.message)
        end
      end)
    end

    it("raises on a body that is not a string", function()
      assert.has_error(function() webhook.parse({}) end)
    end)
  end)

  describe("deduplicator()", function()
    it("says first once per task id", function()
      local d = webhook.deduplicator()
      assert.is_true(d:first("a"))
      assert.is_false(d:first("a"))
      assert.is_true(d:first("b"))
    end)

    it("uses the store it is given", function()
      local keys = {}
      local store = { add = function(_, k) if keys[k] then return false end keys[k] = true return true end }
      local d = webhook.deduplicator(store)
      assert.is_true(d:first("a"))
      assert.is_false(d:first("a"))
      assert.is_true(keys.a)
    end)

    it("forgets the oldest keys past its capacity", function()
      local d = webhook.deduplicator(webhook.memory_store(2))
      d:first("a"); d:first("b"); d:first("c")
      assert.is_true(d:first("a"))
      assert.is_false(d:first("c"))
    end)
  end)
end)

describe("client:listen()", function()
  local emu
  setup(function()
    emu = emulator.start{ "--queue-time", "0", "--process-time", "0.2", "--callback-retry-delay", "0.3",
      "--callback-timeout", "0.5" }
  end)
  teardown(function() emu:stop() end)
  before_each(function() emu:reset() end)

  local function new_client()
    return assert(dh3.new{ api_key = emu.key, base_url = emu.url, retry_delay = 0.01 })
  end

  it("settles a task from the emulator's callback, with the URL attached for you", function()
    local client = new_client()
    finally(function() client:close() end)
    local listener = assert(client:listen{})
    assert.matches("^http://127%.0%.0%.1:%d+/dh3/callback/%x+$", listener.url)
    local task = assert(client:create{ prompt = "pushed to me" })
    local t0 = core.now()
    assert(task:wait{ timeout = 10 }) -- polling would wait 15 s: the delivery ends it
    assert.is_true(core.now() - t0 < 3 * SLOW)
    assert.are.equal("success", task.state)
    assert.is_true(lua.is_integer(task.images[1].width), tostring(task.images[1].width))
    -- the task settled as the delivery arrived; the 200 reaches the emulator as the loop turns
    local stats = emu:stats()
    while stats.callbacks.delivered == 0 and core.now() - t0 < 5 do
      client:update()
      os.execute("sleep 0.01")
      stats = emu:stats()
    end
    assert.are.equal(1, stats.callbacks.delivered)
    local reads = stats.requests["GET /api/v1/task/get"] or {}
    assert.is_true((reads["200"] or 0) <= 1)
    assert.are.equal(1, listener.counts.accepted)
  end)

  it("fires watch callbacks from a delivery", function()
    local client = new_client()
    finally(function() client:close() end)
    client:listen{}
    local task = assert(client:create{ prompt = "watched and pushed" })
    local done
    client:watch({ task }, { on_done = function(t, err) done = { t.state, err } end })
    local t0 = core.now()
    while client:update() > 0 and core.now() - t0 < 5 do os.execute("sleep 0.01") end
    assert.are.same({ "success" }, done)
  end)

  it("gets the delivery when the receiver comes up after the first attempts failed", function()
    local secret = "kept-across-restarts-0123456789"
    local client = new_client()
    finally(function() client:close() end)
    local first = assert(client:listen{ secret = secret })
    local port, url = first:port(), first.url
    first:close() -- down: the first attempts are refused
    local task = assert(client:create{ prompt = "receiver comes back", callback_url = url })
    os.execute("sleep 0.6")
    local second = assert(client:listen{ port = port, secret = secret })
    assert.are.equal(url, second.url)
    local t0 = core.now()
    while second.counts.accepted == 0 and core.now() - t0 < 5 do client:update(); os.execute("sleep 0.01") end
    assert.are.equal("success", task.state) -- from the delivery: no status read was made
    local stats = emu:stats()
    assert.is_nil(stats.requests["GET /api/v1/task/get"])
    assert.is_true(stats.callbacks.attempts >= 2, "attempts: " .. stats.callbacks.attempts)
    assert.are.equal(1, stats.callbacks.delivered)
    assert.are.equal("refused", stats.callbacks.log[1].outcome)
  end)

  it("handles a delivery retried after a slow answer only once", function()
    local client = new_client()
    finally(function() client:close() end)
    local listener = assert(client:listen{})
    local task = assert(client:create{ prompt = "slow to answer" })
    local updates = 0
    -- the loop is not turned for longer than the emulator waits for an answer: it retries
    os.execute("sleep 1.5")
    assert(task:wait{ timeout = 10, on_update = function() updates = updates + 1 end })
    local t0 = core.now()
    while core.now() - t0 < 1 do client:update(); os.execute("sleep 0.02") end
    assert.are.equal(1, updates)
    assert.is_true(listener.counts.received >= 2, "received: " .. listener.counts.received)
    assert.are.equal(1, listener.counts.accepted)
    assert.is_true(listener.counts.duplicates >= 1)
  end)

  it("falls back to polling when no delivery comes", function()
    local client = new_client()
    finally(function() client:close() end)
    local task = assert(client:create{ prompt = "nobody listens", callback_url = "http://127.0.0.1:9/nowhere" })
    assert(task:wait{ timeout = 10, interval = 0.1 })
    assert.are.equal("success", task.state)
  end)

  it("answers 404 to anything but a POST to its secret path, and changes nothing", function()
    local client = new_client()
    finally(function() client:close() end)
    local listener = assert(client:listen{})
    local task = assert(client:create{ prompt = "guarded {emu:process=5}" })
    local forged = body{ task_id = task.id, status = "fail", err_msg = "forged" }
    local base = listener.url:match("^(http://[^/]+)")
    local statuses = {}
    local out = in_child(client, ([[
      local http = require "socket.http"
      local ltn12 = require "ltn12"
      local function req(url, method, payload)
        local _, s = http.request{ url = url, method = method, source = payload and ltn12.source.string(payload),
          headers = { ["content-length"] = payload and #payload or 0 } }
        io.write(tostring(s), " ")
      end
      req(%q, "GET")
      req(%q, "POST", %q)
      req(%q, "POST", %q)
      req(%q, "POST", "not json")
    ]]):format(listener.url, base .. "/dh3/callback", forged, base .. "/dh3/callback/wrongsecret", forged,
      listener.url), 1.5)
    for s in out:gmatch("%S+") do statuses[#statuses + 1] = s end
    assert.are.same({ "404", "404", "404", "200" }, statuses)
    assert.are.equal(3, listener.counts.not_found)
    assert.are.equal(1, listener.counts.refused)
    assert.are.equal(0, listener.counts.accepted)
    assert.are.equal("queuing", task.state)
  end)

  it("without a secret, treats a delivery as a hint and believes only a GET", function()
    local client = new_client()
    finally(function() client:close() end)
    local listener = assert(client:listen{ secret = false })
    local task = assert(client:create{ prompt = "unsigned {emu:process=5}" })
    client:watch({ task }, { interval = 30 })
    local forged = body{ task_id = task.id, status = "fail", err_msg = "forged" }
    local out = in_child(client, ([[
      local http = require "socket.http"
      local ltn12 = require "ltn12"
      local _, s = http.request{ url = %q, method = "POST", source = ltn12.source.string(%q),
        headers = { ["content-length"] = %d } }
      io.write(tostring(s))
    ]]):format(listener.url, forged, #forged))
    assert.are.equal("200", out)
    -- the hint made the watch read the task at once, instead of in 30 s
    assert.are.equal(1, emu:stats().requests["GET /api/v1/task/get"]["200"])
    assert.are.equal(1, listener.counts.accepted)
    assert.are_not.equal("fail", task.state)
  end)
end)
