-- The journal's lock is on the file, not on a name: a symbolic link and the real name, or two
-- hard links, are one journal, and compaction through a link rewrites the file it points to.
local journal = require "dh3.journal"

local files = require "helpers.files"
local lua = require "helpers.lua"
local shell_quote, make_tmpdir, ls = files.quote, files.tmpdir, files.ls
local read_file, write_file = files.read_file, files.write_file

local HEADER = '{"t":"dh3-journal","v":1}\n'

local function body(prompt)
  return { model = "nano-banana-pro", nano_banana_pro_input = { prompt = prompt } }
end

-- One line of a shell command's output.
local function sh_line(command)
  local p = assert(io.popen(command))
  local out = p:read("*l")
  p:close()
  return out
end

local function is_symlink(p) return lua.execute("test -L " .. shell_quote(p)) == true end
local function link_target(p) return sh_line("readlink " .. shell_quote(p)) end

local child = lua.child

-- What another process gets when it opens `p`.
local function open_elsewhere(p)
  local c = child(([[
    local j, err = require("dh3.journal").open(%q)
    print(j and "opened" or ("refused " .. err.kind .. ": " .. err.message))
  ]]):format(p))
  local out = c.pipe:read("*a")
  c.pipe:close()
  return out
end

-- A child that opens `p`, writes an intent, says "holding" and waits to be killed.
local function holder(p)
  local c = child(([[
    local j = assert(require("dh3.journal").open(%q))
    j:intent{ model = "nano-banana-pro", nano_banana_pro_input = { prompt = "held" } }
    print("holding")
    require("socket").sleep(30)
  ]]):format(p))
  assert.are.equal("holding", c.pipe:read("*l"))
  return c
end

local function kill9(c)
  os.execute("kill -9 " .. c.pid)
  c.pipe:close()
end
-- }=====================================================================

describe("the journal's lock", function()
  local dir, path, link
  before_each(function()
    dir = make_tmpdir()
    path = dir .. "/journal"
    link = dir .. "/link"
  end)
  after_each(function()
    collectgarbage() -- journals a spec dropped release their locks now
    os.execute("rm -rf " .. shell_quote(dir))
  end)

  describe("through a symbolic link", function()
    it("refuses the link while the journal is open under its real name, in this process and another", function()
      local j = assert(journal.open(path))
      assert(lua.execute("ln -s journal " .. shell_quote(link)))
      local again, err = journal.open(link)
      assert.is_nil(again)
      assert.are.equal("journal", err.kind)
      assert.matches("the journal " .. link .. " is in use by this process", err.message, nil, true)
      local pid = read_file("/proc/self/stat"):match("^(%d+)")
      assert.are.equal(("refused journal: the journal %s is in use by process %s\n"):format(link, pid),
        open_elsewhere(link))
      j:close()
      assert.are.equal("opened\n", open_elsewhere(link))
    end)

    it("refuses the real name while another process holds the journal through the link", function()
      assert(lua.execute("ln -s journal " .. shell_quote(link)))
      local c = holder(link)
      local j, err = journal.open(path)
      assert.is_nil(j)
      assert.matches("is in use by process " .. c.pid .. "$", err.message)
      kill9(c)
      j = assert(journal.open(path))
      assert.are.equal("held", j:pending().unanswered[1].input.nano_banana_pro_input.prompt)
      j:close()
    end)

    it("never lets two processes write at once, one through the link, one through the real name", function()
      assert(lua.execute("ln -s journal " .. shell_quote(link)))
      write_file(dir .. "/token", "")
      -- each round: open (waiting while the other holds it), check that nobody else holds it (the
      -- token: a rename only one can win), write 1 live and 4 dead records (compacting often), close
      local function worker(name, p)
        return child(([[
          local journal, socket = require "dh3.journal", require "socket"
          local token, held = %q, %q
          local live, overlaps = 0, 0
          for round = 1, 25 do
            local j
            repeat
              j = journal.open(%q, { compact_at = 4 })
              if not j then socket.sleep(0.001) end
            until j
            if not os.rename(token, held) then overlaps = overlaps + 1 end
            assert(j:intent{ model = "m", nano_banana_pro_input = { prompt = %q .. round } })
            live = live + 1
            for _ = 1, 2 do assert(j:abandoned(assert(j:intent{ model = "m" }), "refused")) end
            os.rename(held, token)
            j:close()
          end
          print(live .. " " .. overlaps)
        ]]):format(dir .. "/token", dir .. "/token.held", p, name))
      end
      local a, b = worker("real ", path), worker("link ", link)
      local out_a, out_b = a.pipe:read("*a"), b.pipe:read("*a")
      a.pipe:close()
      b.pipe:close()
      assert.are.equal("25 0\n", out_a)
      assert.are.equal("25 0\n", out_b)
      -- every live record of both is in the journal: none was written to a file compacted away
      local j = assert(journal.open(path))
      local seen = {}
      for _, u in ipairs(j:pending().unanswered) do seen[u.input.nano_banana_pro_input.prompt] = true end
      for round = 1, 25 do
        assert.is_true(seen["real " .. round], "real " .. round)
        assert.is_true(seen["link " .. round], "link " .. round)
      end
      j:close()
      assert.is_true(is_symlink(link))
    end)

    it("compacts the file the link points to, and the link stays a link, pointing where it did", function()
      os.execute("mkdir " .. shell_quote(dir .. "/data") .. " " .. shell_quote(dir .. "/links"))
      local target = dir .. "/data/journal"
      link = dir .. "/links/j"
      assert(lua.execute("ln -s ../data/journal " .. shell_quote(link)))
      local j = assert(journal.open(link, { compact_at = 4 }))
      assert.are.same({ "journal", "journal.lock" }, ls(dir .. "/data")) -- created through the dangling link
      local live = j:intent(body("live"))
      for i = 1, 2 do j:abandoned(j:intent(body("dead " .. i)), "refused") end -- 5 records, 1 live: compacted
      assert.are.same({ records = 1, live = 1, damaged = 0 }, j:stats())
      assert.is_true(is_symlink(link))
      assert.are.equal("../data/journal", link_target(link))
      local text = read_file(target)
      assert.are.equal(2, select(2, text:gsub("\n", "")))
      assert.are.equal(HEADER, text:sub(1, #HEADER))
      assert.matches('"lid":"' .. live .. '"', text, nil, true)
      assert.are.same({ "j" }, ls(dir .. "/links")) -- no temp file beside the link
      assert.are.same({ "journal", "journal.lock" }, ls(dir .. "/data"))
      -- appends go to the new file, which the link names; the lock held on through compaction
      j:intent(body("after"))
      assert.matches("refused journal: the journal .* is in use by process %d+", open_elsewhere(target))
      assert.matches("refused journal: the journal .* is in use by process %d+", open_elsewhere(link))
      j:close()
      assert.are.same(read_file(target), read_file(link))
      assert.matches('"after"', read_file(target), nil, true)
    end)

    it("creates the file a dangling link names, and works through it", function()
      assert(lua.execute("ln -s target " .. shell_quote(link)))
      local j, err = journal.open(link)
      assert.is_nil(err)
      local lid = j:intent(body("through a dangling link"))
      j:close()
      assert.is_true(is_symlink(link))
      assert.are.equal("target", link_target(link))
      j = assert(journal.open(dir .. "/target"))
      assert.are.equal(lid, j:pending().unanswered[1].local_id)
      j:close()
    end)
  end)

  describe("hard links", function()
    it("refuses a hard link to a journal in use", function()
      local j = assert(journal.open(path))
      local content = read_file(path)
      assert(lua.execute("ln " .. shell_quote(path) .. " " .. shell_quote(link)))
      local again, err = journal.open(link)
      assert.is_nil(again)
      assert.are.equal("journal", err.kind)
      assert.matches("the journal " .. link .. " is in use (it has 2 names, hard links", err.message, nil, true)
      assert.matches("refused journal: the journal " .. link .. " is in use (it has 2 names", open_elsewhere(link), nil, true)
      assert.matches("refused journal: the journal " .. path .. " is in use (it has 2 names", open_elsewhere(path), nil, true)
      assert.are.equal(content, read_file(path))
      j:close()
    end)

    it("refuses a journal with more than one name, under each name, and leaves it as it was", function()
      local j = assert(journal.open(path))
      j:intent(body("two names"))
      j:close()
      local content = read_file(path)
      assert(lua.execute("ln " .. shell_quote(path) .. " " .. shell_quote(link)))
      for _, name in ipairs({ path, link }) do
        local again, err = journal.open(name)
        assert.is_nil(again)
        assert.are.equal("journal", err.kind)
        assert.matches("the journal " .. name .. " has 2 names (hard links)", err.message, nil, true)
      end
      assert.are.equal(content, read_file(path))
      os.remove(link)
      assert(journal.open(path)):close()
    end)

    it("does not compact a journal given a second name while open: both names keep every record", function()
      local j = assert(journal.open(path, { compact_at = 4 }))
      assert(lua.execute("ln " .. shell_quote(path) .. " " .. shell_quote(link)))
      local live = j:intent(body("live"))
      for i = 1, 2 do j:abandoned(j:intent(body("dead " .. i)), "refused") end -- would compact
      assert.are.equal(5, j:stats().records)
      local text = read_file(path)
      assert.are.equal(6, select(2, text:gsub("\n", "")))
      assert.are.equal(text, read_file(link))
      assert.are.equal(live, j:pending().unanswered[1].local_id)
      j:close()
    end)
  end)
end)
