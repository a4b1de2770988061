-- Reading a journal without changing it: dh3.journal.read(), and `dh3 pending`, which only reads.
-- No lock is taken (a run may hold the journal and go on writing), nothing is created, a torn end
-- is reported and left, and a file the reader may not write reads all the same.
local journal = require "dh3.journal"

local files = require "helpers.files"
local lua = require "helpers.lua"
local cli = require "helpers.cli"
local sh, make_tmpdir, ls = files.quote, files.tmpdir, files.ls
local read_file, write_file = files.read_file, files.write_file

local TORN = '{"t":"created","lid":"ab' -- a record a crash cut short

local function body(prompt)
  return { model = "nano-banana-pro", nano_banana_pro_input = { prompt = prompt } }
end

-- The file's modification time, to the nanosecond.
local function mtime(p)
  local pipe = assert(io.popen("stat -c %y " .. sh(p)))
  local out = pipe:read("*l")
  pipe:close()
  return out
end

-- `bin/dh3 ARGS`, stdout a pipe, with no DH3_* from the caller's shell; `prefix` (a command
-- that runs what follows it) first, if given
local function dh3(prefix, ...)
  return cli.dh3_as(prefix ~= "" and prefix or nil, nil, ...)
end

local child = lua.child

describe("reading a journal without changing it", function()
  local dir, path
  before_each(function()
    dir = make_tmpdir()
    path = dir .. "/journal"
  end)
  after_each(function()
    collectgarbage()
    os.execute("rm -rf " .. sh(dir))
  end)

  -- A journal closed with one task created (id-1) and one create unanswered, then `tail` appended;
  -- its time set in the past, so that any write shows.
  local function journal_with(tail)
    local j = assert(journal.open(path))
    local a = j:intent(body("created one"))
    j:created(a, "id-1")
    j:intent(body("unanswered one"))
    j:close()
    local f = assert(io.open(path, "ab"))
    f:write(tail or "")
    f:close()
    os.remove(path .. ".lock") -- only the journal is in the folder
    assert(lua.execute("touch -d '2020-01-02 03:04:05.123456789' " .. sh(path)))
    return read_file(path), mtime(path)
  end

  describe("dh3.journal.read()", function()
    it("returns what pending() does, and a torn end's size, leaving the file as it was", function()
      local bytes, time = journal_with(TORN)
      local state = assert(journal.read(path))
      assert.are.equal(#TORN, state.torn)
      assert.are.equal(0, state.damaged)
      assert.are.equal("id-1", state.tasks[1].task_id)
      assert.are.equal("unanswered one", state.unanswered[1].input.nano_banana_pro_input.prompt)
      assert.are.equal(bytes, read_file(path))
      assert.are.equal(time, mtime(path))
      assert.are.same({ "journal" }, ls(dir)) -- no lock file, no temp file
    end)

    it("reads a journal this process holds, takes no lock, and the holder goes on writing", function()
      local j = assert(journal.open(path))
      j:created(j:intent(body("held")), "id-held")
      local state = assert(journal.read(path))
      assert.are.equal("id-held", state.tasks[1].task_id)
      assert.are.equal(0, state.torn)
      assert.is_true(j:finished("id-held", "success"))
      assert.are.same({}, assert(journal.read(path)).tasks)
      j:close()
    end)

    it("creates nothing when there is no file, and refuses what is not a journal", function()
      local state, err = journal.read(dir .. "/absent")
      assert.is_nil(state)
      assert.are.equal("journal", err.kind)
      assert.matches("No such file or directory", err.message)
      assert.are.same({}, ls(dir))
      write_file(path, "my notes\n")
      state, err = journal.read(path)
      assert.is_nil(state)
      assert.matches("is not a dh3 journal", err.message)
      assert.are.equal("my notes\n", read_file(path))
      assert.are.same({ "journal" }, ls(dir))
    end)
  end)

  describe("dh3 pending", function()
    it("reads a journal it may not write (mode 0444, another user), and changes nothing", function()
      local bytes, time = journal_with(TORN)
      assert(lua.execute("chmod 0444 " .. sh(path)))
      -- root may write a 0444 file: when the specs run as root, the run is made as nobody, in a
      -- folder nobody may write to (so that only the file's mode stands in the way)
      local as_other = ""
      if read_file("/proc/self/status"):match("\nUid:%s+0%s") then
        as_other = "setpriv --reuid=65534 --regid=65534 --clear-groups"
        assert(lua.execute("chown 65534 " .. sh(dir)))
      end
      local run = dh3(as_other, "pending", "--journal", path, "--json")
      assert.are.equal(0, run.code, run.err)
      assert.are.equal("id-1", run.events[1].task_id)
      assert.are.equal("unanswered", run.events[2].event)
      assert.are.equal(bytes, read_file(path))
      assert.are.equal(time, mtime(path))
      assert.are.same({ "journal" }, ls(dir))
    end)

    it("says a torn end on stderr and leaves it: the bytes and the time of the file are unchanged", function()
      local bytes, time = journal_with(TORN)
      for _, json in ipairs({ {}, { "--json" } }) do
        local run = dh3(nil, "pending", "--journal", path, lua.unpack(json))
        assert.are.equal(0, run.code, run.err)
        assert.matches("id-1", run.out, nil, true)
        assert.matches(("dh3: the journal %s ends in %d bytes that are not a whole record"):format(path, #TORN),
          run.err, nil, true)
        assert.are.equal(bytes, read_file(path))
        assert.are.equal(time, mtime(path))
        assert.are.same({ "journal" }, ls(dir))
      end
    end)

    it("reads a journal a run holds open, while the run goes on writing", function()
      local go = dir .. "/go"
      local holder = child(([[
        local socket = require "socket"
        local j = assert(require("dh3.journal").open(%q))
        j:created(j:intent{ model = "nano-banana-pro", nano_banana_pro_input = { prompt = "held" } }, "id-held")
        print("holding")
        local deadline = socket.gettime() + 20
        while not io.open(%q) and socket.gettime() < deadline do socket.sleep(0.01) end
        assert(j:finished("id-held", "success"))
        print("wrote")
        socket.sleep(30)
      ]]):format(path, go))
      assert.are.equal("holding", holder.pipe:read("*l"))
      local bytes = read_file(path)
      local run = dh3(nil, "pending", "--journal", path, "--json")
      assert.are.equal(0, run.code, run.err)
      assert.are.same({ event = "pending", task_id = "id-held", prompt = "held", at = run.events[1].at }, run.events[1])
      assert.are.equal("", run.err)
      assert.are.equal(bytes, read_file(path))
      -- the holder still has the journal, and writes on
      write_file(go, "")
      assert.are.equal("wrote", holder.pipe:read("*l"))
      assert.matches("in use by process " .. holder.pid, select(2, journal.open(path)).message, nil, true)
      run = dh3(nil, "pending", "--journal", path, "--json")
      assert.are.equal(0, run.code, run.err)
      assert.are.same({}, run.events)
      os.execute("kill -9 " .. holder.pid)
      holder.pipe:close()
    end)

    it("lists a task that finished with its images not saved, with its state", function()
      local j = assert(journal.open(path))
      j:created(j:intent(body("finished, download cut short")), "id-s")
      j:saving("id-s")
      j:finished("id-s", "success", { { url = "http://img/s.png", file_name = "s.png", file_size = 3 } })
      j:close()
      local run = dh3(nil, "pending", "--journal", path, "--json")
      assert.are.equal(0, run.code, run.err)
      assert.are.same({ event = "pending", task_id = "id-s", prompt = "finished, download cut short",
        state = "success", at = run.events[1].at }, run.events[1])
    end)
  end)
end)

describe("dh3.cli.pending.print()", function()
  local pending = require "dh3.cli.pending"

  it("shows the tasks that finished with images not saved in a table of their own", function()
    local text = {}
    local out = { write = function(_, ...) for _, v in ipairs({ ... }) do text[#text + 1] = v end end }
    pending.print(out, { unanswered = {}, tasks = {
      { task_id = ("a"):rep(32), input = body("running"), created_at = 1000 },
      { task_id = ("b"):rep(32), input = body("finished"), created_at = 1000, state = "success", saving = true },
    } }, "/j", 80, 1060)
    local lines = {}
    for line in table.concat(text):gmatch("([^\n]*)\n") do lines[#lines + 1] = line end
    assert.are.same({
      "1 task created, not seen to finish (dh3 resume):",
      "  task id                           age      prompt",
      "  " .. ("a"):rep(32) .. "  1m       running",
      "",
      "1 task finished, images not saved (dh3 resume):",
      "  task id                           age      prompt",
      "  " .. ("b"):rep(32) .. "  1m       finished",
    }, lines)
  end)
end)
