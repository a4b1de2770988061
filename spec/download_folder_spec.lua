-- Where task:download may write when the folder is not there yet: a destination ending in "/" is
-- a folder to make (with its missing parents, as mkdir -p), a file path's folder must exist. One
-- way to make folders, dh3.download.make_folder (core.mkdir), which the command line uses too.
local dh3 = require "dh3"
local core = require "dh3.core"
local download = require "dh3.download"
local destination = require "dh3.cli.destination"
local emulator = require "helpers.emulator"
local lua = require "helpers.lua"
local write_file = require("helpers.files").write_file

local function sh(s)
  return "'" .. tostring(s):gsub("'", [['\'']]) .. "'"
end

local function run(cmd)
  local p = io.popen(cmd)
  local out = p:read("*a")
  p:close()
  return (out:gsub("%s+$", ""))
end

local function is_dir(path)
  return lua.execute("test -d " .. sh(path)) == true
end

local function listing(dir)
  return run("cd " .. sh(dir) .. " && find . | sort")
end

-- mkdir's mode: 0777 less this process's umask (what a shell started from here reports)
local function expected_mode()
  local mask = tonumber(run("umask"), 8)
  local mode = 0
  for bit = 0, 8 do
    local b = 2 ^ bit
    if math.floor(511 / b) % 2 == 1 and math.floor(mask / b) % 2 == 0 then mode = mode + b end
  end
  return ("%o"):format(mode)
end

describe("task:download(dest) and missing folders", function()
  local emu, client, task, tmp
  setup(function()
    emu = emulator.start{ "--queue-time", "0", "--process-time", "0" }
    client = assert(dh3.new{ api_key = emu.key, base_url = emu.url })
    task = assert(client:create{ prompt = "a house for a new folder" })
    assert(task:wait{ interval = 0.05 })
  end)
  teardown(function()
    client:close()
    emu:stop()
  end)
  before_each(function()
    tmp = os.tmpname()
    os.remove(tmp)
    assert(core.mkdir(tmp))
  end)
  after_each(function()
    os.execute("rm -rf " .. sh(tmp))
  end)

  it("makes a folder given as \"a/b/\", with its missing parents, and saves into it", function()
    local paths = assert(task:download(tmp .. "/a/b/"))
    assert.are.equal(1, #paths)
    assert.matches("^" .. tmp:gsub("%p", "%%%0") .. "/a/b/[^/]+%.png$", paths[1])
    assert.is_true(is_dir(tmp .. "/a/b"))
    local f = assert(io.open(paths[1], "rb"))
    assert.are.equal(task.images[1].file_size, f:seek("end"))
    f:close()
  end)

  it("gives the folders it makes mode 0777 less the umask, as mkdir does", function()
    assert(task:download(tmp .. "/m/n/"))
    local want = expected_mode()
    assert.are.equal(want, run("stat -c %a " .. sh(tmp .. "/m")))
    assert.are.equal(want, run("stat -c %a " .. sh(tmp .. "/m/n")))
  end)

  it("refuses a file path whose folder is missing (kind io) and makes nothing", function()
    local paths, err = task:download(tmp .. "/nowhere/house.png")
    assert.is_nil(paths)
    assert.are.equal("io", err.kind)
    assert.are.equal(task.id, err.task_id)
    assert.matches("nowhere/house.png", err.message, 1, true)
    assert.are.equal(".", listing(tmp))
  end)

  it("fails with kind io, leaving nothing behind, when the folder cannot be made", function()
    write_file(tmp .. "/file", "")
    local paths, err = task:download(tmp .. "/file/sub/")
    assert.is_nil(paths)
    assert.are.equal("io", err.kind)
    assert.are.equal("./file", listing(tmp):gsub("^%.\n", ""))
  end)
end)

describe("dh3.download.make_folder", function()
  local tmp
  before_each(function()
    tmp = os.tmpname()
    os.remove(tmp)
  end)
  after_each(function()
    os.execute("rm -rf " .. sh(tmp))
  end)

  it("makes a folder and its parents, and is true for one that exists", function()
    assert.is_true(download.make_folder(tmp .. "/x//y/z/"))
    assert.is_true(is_dir(tmp .. "/x/y/z"))
    assert.is_true(download.make_folder(tmp .. "/x/y"))
    assert.is_true(download.make_folder("/"))
  end)

  for _, row in ipairs{
    { "a file in the way", function(dir)
      write_file(dir .. "/f", "")
      return dir .. "/f/g"
    end, "Not a directory" },
    { "an empty path", function() return "" end, "empty path" },
    { "a NUL byte", function(dir) return dir .. "/a\0b" end, "NUL" },
  } do
    it("returns nil and a message for " .. row[1], function()
      assert(download.make_folder(tmp))
      local ok, err = download.make_folder(row[2](tmp))
      assert.is_nil(ok)
      assert.matches(row[3], err, 1, true)
    end)
  end

  it("is how the command line makes its --out folders", function()
    local dest = assert(destination.new(tmp .. "/out/nested/", false))
    assert.is_true(is_dir(tmp .. "/out/nested"))
    assert.are.equal(tmp .. "/out/nested/", dest({ id = "t1", images = {} }))
  end)
end)
