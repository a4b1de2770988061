-- A download never replaces a file that it did not create in this call: not one named like the
-- service's file_name, not the explicit path a caller gave, not one that appears while the image
-- arrives, not a symbolic link. It takes the next free name (stem-2.ext, ...) and returns it. And a
-- local file that cannot be made or written is reported as that (io), not as a network failure.
local dh3 = require "dh3"
local core = require "dh3.core"
local download = require "dh3.download"
local emulator = require "helpers.emulator"
local files = require "helpers.files"
local lua = require "helpers.lua"

local read_file, write_file, ls, sh = files.read_file, files.write_file, files.ls, files.quote

local JOURNAL = '{"dh3_journal":1}\n{"intent":"the user\'s own records"}\n'
local SCRIPT = "#!/bin/sh\nexec make -j2 \"$@\"\n"

local function is_link(path)
  return lua.execute("test -L " .. sh(path)) == true
end

describe("a download", function()
  local emu, client, dir
  lazy_setup(function()
    emu = emulator.start{ "--queue-time", "0", "--process-time", "0", "--create-qps", "0" }
  end)
  lazy_teardown(function() emu:stop() end)
  before_each(function()
    dir = files.tmpdir()
    client = assert(dh3.new{ api_key = emu.key, base_url = emu.url, create_qps = false })
  end)
  after_each(function()
    client:close()
    files.rm_rf(dir)
  end)

  -- A finished task whose image the service calls `name`.
  local function task_named(name)
    local task = assert(client:create{ prompt = ("an image {emu:file_name=%s}"):format(name) })
    assert(task:wait{ timeout = 10 })
    assert.are.equal(name, task.images[1].file_name)
    return task
  end

  local function image_bytes(task)
    return assert(task:read())
  end

  describe("into a folder, under the service's file name", function()
    it("leaves a file of that name byte for byte, and saves under the next free name it returns", function()
      write_file(dir .. "/runs.journal", JOURNAL)
      write_file(dir .. "/build.sh", SCRIPT)
      local journal_task, script_task = task_named("runs.journal"), task_named("build.sh")

      local paths = assert(journal_task:download(dir))
      assert.are.same({ dir .. "/runs-2.journal" }, paths)
      paths = assert(script_task:download(dir))
      assert.are.same({ dir .. "/build-2.sh" }, paths)

      assert.are.equal(JOURNAL, read_file(dir .. "/runs.journal"))
      assert.are.equal(SCRIPT, read_file(dir .. "/build.sh"))
      assert.are.equal(image_bytes(journal_task), read_file(dir .. "/runs-2.journal"))
      assert.are.equal(image_bytes(script_task), read_file(dir .. "/build-2.sh"))
      assert.are.same({ "build-2.sh", "build.sh", "runs-2.journal", "runs.journal" }, ls(dir))
    end)

    it("never replaces its own earlier downloads either: each one gets a name of its own", function()
      local task = task_named("picture.png")
      local got = {}
      for i = 1, 3 do got[i] = assert(task:download(dir))[1] end
      assert.are.same({ dir .. "/picture.png", dir .. "/picture-2.png", dir .. "/picture-3.png" }, got)
    end)

    it("steps around a symbolic link at that name, and neither replaces it nor writes through it", function()
      local outside = files.tmpdir()
      write_file(outside .. "/precious", "precious")
      assert(lua.execute(("ln -s %s %s"):format(sh(outside .. "/precious"), sh(dir .. "/evil.png"))))
      assert(lua.execute(("ln -s %s %s"):format(sh(outside .. "/nowhere"), sh(dir .. "/evil-2.png"))))
      local paths = assert(task_named("evil.png"):download(dir))
      assert.are.same({ dir .. "/evil-3.png" }, paths)
      assert.is_true(is_link(dir .. "/evil.png"))
      assert.is_true(is_link(dir .. "/evil-2.png")) -- a dangling link is a taken name too
      assert.are.equal("precious", read_file(outside .. "/precious"))
      assert.are.same({ "precious" }, ls(outside))
      files.rm_rf(outside)
    end)
  end)

  describe("to a file path the caller names", function()
    it("leaves an existing file there intact and returns the -2 path it wrote", function()
      local dest = dir .. "/keep.png"
      write_file(dest, "the user's picture")
      local task = task_named("whatever.png")
      local paths = assert(task:download(dest))
      assert.are.same({ dir .. "/keep-2.png" }, paths)
      assert.are.equal("the user's picture", read_file(dest))
      assert.are.equal(image_bytes(task), read_file(dir .. "/keep-2.png"))
    end)

    it("fails with kind io, not invalid_request, when its folder is missing", function()
      local task = task_named("lost.png")
      local paths, err = task:download(dir .. "/missing/lost.png")
      assert.is_nil(paths)
      assert.are.equal("io", err.kind)
      assert.matches("No such file or directory", err.message)
      assert.are.same({}, ls(dir))
    end)
  end)

  describe("in the C core", function()
    local e
    before_each(function() e = core.engine() end)
    after_each(function() e:close() end)

    local function drain(req)
      while true do
        e:perform(0.05)
        local res = e:next_done()
        if res then
          assert.are.equal(req, res.request)
          return res
        end
      end
    end

    local function image_of(name)
      local task = task_named(name)
      return task.images[1], image_bytes(task)
    end

    it("refuses to replace a file that appears at the destination after the download started", function()
      local image, bytes = image_of("late.png")
      local dest = dir .. "/late.png"
      local req = assert(e:request{ url = image.url, download_to = dest, expect_size = image.file_size })
      write_file(dest, "created meanwhile") -- after the plan, before the file is put in place
      local res = drain(req)
      assert.is_true(res.ok, res.message)
      assert.are.equal(dir .. "/late-2.png", res.path)
      assert.are.equal("created meanwhile", read_file(dest))
      assert.are.equal(bytes, read_file(res.path))
      assert.are.same({}, files.temp_files(dir))
      -- with the mode a new file gets, 0666 less the umask, as before
      local p = io.popen("umask; stat -c %a " .. sh(res.path))
      local umask, mode = tonumber(p:read("*l"), 8), tonumber(p:read("*l"), 8)
      p:close()
      assert.are.equal(438 - lua.band(438, umask), mode) -- 0666 & ~umask (438 = 0666)
    end)

    it("names the next free paths stem-2.ext, stem-3.ext, and a name without an extension name-2", function()
      local image = image_of("x.png")
      for _, name in ipairs({ "a.tar.gz", "a.tar-2.gz", "noext", ".hidden" }) do write_file(dir .. "/" .. name, name) end
      local function fetch(dest)
        return drain(assert(e:request{ url = image.url, download_to = dir .. "/" .. dest })).path
      end
      assert.are.equal(dir .. "/a.tar-3.gz", fetch("a.tar.gz"))
      assert.are.equal(dir .. "/noext-2", fetch("noext"))
      assert.are.equal(dir .. "/.hidden-2", fetch(".hidden"))
      for _, name in ipairs({ "a.tar.gz", "a.tar-2.gz", "noext", ".hidden" }) do
        assert.are.equal(name, read_file(dir .. "/" .. name))
      end
    end)

    it("reports a folder at the destination as a local failure, and leaves it alone", function()
      local image = image_of("folder.png")
      local dest = dir .. "/folder.png"
      assert(lua.execute("mkdir " .. sh(dest)))
      local res = drain(assert(e:request{ url = image.url, download_to = dest }))
      assert.is_false(res.ok)
      assert.is_nil(res.path)
      assert.matches("Is a directory", res.io_error)
      assert.are.same({ "folder.png" }, ls(dir))
      assert.are.same({}, ls(dest))
    end)

    it("returns nil, message, \"io\" when the temporary file cannot be made: a missing folder, a file as folder", function()
      local image = image_of("nowhere.png")
      local req, err, kind = e:request{ url = image.url, download_to = dir .. "/missing/x.png" }
      assert.is_nil(req)
      assert.matches("No such file or directory", err)
      assert.are.equal("io", kind)
      write_file(dir .. "/plain", "a file, not a folder")
      req, err, kind = e:request{ url = image.url, download_to = dir .. "/plain/x.png" }
      assert.is_nil(req)
      assert.matches("Not a directory", err)
      assert.are.equal("io", kind)
      assert.are.same({ 0, 0 }, { e:pending() })
      -- a mistake in the options still raises, and other failures still say no kind
      assert.has_error(function() e:request{ url = image.url, download_to = "" } end)
    end)

    it("sets io_error, not a network failure, when the body cannot be written (a file size limit)", function()
      local image = image_of("big.png")
      -- a child whose files may not pass 1 KiB, with SIGXFSZ ignored so that write() fails (EFBIG);
      -- it loads dh3.core, so it keeps whatever `make asan` preloads
      local script = dir .. "/child.lua"
      write_file(script, ([[
        local core = require "dh3.core"
        local e = core.engine()
        local req = assert(e:request{ url = %q, download_to = %q, expect_size = %d })
        local res
        repeat e:perform(0.05); res = e:next_done() until res
        io.write(tostring(res.ok), "\n", tostring(res.io_error), "\n", tostring(res.path), "\n")
      ]]):format(image.url, dir .. "/out/big.png", image.file_size))
      assert(lua.execute("mkdir " .. sh(dir .. "/out")))
      local p = io.popen("ulimit -f 1; trap '' XFSZ; exec " .. lua.command(script) .. " 2>&1")
      local ok, io_error, path = p:read("*l"), p:read("*l"), p:read("*l")
      p:close()
      assert.are.equal("false", ok)
      assert.matches("File too large", io_error)
      assert.are.equal("nil", path)
      assert.are.same({}, ls(dir .. "/out")) -- no temp file left
      -- and the Lua layer calls it what it is
      local err = select(2, download.outcome({ ok = false, status = 200, curl_code = 23, curl_error = "WRITE_ERROR",
        io_error = io_error, bytes = 0 }, image, "t1"))
      assert.are.equal("io", err.kind)
      assert.matches("File too large", err.message)
    end)
  end)
end)
