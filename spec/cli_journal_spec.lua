-- The dh3 command's journal, run as a user runs it (bin/dh3 under the Lua being tested) against
-- its own emulators: what generate --journal writes, pending, resume, pending --forget, and what
-- a run cut short leaves to them.
local emulator = require "helpers.emulator"
local files = require "helpers.files"
local lua = require "helpers.lua"
local cli = require "helpers.cli"
local sh, read_file, tmpdir = files.quote, files.read_file, files.tmpdir
local now = require("dh3.core").now
local env_words, dh3, events_of, names = cli.env_words, cli.dh3, cli.events_of, cli.names
local requests, journal_records, unanswered_intent = cli.requests, cli.journal_records, cli.unanswered_intent

describe("the dh3 command's journal", function()
  local emu, env
  setup(function()
    -- no limit on creates at the emulator: each run is a new client, paced on its own
    emu = emulator.start{ "--queue-time", "0", "--process-time", "0.3", "--create-qps", "0" }
    env = { DH3_API_KEY = emu.key, DH3_BASE_URL = emu.url }
  end)
  teardown(function() emu:stop() end)
  local dir -- a new folder for each spec, its journal and images
  before_each(function() dir = tmpdir() end)
  after_each(function() files.rm_rf(dir) end)

  describe("--journal, pending and resume", function()
    it("generate --journal records each create (intent, created, saving, finished, saved), never the key", function()
      local path = dir .. "/journal"
      local run = dh3(env, "generate", "a journaled lighthouse", "--journal", path, "--out", dir .. "/")
      assert.are.equal(0, run.code, run.err)
      local id = events_of(run, "created")[1].task_id
      local records = journal_records(path)
      local types = {}
      for i, r in ipairs(records) do types[i] = r.t end
      -- saving as soon as the task exists: a crash before its image is saved leaves it to resume
      assert.are.same({ "intent", "created", "saving", "finished", "saved" }, types)
      assert.are.equal("a journaled lighthouse", records[1].input.nano_banana_pro_input.prompt)
      assert.are.same({ records[1].lid, id }, { records[2].lid, records[2].id })
      assert.are.equal(id, records[3].id)
      assert.are.same({ id, "success" }, { records[4].id, records[4].state })
      assert.are.same({ id, events_of(run, "saved")[1].path }, { records[5].id, records[5].paths[1] })
      assert.is_nil(read_file(path):find(emu.key, 1, true))
      assert.is_nil(read_file(path):find("Bearer", 1, true))
    end)

    it("DH3_JOURNAL is the journal when --journal is not given; empty, there is none", function()
      local path = dir .. "/from-env"
      local with = { DH3_API_KEY = emu.key, DH3_BASE_URL = emu.url, DH3_JOURNAL = path }
      local run = dh3(with, "generate", "--no-wait", "a journaled kite")
      assert.are.equal(0, run.code, run.err)
      local records = journal_records(path)
      assert.are.same({ "intent", "created" }, { records[1].t, records[2].t })
      assert.are.equal(events_of(run, "created")[1].task_id, records[2].id)
      local pending = dh3({ DH3_JOURNAL = path }, "pending")
      assert.are.equal(0, pending.code, pending.err)
      assert.are.equal(records[2].id, pending.events[1].task_id)
      with.DH3_JOURNAL = ""
      run = dh3(with, "generate", "--no-wait", "a kite on no journal")
      assert.are.equal(0, run.code, run.err)
      assert.are.equal(2, #journal_records(path))
    end)

    it("after --no-wait: pending lists the task, resume saves it, then pending lists nothing", function()
      local path = dir .. "/journal"
      local created = dh3(env, "generate", "--no-wait", "a resumed fox {emu:process=0.5}", "a resumed owl",
        "--journal", path)
      assert.are.equal(0, created.code, created.err)
      local ids = cli.created_ids(created)
      local a, b = ids[1], ids[2]

      -- the journal only: no request, no key needed
      local before = requests(emu)
      local listed = dh3(nil, "pending", "--journal", path)
      assert.are.equal(0, listed.code, listed.err)
      assert.are.equal(before, requests(emu))
      assert.are.equal("pending pending", names(listed))
      assert.are.same({ a, "a resumed fox {emu:process=0.5}" }, { listed.events[1].task_id, listed.events[1].prompt })
      assert.are.same({ b, "a resumed owl" }, { listed.events[2].task_id, listed.events[2].prompt })
      assert.is_true(math.abs(os.time() - listed.events[1].at) < 60)
      assert.are.equal("", listed.err)

      local saved_to = dir .. "/resumed"
      local resumed = dh3(env, "resume", "--journal", path, "--out", saved_to)
      assert.are.equal(0, resumed.code, resumed.err)
      assert.are.equal("", resumed.err)
      local saved = events_of(resumed, "saved")
      assert.are.equal(2, #saved)
      local seen = {}
      for _, e in ipairs(saved) do
        seen[e.index] = e.task_id
        assert.are.equal(saved_to .. "/" .. e.task_id .. ".png", e.path)
        assert.are.equal(e.bytes, #read_file(e.path))
      end
      assert.are.same({ a, b }, seen)

      local after = dh3(nil, "pending", "--journal", path)
      assert.are.equal(0, after.code, after.err)
      assert.are.equal("", after.out)
      local again = dh3(env, "resume", "--journal", path, "--out", saved_to)
      assert.are.same({ 0, "", "" }, { again.code, again.out, again.err })
    end)

    it("an unanswered create shows in pending and on resume's stderr, and does not fail the run", function()
      local path = dir .. "/journal"
      local created = dh3(env, "generate", "--no-wait", "a found one", "--journal", path)
      assert.are.equal(0, created.code, created.err)
      local lid = unanswered_intent(path, "lost one")
      assert.matches("^%x+$", lid)

      local listed = dh3(nil, "pending", "--journal", path, "--json")
      assert.are.equal(0, listed.code, listed.err)
      assert.are.equal("pending unanswered", names(listed))
      local u = listed.events[2]
      assert.are.same({ lid, "lost one" }, { u.local_id, u.prompt })
      assert.are.equal("number", type(u.at))

      local resumed = dh3(env, "resume", "--journal", path, "--out", dir .. "/")
      assert.are.equal(0, resumed.code, resumed.err)
      assert.are.equal(1, #events_of(resumed, "saved"))
      assert.are.same({ lid, "lost one" }, { events_of(resumed, "unanswered")[1].local_id,
        events_of(resumed, "unanswered")[1].prompt })
      assert.matches("^dh3: possibly created, id unknown: tell the service's support: local id " .. lid
        .. ', prompt "lost one", sent %d+%-%d+%-%d+ %d+:%d+:%d+ UTC\n$', resumed.err)

      -- it cannot be resumed: it stays listed, for the support
      local after = dh3(nil, "pending", "--journal", path)
      assert.are.equal("unanswered", names(after))
    end)

    it("pending and resume with no journal, or no file at its path, are usage errors (2)", function()
      for _, args in ipairs({
        { "pending" },
        { "resume" },
        { "pending", "--journal", "" },
        { "pending", "--journal", dir .. "/no-such-journal" },
        { "resume", "--journal", dir .. "/no-such-journal" },
      }) do
        local run = dh3(env, lua.unpack(args))
        local what = table.concat(args, " ")
        assert.are.equal(2, run.code, what .. ": " .. run.err)
        assert.matches("Usage: dh3 " .. args[1], run.err, nil, true)
        assert.matches("Error: no journal", run.err, nil, true)
        assert.are.equal("", run.out)
      end
      assert.is_nil(read_file(dir .. "/no-such-journal")) -- looking did not create it
    end)

    it("a journal another process holds: resume and generate refuse (kind journal, exit 3), pending reads", function()
      local path = dir .. "/journal"
      local created = dh3(env, "generate", "--no-wait", "a contested task", "--journal", path)
      assert.are.equal(0, created.code, created.err)
      local holder = cli.hold_journal(path)
      local before = requests(emu)
      local runs = {
        dh3(env, "resume", "--journal", path, "--out", dir .. "/out/"),
        dh3(env, "generate", "a second writer", "--journal", path),
      }
      -- pending only reads: no lock needed, so a run holding the journal does not stop it
      local listed = dh3(nil, "pending", "--journal", path)
      os.execute("kill -9 " .. holder.pid)
      holder.pipe:close()
      for _, run in ipairs(runs) do
        assert.are.equal(3, run.code, run.err)
        local e = events_of(run, "error")[1]
        assert.are.equal("journal", e.kind)
        assert.matches("is in use by process " .. holder.pid, e.message, nil, true)
        assert.matches("^dh3: journal: the journal .* is in use by process " .. holder.pid .. "\n$", run.err)
      end
      assert.are.equal(0, listed.code, listed.err)
      assert.are.equal(created.events[1].task_id, listed.events[1].task_id)
      assert.are.equal(before, requests(emu))
      assert.is_nil(read_file(dir .. "/out")) -- a refused resume made no folder
      -- released by the holder's death: the task is still there to resume
      local resumed = dh3(env, "resume", "--journal", path, "--out", dir .. "/")
      assert.are.equal(0, resumed.code, resumed.err)
      assert.are.equal(created.events[1].task_id, events_of(resumed, "saved")[1].task_id)
    end)

    -- Starts `dh3 generate PROMPT --journal PATH` against `emu`; returns its pipe and pid once its
    -- create has left (the intent is in the journal).
    local function generate_until_sent(service, prompt, path, errfile)
      local words = env_words{ DH3_API_KEY = service.key, DH3_BASE_URL = service.url }
      local p = assert(lua.popen("echo $$; exec " .. table.concat(words, " ") .. " " .. lua.cli .. " generate "
        .. sh(prompt) .. " --journal " .. sh(path) .. " 2>" .. sh(errfile)))
      local pid = assert(tonumber(p:read("*l")))
      local deadline = now() + 10
      while not (read_file(path) or ""):find('"intent"', 1, true) and now() < deadline do
        os.execute("sleep 0.05")
      end
      return p, pid
    end

    it("Ctrl-C with a create in flight: the create brings its id home, which is said and journaled", function()
      local slow = emulator.start{ "--latency", "1.5", "--queue-time", "30" }
      local path = dir .. "/journal"
      local errfile = dir .. "/stderr"
      local p, pid = generate_until_sent(slow, "an interrupted create", path, errfile)
      os.execute("kill -INT " .. pid)
      local stdout = p:read("*a")
      local _, _, code = p:close()
      local creates = slow:stats().creates
      slow:stop()
      assert.are.equal(130, code)
      assert.are.equal(1, creates)
      local err = read_file(errfile)
      assert.matches("^dh3: interrupted; letting 1 create already sent bring its id home %(Ctrl%-C again to quit "
        .. "at once%)\n", err)
      local id = err:match("still running at the service %(dh3 resume %-%-journal [^)]*%): (%x+)\n$")
      assert.is_not_nil(id, err)
      assert.matches('"task_id":"' .. id .. '"', stdout, 1, true)
      local listed = dh3(nil, "pending", "--journal", path)
      assert.are.equal("pending", names(listed))
      assert.are.equal(id, listed.events[1].task_id)
    end)

    it("a second Ctrl-C quits at once: only then is a create left unanswered, and the journal says so", function()
      local slow = emulator.start{ "--latency", "20" } -- no answer comes while the spec runs
      local path = dir .. "/journal"
      local errfile = dir .. "/stderr"
      local started = now()
      local p, pid = generate_until_sent(slow, "a create cut off", path, errfile)
      os.execute("kill -INT " .. pid)
      os.execute("sleep 0.3")
      os.execute("kill -INT " .. pid)
      p:read("*a")
      local _, how, signal = p:close()
      slow:stop()
      assert.are.equal("signal", how)
      assert.are.equal(2, signal)
      assert.is_true(now() - started < 15, "it did not wait for the answer")
      assert.matches("^dh3: interrupted; letting 1 create already sent", read_file(errfile))
      local listed = dh3(nil, "pending", "--journal", path)
      assert.are.equal("unanswered", names(listed))
      assert.are.equal("a create cut off", listed.events[1].prompt)
      local resumed = dh3(env, "resume", "--journal", path)
      assert.are.equal(0, resumed.code, resumed.err)
      assert.matches("local id " .. listed.events[1].local_id .. ', prompt "a create cut off"', resumed.err,
        nil, true)
    end)

    it("wait --journal records the end of a journaled task: pending no longer lists it", function()
      local path = dir .. "/journal"
      local created = dh3(env, "generate", "--no-wait", "a waited bell", "--journal", path)
      local id = created.events[1].task_id
      assert.are.equal(id, dh3(nil, "pending", "--journal", path).events[1].task_id)
      local waited = dh3(env, "wait", id, "--journal", path)
      assert.are.equal(0, waited.code, waited.err)
      assert.are.equal("", dh3(nil, "pending", "--journal", path).out)
    end)
  end)

  describe("dh3 pending --forget", function()
    it("stops listing an unanswered create, and keeps its record in the journal", function()
      local path = dir .. "/journal"
      local created = dh3(env, "generate", "--no-wait", "a found one", "--journal", path)
      assert.are.equal(0, created.code, created.err)
      local lid = unanswered_intent(path, "lost one")
      local other = unanswered_intent(path, "lost two")
      local run = dh3(nil, "pending", "--journal", path, "--forget", lid)
      assert.are.equal(0, run.code, run.err)
      assert.are.same({ "forgotten", lid, "lost one" }, { run.events[1].event, run.events[1].local_id,
        run.events[1].prompt })
      local listed = dh3(nil, "pending", "--journal", path)
      assert.are.equal("pending unanswered", names(listed))
      assert.are.equal(other, listed.events[2].local_id)
      local types = {}
      for _, r in ipairs(journal_records(path)) do
        if r.lid == lid then types[#types + 1] = r.t end
      end
      assert.are.same({ "intent", "forgotten" }, types)
    end)

    it("a local id that is not an unanswered create is a usage error, and nothing is written", function()
      local path = dir .. "/journal"
      local created = dh3(env, "generate", "--no-wait", "an answered one", "--journal", path)
      local size = #read_file(path)
      local answered = journal_records(path)[1].lid
      for _, lid in ipairs({ answered, "0123456789abcdef0123456789abcdef" }) do
        local run = dh3(nil, "pending", "--journal", path, "--forget", lid)
        assert.are.equal(2, run.code, run.err)
        assert.matches("no unanswered create of local id '" .. lid .. "'", run.err, nil, true)
      end
      assert.are.equal(size, #read_file(path))
      assert.are.equal(created.events[1].task_id, dh3(nil, "pending", "--journal", path).events[1].task_id)
    end)

    it("takes the journal's lock: refused (exit 3) while a run holds it", function()
      local path = dir .. "/journal"
      local lid = unanswered_intent(path, "lost while held")
      local holder = cli.hold_journal(path)
      local run = dh3(nil, "pending", "--journal", path, "--forget", lid)
      os.execute("kill -9 " .. holder.pid)
      holder.pipe:close()
      assert.are.equal(3, run.code, run.err)
      assert.matches("in use by process " .. holder.pid, run.err, nil, true)
      assert.are.equal("unanswered", names(dh3(nil, "pending", "--journal", path)))
    end)
  end)
end)
