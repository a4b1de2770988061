-- What the command line reads from a journal (--journal PATH, or DH3_JOURNAL): the path itself,
-- the unsettled creates it holds, and how `dh3 pending` shows them (a table for people, JSON lines
-- for programs). `dh3 resume` uses the same reading and the same words for the creates it cannot
-- take up again: the intents whose answer never came back (possibly created, id unknown).
local journal = require "dh3.journal"
local format = require "dh3.cli.format"
local compat = require "dh3.compat"

local M = {}

local ENOENT = 2
local PROMPT_SHOWN = 200 -- characters of a prompt in a stderr line: enough for support to find it

--- The journal's path: `given` (--journal), else DH3_JOURNAL; nil when neither is set (an empty
-- value means none: `DH3_JOURNAL= dh3 ...` runs one command without the journal).
function M.path(given)
  local path = given
  if path == nil then path = os.getenv("DH3_JOURNAL") end
  if path == nil or path == "" then return nil end
  return path
end

--- nil when `path` may be a journal to read, else why not, for a usage error: nothing is there
-- (a misspelt path must not read as "nothing pending"; and `dh3 resume`, which opens the journal
-- to write to it, would create it).
function M.missing(path)
  local f, _, errno = io.open(path, "rb")
  if f then
    f:close()
    return nil
  end
  if errno == ENOENT then return ("no journal at %s (no such file)"):format(path) end
  return nil -- another reason: the journal's own error says it better
end

--- What the journal at `path` holds unsettled (dh3.journal.read(): {tasks = {{task_id, local_id,
-- input, created_at, state, images, saving}}, unanswered = {{local_id, input, at}}, torn,
-- damaged}), or nil, err (kind "journal": not a journal, unreadable). Reads only: no lock (a run
-- may hold the journal meanwhile), nothing created, cut or rewritten, whatever the file's mode.
function M.read(path)
  return journal.read(path)
end

--- The stderr line for a journal whose end is not a whole record (state.torn bytes), or nil.
function M.torn_line(state, path)
  if not state.torn or state.torn == 0 then return nil end
  return ("dh3: the journal %s ends in %d %s that are not a whole record (a write cut short by a crash, "
    .. "or being written now): left as they are; the next run that opens the journal cuts them away")
    :format(path, state.torn, state.torn == 1 and "byte" or "bytes")
end

--- The prompt of a create's wire body (as the journal keeps it), or nil when unknown.
function M.prompt(input)
  local body = type(input) == "table" and input.nano_banana_pro_input
  local prompt = type(body) == "table" and body.prompt
  return type(prompt) == "string" and prompt or nil
end

local function utc(at)
  return compat.is_integer(at) and os.date("!%Y-%m-%d %H:%M:%S UTC", at) or "an unknown time"
end

--- The stderr line for an unanswered create (`u`: {local_id, input, at}).
function M.unanswered_line(u)
  local prompt = M.prompt(u.input)
  return ("dh3: possibly created, id unknown: tell the service's support: local id %s, prompt %s, sent %s")
    :format(u.local_id, prompt and ('"' .. format.fit(prompt, PROMPT_SHOWN) .. '"') or "unknown", utc(u.at))
end

--- The JSON fields of an unanswered create's event.
function M.unanswered_fields(u)
  return { local_id = u.local_id, prompt = M.prompt(u.input), at = u.at }
end

-- {======================================================================
-- Reruns: the prompts a journal already saved
-- ======================================================================

-- One string for a create's wire body, the same for equal bodies whatever their tables' order.
local function canonical(v)
  if type(v) ~= "table" then return type(v) .. ":" .. tostring(v) end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  local parts = {}
  for i, k in ipairs(keys) do parts[i] = tostring(k) .. "=" .. canonical(v[k]) end
  return "{" .. table.concat(parts, ",") .. "}"
end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

--- For a rerun of `dh3 generate` with the journal at `path`: a function (body) -> the saved task
-- {task_id, paths, input} that a create of that wire body already made, or nil. A task is taken
-- when the journal has its images saved (dh3.journal.saved_tasks) and every one of those files
-- is still there; each is taken once, so a prompt given twice skips only as often as it was saved.
-- Read without the lock; a journal that cannot be read (none yet) skips nothing.
function M.saved_matcher(path)
  local by_body = {}
  for _, t in ipairs(journal.saved_tasks(path) or {}) do
    local whole = #t.paths > 0
    for _, p in ipairs(t.paths) do whole = whole and exists(p) end
    if whole and t.input then
      local key = canonical(t.input)
      local list = by_body[key] or {}
      list[#list + 1] = t
      by_body[key] = list
    end
  end
  return function(body)
    local list = by_body[canonical(body)]
    return list and table.remove(list, 1) or nil
  end
end
-- }======================================================================

--- `dh3 pending` as JSON lines on `lines` (a dh3.cli.jsonlines): one "pending" event per task
-- created but not seen to finish, or finished with its images not saved yet (then with
-- "state":"success"), one "unanswered" event per create whose answer never came.
function M.emit(lines, state)
  for _, t in ipairs(state.tasks) do
    lines:emit("pending", { task_id = t.task_id, prompt = M.prompt(t.input), at = t.created_at, state = t.state })
  end
  for _, u in ipairs(state.unanswered) do lines:emit("unanswered", M.unanswered_fields(u)) end
end

local function plural(n, one, many)
  return ("%d %s"):format(n, n == 1 and one or many)
end

-- A heading, then a table: id (32 columns), age, prompt; every line cut to `columns`.
local function section(out, heading, id_title, list, columns, now)
  local function line(text) out:write(format.fit(text, columns - 1), "\n") end
  line(heading)
  line(("  %-32s  %-7s  %s"):format(id_title, "age", "prompt"))
  for _, r in ipairs(list) do
    line(("  %-32s  %-7s  %s"):format(r.id, format.age(r.at and now - r.at), r.prompt or "(unknown)"))
  end
end

--- `dh3 pending` for people: a table of each kind on `out`, cut to `columns`; `now` in Unix seconds.
function M.print(out, state, path, columns, now)
  local tasks, unanswered = state.tasks, state.unanswered
  if #tasks == 0 and #unanswered == 0 then
    out:write(format.fit("Nothing pending in " .. path .. ".", columns - 1), "\n")
    return
  end
  -- the tasks still running for all we know, then those that finished with images not saved
  local running, unsaved = {}, {}
  for _, t in ipairs(tasks) do
    local list = t.state == "success" and unsaved or running
    list[#list + 1] = { id = t.task_id, at = t.created_at, prompt = M.prompt(t.input) }
  end
  if #running > 0 then
    section(out, plural(#running, "task", "tasks") .. " created, not seen to finish (dh3 resume):",
      "task id", running, columns, now)
  end
  if #unsaved > 0 then
    if #running > 0 then out:write("\n") end
    section(out, plural(#unsaved, "task", "tasks") .. " finished, images not saved (dh3 resume):",
      "task id", unsaved, columns, now)
  end
  if #unanswered > 0 then
    if #tasks > 0 then out:write("\n") end
    local list = {}
    for i, u in ipairs(unanswered) do list[i] = { id = u.local_id, at = u.at, prompt = M.prompt(u.input) } end
    section(out, plural(#unanswered, "create", "creates") .. " with no answer: possibly created, id unknown.",
      "local id", list, columns, now)
    out:write(format.fit("Only the service's support can trace them: give it the local id and prompt.",
      columns - 1), "\n")
  end
end

return M
