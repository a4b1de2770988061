-- A wait outlives a short outage of the service: a status read is safe to repeat, so inside a
-- wait a read that fails for a reason that may pass is read again, with a back-off, until the
-- wait's own deadline. The outage is the emulator's: for a while it closes every API connection
-- unanswered (fault_drop) or answers 5xx (fault_5xx), then serves again.
local dh3 = require "dh3"
local emulator = require "helpers.emulator"
local files = require "helpers.files"
local lua = require "helpers.lua"
local now = require("dh3.core").now

-- A client that does not retry a read by itself: each failed read reaches the wait at once.
local function new_client(emu)
  return assert(dh3.new{ api_key = emu.key, base_url = emu.url, max_retries = 0 })
end

-- Starts an outage of `kind` (fault_drop or fault_5xx) now, ended by a coroutine of `client`
-- after `seconds`, while the caller waits.
local function outage(emu, client, kind, seconds)
  emu:config{ [kind] = 1 }
  client:spawn(function()
    client:sleep(seconds)
    emu:config{ [kind] = 0 }
  end)
end

local function faults(emu)
  local f = emu:stats().faults
  return f.drop + f["5xx"]
end

describe("a wait during a short outage of the service", function()
  local emu
  setup(function()
    emu = emulator.start{ "--queue-time", "0", "--process-time", "0.5", "--create-qps", "0" }
  end)
  teardown(function() emu:stop() end)
  before_each(function()
    emu:reset()
    emu:config{ fault_drop = 0, fault_5xx = 0 }
  end)

  it("task:wait reads again through dropped connections, and returns the task", function()
    local client = new_client(emu)
    finally(function() client:close() end)
    local task = assert(client:create{ prompt = "through an outage" })
    outage(emu, client, "fault_drop", 1.5)
    local ok, err = task:wait{ timeout = 30, interval = 0.1 }
    assert.are.equal(task, ok, tostring(err))
    assert.are.equal("success", task.state)
    assert.is_true(faults(emu) >= 2, "the reads did fail meanwhile")
  end)

  it("task:wait reads again through 5xx answers", function()
    local client = new_client(emu)
    finally(function() client:close() end)
    local task = assert(client:create{ prompt = "through server errors" })
    outage(emu, client, "fault_5xx", 1.5)
    local ok, err = task:wait{ timeout = 30, interval = 0.1 }
    assert.are.equal(task, ok, tostring(err))
    assert.is_true(emu:stats().faults["5xx"] >= 2)
  end)

  it("client:wait_all and client:watch read again, every task comes home", function()
    local client = new_client(emu)
    finally(function() client:close() end)
    local tasks = {}
    for i = 1, 3 do tasks[i] = assert(client:create{ prompt = "a batch through an outage " .. i }) end
    outage(emu, client, "fault_drop", 1.5)
    local done, errs = client:wait_all(tasks, { timeout = 30, interval = 0.1 })
    assert.are.same({}, errs)
    for i = 1, 3 do assert.are.equal("success", done[i].state) end
    assert.is_true(faults(emu) >= 2)

    local more = {}
    for i = 1, 2 do more[i] = assert(client:create{ prompt = "watched through an outage " .. i }) end
    local before = faults(emu)
    outage(emu, client, "fault_5xx", 1.5)
    local ended = 0
    local group = client:watch(more, { timeout = 30, interval = 0.1, on_done = function(_, err)
      assert.is_nil(err, tostring(err))
      ended = ended + 1
    end })
    local _, werrs = group:wait()
    assert.are.same({}, werrs)
    assert.are.equal(2, ended)
    assert.is_true(faults(emu) > before)
  end)

  it("an outage longer than the wait ends it as a timeout that names the failing reads; "
    .. "what a retry cannot mend (an unknown task) ends it at once", function()
    local client = new_client(emu)
    finally(function() client:close() end)
    local task = assert(client:create{ prompt = "a long outage {emu:process=30}" })
    emu:config{ fault_drop = 1 }
    local ok, err = task:wait{ timeout = 1.5, interval = 0.1 }
    assert.is_nil(ok)
    assert.are.equal("timeout", err.kind)
    assert.are.equal(task.id, err.task_id)
    assert.matches("its status could not be read: network", err.message, nil, true)
    local _, errs = client:wait_all({ task }, { timeout = 1.5, interval = 0.1 })
    assert.are.equal("timeout", errs[1].kind)
    assert.matches("its status could not be read: network", errs[1].message, nil, true)

    emu:config{ fault_drop = 0 }
    local unknown = client:task("0123456789abcdef0123456789abcdef")
    local start = now()
    ok, err = unknown:wait{ timeout = 60, interval = 0.1 }
    assert.is_nil(ok)
    assert.are.equal("not_found", err.kind)
    _, errs = client:wait_all({ unknown }, { timeout = 60, interval = 0.1 })
    assert.are.equal("not_found", errs[1].kind)
    assert.is_true(now() - start < 30, "it waited for the deadline")
  end)

  it("dh3 wait ID --timeout 30 outlives a 5 s outage (longer than a read's own retries)", function()
    local env = ("env DH3_API_KEY=%s DH3_BASE_URL=%s"):format(files.quote(emu.key), files.quote(emu.url))
    local created = io.popen(env .. " " .. lua.command("bin/dh3", "generate", "--no-wait", "waited through an outage")
      .. " 2>&1")
    local id = created:read("*a"):match('"task_id":"(%x+)"')
    created:close()
    assert.is_string(id)
    emu:config{ fault_drop = 1 }
    local errfile = os.tmpname()
    local p = assert(lua.popen(env .. " " .. lua.command("bin/dh3", "wait", id, "--timeout", "30") .. " 2>" .. errfile))
    os.execute("sleep 5")
    emu:config{ fault_drop = 0 }
    local out = p:read("*a")
    local _, _, code = p:close()
    local err = files.read_file(errfile)
    os.remove(errfile)
    assert.are.equal(0, code, err)
    assert.matches('"state":"success"', out, nil, true)
    assert.is_true(emu:stats().faults.drop >= 4, "the reads did fail meanwhile")
  end)
end)
