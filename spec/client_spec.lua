local dh3 = require "dh3"
local core = require "dh3.core"
local emulator = require "helpers.emulator"
local SLOW = require("helpers.timing").SLOW
local files = require "helpers.files"
local lua = require "helpers.lua"
local tmpdir, listdir, read_file = files.tmpdir, files.ls, files.read_file

local function new_client(emu, opts)
  opts = opts or {}
  opts.api_key = opts.api_key or emu.key
  opts.base_url = opts.base_url or emu.url
  if opts.retry_delay == nil then opts.retry_delay = 0.01 end
  return assert(dh3.new(opts))
end

local function count(stats, endpoint, status)
  local per = stats.requests[endpoint] or {}
  if status then return per[tostring(status)] or 0 end
  local n = 0
  for _, v in pairs(per) do n = n + v end
  return n
end

local CREATE, GET = "POST /api/v1/task/create", "GET /api/v1/task/get"

local function png_size(bytes)
  assert.are.equal("\137PNG\r\n\26\n", bytes:sub(1, 8))
  return lua.uint_be(bytes, 17, 4), lua.uint_be(bytes, 21, 4)
end

describe("dh3.new", function()
  it("returns an auth error when there is no key", function()
    local client, err = dh3.new{ api_key = "" }
    assert.is_nil(client)
    assert.are.equal("auth", err.kind)
    assert.matches("DH3_API_KEY", tostring(err))
  end)

  it("raises on a misspelt option, naming it", function()
    assert.has_error(function() dh3.new{ api_key = "k", timout = 5 } end,
      "dh3.new: unknown field 'timout' (did you mean 'timeout'?)")
  end)

  it("raises on a wrong type, and on impossible numbers", function()
    assert.has_error(function() dh3.new{ api_key = "k", timeout = "5" } end,
      "dh3.new: field 'timeout' must be a number, got string")
    assert.has_error(function() dh3.new{ api_key = "k", max_retries = 1.5 } end)
    assert.has_error(function() dh3.new{ api_key = "k", create_qps = 0 } end)
    assert.has_error(function() dh3.new("k") end)
  end)

  it("refuses a base URL that is not http(s)", function()
    local client, err = dh3.new{ api_key = "k", base_url = "ftp://example.com" }
    assert.is_nil(client)
    assert.are.equal("invalid_request", err.kind)
  end)

  it("never shows the key, nor a key with bad characters", function()
    local client = assert(dh3.new{ api_key = "sekrit-123", base_url = "http://127.0.0.1:9" })
    assert.is_nil(tostring(client):find("sekrit", 1, true))
    client:close()
    local _, err = dh3.new{ api_key = "sekrit 123" }
    assert.is_nil(tostring(err):find("sekrit", 1, true))
  end)

  it("reports the same version as the C core", function()
    assert.are.equal(core.VERSION, dh3.VERSION)
  end)

  it("loads libcurl only when a client is made: require \"dh3\" loads nothing else", function()
    local script = [[
      local function loaded()
        local names = {}
        for name in pairs(package.loaded) do
          if name:find("^dh3") then names[#names + 1] = name end
        end
        table.sort(names)
        return table.concat(names, " ")
      end
      local dh3 = require "dh3"
      print(loaded())
      print(dh3.is_error(dh3) and "error" or "not an error", loaded():find("dh3.core", 1, true) ~= nil)
      local client = assert(dh3.new{ api_key = "k", base_url = "http://127.0.0.1:9" })
      print(loaded():find("dh3.client", 1, true) ~= nil, type(dh3.webhook.parse), dh3.nothing)
      client:close()
    ]]
    local p = lua.popen(lua.command("-e", script) .. " 2>&1")
    local out = p:read("*a")
    assert.is_true(p:close(), out)
    assert.are.equal("dh3\nnot an error\ttrue\ntrue\tfunction\tnil\n", out)
  end)
end)

describe("dh3 against the emulator", function()
  local emu
  setup(function()
    emu = emulator.start{ "--queue-time", "0.05", "--process-time", "0.1" }
  end)
  teardown(function() emu:stop() end)
  before_each(function() emu:reset() end)

  describe("client:create()", function()
    it("creates a task and returns it with its id", function()
      local client = new_client(emu)
      finally(function() client:close() end)
      local task = assert(client:create{ prompt = "a lighthouse at dawn, watercolor" })
      assert.matches("^%x+$", task.id)
      assert.are.equal("queuing", task.state)
      local stats = emu:stats()
      assert.are.equal(1, stats.creates)
      assert.are.equal(1, count(stats, CREATE))
    end)

    it("refuses invalid input before any request", function()
      local client = new_client(emu)
      finally(function() client:close() end)
      local task, err = client:create{ prompt = "hi" }
      assert.is_nil(task)
      assert.are.equal("invalid_request", err.kind)
      local _, err2 = client:create{ prompt = "abc", image_urls = { "file:///etc/passwd" } }
      assert.are.equal("invalid_request", err2.kind)
      assert.are.equal(0, count(emu:stats(), CREATE))
    end)

    it("raises when a task is created twice", function()
      local client = new_client(emu)
      finally(function() client:close() end)
      local task = client:task{ prompt = "twice please" }
      assert(task:create())
      assert.has_error(function() task:create() end)
      assert.are.equal(1, emu:stats().creates)
    end)

    it("says auth when the key is wrong, and never shows the key", function()
      local client = new_client(emu, { api_key = "wrong-key-abcdef" })
      finally(function() client:close() end)
      local task, err = client:create{ prompt = "a cat" }
      assert.is_nil(task)
      assert.are.equal("auth", err.kind)
      assert.are.equal(401, err.http_status)
      assert.are.equal(401, err.code)
      assert.is_false(err.retryable)
      assert.is_nil(tostring(err):find("wrong-key", 1, true))
    end)
  end)

  describe("task:status() and task:wait()", function()
    it("follows a task to success with typed images and on_update on each change", function()
      local client = new_client(emu)
      finally(function() client:close() end)
      local task = assert(client:create{ prompt = "a red fox", aspect_ratio = "16:9" })
      local seen = {}
      assert.are.equal(task, task:wait{ interval = 0.02, on_update = function(t) seen[#seen + 1] = t.state end })
      assert.are.equal("success", task.state)
      assert.is_true(task:done())
      assert.are.equal("success", seen[#seen])
      for i = 2, #seen do assert.are_not.equal(seen[i - 1], seen[i]) end
      local img = task.images[1]
      assert.are.equal("integer", lua.math_type(img.file_size))
      assert.are.equal(1376, img.width)
      assert.are.equal(768, img.height)
      assert.are.equal("image/png", img.content_type)
    end)

    it("attaches to an existing id without a request", function()
      local client = new_client(emu)
      finally(function() client:close() end)
      local created = assert(client:create{ prompt = "attach me" })
      local before = count(emu:stats(), GET)
      local task = client:task(created.id)
      assert.are.equal("unknown", task.state)
      assert.are.equal(before, count(emu:stats(), GET))
      assert.is_string(task:status())
    end)

    it("says not_found for an unknown id", function()
      local client = new_client(emu)
      finally(function() client:close() end)
      local state, err = client:task("0123456789abcdef0123456789abcdef"):status()
      assert.is_nil(state)
      assert.are.equal("not_found", err.kind)
      assert.are.equal("0123456789abcdef0123456789abcdef", err.task_id)
      assert.are.equal(1, count(emu:stats(), GET))
    end)

    it("returns task_failed with the service's message when the task fails", function()
      local client = new_client(emu)
      finally(function() client:close() end)
      local task = assert(client:create{ prompt = "this one fails {emu:fail=Upstream model error}" })
      local ok, err = task:wait{ interval = 0.02 }
      assert.is_nil(ok)
      assert.are.equal("task_failed", err.kind)
      assert.are.equal("Upstream model error", err.message)
      assert.are.equal(task.id, err.task_id)
      assert.are.equal("fail", task.state)
      assert.are.equal("Upstream model error", task.error)
    end)

    it("times out, leaving the task valid to wait on again", function()
      local client = new_client(emu)
      finally(function() client:close() end)
      local task = assert(client:create{ prompt = "slow one {emu:process=0.6}" })
      local t0 = core.now()
      local ok, err = task:wait{ timeout = 0.2, interval = 0.05 }
      local took = core.now() - t0
      assert.is_nil(ok)
      assert.are.equal("timeout", err.kind)
      assert.are.equal(task.id, err.task_id)
      -- (no upper bound: a wait cut late would have seen the task end at 0.6 s, not a timeout)
      assert.is_true(took >= 0.2, tostring(took))
      assert.are.equal(task, task:wait{ timeout = 5, interval = 0.05 })
    end)

    it("polls less often while nothing changes, never past max_interval", function()
      local client = new_client(emu)
      finally(function() client:close() end)
      local task = assert(client:create{ prompt = "patience {emu:queue=1.2}" })
      local times = {}
      client.on_request = function() times[#times + 1] = core.now() end
      assert(task:wait{ interval = 0.05, max_interval = 0.2 })
      local gaps = {}
      for i = 2, #times do gaps[#gaps + 1] = times[i] - times[i - 1] end
      assert.is_true(gaps[2] > gaps[1], "the interval grows")
      for _, g in ipairs(gaps) do assert.is_true(g < 0.3, "capped: " .. g) end
      -- 1.3 s of waiting at a fixed 0.05 s would have taken ~26 polls
      assert.is_true(#times < 15, "polls: " .. #times)
    end)
  end)

  describe("on_request", function()
    it("carries the new task's id after a successful create", function()
      local infos = {}
      local client = new_client(emu, { on_request = function(info) infos[#infos + 1] = info end })
      finally(function() client:close() end)
      local task = assert(client:create{ prompt = "a hook that learns the id" })
      assert.are.equal("POST", infos[1].method)
      assert.are.equal(task.id, infos[1].task_id)
    end)

    it("sees method, path, status, attempt and seconds, never the key or the query", function()
      local infos = {}
      local client = new_client(emu, { on_request = function(info) infos[#infos + 1] = info end })
      finally(function() client:close() end)
      local task = assert(client:create{ prompt = "hooked" })
      assert(task:status())
      assert.are.equal(2, #infos)
      assert.are.equal("POST", infos[1].method)
      assert.are.equal("/api/v1/task/create", infos[1].path)
      assert.are.equal(200, infos[1].status)
      assert.are.equal(1, infos[1].attempt)
      assert.is_number(infos[1].seconds)
      assert.are.equal("/api/v1/task/get", infos[2].path)
      for _, info in ipairs(infos) do
        for _, v in pairs(info) do
          assert.is_nil(tostring(v):find(emu.key, 1, true))
        end
      end
    end)

    it("keeps working when the hook raises", function()
      local client = new_client(emu, { on_request = function() error("hook bug") end })
      finally(function() client:close() end)
      assert(client:create{ prompt = "still works" })
    end)
  end)

  describe("pacing", function()
    it("keeps a loop of creates under 3 per second without a single 429", function()
      local client = new_client(emu)
      finally(function() client:close() end)
      local t0 = core.now()
      for i = 1, 7 do assert(client:create{ prompt = "paced " .. i }) end
      local took = core.now() - t0
      local stats = emu:stats()
      assert.are.equal(7, stats.creates)
      assert.are.equal(0, count(stats, CREATE, 429))
      assert.is_true(took >= 2.0, "7 creates at 3/s take two windows: " .. took)
      assert.is_true(took < 3.5 * SLOW, tostring(took))
    end)

    it("without pacing, meets the service's 429 and honours Retry-After", function()
      local client = new_client(emu, { create_qps = false, max_retries = 0 })
      finally(function() client:close() end)
      local errs = 0
      for i = 1, 4 do
        local t, err = client:create{ prompt = "burst " .. i }
        if not t then
          errs = errs + 1
          assert.are.equal("rate_limited", err.kind)
          assert.are.equal(1, err.retry_after)
          assert.is_nil(err.maybe_created)
        end
      end
      assert.are.equal(1, errs)
      assert.are.equal(1, count(emu:stats(), CREATE, 429))
    end)
  end)

  describe("lifetimes", function()
    it("raises on use after close; close is idempotent", function()
      local client = new_client(emu)
      local task = client:task{ prompt = "closed" }
      client:close()
      client:close()
      assert.has_error(function() client:create{ prompt = "abc" } end, "dh3: the client is closed")
      assert.has_error(function() task:create() end, "dh3: the client is closed")
    end)

    it("collects a dropped client, cancelling what it had in flight", function()
      local weak = setmetatable({}, { __mode = "v" })
      do
        local client = new_client(emu)
        client:spawn(function() client:create{ prompt = "dropped" } end)
        weak[1] = client
      end
      for _ = 1, 3 do collectgarbage() end
      assert.is_nil(weak[1])
    end)
  end)

  describe("client:spawn(), update() and run()", function()
    it("runs many tasks in coroutines while update() keeps returning", function()
      local client = new_client(emu)
      finally(function() client:close() end)
      local done = {}
      for i = 1, 3 do
        client:spawn(function()
          local t = assert(client:create{ prompt = "spawned " .. i })
          assert(t:wait{ interval = 0.02 })
          done[#done + 1] = t.state
        end)
      end
      local ticks = 0
      while client:update() > 0 do
        ticks = ticks + 1
        os.execute("sleep 0.005")
      end
      assert.are.same({ "success", "success", "success" }, done)
      assert.is_true(ticks > 3)
    end)

    it("reports an error raised in a spawned coroutine and carries on", function()
      local client = new_client(emu)
      finally(function() client:close() end)
      local reported
      client:on_error(function(err) reported = err end)
      local finished = false
      client:spawn(function() error("boom") end)
      client:spawn(function()
        assert(client:create{ prompt = "survivor" })
        finished = true
      end)
      client:run()
      assert.matches("boom", tostring(reported))
      assert.is_true(finished)
    end)
  end)
end)

describe("dh3 downloads", function()
  describe("task:download()", function()
    local emu, client, task
    setup(function()
      emu = emulator.start{ "--queue-time", "0", "--process-time", "0.05" }
      client = new_client(emu)
      task = assert(client:create{ prompt = "download me", aspect_ratio = "3:4" })
      assert(task:wait{ interval = 0.02 })
    end)
    teardown(function()
      client:close()
      emu:stop()
    end)

    it("saves into a folder a PNG of the announced size and pixels", function()
      local dir = tmpdir()
      local paths = assert(task:download(dir))
      assert.are.equal(1, #paths)
      local bytes = read_file(paths[1])
      assert.are.equal(task.images[1].file_size, #bytes)
      local w, h = png_size(bytes)
      assert.are.same({ 896, 1200 }, { w, h })
      assert.are.same({ (paths[1]:match("[^/]+$")) }, listdir(dir))
      os.execute("rm -rf " .. dir)
    end)

    it("saves to a file path, and never sends the key to the image host", function()
      local dir = tmpdir()
      local paths = assert(task:download(dir .. "/mine.png"))
      assert.are.same({ dir .. "/mine.png" }, paths)
      assert.are.same({ "mine.png" }, listdir(dir))
      -- an ordinary file: 0666 less the umask, like any file the user makes
      local umask = tonumber(io.popen("umask"):read("*l"), 8)
      local mode = tonumber(io.popen("stat -c %a " .. dir .. "/mine.png"):read("*l"), 8)
      assert.are.equal(("%o"):format(0x1b6 - lua.band(0x1b6, umask)), ("%o"):format(mode)) -- 0666 & ~umask
      assert.are.equal(0, emu:stats().files_with_auth)
      os.execute("rm -rf " .. dir)
    end)

    it("leaves the destination untouched and no temporary file when the URL is gone", function()
      local dir = tmpdir()
      local dest = dir .. "/keep.png"
      local f = assert(io.open(dest, "wb")); f:write("old"); f:close()
      local saved = task.images[1].url
      task.images[1].url = saved:gsub("[^/]+$", "missing.png")
      local paths, err = task:download(dest)
      task.images[1].url = saved
      assert.is_nil(paths)
      assert.are.equal("not_found", err.kind)
      assert.are.equal("old", read_file(dest))
      assert.are.same({ "keep.png" }, listdir(dir))
      os.execute("rm -rf " .. dir)
    end)

    it("refuses a file whose size differs from file_size", function()
      local dir = tmpdir()
      local real = task.images[1].file_size
      task.images[1].file_size = real + 10
      local paths, err = task:download(dir .. "/x.png")
      task.images[1].file_size = real
      assert.is_nil(paths)
      assert.are.equal("protocol", err.kind)
      assert.are.same({}, listdir(dir))
      os.execute("rm -rf " .. dir)
    end)

    it("says there is nothing to download before success", function()
      local other = client:task{ prompt = "not yet" }
      local paths, err = other:download("/tmp")
      assert.is_nil(paths)
      assert.are.equal("invalid_request", err.kind)
    end)

    it("saves a JPEG when asked for jpg", function()
      local t = assert(client:create{ prompt = "a jpeg", output_format = "jpg" })
      assert(t:wait{ interval = 0.02 })
      local dir = tmpdir()
      local paths = assert(t:download(dir))
      local bytes = read_file(paths[1])
      assert.are.equal("\255\216\255", bytes:sub(1, 3))
      assert.are.equal(t.images[1].file_size, #bytes)
      assert.matches("%.jpg$", paths[1])
      os.execute("rm -rf " .. dir)
    end)
  end)

end)

describe("dh3 under faults", function()
  local emu
  setup(function()
    emu = emulator.start{ "--queue-time", "0", "--process-time", "0.05", "--seed", "7" }
  end)
  teardown(function() emu:stop() end)
  before_each(function()
    emu:reset()
    emu:config{ fault_5xx = 0, fault_429 = 0, fault_drop = 0, fault_malformed = 0, latency = 0 }
  end)

  it("retries status reads through 5xx answers, up to max_retries", function()
    local client = new_client(emu, { max_retries = 2 })
    finally(function() client:close() end)
    local task = assert(client:create{ prompt = "flaky reads" })
    emu:config{ fault_5xx = 1 }
    local state, err = task:status()
    assert.is_nil(state)
    assert.are.equal("server", err.kind)
    assert.are.equal(task.id, err.task_id)
    assert.are.equal(3, count(emu:stats(), GET))
  end)

  it("re-sends a create refused with 503, which created nothing", function()
    local client = new_client(emu, { max_retries = 2 })
    finally(function() client:close() end)
    emu:config{ fault_5xx = 1 }
    local task, err = client:create{ prompt = "refused" }
    assert.is_nil(task)
    assert.are.equal("server", err.kind)
    assert.is_nil(err.maybe_created)
    local stats = emu:stats()
    assert.are.equal(3, count(stats, CREATE))
    assert.are.equal(0, stats.creates)
  end)

  it("never re-sends a create whose connection dropped, and says it may exist", function()
    local client = new_client(emu)
    finally(function() client:close() end)
    emu:config{ fault_drop = 1 }
    local task, err = client:create{ prompt = "dropped" }
    assert.is_nil(task)
    assert.are.equal("network", err.kind)
    assert.is_true(err.maybe_created)
    assert.matches("may have been created", tostring(err))
    local stats = emu:stats()
    assert.are.equal(1, stats.faults.drop) -- one attempt, not re-sent
    assert.are.equal(0, stats.creates)
  end)

  it("never re-sends a create whose answer is malformed", function()
    local client = new_client(emu)
    finally(function() client:close() end)
    emu:config{ fault_malformed = 1 }
    local task, err = client:create{ prompt = "garbled" }
    assert.is_nil(task)
    assert.are.equal("protocol", err.kind)
    assert.is_true(err.maybe_created)
    assert.are.equal(1, count(emu:stats(), CREATE))
  end)

  it("waits through dropped connections, malformed bodies and 429s on reads", function()
    local client = new_client(emu, { max_retries = 8 })
    finally(function() client:close() end)
    local task = assert(client:create{ prompt = "through the storm {emu:process=0.3}" })
    emu:config{ fault_drop = 0.2, fault_malformed = 0.2, fault_429 = 0.2 }
    assert(task:wait{ interval = 0.02 })
    local stats = emu:stats()
    assert.is_true(stats.faults.drop + stats.faults.malformed + stats.faults["429"] > 0)
  end)

  it("creates every task exactly once through random 429s and 503s", function()
    local client = new_client(emu, { max_retries = 10, create_qps = false })
    finally(function() client:close() end)
    emu:config{ fault_5xx = 0.3, fault_429 = 0.3 }
    local ids = {}
    for i = 1, 6 do
      local t = assert(client:create{ prompt = "exactly once " .. i })
      ids[#ids + 1] = t.id
    end
    local stats = emu:stats()
    assert.are.equal(6, #ids)
    assert.are.equal(6, stats.creates)
    assert.is_true(stats.faults["5xx"] + stats.faults["429"] > 0)
  end)

  it("gives a timeout when the server is slower than the request timeout", function()
    local client = new_client(emu, { timeout = 0.2, max_retries = 0 })
    finally(function() client:close() end)
    emu:config{ latency = 0.6 }
    local t0 = core.now()
    local task, err = client:create{ prompt = "too slow" }
    assert.is_nil(task)
    assert.are.equal("timeout", err.kind)
    assert.is_true(err.maybe_created)
    assert.is_true(core.now() - t0 < 0.5 * SLOW)
  end)

  it("retries a create whose connection was refused, which certainly created nothing", function()
    local probe = emulator.start{}
    local url = probe.url
    probe:stop()
    local attempts = 0
    local client = new_client(emu, { base_url = url, max_retries = 2,
      on_request = function() attempts = attempts + 1 end })
    finally(function() client:close() end)
    local task, err = client:create{ prompt = "nobody home" }
    assert.is_nil(task)
    assert.are.equal("network", err.kind)
    assert.are.equal("COULDNT_CONNECT", err.curl_error)
    assert.is_nil(err.maybe_created)
    assert.are.equal(3, attempts)
  end)

  it("keeps update() short while the server is slow", function()
    local client = new_client(emu)
    finally(function() client:close() end)
    emu:config{ latency = 0.5 }
    local result
    client:spawn(function() result = client:create{ prompt = "slow server" } end)
    local longest = 0
    while client:update() > 0 do
      local t0 = core.now()
      client:update()
      longest = math.max(longest, core.now() - t0)
      os.execute("sleep 0.01")
    end
    assert.is_table(result)
    assert.is_true(longest < 0.05 * SLOW, "longest update: " .. longest)
  end)
end)

describe("dh3 with errors in the body (HTTP 200)", function()
  local emu
  setup(function()
    emu = emulator.start{ "--errors-in-body", "--credits", "1", "--queue-time", "0", "--process-time", "0" }
  end)
  teardown(function() emu:stop() end)

  it("reads the code from the body and keeps both numbers", function()
    local client = new_client(emu, { api_key = "not-the-key" })
    finally(function() client:close() end)
    local _, err = client:create{ prompt = "abc" }
    assert.are.equal("auth", err.kind)
    assert.are.equal(200, err.http_status)
    assert.are.equal(401, err.code)
    assert.matches("HTTP 200, code 401", tostring(err))
  end)

  it("says insufficient_credits when the credits run out", function()
    local client = new_client(emu)
    finally(function() client:close() end)
    assert(client:create{ prompt = "first is paid for" })
    local task, err = client:create{ prompt = "second is not" }
    assert.is_nil(task)
    assert.are.equal("insufficient_credits", err.kind)
    assert.are.equal(402, err.code)
  end)
end)
