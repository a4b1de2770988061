-- Money safety (issue 11): the ways a paid task could be lost or paid twice through the Lua layer,
-- each tried the way an attacker or a careless user would. Points 1, 8 to 12 have specs of their
-- own (create_once, download_noclobber, journal_lock, journal_readonly, webhook_flood).
local dh3 = require "dh3"
local emulator = require "helpers.emulator"
local files = require "helpers.files"
local lua = require "helpers.lua"
local journal_mod = require "dh3.journal"

local function new_client(emu, opts)
  opts = opts or {}
  opts.api_key = opts.api_key or emu.key
  opts.base_url = opts.base_url or emu.url
  if opts.create_qps == nil then opts.create_qps = false end
  return assert(dh3.new(opts))
end

local function pending_of(path)
  local j = assert(journal_mod.open(path))
  local state = j:pending()
  j:close()
  return state
end

describe("money safety", function()
  local emu, dir
  setup(function()
    emu = emulator.start{ "--queue-time", "0", "--process-time", "0.05" }
  end)
  teardown(function() emu:stop() end)
  before_each(function()
    emu:reset()
    emu:config{ latency = 0, fault_malformed = 0 }
    dir = files.tmpdir()
  end)
  after_each(function() files.rm_rf(dir) end)

  describe("task:create() after an answer that was lost (point 2)", function()
    it("raises like a second create, and sends nothing", function()
      local client = new_client(emu, { max_retries = 0 })
      finally(function() client:close() end)
      emu:config{ fault_malformed = 1 }
      local task = client:task{ prompt = "an answer lost in transit" }
      local ok, err = task:create()
      assert.is_nil(ok)
      assert.is_true(err.maybe_created, tostring(err))
      emu:config{ fault_malformed = 0 }
      assert.has_error(function() task:create() end,
        "task:create: this task was already created (its answer was lost: it may exist and be charged; "
        .. "make a new task to create another)")
      local sent = 0
      for _, n in pairs(emu:stats().requests["POST /api/v1/task/create"]) do sent = sent + n end
      assert.are.equal(1, sent)
    end)
  end)

  describe("close() (point 3)", function()
    it("lets a create in flight bring its id home, and cancels the rest", function()
      emu:config{ latency = 0.4 }
      local path = dir .. "/journal"
      local client = new_client(emu, { journal = path })
      local created, create_err, read_err
      local existing = client:task(("e"):rep(32))
      client:spawn(function() read_err = select(2, existing:wait{ timeout = 30 }) end)
      client:spawn(function() created, create_err = client:create{ prompt = "paid while closing" } end)
      assert.is_not_nil(next(client._creates), "the create has left")
      client:close()
      assert.is_nil(create_err)
      assert.matches("^%x+$", created.id)
      assert.are.equal("cancelled", read_err.kind)
      local stats = emu:stats()
      assert.are.equal(1, stats.creates)
      local state = pending_of(path)
      assert.are.equal(0, #state.unanswered)
      assert.are.equal(created.id, state.tasks[1].task_id)
      assert.has_error(function() client:update() end, "dh3: the client is closed")
    end)

    it("does the same at the end of a <close> block", function()
      if not lua.close_variables then
        pending("`local x <close>` is Lua 5.4's: " .. _VERSION .. " has no block end that closes a client")
        return
      end
      emu:config{ latency = 0.3 }
      local created
      -- compiled only on 5.4: the other Luas cannot even parse `<close>`
      local block = assert(load([[
        local new_client, emu, set = ...
        do
          local client <close> = new_client(emu)
          client:spawn(function() set(client:create{ prompt = "paid as the block ends" }) end)
        end
      ]]))
      block(new_client, emu, function(task) created = task end)
      assert.matches("^%x+$", created.id)
      assert.are.equal(1, emu:stats().creates)
    end)
  end)

  describe("the journal's intent (point 4)", function()
    it("is written when the create leaves, not while it waits for a pacing slot", function()
      emu:config{ latency = 0.3 }
      local path = dir .. "/journal"
      local client = new_client(emu, { journal = path, create_qps = 1 })
      local errs = {}
      for i = 1, 5 do
        client:spawn(function()
          local _, err = client:create{ prompt = ("paced create %d"):format(i) }
          if err then errs[#errs + 1] = err end
        end)
      end
      local intents = select(2, files.read_file(path):gsub('"t":"intent"', ""))
      assert.are.equal(1, intents)
      client:close() -- the one sent comes home; the four waiting for a slot are never sent
      assert.are.equal(1, emu:stats().creates)
      local state = pending_of(path)
      assert.are.equal(1, #state.tasks)
      assert.are.equal(0, #state.unanswered)
      assert.are.equal(4, #errs)
      for _, err in ipairs(errs) do
        assert.are.equal("cancelled", err.kind)
        assert.is_nil(err.maybe_created)
        assert.matches("nothing was created", err.message)
      end
    end)
  end)

  describe("a task whose images were to be saved (point 5)", function()
    it("stays in client:pending() until they are, then leaves it", function()
      local path = dir .. "/journal"
      local client = new_client(emu, { journal = path })
      finally(function() client:close() end)
      local task = assert(client:create{ prompt = "saved at the second try" })
      assert(task:wait{ interval = 0.02 })
      files.write_file(dir .. "/plain", "a file, not a folder")
      local paths, err = task:download(dir .. "/plain/sub/image.png")
      assert.is_nil(paths)
      assert.are.equal("io", err.kind, tostring(err))
      local tasks = client:pending()
      assert.are.equal(1, #tasks)
      assert.are.equal(task.id, tasks[1].id)
      assert(task:download(dir .. "/"))
      assert.are.equal(0, #client:pending())
    end)
  end)

  describe("downloads (point 6)", function()
    it("run at most MAX_DOWNLOADS at once, the others queued in order", function()
      local client = new_client(emu)
      finally(function() client:close() end)
      local tasks = {}
      for i = 1, 20 do tasks[i] = assert(client:create{ prompt = ("queued download %d"):format(i) }) end
      assert(client:wait_all(tasks, { interval = 0.02 }))
      local saved = 0
      for i, t in ipairs(tasks) do
        client:spawn(function()
          if t:download(("%s/%02d.png"):format(dir, i)) then saved = saved + 1 end
        end)
      end
      assert.are.equal(8, client._engine:pending())
      client:run()
      assert.are.equal(20, saved)
    end)

    it("report a file that cannot be written as kind io", function()
      local client = new_client(emu)
      finally(function() client:close() end)
      local task = assert(client:create{ prompt = "nowhere to write" })
      assert(task:wait{ interval = 0.02 })
      local paths, err = task:download("/nonexistent-dh3-folder/x/image.png")
      assert.is_nil(paths)
      assert.are.equal("io", err.kind, tostring(err))
    end)
  end)

  describe("a user callback that raises (point 7)", function()
    it("goes to on_error; a create driven meanwhile keeps its id", function()
      local client = new_client(emu)
      finally(function() client:close() end)
      local reported = {}
      client:on_error(function(err) reported[#reported + 1] = tostring(err) end)
      local done = assert(client:create{ prompt = "a task to download", resolution = "4K" })
      assert(done:wait{ interval = 0.02 })
      client:spawn(function()
        done:download(dir .. "/", { progress = function() error("progress bar bug") end })
      end)
      emu:config{ latency = 0.2 } -- the download runs while the create below drives the loop
      local task, err = client:create{ prompt = "created while a progress bar raises" }
      assert.is_nil(err)
      assert.matches("^%x+$", task.id)
      client:run()
      assert.is_true(#reported >= 1)
      assert.matches("progress bar bug", reported[1])
    end)

    it("in on_update of wait, or in on_request, does not end the call", function()
      local reported = {}
      local client = new_client(emu, { on_request = function() error("hook bug") end })
      finally(function() client:close() end)
      client:on_error(function(err) reported[#reported + 1] = tostring(err) end)
      local task = assert(client:create{ prompt = "watched by a buggy callback" })
      assert.are.equal(task, task:wait{ interval = 0.02, on_update = function() error("update bug") end })
      local all = table.concat(reported, "\n")
      assert.matches("hook bug", all)
      assert.matches("update bug", all)
    end)
  end)

  describe("wait options (point 13)", function()
    local bad = {
      { "a zero interval", { interval = 0 } },
      { "a negative interval", { interval = -1 } },
      { "a NaN interval", { interval = 0 / 0 } },
      { "a NaN timeout", { timeout = 0 / 0 } },
      { "an infinite timeout", { timeout = math.huge } },
      { "a negative timeout", { timeout = -1 } },
      { "a NaN max_interval", { max_interval = 0 / 0 } },
      { "a fractional max_concurrency", { max_concurrency = 1.5 }, true },
    }
    for _, row in ipairs(bad) do
      it("refuse " .. row[1] .. " before any request", function()
        local client = new_client(emu)
        finally(function() client:close() end)
        local task = client:task(("a"):rep(32))
        if not row[3] then
          assert.has_error(function() task:wait(row[2]) end)
        end
        assert.has_error(function() client:wait_all({ task }, row[2]) end)
        assert.has_error(function() client:watch({ task }, row[2]) end)
        assert.are.equal(nil, emu:stats().requests["GET /api/v1/task/get"])
      end)
    end
  end)

  describe("dh3.new's options (point 14)", function()
    local bad = {
      { "a timeout beyond what a request takes", { timeout = 3e6 } },
      { "a NaN connect_timeout", { connect_timeout = 0 / 0 } },
      { "an infinite retry_delay", { retry_delay = math.huge } },
      { "a User-Agent with a line break", { user_agent = "dh3\r\nX-Evil: 1" } },
      { "a journal path with a NUL byte", { journal = "a\0b" } },
    }
    for _, row in ipairs(bad) do
      it("refuses " .. row[1], function()
        row[2].api_key, row[2].base_url = "k", "http://127.0.0.1:9"
        assert.has_error(function() dh3.new(row[2]) end)
      end)
    end
  end)

  describe("credentials in URLs (point 15)", function()
    it("are not shown by tostring(client) nor client.base_url", function()
      local client = assert(dh3.new{ api_key = "k", base_url = "http://user:pa55word@127.0.0.1:9/" })
      finally(function() client:close() end)
      assert.is_nil(tostring(client):find("pa55word", 1, true))
      assert.is_nil(client.base_url:find("pa55word", 1, true))
      assert.matches("***@127.0.0.1:9", tostring(client), 1, true)
    end)
  end)
end)
