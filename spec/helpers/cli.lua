-- The dh3 command line run as a user runs it (bin/dh3, under the Lua being tested), stdout a pipe:
-- its exit code, its output, its JSON lines; and reading what it leaves in a journal.
local cjson = require "cjson"
local files = require "helpers.files"
local lua = require "helpers.lua"
local now = require("dh3.core").now
local sh, read_file = files.quote, files.read_file

local M = {}

--- The environment of a run as `env` words: DH3_* from `env` only (nil: unset), whatever the
-- caller's shell had.
function M.env_words(env)
  local words = { "env", "-u", "DH3_API_KEY", "-u", "DH3_BASE_URL", "-u", "DH3_JOURNAL" }
  for k, v in pairs(env or {}) do words[#words + 1] = k .. "=" .. sh(v) end
  return words
end

--- Runs `bin/dh3 ARGS` with the environment `env`. Returns {code, out, err, seconds, events (the
-- JSON lines of stdout, decoded)}.
function M.dh3(env, ...)
  return M.dh3_as(nil, env, ...)
end

--- M.dh3 with `prefix` (a shell command that runs what follows it: as another user, say) first.
function M.dh3_as(prefix, env, ...)
  local words = M.env_words(env)
  if prefix then table.insert(words, 1, prefix) end
  words[#words + 1] = lua.cli
  for _, a in ipairs({ ... }) do words[#words + 1] = sh(a) end
  local errfile = os.tmpname()
  local start = now()
  local p = assert(lua.popen(table.concat(words, " ") .. " 2>" .. errfile))
  local out = p:read("*a")
  local _, _, code = p:close()
  local run = { code = code, out = out, err = read_file(errfile), seconds = now() - start, events = {} }
  os.remove(errfile)
  for line in out:gmatch("[^\n]+") do
    if line:sub(1, 1) == "{" then run.events[#run.events + 1] = cjson.decode(line) end
  end
  return run
end

--- The events of a run named `name`, in order.
function M.events_of(run, name)
  local list = {}
  for _, e in ipairs(run.events) do
    if e.event == name then list[#list + 1] = e end
  end
  return list
end

--- The task ids of a run's `created` events by the index of their prompt (the events come in the
-- order the answers came, which concurrent creates do not fix).
function M.created_ids(run)
  local ids = {}
  for _, e in ipairs(M.events_of(run, "created")) do ids[e.index] = e.task_id end
  return ids
end

--- The names of a run's events, in order, separated by spaces.
function M.names(run)
  local list = {}
  for _, e in ipairs(run.events) do list[#list + 1] = e.event end
  return table.concat(list, " ")
end

--- Every request the emulator `emu` has answered so far (its own stats reads aside).
function M.requests(emu)
  local n = 0
  for _, by_status in pairs(emu:stats().requests) do
    for _, count in pairs(by_status) do n = n + count end
  end
  return n
end

--- The records of a journal file, decoded (its header line aside).
function M.journal_records(path)
  local records = {}
  for line in (read_file(path) or ""):gmatch("[^\n]+") do
    local r = cjson.decode(line)
    if r.t ~= "dh3-journal" then records[#records + 1] = r end
  end
  return records
end

--- Leaves in the journal at `path` a create whose answer never came back (a process that died
-- with its request in flight leaves exactly this); returns its local id.
function M.unanswered_intent(path, prompt)
  local c = lua.child(([[
    local j = assert(require("dh3.journal").open(%q))
    print(assert(j:intent{ model = "nano-banana-pro", nano_banana_pro_input = { prompt = %q } }))
    j:close()
  ]]):format(path, prompt))
  local lid = c.pipe:read("*l")
  assert(c.pipe:close(), lid)
  return lid
end

--- A child process that opens the journal at `path`, and so holds its lock, until killed (30 s at
-- most). Returns it (helpers.lua's child: pid, pipe) once it holds the lock.
function M.hold_journal(path)
  local holder = lua.child(([[
    local j = assert(require("dh3.journal").open(%q))
    print("holding")
    require("socket").sleep(30)
  ]]):format(path))
  local said = holder.pipe:read("*l")
  assert(said == "holding", "the journal's holder said: " .. tostring(said))
  return holder
end

return M
