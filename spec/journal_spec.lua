local journal = require "dh3.journal"
local core = require "dh3.core"

local files = require "helpers.files"
local lua = require "helpers.lua"
local shell_quote, make_tmpdir, ls = files.quote, files.tmpdir, files.ls
local read_file, write_file = files.read_file, files.write_file

-- The file's records, decoded (compared as tables: key order is not defined).
local function records(path)
  local out = {}
  for line in (read_file(path) or ""):gmatch("([^\n]*)\n") do out[#out + 1] = assert(core.json_decode(line)) end
  return out
end

local HEADER = '{"t":"dh3-journal","v":1}\n'
local function line(r) return assert(core.json_encode(r)) .. "\n" end

local function body(prompt)
  return { model = "nano-banana-pro", nano_banana_pro_input = { prompt = prompt, aspect_ratio = "1:1" } }
end

-- {=====================================================================
-- Child processes: the Lua being tested, with this tree's modules (helpers.lua's child)
-- ======================================================================
local child = lua.child

-- Runs a child to its end: its output and how it ended.
local function run_child(script)
  local c = child(script)
  local out = c.pipe:read("*a")
  local ok = c.pipe:close()
  return out, ok
end

-- SIGKILL: no handler, no flush, no close of anything; returns how the child ended.
local function kill9(c)
  os.execute("kill -9 " .. c.pid)
  local _, how, code = c.pipe:close()
  return how, code
end

-- What another process gets when it opens `path`.
local function open_elsewhere(path)
  return run_child(([[
    local j, err = require("dh3.journal").open(%q)
    print(j and "opened" or ("refused " .. err.kind .. ": " .. err.message))
  ]]):format(path))
end
-- }=====================================================================

describe("dh3.journal", function()
  local dir, path
  before_each(function()
    dir = make_tmpdir()
    path = dir .. "/journal"
  end)
  after_each(function()
    collectgarbage() -- journals a spec dropped release their locks now
    os.execute("rm -rf " .. shell_quote(dir))
  end)

  describe("open()", function()
    it("creates the journal with its header, readable by its owner only, and a lock file beside it", function()
      local j = assert(journal.open(path))
      assert.are.equal(HEADER, read_file(path))
      assert.are.same({ "journal", "journal.lock" }, ls(dir))
      local p = io.popen("stat -c %a " .. shell_quote(path))
      assert.are.equal("600", p:read("*l"))
      p:close()
      assert.are.same({ tasks = {}, unanswered = {} }, j:pending())
      j:close()
    end)

    it("refuses a file that is not a journal, and leaves it untouched", function()
      write_file(path, "my notes\nsecond line\n")
      local j, err = journal.open(path)
      assert.is_nil(j)
      assert.are.equal("journal", err.kind)
      assert.matches("is not a dh3 journal", err.message)
      assert.are.equal("my notes\nsecond line\n", read_file(path))
    end)

    it("refuses a journal of a later format", function()
      write_file(path, '{"t":"dh3-journal","v":2}\n')
      local j, err = journal.open(path)
      assert.is_nil(j)
      assert.matches("newer dh3 %(journal format 2", err.message)
    end)

    it("returns nil and an error for a path it cannot open", function()
      local j, err = journal.open(dir .. "/no/such/folder/journal")
      assert.is_nil(j)
      assert.are.equal("journal", err.kind)
      assert.matches("No such file or directory", tostring(err))
      os.execute("mkdir " .. shell_quote(dir .. "/afolder"))
      j, err = journal.open(dir .. "/afolder")
      assert.is_nil(j)
      assert.matches("cannot open the journal .*/afolder", err.message)
    end)

    it("raises on a wrong argument or a misspelt option", function()
      assert.has_error(function() journal.open(nil) end, "bad argument #1 to 'open' (a path expected, got nil)")
      assert.has_error(function() journal.open(path, { compact = 5 }) end, "journal.open: unknown field 'compact' (did you mean 'compact_at'?)")
    end)
  end)

  describe("records", function()
    it("writes the intent (input, a random local id, the time) before intent() returns", function()
      local j = assert(journal.open(path))
      local before = os.time()
      local lid = assert(j:intent(body("a lighthouse")))
      assert.matches("^%x+$", lid)
      assert.are.equal(32, #lid)
      local recs = records(path) -- read through another descriptor: it is in the file already
      assert.are.equal(2, #recs)
      assert.are.same({ t = "intent", lid = lid, input = body("a lighthouse"), at = recs[2].at }, recs[2])
      assert.is_true(recs[2].at >= before and recs[2].at <= os.time())
      assert.are_not.equal(lid, j:intent(body("another")))
      j:close()
    end)

    it("records created, abandoned and finished as one line each", function()
      local j = assert(journal.open(path))
      local a = j:intent(body("one"))
      local b = j:intent(body("two"))
      assert.is_true(j:created(a, "7680814200000000000000000000000a"))
      assert.is_true(j:abandoned(b, "rate_limited"))
      assert.is_true(j:finished("7680814200000000000000000000000a", "success", {
        { url = "http://img/x.png", content_type = "image/png", file_name = "x.png", file_size = 2456789,
          width = 1024, height = 1024 },
      }))
      local recs = records(path)
      for _, r in ipairs(recs) do r.at = nil end
      assert.are.same({
        { t = "dh3-journal", v = 1 },
        { t = "intent", lid = a, input = body("one") },
        { t = "intent", lid = b, input = body("two") },
        { t = "created", lid = a, id = "7680814200000000000000000000000a" },
        { t = "abandoned", lid = b, reason = "rate_limited" },
        { t = "finished", id = "7680814200000000000000000000000a", state = "success",
          images = { { url = "http://img/x.png", file_name = "x.png", file_size = 2456789 } } },
      }, recs)
      j:close()
    end)

    it("writes nothing for what is already settled: a second created, finished or abandoned", function()
      local j = assert(journal.open(path))
      local a = j:intent(body("one"))
      local b = j:intent(body("two"))
      j:created(a, "id-a")
      j:abandoned(b, "refused")
      local size = #read_file(path)
      assert.is_true(j:created(a, "id-a"))
      assert.is_true(j:abandoned(b, "again"))
      assert.is_true(j:finished("not-ours", "success", {}))
      assert.are.equal(size, #read_file(path))
      j:finished("id-a", "fail")
      size = #read_file(path)
      assert.is_true(j:finished("id-a", "success"))
      assert.are.equal(size, #read_file(path))
      j:close()
    end)

    it("takes a dh3 error as the reason of an abandoned intent", function()
      local j = assert(journal.open(path))
      local a = j:intent(body("one"))
      j:abandoned(a, require("dh3.errors").new("rate_limited", "too many creates\nsecond line"))
      assert.are.equal("rate_limited: too many creates second line", records(path)[3].reason)
      j:close()
    end)

    it("never writes an API key, an Authorization header or anything named like a secret", function()
      local j = assert(journal.open(path))
      local input = body("a fox")
      input.api_key = "sk-live-1111"
      input.Authorization = "Bearer sk-live-2222"
      input.extra = { token = "sk-live-3333", headers = { "Bearer sk-live-4444" }, note = "kept" }
      input.nano_banana_pro_input.apiKey = "sk-live-5555"
      local lid = j:intent(input)
      local text = read_file(path)
      assert.is_nil(text:find("sk-live", 1, true))
      assert.is_nil(text:lower():find("bearer", 1, true))
      local expected = body("a fox")
      expected.extra = { headers = {}, note = "kept" }
      assert.are.same(expected, records(path)[2].input)
      assert.are.equal("sk-live-1111", input.api_key) -- the caller's table is not changed
      assert.are.same(expected, j:pending().unanswered[1].input)
      assert.truthy(lid)
      j:close()
    end)

    it("never writes the user and password of a URL: a callback_url keeps its scheme, host and path", function()
      local j = assert(journal.open(path))
      local input = body("a kite")
      input.callBackUrl = "https://alice:s3cr3t-pw@hooks.example.com:8443/dh3/hook?x=1"
      input.image_urls = { "http://bob@img.example.com/a.png", "https://img.example.com/plain.png" }
      local lid = j:intent(input)
      j:created(lid, "id-url")
      j:abandoned(j:intent(body("refused")), "could not reach https://carol:hunter2@proxy.example.com/")
      j:finished("id-url", "success", { { url = "https://dave:pw-in-url@cdn.example.com/x.png", file_name = "x.png" } })
      j:close()
      local text = read_file(path)
      for _, secret in ipairs({ "alice", "s3cr3t-pw", "bob@", "carol", "hunter2", "dave", "pw-in-url" }) do
        assert.is_nil(text:find(secret, 1, true), secret)
      end
      local recs = records(path)
      assert.are.equal("https://***@hooks.example.com:8443/dh3/hook?x=1", recs[2].input.callBackUrl)
      assert.are.same({ "http://***@img.example.com/a.png", "https://img.example.com/plain.png" },
        recs[2].input.image_urls)
      assert.are.equal("could not reach https://***@proxy.example.com/", recs[5].reason)
      assert.are.equal("https://***@cdn.example.com/x.png", recs[6].images[1].url)
      assert.are.equal("https://alice:s3cr3t-pw@hooks.example.com:8443/dh3/hook?x=1", input.callBackUrl) -- not changed
    end)

    it("raises on a caller's mistake, and on any use once closed", function()
      local j = assert(journal.open(path))
      assert.has_error(function() j:intent("prompt") end, "bad argument #1 to 'intent' (table expected, got string)")
      assert.has_error(function() j:finished("id", "processing") end,
        "journal:finished: state must be success or fail, got processing")
      j:close()
      j:close() -- idempotent
      assert.has_error(function() j:intent(body("late")) end)
      assert.has_error(function() j:pending() end)
      assert.matches("closed", tostring(j))
    end)
  end)

  describe("pending()", function()
    it("after a reopen, lists the created tasks not finished and the intents never answered, in order", function()
      local j = assert(journal.open(path))
      local lids = {}
      for i = 1, 6 do lids[i] = j:intent(body("prompt " .. i)) end
      j:created(lids[1], "id-1")
      j:created(lids[2], "id-2")
      j:created(lids[4], "id-4")
      j:finished("id-2", "success", { { url = "http://img/2.png", file_name = "2.png", file_size = 10 } })
      j:abandoned(lids[5], "invalid_request")
      j:close()

      local again = assert(journal.open(path))
      local p = again:pending()
      for _, t in ipairs(p.tasks) do assert.is_number(t.created_at); t.created_at = nil end
      for _, u in ipairs(p.unanswered) do assert.is_number(u.at); u.at = nil end
      assert.are.same({
        tasks = {
          { task_id = "id-1", local_id = lids[1], input = body("prompt 1") },
          { task_id = "id-4", local_id = lids[4], input = body("prompt 4") },
        },
        unanswered = {
          { local_id = lids[3], input = body("prompt 3") },
          { local_id = lids[6], input = body("prompt 6") },
        },
      }, p)
      -- the tasks go on: finishing one after the restart settles it
      again:finished("id-1", "fail")
      assert.are.same({ "id-4" }, { again:pending().tasks[1].task_id, again:pending().tasks[2] })
      again:close()
    end)

    it("returns copies: changing them changes nothing in the journal", function()
      local j = assert(journal.open(path))
      j:intent(body("original"))
      j:pending().unanswered[1].input.nano_banana_pro_input.prompt = "changed"
      assert.are.equal("original", j:pending().unanswered[1].input.nano_banana_pro_input.prompt)
      j:close()
    end)
  end)

  describe("saving() and saved(): a task whose images are being saved", function()
    local IMAGES = { { url = "http://img/s.png", file_name = "s.png", file_size = 7 } }

    -- the journal's pending tasks by id, without their times
    local function tasks_of(j)
      local out = {}
      for _, t in ipairs(j:pending().tasks) do
        t.created_at = nil
        out[#out + 1] = t
      end
      return out
    end

    it("stays pending after it finished with success when saving() came first, until saved()", function()
      local j = assert(journal.open(path))
      local lid = j:intent(body("kept"))
      j:created(lid, "id-s")
      assert.is_true(j:saving("id-s")) -- before it may even have finished
      assert.is_true(j:finished("id-s", "success", IMAGES))
      assert.are.same({ { task_id = "id-s", local_id = lid, input = body("kept"), state = "success",
        images = IMAGES, saving = true } }, tasks_of(j))
      assert.is_true(j:saved("id-s", { "/out/s.png" }))
      assert.are.same({}, j:pending().tasks)
      local recs = records(path)
      for _, r in ipairs(recs) do r.at = nil end
      assert.are.same({ t = "saving", id = "id-s" }, recs[4])
      assert.are.same({ t = "saved", id = "id-s", paths = { "/out/s.png" } }, recs[6])
      j:close()
    end)

    it("stays pending while not finished, whatever was saved, and is settled by finished() after saved()", function()
      local j = assert(journal.open(path))
      j:created(j:intent(body("early")), "id-e")
      j:saving("id-e")
      assert.are.equal(1, #j:pending().tasks)
      assert.is_nil(j:pending().tasks[1].state)
      j:saved("id-e", {})
      assert.are.equal(1, #j:pending().tasks) -- created, not finished: still pending
      j:finished("id-e", "success", IMAGES)
      assert.are.same({}, j:pending().tasks)
      j:close()
    end)

    it("is pending again when saving() comes after finished(), until saved()", function()
      local j = assert(journal.open(path))
      local lid = j:intent(body("late"))
      j:created(lid, "id-l")
      j:finished("id-l", "success", IMAGES)
      assert.are.same({}, j:pending().tasks)
      assert.is_true(j:saving("id-l"))
      assert.are.same({ { task_id = "id-l", local_id = lid, input = body("late"), state = "success",
        images = IMAGES, saving = true } }, tasks_of(j))
      j:saved("id-l", { "/out/l.png" })
      assert.are.same({}, j:pending().tasks)
      j:close()
    end)

    it("is settled by a finished() with state fail, before or after saving()", function()
      local j = assert(journal.open(path))
      j:created(j:intent(body("fails after")), "id-f1")
      j:created(j:intent(body("fails before")), "id-f2")
      j:saving("id-f1")
      j:finished("id-f1", "fail")
      j:finished("id-f2", "fail")
      local size = #read_file(path)
      assert.is_true(j:saving("id-f2")) -- nothing to save: nothing written
      assert.are.equal(size, #read_file(path))
      assert.are.same({}, j:pending().tasks)
      j:close()
      j = assert(journal.open(path))
      assert.are.same({}, j:pending().tasks)
      j:close()
    end)

    it("writes nothing twice, nor for a task it does not have, nor a saved() without saving()", function()
      local j = assert(journal.open(path))
      j:created(j:intent(body("one")), "id-1")
      j:created(j:intent(body("two")), "id-2")
      j:saving("id-1")
      local size = #read_file(path)
      assert.is_true(j:saving("id-1"))
      assert.is_true(j:saving("not-ours"))
      assert.is_true(j:saved("not-ours", { "/x" }))
      assert.is_true(j:saved("id-2", { "/x" })) -- no saving() for it
      assert.are.equal(size, #read_file(path))
      j:saved("id-1", { "/out/1.png" })
      size = #read_file(path)
      assert.is_true(j:saved("id-1", { "/out/1.png" }))
      assert.is_true(j:saving("id-1")) -- saved already
      assert.are.equal(size, #read_file(path))
      assert.has_error(function() j:saving(nil) end, "journal:saving: a task id expected")
      assert.has_error(function() j:saved("id-1", "/out/1.png") end,
        "bad argument #2 to 'saved' (table expected, got string)")
      j:close()
    end)

    it("gives the same pending state after a reopen, saving before or after finished", function()
      local j = assert(journal.open(path))
      j:created(j:intent(body("a")), "id-a")
      j:created(j:intent(body("b")), "id-b")
      j:created(j:intent(body("c")), "id-c")
      j:created(j:intent(body("d")), "id-d")
      j:saving("id-a")
      j:finished("id-a", "success", IMAGES) -- saving, then finished: pending
      j:finished("id-b", "success", IMAGES)
      j:saving("id-b") -- finished, then saving: pending
      j:saving("id-c") -- saving, not finished: pending
      j:saving("id-d")
      j:finished("id-d", "success", IMAGES)
      j:saved("id-d", { "/out/d.png" }) -- settled
      j:intent(body("unanswered"))
      local before = j:pending()
      assert.are.same({ "id-a", "id-b", "id-c" },
        { before.tasks[1].task_id, before.tasks[2].task_id, before.tasks[3].task_id, before.tasks[4] })
      j:close()
      j = assert(journal.open(path))
      assert.are.same(before, j:pending())
      j:close()
    end)

    it("keeps every line of a chain being saved through compaction", function()
      local j = assert(journal.open(path, { compact_at = 6 }))
      local lid = j:intent(body("saved later"))
      j:created(lid, "id-k")
      j:saving("id-k")
      j:finished("id-k", "success", IMAGES)
      local chain = read_file(path):sub(#HEADER + 1)
      for i = 1, 3 do j:abandoned(j:intent(body("dead " .. i)), "refused") end -- 10 records, 4 live: compacted
      assert.are.same({ records = 4, live = 4, damaged = 0 }, j:stats())
      assert.are.equal(HEADER .. chain, read_file(path))
      assert.are.equal("success", j:pending().tasks[1].state)
      j:saved("id-k", { "/out/k.png" })
      assert.are.same({}, j:pending().tasks)
      j:close()
      j = assert(journal.open(path))
      assert.are.same({}, j:pending().tasks)
      j:close()
    end)

    it("takes back a finished chain that compaction dropped when saving() comes for it", function()
      local j = assert(journal.open(path, { compact_at = 4 }))
      local lid = j:intent(body("dropped, then saved"))
      j:created(lid, "id-d")
      j:abandoned(j:intent(body("dead")), "refused")
      j:finished("id-d", "success", IMAGES) -- 5 records, none live: compacted away at once
      assert.are.equal(HEADER, read_file(path))
      assert.is_true(j:saving("id-d"))
      local expected = { { task_id = "id-d", local_id = lid, input = body("dropped, then saved"), state = "success",
        images = IMAGES, saving = true } }
      assert.are.same(expected, tasks_of(j))
      j:close()
      j = assert(journal.open(path))
      assert.are.same(expected, tasks_of(j))
      j:close()
    end)
  end)

  describe("replay", function()
    -- a journal as a crash may leave it: GOOD, then a torn tail
    local GOOD = HEADER .. line{ t = "intent", lid = "aa", at = 1, input = body("one") }
      .. line{ t = "created", lid = "aa", id = "id-a", at = 2 }
      .. line{ t = "intent", lid = "bb", at = 3, input = body("two") }
    local created_b = line{ t = "created", lid = "bb", id = "id-b", at = 4 }

    local torn = {
      { "half a record", GOOD .. created_b:sub(1, 20), GOOD, { "id-a" }, { "bb" } },
      { "a record cut right before its last brace", GOOD .. created_b:sub(1, #created_b - 2), GOOD, { "id-a" }, { "bb" } },
      { "zeros where the record should be", GOOD .. ("\0"):rep(37), GOOD, { "id-a" }, { "bb" } },
      { "zeros and newlines", GOOD .. "\0\0\0\n\0\0\n\0", GOOD, { "id-a" }, { "bb" } },
      { "half a record, then a newline", GOOD .. created_b:sub(1, 30) .. "\n", GOOD, { "id-a" }, { "bb" } },
      { "a whole record without its newline (kept: it holds an id)", GOOD .. created_b:sub(1, #created_b - 1),
        GOOD .. created_b, { "id-a", "id-b" }, {} },
      { "the header of a new journal, torn", HEADER:sub(1, 10), HEADER, {}, {} },
      { "the header of a new journal, without its newline", HEADER:sub(1, #HEADER - 1), HEADER, {}, {} },
      { "a new journal's first write left zeros", ("\0"):rep(26), HEADER, {}, {} },
      { "an empty file", "", HEADER, {}, {} },
    }
    for _, row in ipairs(torn) do
      local name, content, repaired, task_ids, unanswered = row[1], row[2], row[3], row[4], row[5]
      it("tolerates a torn last line: " .. name, function()
        write_file(path, content)
        local j = assert(journal.open(path))
        assert.are.equal(repaired, read_file(path)) -- cut away (or completed) before any append
        local p = j:pending()
        local got_ids, got_lids = {}, {}
        for i, t in ipairs(p.tasks) do got_ids[i] = t.task_id end
        for i, u in ipairs(p.unanswered) do got_lids[i] = u.local_id end
        assert.are.same(task_ids, got_ids)
        assert.are.same(unanswered, got_lids)
        -- appends after the repair read back whole
        local lid = j:intent(body("after the crash"))
        j:close()
        j = assert(journal.open(path))
        assert.are.equal(lid, j:pending().unanswered[#j:pending().unanswered].local_id)
        assert.are.equal(0, j:stats().damaged)
        assert.are.equal(repaired, read_file(path):sub(1, #repaired))
        assert.are.equal(#repaired:gsub("[^\n]", "") + 1, #records(path)) -- every line reads back
        j:close()
      end)
    end

    it("skips an unreadable line in the middle, counts it, cuts nothing and never compacts", function()
      local content = HEADER .. line{ t = "intent", lid = "aa", at = 1, input = body("one") }
        .. "{garbage\n" .. line{ t = "created", lid = "aa", id = "id-a", at = 2 }
      write_file(path, content)
      local j = assert(journal.open(path, { compact_at = 1 }))
      assert.are.same({ records = 2, live = 2, damaged = 1 }, j:stats())
      assert.are.equal("id-a", j:pending().tasks[1].task_id)
      j:finished("id-a", "success") -- all dead now, beyond compact_at: still not compacted
      assert.are.equal(content, read_file(path):sub(1, #content))
      j:close()
    end)

    it("keeps a task whose intent is unreadable", function()
      write_file(path, HEADER .. "{torn in the middle\n" .. line{ t = "created", lid = "zz", id = "id-z", at = 2 })
      local j = assert(journal.open(path))
      assert.are.same({ { task_id = "id-z", local_id = "zz", created_at = 2 } }, j:pending().tasks)
      j:close()
    end)

    it("keeps an id that arrived after its intent was abandoned", function()
      write_file(path, HEADER .. line{ t = "intent", lid = "aa", at = 1, input = body("one") }
        .. line{ t = "abandoned", lid = "aa", reason = "network", at = 2 }
        .. line{ t = "created", lid = "aa", id = "id-a", at = 3 })
      local j = assert(journal.open(path))
      assert.are.equal("id-a", j:pending().tasks[1].task_id)
      j:close()
    end)

    it("skips records of a type it does not know", function()
      write_file(path, HEADER .. line{ t = "intent", lid = "aa", at = 1, input = body("one") }
        .. line{ t = "note", text = "from a later version" })
      local j = assert(journal.open(path))
      assert.are.same({ records = 2, live = 1, damaged = 0 }, j:stats())
      assert.are.equal(1, #j:pending().unanswered)
      j:close()
    end)
  end)

  describe("compaction", function()
    it("keeps exactly the live records, in order, and shrinks the file", function()
      local j = assert(journal.open(path, { compact_at = 20 }))
      local live_lines = { HEADER }
      for i = 1, 12 do
        local lid = j:intent(body("prompt " .. i))
        local text = read_file(path)
        local intent_line = text:match("[^\n]*\n$")
        if i % 4 == 0 then
          live_lines[#live_lines + 1] = intent_line -- unanswered: live
        elseif i % 4 == 1 then
          j:created(lid, "id-" .. i)
          live_lines[#live_lines + 1] = intent_line
          live_lines[#live_lines + 1] = read_file(path):match("[^\n]*\n$") -- created, not finished: live
        elseif i % 4 == 2 then
          j:abandoned(lid, "refused")
        else
          j:created(lid, "id-" .. i)
          j:finished("id-" .. i, "success", { { url = "http://img/" .. i, file_name = i .. ".png", file_size = i } })
        end
      end
      -- 12 intents, 6 created, 3 abandoned, 3 finished = 24 records > 20; 9 live: compacted at the last
      local pending_before = j:pending()
      assert.are.same({ records = 9, live = 9, damaged = 0 }, j:stats())
      assert.are.equal(table.concat(live_lines), read_file(path))
      assert.are.same(pending_before, j:pending())
      assert.are.same({ "journal", "journal.lock" }, ls(dir)) -- no temp file left
      -- appends go to the new file, and a reopen reads the same
      j:finished("id-1", "fail")
      j:close()
      j = assert(journal.open(path))
      assert.are.same({ "id-5", "id-9" }, { j:pending().tasks[1].task_id, j:pending().tasks[2].task_id })
      assert.are.equal(3, #j:pending().unanswered)
      j:close()
    end)

    it("runs at open at the default threshold: more than 1000 records, more than half of them dead", function()
      local parts = { HEADER }
      for i = 1, 300 do -- 900 dead records
        local lid = ("d%031d"):format(i)
        parts[#parts + 1] = line{ t = "intent", lid = lid, at = i, input = body("done " .. i) }
        parts[#parts + 1] = line{ t = "created", lid = lid, id = "id-d" .. i, at = i }
        parts[#parts + 1] = line{ t = "finished", id = "id-d" .. i, state = "success", at = i }
      end
      for i = 1, 150 do -- 300 live ones
        local lid = ("l%031d"):format(i)
        parts[#parts + 1] = line{ t = "intent", lid = lid, at = i, input = body("live " .. i) }
        parts[#parts + 1] = line{ t = "created", lid = lid, id = "id-l" .. i, at = i }
      end
      write_file(path, table.concat(parts))
      local size_before = #read_file(path)
      local j = assert(journal.open(path))
      assert.are.same({ records = 300, live = 300, damaged = 0 }, j:stats())
      assert.is_true(#read_file(path) < size_before / 2)
      assert.are.equal(301, #records(path))
      assert.are.equal(150, #j:pending().tasks)
      assert.are.equal("id-l1", j:pending().tasks[1].task_id)
      j:close()
    end)

    it("removes the temp file of a compaction that a crash interrupted", function()
      write_file(path, HEADER)
      write_file(path .. ".compact", HEADER .. "{half")
      local j = assert(journal.open(path))
      assert.are.same({ "journal", "journal.lock" }, ls(dir))
      j:close()
    end)

    it("does not run while at most half of the records are dead", function()
      local parts = { HEADER }
      for i = 1, 600 do parts[#parts + 1] = line{ t = "intent", lid = "l" .. i, at = i, input = body("live " .. i) } end
      for i = 1, 250 do
        parts[#parts + 1] = line{ t = "intent", lid = "d" .. i, at = i, input = body("dead " .. i) }
        parts[#parts + 1] = line{ t = "abandoned", lid = "d" .. i, at = i }
      end
      local content = table.concat(parts)
      write_file(path, content)
      local j = assert(journal.open(path))
      assert.are.same({ records = 1100, live = 600, damaged = 0 }, j:stats())
      assert.are.equal(content, read_file(path))
      j:close()
    end)

    it("keeps the lock, and the file's mode", function()
      local j = assert(journal.open(path, { compact_at = 2 }))
      os.execute("chmod 640 " .. shell_quote(path))
      local lid = j:intent(body("one"))
      j:abandoned(lid, "refused")
      local a = j:intent(body("two"))
      j:abandoned(a, "refused") -- 4 records, all dead: compacted
      assert.are.equal(HEADER, read_file(path))
      assert.matches("^refused journal: the journal .* is in use by process %d+\n$", (open_elsewhere(path)))
      local p = io.popen("stat -c %a " .. shell_quote(path))
      assert.are.equal("640", p:read("*l"))
      p:close()
      j:close()
    end)
  end)

  describe("the lock", function()
    it("refuses a second opener in this process, naming it, until the first closes", function()
      local j = assert(journal.open(path))
      local again, err = journal.open(path)
      assert.is_nil(again)
      assert.are.equal("journal", err.kind)
      assert.matches("in use by this process", err.message)
      j:close()
      again = assert(journal.open(path))
      again:close()
    end)

    it("refuses another process with the holder's pid, and corrupts nothing", function()
      local j = assert(journal.open(path))
      local lid = j:intent(body("mine"))
      local content = read_file(path)
      local out, ok = open_elsewhere(path)
      assert.truthy(ok)
      local pid = read_file("/proc/self/stat"):match("^(%d+)") -- this process's
      assert.are.equal(("refused journal: the journal %s is in use by process %s\n"):format(path, pid), out)
      assert.are.equal(content, read_file(path))
      j:created(lid, "id-mine")
      j:close()
      assert.are.equal("opened\n", (open_elsewhere(path)))
    end)

    it("is released when the holder is killed with SIGKILL", function()
      local holder = child(([[
        local j = assert(require("dh3.journal").open(%q))
        j:intent{ model = "nano-banana-pro", nano_banana_pro_input = { prompt = "held" } }
        print("holding")
        require("socket").sleep(30)
      ]]):format(path))
      assert.are.equal("holding", holder.pipe:read("*l"))
      local refused, err = journal.open(path)
      assert.is_nil(refused)
      assert.matches("in use by process " .. holder.pid .. "$", err.message)
      assert.are.same({ "signal", 9 }, { kill9(holder) })
      local j = assert(journal.open(path))
      assert.are.equal("held", j:pending().unanswered[1].input.nano_banana_pro_input.prompt)
      j:close()
    end)

    it("is not inherited by a child process, and is released by the garbage collector", function()
      local j = assert(journal.open(path))
      -- a child started while the journal is open outlives its close (O_CLOEXEC: no lock goes with it)
      local sleeper = child([[require("socket").sleep(30)]])
      j:close()
      assert.are.equal("opened\n", (open_elsewhere(path)))
      kill9(sleeper)
      j = assert(journal.open(path))
      assert.matches("^dh3%.journal", tostring(j))
      assert.matches("^refused journal", (open_elsewhere(path))) -- held by j, until it is collected
      j = nil -- luacheck: ignore 311 (dropped for the collector)
      collectgarbage()
      collectgarbage()
      assert.are.equal("opened\n", (open_elsewhere(path)))
    end)
  end)
end)

-- {=====================================================================
-- End to end: a client process killed, a new one on the same journal
-- ======================================================================
describe("dh3.new{journal = PATH}", function()
  local emulator = require "helpers.emulator"
  local dh3 = require "dh3"
  local emu, dir, path

  setup(function()
    emu = emulator.start{ "--queue-time", "0", "--process-time", "0.5" }
  end)
  teardown(function()
    emu:stop()
  end)
  before_each(function()
    dir = make_tmpdir()
    path = dir .. "/journal"
  end)
  after_each(function()
    emu:config{ latency = 0 }
    os.execute("rm -rf " .. shell_quote(dir))
  end)

  local function client_script(code)
    return ([[
      local dh3 = require "dh3"
      local client = assert(dh3.new{ api_key = %q, base_url = %q, journal = %q })
    ]]):format(emu.key, emu.url, path) .. code
  end

  local function new_client()
    return assert(dh3.new{ api_key = emu.key, base_url = emu.url, journal = path, retry_delay = 0.01 })
  end

  it("gets back a task whose process was killed right after create returned, and finishes it", function()
    local c = child(client_script([[
      local task = assert(client:create{ prompt = "a lighthouse at dawn {emu:process=1.5}" })
      print("created " .. task.id)
      task:wait{ timeout = 60 }
    ]]))
    local id = c.pipe:read("*l"):match("^created (%x+)$")
    assert.truthy(id)
    assert.are.same({ "signal", 9 }, { kill9(c) })

    local client = new_client()
    local tasks, unanswered = client:pending()
    assert.are.equal(1, #tasks)
    assert.are.equal(id, tasks[1].id)
    assert.are.same({}, unanswered)
    assert(tasks[1]:wait{ interval = 0.2, timeout = 20 })
    assert.are.equal("success", tasks[1].state)
    assert.are.same({}, (client:pending()))
    client:close()

    local recs = records(path)
    assert.are.same({ "finished", id, "success" }, { recs[#recs].t, recs[#recs].id, recs[#recs].state })
    assert.matches("^http", recs[#recs].images[1].url)
    assert.is_nil(read_file(path):find(emu.key, 1, true))
    -- the next process finds nothing left to do
    client = new_client()
    assert.are.same({ {}, {} }, { client:pending() })
    client:close()
  end)

  it("reports the intent of a create killed between sending and the answer", function()
    emu:config{ latency = 3 }
    local c = child(client_script([[
      print("creating")
      local task = client:create{ prompt = "a paper boat {emu:process=0.1}" }
      print("created " .. tostring(task and task.id))
    ]]))
    assert.are.equal("creating", c.pipe:read("*l"))
    local deadline = core.now() + 10
    while not (read_file(path) or ""):find('"t":"intent"', 1, true) and core.now() < deadline do
      require("socket").sleep(0.02)
    end
    require("socket").sleep(0.2) -- the request is out: the answer is 3 s away
    assert.are.same({ "signal", 9 }, { kill9(c) })
    emu:config{ latency = 0 }

    local client = new_client()
    local tasks, unanswered = client:pending()
    assert.are.same({}, tasks)
    assert.are.equal(1, #unanswered)
    assert.are.equal("a paper boat {emu:process=0.1}", unanswered[1].input.nano_banana_pro_input.prompt)
    assert.are.equal("nano-banana-pro", unanswered[1].input.model)
    assert.matches("^%x+$", unanswered[1].local_id)
    assert.is_number(unanswered[1].at)
    assert.is_nil(read_file(path):find(emu.key, 1, true))
    client:close()
  end)

  it("a second client on a journal in use gets nil and an error; closing the first releases it", function()
    local first = new_client()
    local second, err = dh3.new{ api_key = emu.key, base_url = emu.url, journal = path }
    assert.is_nil(second)
    assert.are.equal("journal", err.kind)
    assert.matches("in use by this process", tostring(err))
    first:close()
    second = new_client()
    second:close()
  end)
end)

describe("dh3.journal: forget() and saved_tasks()", function()
  local dir, path
  before_each(function()
    dir = make_tmpdir()
    path = dir .. "/journal"
  end)
  after_each(function() files.rm_rf(dir) end)

  it("forget() settles an unanswered intent with a forgotten record; the intent stays in the file", function()
    local j = assert(journal.open(path))
    local lost = assert(j:intent(body("a lost create")))
    local kept = assert(j:intent(body("another lost create")))
    assert.is_true(j:forget(lost))
    local unanswered = j:pending().unanswered
    assert.are.same({ kept }, { unanswered[1].local_id, unanswered[2] })
    j:close()
    local r = records(path)
    assert.are.same({ "intent", "intent", "forgotten" }, { r[2].t, r[3].t, r[4].t })
    assert.are.same({ lost, "a lost create" }, { r[2].lid, r[2].input.nano_banana_pro_input.prompt })
    assert.are.equal(lost, r[4].lid)
    assert.is_number(r[4].at)
    -- read back, by a reader and by a writer: still forgotten
    assert.are.equal(1, #journal.read(path).unanswered)
    j = assert(journal.open(path))
    assert.are.same({ kept }, { j:pending().unanswered[1].local_id, j:pending().unanswered[2] })
    assert.is_true(j:forget(lost)) -- a second time: nothing more to do
    j:close()
    assert.are.equal(4, #records(path))
  end)

  it("forget() refuses what is not an unanswered create, and writes nothing", function()
    local j = assert(journal.open(path))
    local answered = assert(j:intent(body("an answered create")))
    assert(j:created(answered, "task-1"))
    local nothing = assert(j:intent(body("a create that made nothing")))
    assert(j:abandoned(nothing, "refused"))
    local size = #read_file(path)
    for _, lid in ipairs({ answered, nothing, "0123456789abcdef0123456789abcdef" }) do
      local ok, err = j:forget(lid)
      assert.is_nil(ok)
      assert.are.equal("invalid_request", err.kind)
      assert.matches("only an unanswered create can be forgotten", err.message, nil, true)
    end
    assert.matches("task task%-1", select(2, j:forget(answered)).message)
    assert.are.equal(size, #read_file(path))
    assert.are.equal("task-1", j:pending().tasks[1].task_id)
    assert.has_error(function() j:forget(nil) end)
    j:close()
  end)

  it("an id that arrives after forget() makes the task pending again: an id is never dropped", function()
    local j = assert(journal.open(path))
    local lid = assert(j:intent(body("a late answer")))
    assert(j:forget(lid))
    assert(j:created(lid, "task-late"))
    assert.are.equal("task-late", j:pending().tasks[1].task_id)
    j:close()
  end)

  it("saved_tasks() gives the tasks whose images were saved, with their wire body and paths", function()
    local j = assert(journal.open(path))
    local function task(prompt, id, finish, save)
      local lid = assert(j:intent(body(prompt)))
      assert(j:created(lid, id))
      if save then assert(j:saving(id)) end
      if finish then assert(j:finished(id, finish, {})) end
      if save and finish == "success" then assert(j:saved(id, { "/out/" .. id .. ".png" })) end
    end
    task("saved one", "t1", "success", true)
    task("finished, never saved", "t2", "success", false)
    task("failed", "t3", "fail", true)
    task("still running", "t4", nil, true)
    task("saved two", "t5", "success", true)
    local list = j:saved_tasks()
    assert.are.equal(2, #list)
    assert.are.same({ "t1", "saved one", { "/out/t1.png" } },
      { list[1].task_id, list[1].input.nano_banana_pro_input.prompt, list[1].paths })
    assert.are.equal("t5", list[2].task_id)
    j:close()
    -- the same from the file, without the lock, while another holds it
    local holder = assert(journal.open(path))
    local read = assert(journal.saved_tasks(path))
    assert.are.same({ "t1", "t5" }, { read[1].task_id, read[2].task_id })
    assert.are.same(body("saved two"), read[2].input)
    holder:close()
    local none, err = journal.saved_tasks(dir .. "/no-such-journal")
    assert.is_nil(none)
    assert.are.equal("journal", err.kind)
  end)
end)
