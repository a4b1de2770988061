-- Kill anywhere (issue 11): `dh3 generate --journal J --out D` killed with SIGKILL at random moments
-- of a run of 12 prompts with downloads. After each kill, `dh3 resume --journal J --out D` and the
-- journal together account for every create the service counted, and every task the journal
-- knows ends with its image saved in D.
local emulator = require "helpers.emulator"
local files = require "helpers.files"
local cjson = require "cjson"
local lua = require "helpers.lua"
local sh = files.quote

local PROMPTS = 12
local KILLS = tonumber(os.getenv("DH3_SPEC_KILLS")) or 10

local function env_prefix(emu)
  return ("env -u DH3_JOURNAL DH3_API_KEY=%s DH3_BASE_URL=%s "):format(sh(emu.key), sh(emu.url))
end

-- What the journal file says, read line by line: the prompt of each create that got an id, and
-- the creates whose answer never came (intents with neither an id nor an abandonment).
local function account(path)
  local intents, created, settled = {}, {}, {}
  for line in (files.read_file(path) or ""):gmatch("[^\n]+") do
    local ok, r = pcall(cjson.decode, line)
    if ok and type(r) == "table" then
      if r.t == "intent" then
        intents[r.lid] = r.input.nano_banana_pro_input.prompt
      elseif r.t == "created" then
        created[r.id] = intents[r.lid] or true
        settled[r.lid] = true
      elseif r.t == "abandoned" then
        settled[r.lid] = true
      end
    end
  end
  local unanswered = 0
  for lid in pairs(intents) do
    if not settled[lid] then unanswered = unanswered + 1 end
  end
  return created, unanswered
end

describe("dh3 generate killed at any moment", function()
  local emu
  setup(function()
    emu = emulator.start{ "--queue-time", "0.1", "--process-time", "0.3" }
  end)
  teardown(function() emu:stop() end)

  math.randomseed(20261201)
  for kill = 1, KILLS do
    local at = 0.05 + math.random() * 4.5
    it(("after %.2fs (kill %d): resume accounts for every create and saves every image"):format(at, kill), function()
      emu:reset()
      local dir = files.tmpdir()
      local journal, out = dir .. "/journal", dir .. "/out/"
      local args = {}
      for i = 1, PROMPTS do args[i] = sh(("kill test %d {emu:file_name=image-%02d.png}"):format(i, i)) end
      local p = assert(io.popen("echo $$; exec " .. env_prefix(emu) .. lua.cli .. " generate --json "
        .. table.concat(args, " ") .. " --journal " .. sh(journal) .. " --out " .. sh(out) .. " >/dev/null 2>&1"))
      local pid = assert(tonumber(p:read("*l")))
      os.execute(("sleep %.3f"):format(at))
      os.execute("kill -9 " .. pid .. " 2>/dev/null")
      p:close()

      local resumed = lua.popen(env_prefix(emu) .. lua.cli .. " resume --json --journal " .. sh(journal)
        .. " --out " .. sh(out) .. " 2>&1")
      local log = resumed:read("*a")
      local ok = resumed:close()
      assert.is_true(ok, log)

      local created, unanswered = account(journal)
      local ids = 0
      for _ in pairs(created) do ids = ids + 1 end
      -- every create the service made is known: by its id, or as an intent whose answer never
      -- came (which the kill may also have cut before the request was whole: then the service
      -- made nothing, and the intent says only "possibly")
      local creates = emu:stats().creates
      assert.is_true(creates >= ids and creates <= ids + unanswered,
        ("the service made %d, the journal knows %d ids and %d unanswered\n%s"):format(creates, ids, unanswered, log))
      local saved = {}
      for _, name in ipairs(files.ls(dir .. "/out")) do saved[name:match("^(image%-%d+)")] = true end
      for id, prompt in pairs(created) do
        local stem = type(prompt) == "string" and prompt:match("file_name=(image%-%d+)")
        assert.is_truthy(stem, "the prompt of " .. id .. " is in the journal")
        assert.is_true(saved[stem] == true, stem .. " of task " .. id .. " was saved\n" .. log)
      end
      local pending = io.popen(lua.cli .. " pending --json --journal " .. sh(journal) .. " 2>&1")
      local listed = pending:read("*a")
      pending:close()
      assert.is_nil(listed:find('"event":"pending"', 1, true), listed)
      files.rm_rf(dir)
    end)
  end
end)
