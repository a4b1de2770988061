-- The dh3 command line, run as a user runs it (lua bin/dh3 ..., under the Lua being tested) against its own emulators:
-- through a pipe for the JSON lines and the exit codes (cli_terminal_spec runs it in a terminal,
-- cli_journal_spec with a journal). Its text helpers and its display are also checked on their own.
local emulator = require "helpers.emulator"
local files = require "helpers.files"
local lua = require "helpers.lua"
local cli = require "helpers.cli"
local read_file, write_file, tmpdir = files.read_file, files.write_file, files.tmpdir
local now = require("dh3.core").now
local dh3, events_of, names, requests = cli.dh3, cli.events_of, cli.names, cli.requests

describe("the dh3 command", function()
  local emu, env, out
  setup(function()
    -- no limit on creates at the emulator: each run is a new client, paced on its own, and a
    -- run must not meet the 429s earned by the one before it
    emu = emulator.start{ "--queue-time", "0", "--process-time", "0.3", "--create-qps", "0" }
    env = { DH3_API_KEY = emu.key, DH3_BASE_URL = emu.url }
    out = tmpdir()
  end)
  teardown(function()
    emu:stop()
    os.execute("rm -rf " .. out)
  end)

  describe("--help and --version", function()
    it("prints the version", function()
      local run = dh3(nil, "--version")
      assert.are.equal(0, run.code)
      assert.matches("^dh3 %d+%.%d+%.%d+", run.out)
    end)

    it("says once, in dh3 --help, the exit codes, output and environment every command shares", function()
      local top = dh3(nil, "--help")
      assert.are.equal(0, top.code)
      assert.matches("^Usage: dh3", top.out)
      for _, text in ipairs({ "Exit codes", "0 +success", "1 +a task failed", "2 +usage", "3 +API or network",
        "4 +timeout", "worst", "DH3_API_KEY", "DH3_BASE_URL", "DH3_JOURNAL", "summary", "stderr" }) do
        assert.matches(text, top.out)
      end
      for _, command in ipairs({ "generate", "status", "wait", "download", "resume" }) do
        local run = dh3(nil, command, "--help")
        assert.are.equal(0, run.code, command)
        assert.matches("^Usage: dh3 " .. command, run.out, command)
        -- a pointer to the shared text, not a copy of it
        assert.matches("see 'dh3 --help'", run.out, nil, true)
        assert.is_nil(run.out:find("worst wins", 1, true), command)
        assert.is_nil(run.out:find("DH3_BASE_URL", 1, true), command)
      end
    end)

    it("gives dh3 status its own exit codes: 0 whatever the state, and never 1", function()
      local run = dh3(nil, "status", "--help")
      assert.matches("0 +every task was read, whatever its state", run.out)
      assert.is_nil(run.out:find("\n +1 +"), run.out)
      assert.is_nil(run.out:find("a task failed", 1, true))
    end)

    it("documents each command's flags", function()
      local gen = dh3(nil, "generate", "--help").out
      for _, flag in ipairs({ "--aspect-ratio", "--resolution", "--format", "--image", "--callback-url", "--out",
        "--no-wait", "--timeout", "--json", "--prompts", "--journal", "--again", "skipped" }) do
        assert.matches(flag, gen, nil, true)
      end
      for _, command in ipairs({ "status", "wait", "download", "resume" }) do
        assert.matches("--journal <PATH>", dh3(nil, command, "--help").out, nil, true)
      end
      local resume = dh3(nil, "resume", "--help").out
      for _, text in ipairs({ "--out", "--timeout", "--json", "possibly created, id unknown", "unanswered" }) do
        assert.matches(text, resume, nil, true)
      end
    end)

    it("documents `dh3 pending`: what it lists, its JSON events, its exit codes", function()
      local run = dh3(nil, "pending", "--help")
      assert.are.equal(0, run.code)
      assert.matches("^Usage: dh3 pending %[%-h%] %[%-%-journal <PATH>%] %[%-%-json%]", run.out)
      for _, text in ipairs({ "no request", "possibly created, id unknown", '"event":"pending"',
        '"event":"unanswered"', "Exit codes", "0 +listed", "2 +usage", "3 +the journal", "DH3_JOURNAL" }) do
        assert.matches(text, run.out, text)
      end
      assert.matches("pending", dh3(nil, "--help").out, nil, true)
    end)
  end)

  describe("exit codes", function()
    it("0: the image is saved", function()
      local run = dh3(env, "generate", "a quiet harbour", "--out", out .. "/")
      assert.are.equal(0, run.code, run.err)
      assert.are.equal(1, #events_of(run, "saved"))
    end)

    it("1: the task failed, with the service's message on stderr and in the error event", function()
      local run = dh3(env, "generate", "a castle {emu:fail=Upstream model error}", "--out", out .. "/")
      assert.are.equal(1, run.code, run.err)
      local e = events_of(run, "error")[1]
      assert.are.same({ "task_failed", "Upstream model error", 1 }, { e.kind, e.message, e.index })
      assert.matches("^dh3: task_failed: Upstream model error %(task " .. e.task_id .. "%)\n$", run.err)
    end)

    it("2: an unknown flag, with the command's usage", function()
      local run = dh3(env, "generate", "--colour", "red", "a red door")
      assert.are.equal(2, run.code)
      assert.matches("Usage: dh3 generate", run.err, nil, true)
      assert.matches("unknown option '--colour'", run.err, nil, true)
      assert.are.equal("", run.out)
    end)

    it("2: a bad value, no prompt, no command, a malformed id", function()
      for _, args in ipairs({
        { "generate", "a red door", "--resolution", "8K" },
        { "generate", "a red door", "--timeout", "soon" },
        { "generate" },
        {},
        { "status", "../../etc/passwd" },
      }) do
        local run = dh3(env, lua.unpack(args))
        assert.are.equal(2, run.code, table.concat(args, " ") .. ": " .. run.err)
        assert.matches("Error: ", run.err)
      end
    end)

    it("2: a prompt the service would refuse is refused before anything is sent", function()
      local before = emu:stats().creates
      local run = dh3(env, "generate", "a fine prompt", "hi")
      assert.are.equal(2, run.code)
      assert.are.equal(before, emu:stats().creates)
      local e = events_of(run, "error")
      assert.are.equal(1, #e)
      assert.are.same({ "invalid_request", 2 }, { e[1].kind, e[1].index })
      assert.matches('dh3: prompt 2 "hi": invalid_request: prompt must be 3 to 20000 characters, got 2', run.err,
        nil, true)
    end)

    it("2: no API key", function()
      local run = dh3({ DH3_BASE_URL = emu.url }, "generate", "a red door")
      assert.are.equal(2, run.code)
      assert.matches("DH3_API_KEY", run.err, nil, true)
    end)

    it("3: a key the service refuses, and the key is printed nowhere", function()
      local key = "wrong-key-7c1f9e2a55"
      for _, args in ipairs({ { "generate", "a red door" }, { "status", "0123456789abcdef0123456789abcdef" } }) do
        local run = dh3({ DH3_API_KEY = key, DH3_BASE_URL = emu.url }, lua.unpack(args))
        assert.are.equal(3, run.code, run.err)
        assert.matches("auth: invalid API key", run.err, nil, true)
        assert.is_nil((run.out .. run.err):find(key, 1, true))
        assert.is_nil((run.out .. run.err):find("7c1f9e2a", 1, true))
      end
    end)

    it("3: a network error", function()
      local run = dh3({ DH3_API_KEY = emu.key, DH3_BASE_URL = "http://127.0.0.1:9" }, "status",
        "0123456789abcdef0123456789abcdef")
      assert.are.equal(3, run.code)
      assert.are.equal("network", events_of(run, "error")[1].kind)
    end)

    it("4: the task did not end within --timeout, and its id was printed", function()
      local run = dh3(env, "generate", "a slow glacier {emu:process=5}", "--timeout", "0.3")
      assert.are.equal(4, run.code, run.err)
      local id = events_of(run, "created")[1].task_id
      local e = events_of(run, "error")[1]
      assert.are.same({ "timeout", id }, { e.kind, e.task_id })
    end)

    it("with several tasks the worst wins: 4 over 1 over 0", function()
      local run = dh3(env, "generate", "a fine lake", "a broken vase {emu:fail}", "--out", out .. "/")
      assert.are.equal(1, run.code)
      run = dh3(env, "generate", "a fine lake", "a broken vase {emu:fail}", "a slow glacier {emu:process=5}",
        "--timeout", "1.5", "--out", out .. "/")
      assert.are.equal(4, run.code)
      assert.are.equal(1, #events_of(run, "saved"))
    end)
  end)

  describe("--json through a pipe", function()
    it("prints created, state and saved events, and the file has the size the service announced", function()
      local run = dh3(env, "generate", "a lighthouse at dawn", "--aspect-ratio", "16:9", "--out", out .. "/json.png",
        "--json")
      assert.are.equal(0, run.code, run.err)
      assert.are.equal("", run.err)
      assert.matches("^created state[ state]* saved summary$", names(run))
      local created, saved = run.events[1], run.events[#run.events - 1]
      assert.are.same({ 1, "a lighthouse at dawn", "queuing" }, { created.index, created.prompt, created.state })
      assert.are.equal("success", run.events[#run.events - 2].state)
      for i = 1, #run.events - 1 do assert.are.equal(created.task_id, run.events[i].task_id) end
      assert.are.same({ out .. "/json.png", 1376, 768 }, { saved.path, saved.width, saved.height })
      assert.are.equal(saved.bytes, #read_file(saved.path))
      local status = dh3(env, "status", created.task_id)
      assert.are.equal(saved.bytes, status.events[1].images[1].file_size)
      assert.are.equal(0, emu:stats().files_with_auth)
    end)

    it("is the output whenever stdout is not a terminal, even without --json", function()
      local run = dh3(env, "generate", "--no-wait", "a door")
      assert.are.equal(0, run.code)
      assert.are.equal("created", run.events[1].event)
    end)
  end)

  describe("several prompts", function()
    it("run concurrently: every task is created before any is saved", function()
      -- each task takes 2 s to process: one after the other, the first would be saved before the
      -- second was created
      local before = emu:stats().creates
      local three = dh3(env, "generate", "a green pear {emu:process=2}", "a red apple {emu:process=2}",
        "a yellow plum {emu:process=2}", "--out", out .. "/three")
      assert.are.equal(0, three.code, three.err)
      assert.are.equal(before + 3, emu:stats().creates)
      local last_created, first_saved
      for i, e in ipairs(three.events) do
        if e.event == "created" then last_created = i end
        if e.event == "saved" and not first_saved then first_saved = i end
      end
      assert.is_true(last_created < first_saved, names(three))
      local saved = events_of(three, "saved")
      assert.are.equal(3, #saved)
      local seen = {}
      for _, e in ipairs(saved) do
        assert.matches("^" .. out .. "/three/", e.path)
        assert.are.equal(e.bytes, #read_file(e.path))
        seen[e.index] = true
      end
      assert.are.same({ true, true, true }, seen)
    end)

    it("come from --prompts FILE, blank lines and comments skipped, after the arguments", function()
      local file = out .. "/prompts.txt"
      write_file(file, "# a batch\n\na blue whale\n   \n  # indented comment\na grey seal\n")
      local run = dh3(env, "generate", "a first prompt", "--prompts", file, "--no-wait")
      assert.are.equal(0, run.code, run.err)
      local prompts = {}
      for _, e in ipairs(events_of(run, "created")) do prompts[e.index] = e.prompt end
      assert.are.same({ "a first prompt", "a blue whale", "a grey seal" }, prompts)
      local missing = dh3(env, "generate", "--prompts", out .. "/no-such-file")
      assert.are.equal(2, missing.code)
    end)
  end)

  describe("--no-wait, status, wait and download", function()
    it("work on the ids that --no-wait printed", function()
      local start = now()
      local created = dh3(env, "generate", "--no-wait", "a kite {emu:process=1}", "a drum {emu:process=1}")
      assert.are.equal(0, created.code, created.err)
      assert.is_true(now() - start < 0.9, "--no-wait waited")
      assert.are.equal("created created summary", names(created))
      local a, b = created.events[1].task_id, created.events[2].task_id

      local status = dh3(env, "status", a, b)
      assert.are.equal(0, status.code, status.err)
      assert.are.equal("state state summary", names(status))
      local by_index = {} -- in the order the answers came
      for _, e in ipairs(events_of(status, "state")) do by_index[e.index] = e.task_id end
      assert.are.same({ a, b }, by_index)

      local waited = dh3(env, "wait", a, b)
      assert.are.equal(0, waited.code, waited.err)
      assert.matches("success", waited.out)
      assert.are.equal(0, #events_of(waited, "saved"))

      local dir = out .. "/by-id/"
      local downloaded = dh3(env, "download", a, "--out", dir)
      assert.are.equal(0, downloaded.code, downloaded.err)
      local saved = events_of(downloaded, "saved")[1]
      assert.are.equal(dir .. a .. ".png", saved.path)
      assert.are.equal(saved.bytes, #read_file(saved.path))

      status = dh3(env, "status", a)
      local images = status.events[1].images
      assert.are.same({ "success", 1024, 1024 }, { status.events[1].state, images[1].width, images[1].height })
    end)

    it("status of an unknown task exits 3 with kind not_found", function()
      local run = dh3(env, "status", "0123456789abcdef0123456789abcdef")
      assert.are.equal(3, run.code, run.err)
      assert.are.equal("not_found", events_of(run, "error")[1].kind)
    end)
  end)

  describe("--out, checked before anything is sent", function()
    local dir
    before_each(function() dir = tmpdir() end)
    after_each(function() files.rm_rf(dir) end)

    -- runs `dh3 generate ARGS`; asserts it was refused (exit 2, usage on stderr, nothing sent)
    -- and returns its stderr
    local function refused(...)
      local before = requests(emu)
      local run = dh3(env, "generate", ...)
      assert.are.equal(2, run.code, run.err)
      assert.are.equal(before, requests(emu))
      assert.matches("Usage: dh3 generate", run.err, nil, true)
      return run.err
    end

    it("a file in a folder that does not exist: refused, not created, waited on and lost", function()
      local err = refused("a red door", "--out", dir .. "/no-such-dir/x.png")
      assert.matches("the folder " .. dir .. "/no-such-dir of --out " .. dir .. "/no-such-dir/x.png does not exist",
        err, nil, true)
      assert.is_nil(read_file(dir .. "/no-such-dir"))
      err = refused("a red door", "--out", "/nonexistent-dir/x.png")
      assert.matches("does not exist", err, nil, true)
      -- (as a folder that cannot be made is, and was)
      local file = dir .. "/a-file"
      write_file(file, "")
      refused("a red door", "--out", file .. "/sub/")
    end)

    it("a file whose extension is not --format's: refused, whichever way round", function()
      assert.matches("--out " .. dir .. "/x.png ends in .png, but the image will be JPEG (--format jpg)",
        refused("a red door", "--format", "jpg", "--out", dir .. "/x.png"), nil, true)
      assert.matches("ends in .jpg, but the image will be PNG",
        refused("a red door", "--out", dir .. "/x.jpg"), nil, true)
      local run = dh3(env, "generate", "a red door", "--format", "jpg", "--out", dir .. "/x.jpeg")
      assert.are.equal(0, run.code, run.err)
      assert.are.equal("\255\216\255", read_file(dir .. "/x.jpeg"):sub(1, 3)) -- JPEG bytes, in a .jpeg
    end)

    it("several prompts and a file name: refused, no folder named like an image", function()
      assert.matches("several tasks are saved into a folder, and --out " .. dir .. "/single.png names an image file",
        refused("a red door", "a blue door", "--out", dir .. "/single.png"), nil, true)
      assert.is_nil(read_file(dir .. "/single.png"))
      assert.is_false(require("dh3.download").is_directory(dir .. "/single.png"))
      -- as a folder it is fine
      local run = dh3(env, "generate", "a red door", "a blue door", "--out", dir .. "/single.png/")
      assert.are.equal(0, run.code, run.err)
      assert.are.equal(2, #events_of(run, "saved"))
    end)
  end)

  describe("what a prompt may be", function()
    it("a blank prompt is refused, with nothing sent (the service would take it, and charge)", function()
      local before = requests(emu)
      local run = dh3(env, "generate", "a fine prompt", "   ")
      assert.are.equal(2, run.code)
      assert.are.equal(before, requests(emu))
      assert.matches('dh3: prompt 2 "   ": invalid_request: prompt is blank', run.err, nil, true)
    end)
  end)

  describe("messages that help", function()
    it("--prompts FILE that cannot be read says why", function()
      local run = dh3(env, "generate", "--prompts", out .. "/no-such-file")
      assert.are.equal(2, run.code)
      assert.matches("cannot read --prompts: " .. out .. "/no-such-file: No such file or directory", run.err, nil, true)
      assert.is_nil(run.err:find("nil", 1, true))
      run = dh3(env, "generate", "--prompts", out)
      assert.are.equal(2, run.code)
      assert.matches("Is a directory", run.err, nil, true)
    end)

    it("a prompts file of comments only says so", function()
      local file = out .. "/comments.txt"
      write_file(file, "# nothing yet\n\n   \n")
      local run = dh3(env, "generate", "--prompts", file)
      assert.are.equal(2, run.code)
      assert.matches("no prompt: --prompts " .. file .. " has no prompt in it (only blank lines and # comments)",
        run.err, nil, true)
    end)

    it("no API key names DH3_API_KEY, the command line's only way to give one", function()
      local run = dh3({ DH3_BASE_URL = emu.url }, "generate", "a red door")
      assert.are.equal(2, run.code)
      assert.matches("no API key: set DH3_API_KEY", run.err, nil, true)
      assert.is_nil(run.err:find("api_key", 1, true))
    end)

    it("--timeout -5 is a bad value of --timeout, not an unknown option", function()
      for _, args in ipairs({ { "generate", "a red door", "--timeout", "-5" },
        { "wait", ("a"):rep(32), "--timeout", "-0.5" } }) do
        local run = dh3(env, lua.unpack(args))
        assert.are.equal(2, run.code)
        assert.matches("--timeout must be a positive number of seconds, got '" .. args[4] .. "'", run.err, nil, true)
        assert.is_nil(run.err:find("unknown option", 1, true))
      end
    end)
  end)

  describe("batches", function()
    local dir
    before_each(function() dir = tmpdir() end)
    after_each(function() files.rm_rf(dir) end)

    it("end with a summary event: saved, failed, not created", function()
      local run = dh3(env, "generate", "a saved one", "a failed one {emu:fail}", "--out", dir .. "/")
      assert.are.equal(1, run.code)
      local s = run.events[#run.events]
      assert.are.equal("summary", s.event)
      assert.are.same({ 2, 1, 1, 0, 0 }, { s.tasks, s.saved, s.failed, s.not_created, s.skipped })
    end)

    it("a bad line of --prompts is named by its line in the file", function()
      local file = dir .. "/prompts.txt"
      write_file(file, "# a batch\n\na fine whale\n\nhi\n")
      local run = dh3(env, "generate", "--prompts", file)
      assert.are.equal(2, run.code)
      local e = events_of(run, "error")[1]
      assert.are.same({ 2, 5 }, { e.index, e.line })
      assert.matches('dh3: --prompts ' .. file .. ' line 5 "hi": invalid_request: prompt must be 3 to 20000',
        run.err, nil, true)
    end)

    it("a failed create names its prompt and index on stderr", function()
      local broke = emulator.start{ "--credits", "0" }
      local run = dh3({ DH3_API_KEY = broke.key, DH3_BASE_URL = broke.url }, "generate", "a first door",
        ("a second door, " .. ("very "):rep(20) .. "long"), "--out", dir .. "/")
      broke:stop()
      assert.are.equal(3, run.code)
      assert.matches('dh3: prompt 1 "a first door": insufficient_credits: ', run.err, nil, true)
      assert.matches('dh3: prompt 2 "a second door, very very very very ve...": insufficient_credits: ', run.err,
        nil, true)
      assert.are.equal(2, run.events[#run.events].not_created)
    end)

    it("rerun with --journal, only what did not succeed is created again; --again creates all", function()
      local path = dir .. "/journal"
      local prompts = { "a kept lake", "a lost vase {emu:fail}", "a kept lake" }
      local first = dh3(env, "generate", prompts[1], prompts[2], prompts[3], "--journal", path, "--out", dir .. "/")
      assert.are.equal(1, first.code, first.err)
      assert.are.equal(2, #events_of(first, "saved"))

      local before = emu:stats().creates
      local again = dh3(env, "generate", prompts[1], prompts[2], prompts[3], "--journal", path, "--out", dir .. "/")
      assert.are.equal(1, again.code, again.err)
      assert.are.equal(before + 1, emu:stats().creates) -- the failed one only
      local skipped = events_of(again, "skipped")
      assert.are.same({ 1, 3 }, { skipped[1].index, skipped[2].index })
      assert.are.equal("a kept lake", skipped[1].prompt)
      assert.are.equal(1, #skipped[1].paths)
      assert.are.equal(2, events_of(again, "created")[1].index)
      local s = again.events[#again.events]
      assert.are.same({ 1, 2, 1 }, { s.tasks, s.skipped, s.failed })

      -- other options are another request: created; a saved file removed: created again
      before = emu:stats().creates
      os.remove(skipped[2].paths[1])
      local other = dh3(env, "generate", prompts[1], prompts[1], "--aspect-ratio", "16:9", "--journal", path,
        "--out", dir .. "/")
      assert.are.equal(0, other.code, other.err)
      assert.are.equal(before + 2, emu:stats().creates)
      local removed = dh3(env, "generate", prompts[1], prompts[1], "--journal", path, "--out", dir .. "/")
      assert.are.equal(0, removed.code, removed.err)
      assert.are.equal(1, #events_of(removed, "skipped"))
      assert.are.equal(1, #events_of(removed, "created"))

      before = emu:stats().creates
      local all = dh3(env, "generate", prompts[1], "--journal", path, "--out", dir .. "/", "--again")
      assert.are.equal(0, all.code, all.err)
      assert.are.equal(before + 1, emu:stats().creates)
      assert.are.equal(0, #events_of(all, "skipped"))
    end)
  end)
end)

describe("dh3.cli.format", function()
  local format = require "dh3.cli.format"
  local rows = {
    { "bytes", format.bytes, { 0 }, "0 B" },
    { "bytes", format.bytes, { 1023 }, "1023 B" },
    { "bytes", format.bytes, { 1536 }, "1.5 KiB" },
    { "bytes", format.bytes, { 5 * 1024 * 1024 }, "5.0 MiB" },
    { "duration", format.duration, { 0.04 }, "0.0s" },
    { "duration", format.duration, { 12.34 }, "12.3s" },
    { "duration", format.duration, { 65 }, "1m05s" },
    { "duration", format.duration, { 7380 }, "2h03m" },
    { "age", format.age, { 45.9 }, "45s" },
    { "age", format.age, { 754 }, "12m" },
    { "age", format.age, { 11100 }, "3h05m" },
    { "age", format.age, { 187200 }, "2d04h" },
    { "age", format.age, { -5 }, "0s" },
    { "age", format.age, { -3600 }, "?" },
    { "bar", format.bar, { 0, 4 }, "[    ]" },
    { "bar", format.bar, { 0.5, 4 }, "[=>  ]" },
    { "bar", format.bar, { 1, 4 }, "[====]" },
    { "bar", format.bar, { 2, 4 }, "[====]" },
    { "fit", format.fit, { "short", 10 }, "short" },
    { "fit", format.fit, { "a longer line", 8 }, "a lon..." },
    { "fit", format.fit, { "été à la plage", 6 }, "été..." },
    { "fit", format.fit, { "a\27[2Jb\nc", 20 }, "a [2Jb c" },
    { "fit", format.fit, { "bad \255 byte", 20 }, "bad ? byte" },
  }
  for _, row in ipairs(rows) do
    it(("%s(%s) is %q"):format(row[1], table.concat(row[3], ", "), row[4]), function()
      assert.are.equal(row[4], row[2](lua.unpack(row[3])))
    end)
  end
end)

describe("dh3.cli.exitcode", function()
  local exitcode = require "dh3.cli.exitcode"
  it("maps errors to codes", function()
    local errors = require "dh3.errors"
    local rows = {
      { errors.new("task_failed", "x"), 1 },
      { errors.new("timeout", "x"), 4 },
      { errors.new("auth", "no API key"), 2 },
      { errors.new("invalid_request", "prompt"), 2 },
      { errors.new("auth", "refused", { http_status = 401 }), 3 },
      { errors.new("invalid_request", "refused", { http_status = 422 }), 3 },
      { errors.new("network", "x"), 3 },
      { errors.new("server", "x", { http_status = 503 }), 3 },
    }
    for _, row in ipairs(rows) do assert.are.equal(row[2], exitcode.for_error(row[1]), tostring(row[1])) end
  end)

  it("lets the worst outcome win: 130, 2, 3, 4, 1, 0", function()
    local order = { 0, 1, 4, 3, 2, 130 }
    for i, better in ipairs(order) do
      for j = i, #order do
        assert.are.equal(order[j], exitcode.worst(better, order[j]))
        assert.are.equal(order[j], exitcode.worst(order[j], better))
      end
    end
  end)
end)

describe("dh3.cli.terminal", function()
  local terminal = require "dh3.cli.terminal"
  local jobs = require "dh3.cli.jobs"

  -- a file that keeps what is written, and a clock the spec moves
  local function screen()
    local s = { text = {} }
    function s:write(...) for _, v in ipairs({ ... }) do self.text[#self.text + 1] = v end end
    function s:flush() end
    function s:get() return table.concat(self.text) end
    return s
  end

  it("draws a progress bar with size and speed while downloading, and rewrites rows in place", function()
    local clock = 100
    local out, err = screen(), screen()
    local t = terminal.new{ out = out, err = err, columns = 120, lines = 30, now = function() return clock end }
    local job = jobs.new(1, { prompt = "a kite" })
    job.started = 90
    job.task = { id = ("a"):rep(32) }
    t:start({ job })
    job.phase, job.download_started, job.bytes, job.total = "downloading", 98, 1024 * 1024, 4 * 1024 * 1024
    t:tick()
    local text = out:get()
    assert.matches(("a"):rep(32) .. "  downloading  10.0s  [====>               ] 1.0 MiB / 4.0 MiB  512.0 KiB/s",
      text, nil, true)
    assert.matches("\27[1A\r\27[K", text, nil, true) -- the second draw went back up one row
    job.phase, job.ended, job.paths, job.saved_bytes = "saved", 104, { "out/a.png" }, 4 * 1024 * 1024
    t:finished(job)
    assert.matches("saved%s+14%.0s  a kite %-> out/a%.png  %(4%.0 MiB%)\n\27%[J$", out:get())
    assert.are.equal("", err:get())
  end)

  it("shows as many rows as fit, then how many more", function()
    local out = screen()
    local t = terminal.new{ out = out, err = screen(), columns = 80, lines = 5, now = function() return 0 end }
    local list = {}
    for i = 1, 10 do list[i] = jobs.new(i, { prompt = "prompt " .. i }) end
    t:start(list)
    local text = out:get()
    assert.matches("prompt 3\n", text, nil, true)
    assert.is_nil(text:find("prompt 4", 1, true))
    assert.matches("... and 7 more", text, nil, true)
  end)
end)

describe("dh3.cli.pending", function()
  local pending = require "dh3.cli.pending"

  local function buffer()
    local b = { text = {} }
    function b:write(...) for _, v in ipairs({ ... }) do self.text[#self.text + 1] = v end end
    function b:get() return table.concat(self.text) end
    return b
  end

  local function body(prompt)
    return { model = "nano-banana-pro", nano_banana_pro_input = { prompt = prompt } }
  end

  it("shows people a table of each kind: id, age, prompt, cut to the terminal's width", function()
    local out = buffer()
    pending.print(out, {
      tasks = { { task_id = ("a"):rep(32), local_id = "l1", input = body("a red fox in snow"), created_at = 1000 } },
      unanswered = {
        { local_id = ("b"):rep(32), input = body("lost one " .. ("very "):rep(20) .. "long"), at = 400 },
        { local_id = ("c"):rep(32), at = 990 }, -- its intent unreadable: no prompt known
      },
    }, "/j", 80, 1065)
    local lines = {}
    for line in out:get():gmatch("([^\n]*)\n") do lines[#lines + 1] = line end
    assert.are.same({
      "1 task created, not seen to finish (dh3 resume):",
      "  task id                           age      prompt",
      "  " .. ("a"):rep(32) .. "  1m       a red fox in snow",
      "",
      "2 creates with no answer: possibly created, id unknown.",
      "  local id                          age      prompt",
      "  " .. ("b"):rep(32) .. "  11m      lost one very very very very ve...",
      "  " .. ("c"):rep(32) .. "  1m       (unknown)",
      "Only the service's support can trace them: give it the local id and prompt.",
    }, lines)
    for _, line in ipairs(lines) do assert.is_true(#line <= 79, line) end
    out = buffer()
    pending.print(out, { tasks = {}, unanswered = {} }, "/j", 80, 0)
    assert.are.equal("Nothing pending in /j.\n", out:get())
  end)

  it("says an unanswered create in one line, its prompt cut and without control characters", function()
    local line = pending.unanswered_line{ local_id = "ab12", input = body("two\nlines " .. ("x"):rep(300)), at = 0 }
    assert.matches('^dh3: possibly created, id unknown: tell the service\'s support: local id ab12, '
      .. 'prompt "two lines x+%.%.%.", sent 1970%-01%-01 00:00:00 UTC$', line)
    assert.is_nil(line:find("\n"))
    assert.matches('prompt unknown, sent an unknown time$', pending.unanswered_line{ local_id = "ab12" })
  end)
end)

describe("dh3.cli.destination", function()
  local destination = require "dh3.cli.destination"
  local dir
  before_each(function() dir = tmpdir() end)
  after_each(function() os.execute("rm -rf " .. dir) end)

  local function task(id, name)
    return { id = id, images = { { file_name = name, content_type = "image/png" } } }
  end

  it("keeps a single task's file path as it is", function()
    local dest = assert(destination.new(dir .. "/one.png", false))
    assert.are.equal(dir .. "/one.png", dest(task("a1", "result.png")))
  end)

  it("makes --out a folder, created when missing, for several tasks", function()
    local dest = assert(destination.new(dir .. "/made/here", true))
    assert.are.equal(dir .. "/made/here/", dest(task("a1", "a1.png")))
    assert.is_true(require("dh3.download").is_directory(dir .. "/made/here"))
  end)

  it("names a task after its id when another task of the run took its file name", function()
    local dest = assert(destination.new(dir .. "/", true))
    assert.are.equal(dir .. "/", dest(task("a1", "result.png")))
    assert.are.equal(dir .. "/b2.png", dest(task("b2", "result.png")))
    assert.are.equal(dir .. "/", dest(task("c3", "other.png")))
  end)

  it("says so when the folder cannot be made", function()
    local file = dir .. "/a-file"
    write_file(file, "")
    local dest, err = destination.new(file .. "/sub/", true)
    assert.is_nil(dest)
    assert.matches("cannot create the folder", err)
  end)
end)
