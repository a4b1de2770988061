-- The journal: an append-only file of every create, so that no paid task is lost to a crash.
--
-- One JSON object a line. The first line says what the file is; then one record per event:
--   {"t":"dh3-journal","v":1}                                          the header
--   {"t":"intent","lid":LID,"at":T,"input":BODY}    before the create request leaves (BODY: its wire body)
--   {"t":"created","lid":LID,"id":TASK_ID,"at":T}   as soon as the id arrives
--   {"t":"abandoned","lid":LID,"reason":S,"at":T}   the create certainly made nothing
--   {"t":"finished","id":TASK_ID,"state":"success"|"fail","images":[{url,file_name,file_size}],"at":T}
--   {"t":"saving","id":TASK_ID,"at":T}              the caller means to save the task's images (it
--                                                   may come before the task has finished, or after)
--   {"t":"saved","id":TASK_ID,"paths":[...],"at":T} its images are on the disk (paths left out when none)
--   {"t":"forgotten","lid":LID,"at":T}              a person dismissed an intent that never had an
--                                                   answer (dh3 pending --forget): settled
-- LID is a local id (32 hex digits from /dev/urandom), T the time in Unix seconds. Every record
-- is on the disk (fdatasync) before the call that writes it returns.
--
-- A create's records form a chain (intent, created, [saving,] finished, [saving,] [saved]; or
-- intent, abandoned; or intent, forgotten). A chain is live while it is unsettled: an intent
-- without an answer; a task created and not finished; or a task whose saving has no saved yet,
-- whether it finished or not (its images may still be at the service only). A finished with
-- state "fail" settles the chain even after a saving: there is nothing to save. Compaction
-- rewrites the file with every line of the live chains only, atomically (see src/journal.c).
--
-- saving and saved came after format 1 was first written, and need no new version: a reader that
-- does not know a record type skips it, so an older dh3 still reads these journals. It takes a
-- chain whose images were being saved as settled at its finished, though (it forgets the download
-- a crash cut short, as dh3 did before these records), and its compaction drops such a chain. That
-- is the price of older versions staying able to read the journal at all, which matters more.
-- forgotten came later still, the same way: an older dh3 keeps listing such an intent as
-- unanswered, which errs on the safe side. forget() only adds its record: the intent stays in the
-- file, like any settled chain, until a compaction drops it. A created record that comes after
-- it all the same (an answer proves the task exists) makes the chain live again.
--
-- Replay tolerates a torn tail (a crash in the middle of a write): unreadable bytes after the last
-- readable record are cut away before anything is appended. A complete record that lost only its
-- newline is kept (it may carry a task id). An unreadable line followed by readable ones is not
-- something this writer produces (a failed append is cut back at once); it is skipped, counted in
-- stats().damaged, and the journal is then never compacted, so the evidence stays for a human.
-- M.read() replays the same way for a reader that must change nothing (dh3 pending): no lock, no
-- repair; it reports the torn tail instead.
--
-- What is written never holds a secret: no field named like one, no value that looks like an
-- Authorization header (in an intent's input), and in every string of every record, the user
-- information of a URL ("https://user:password@host/path") becomes "***"
-- ("https://***@host/path"): scheme, host, port, path and query stay, so a human still sees where
-- it pointed. The callback_url's secret path segment (dh3.webhook) is not user information and is
-- kept: the file is mode 0600 (see SECURITY.md).
local core = require "dh3.core"
local errors = require "dh3.errors"
local compat = require "dh3.compat"
local random = require "dh3.random"
local validate = require "dh3.validate"

local M = {}

M.FORMAT_VERSION = 1
M.COMPACT_AT = 1000 -- compact once the file holds more records than this, more than half dead

local HEADER_TYPE = "dh3-journal"
-- a literal, not json_encode's output: its key order must be fixed to recognise a torn header
local HEADER = '{"t":"dh3-journal","v":1}\n'
local MAX_REASON = 300

local Journal = {}
Journal.__index = Journal
Journal.__name = "dh3.journal"

local function journal_error(message)
  return errors.new("journal", message)
end

-- {======================================================================
-- Records
-- ======================================================================

local function is_string(v) return type(v) == "string" and v ~= "" end

-- What each record type needs to be usable; anything else makes the line unreadable.
local VALID = {
  [HEADER_TYPE] = function(r) return compat.is_integer(r.v) end,
  intent = function(r) return is_string(r.lid) and type(r.input) == "table" end,
  created = function(r) return is_string(r.lid) and is_string(r.id) end,
  abandoned = function(r) return is_string(r.lid) end,
  finished = function(r)
    return is_string(r.id) and is_string(r.state) and (r.images == nil or type(r.images) == "table")
  end,
  saving = function(r) return is_string(r.id) end,
  saved = function(r) return is_string(r.id) and (r.paths == nil or type(r.paths) == "table") end,
  forgotten = function(r) return is_string(r.lid) end,
}

-- The record on one line, or nil when the line is not one. A well-formed object of a type this
-- version does not know is a record (of a later writer) that replay skips.
local function decode(line)
  if line == "" then return nil end
  local r = core.json_decode(line)
  if type(r) ~= "table" or type(r.t) ~= "string" then return nil end
  local valid = VALID[r.t]
  if valid and not valid(r) then return nil end
  return r
end

-- Field names a secret would go by: an intent's input never has one, but nothing named like
-- this is ever written, whatever the caller passes.
local SECRET_NAME = { "key", "authori[sz]", "secret", "token", "password", "passwd", "bearer", "cookie" }

local function secret_name(k)
  if type(k) ~= "string" then return false end
  k = k:lower()
  for _, p in ipairs(SECRET_NAME) do
    if k:find(p) then return true end
  end
  return false
end

-- s with the user information of every URL in it replaced by "***": what lies between "scheme://"
-- and the last "@" of the authority (which ends at the first "/", "?", "#" or space).
local function redact_userinfo(s)
  return (s:gsub("(%a[%w+%.%-]*://)([^/?#%s]*)", function(scheme, authority)
    local at = authority:match("^.*()@")
    if not at then return nil end
    return scheme .. "***" .. authority:sub(at)
  end))
end

-- A copy of v (a record) with the user information of its URLs redacted, in every string.
local function redact(v, depth)
  if type(v) == "string" then return redact_userinfo(v) end
  if type(v) ~= "table" or depth > 32 then return v end
  local out = {}
  for k, x in pairs(v) do out[k] = redact(x, depth + 1) end
  return out
end

-- A copy of v without secret-named fields or values that look like an Authorization header.
local function scrub(v, depth)
  if type(v) == "string" then
    if v:lower():find("^%s*bearer%s") then return nil end
    return v
  end
  if type(v) ~= "table" then return v end
  if depth > 32 then return nil end
  local out = {}
  for k, x in pairs(v) do
    if not secret_name(k) then out[k] = scrub(x, depth + 1) end
  end
  return out
end

local function copy(v)
  if type(v) ~= "table" then return v end
  local out = {}
  for k, x in pairs(v) do out[k] = copy(x) end
  return out
end

local function as_reason(reason)
  if reason == nil then return nil end
  local s = errors.is_error(reason) and (reason.kind .. ": " .. tostring(reason.message)) or tostring(reason)
  return errors.sanitize(s, MAX_REASON)
end
-- }======================================================================

-- {======================================================================
-- The state in memory: one entry per chain, in the order of their intents
-- ======================================================================
-- An entry: lid, lines (its records' lines, in order), state ("intent", "created", "abandoned" or
-- "finished"), input, at, task_id, created_at, result and images (of its finished record), saving
-- and saved (whether such records came), paths (of its saved record).

local function is_live(e)
  if e.state == "intent" or e.state == "created" then return true end
  -- finished: still live while its images are being saved, unless it failed (nothing to save)
  return e.state == "finished" and e.saving == true and not e.saved and e.result ~= "fail"
end

local function new_entry(self, lid)
  local e = { lid = lid, lines = {}, state = "intent" }
  self._entries[#self._entries + 1] = e
  self._by_lid[lid] = e
  return e
end

-- Changes the chain e: `change(e)` sets its fields, then the record `line` joins its lines. The
-- count of live lines follows e's liveness before and after.
local function update(self, e, line, change)
  if is_live(e) then self._live = self._live - #e.lines end
  if change then change(e) end
  e.lines[#e.lines + 1] = line
  if is_live(e) then self._live = self._live + #e.lines end
end

-- Applies one record (read back, or just written) to the state in memory.
local function apply(self, r, line)
  self._records = self._records + 1
  local e = r.lid and self._by_lid[r.lid]
  if r.t == "intent" then
    if e then return end -- a duplicate: dead weight
    e = new_entry(self, r.lid)
    e.input, e.at = r.input, r.at
    update(self, e, line)
  elseif r.t == "created" then
    if not e then
      -- its intent is unreadable, but an id is never dropped
      e = new_entry(self, r.lid)
    elseif e.task_id == r.id then
      return
    elseif e.task_id then
      -- a second id for one intent (never written by this module): kept as a chain of its own
      local first = e
      e = { lid = r.lid, lines = {}, state = "intent", input = first.input, at = first.at }
      self._entries[#self._entries + 1] = e
    end
    -- also after "abandoned": an id that arrived proves the task exists
    update(self, e, line, function(x) x.task_id, x.created_at, x.state = r.id, r.at, "created" end)
    self._by_task[r.id] = e
  elseif r.t == "abandoned" then
    if not e or e.state ~= "intent" then return end
    update(self, e, line, function(x) x.state = "abandoned" end)
  elseif r.t == "finished" then
    e = self._by_task[r.id]
    if not e or e.state ~= "created" then return end
    update(self, e, line, function(x) x.state, x.result, x.images = "finished", r.state, r.images end)
  elseif r.t == "saving" then
    e = self._by_task[r.id]
    if not e or e.saving or (e.state ~= "created" and e.state ~= "finished") then return end
    update(self, e, line, function(x) x.saving = true end)
  elseif r.t == "saved" then
    e = self._by_task[r.id]
    if not e or not e.saving or e.saved then return end
    update(self, e, line, function(x) x.saved, x.paths = true, r.paths end)
  elseif r.t == "forgotten" then
    if not e or e.state ~= "intent" then return end
    update(self, e, line, function(x) x.state = "forgotten" end)
  end
  -- any other type: a later writer's record, dead weight here
end

-- The state of a journal's records, empty.
local function new_state(fields)
  fields._entries, fields._by_lid, fields._by_task = {}, {}, {}
  fields._records, fields._live, fields._damaged = 0, 0, 0
  -- chains that finished with success, not being saved, that compaction dropped from the file:
  -- a saving() may still come for them (see Journal:saving)
  fields._settled, fields._settled_order = {}, {}
  return fields
end

-- pending()'s tables (copies), from the state.
local function pending_of(self)
  local tasks, unanswered = {}, {}
  for _, e in ipairs(self._entries) do
    if e.task_id and is_live(e) then
      tasks[#tasks + 1] = {
        task_id = e.task_id, local_id = e.lid, input = copy(e.input), created_at = e.created_at,
        state = e.result, images = copy(e.images), saving = e.saving or nil,
      }
    elseif e.state == "intent" then
      unanswered[#unanswered + 1] = { local_id = e.lid, input = copy(e.input), at = e.at }
    end
  end
  return { tasks = tasks, unanswered = unanswered }
end

-- saved_tasks()'s table (copies), from the state.
local function saved_of(self)
  local list = {}
  for _, e in ipairs(self._entries) do
    if e.saved and e.result ~= "fail" and e.task_id then
      list[#list + 1] = { task_id = e.task_id, local_id = e.lid, input = copy(e.input), paths = copy(e.paths) or {},
        created_at = e.created_at }
    end
  end
  return list
end

-- Reads the file's text into the state. Returns the length of its readable part and whether
-- that part ends without a newline, or nil, message when the file is not a journal.
local function replay(self, data)
  local pos, n = 1, #data
  local valid_end, needs_newline = 0, false
  local bad_run, damaged = 0, 0
  local first = true
  while pos <= n do
    local nl = data:find("\n", pos, true)
    local line = data:sub(pos, (nl or n + 1) - 1)
    local r = decode(line)
    if first then
      first = false
      if not (r and r.t == HEADER_TYPE) then
        -- only a header torn by a crash in the very first write is a journal without one
        -- (or a new file whose first write left only zeros: some file systems grow the size first)
        if not nl and (HEADER:sub(1, #line) == line or not line:find("[^%z]")) then break end
        return nil, "is not a dh3 journal (its first line is not a journal header)"
      end
      if r.v > M.FORMAT_VERSION then
        return nil, ("was written by a newer dh3 (journal format %d; this one reads %d)")
          :format(r.v, M.FORMAT_VERSION)
      end
    elseif r then
      apply(self, r, line .. "\n")
    end
    if r then
      damaged, bad_run = damaged + bad_run, 0
      valid_end, needs_newline = nl or n, nl == nil
    else
      bad_run = bad_run + 1
    end
    if not nl then break end
    pos = nl + 1
  end
  self._damaged = damaged
  return valid_end, needs_newline
end
-- }======================================================================

-- {======================================================================
-- The journal
-- ======================================================================

local OPEN_OPTIONS = { compact_at = "number" }
-- how many chains compaction dropped that a late saving() can still bring back (see saving())
local REMEMBERED = 1000

local function check_path(path, what)
  if type(path) ~= "string" or path == "" then
    error(("bad argument #1 to '%s' (a path expected, got %s)"):format(what, type(path)), 3)
  end
end

-- The state in memory of the journal at `path`, read without the lock and changing nothing, and
-- the length of the file and of its readable part; or nil, err.
local function read_only(path, what)
  check_path(path, what)
  local file, msg = core.journal(path, "read")
  if not file then return nil, journal_error(msg) end
  local data, rerr = file:read()
  file:close()
  if not data then return nil, journal_error(rerr) end
  local self = new_state{}
  local valid_end, why = replay(self, data)
  if not valid_end then return nil, journal_error(("the journal %s %s"):format(path, why)) end
  return self, #data, valid_end
end

--- Reads the journal at `path` and changes nothing: no lock (a process may hold the journal and
-- write to it meanwhile), no file created, no torn tail cut, no compaction. Returns what
-- pending() would, plus `torn` (the bytes at its end that are not a whole record: cut short by
-- a crash, or being written right now; left as they are) and `damaged` (unreadable lines skipped
-- in the middle); or nil, err (kind "journal": no file, not a journal, unreadable).
function M.read(path)
  local self, size, valid_end = read_only(path, "read")
  if not self then return nil, size end
  local state = pending_of(self)
  state.torn, state.damaged = size - valid_end, self._damaged
  return state
end

--- The tasks of the journal at `path` whose images were saved (a saved record), read as M.read()
-- reads: no lock, nothing changed. Returns {{task_id, local_id, input, paths, created_at}...} in
-- the order of their creates (`input`: the create's wire body as the intent kept it, nil when
-- unreadable), or nil, err (kind "journal"). Only what the file still holds: a compaction drops
-- settled chains, these included.
function M.saved_tasks(path)
  local self, err = read_only(path, "saved_tasks")
  if not self then return nil, err end
  return saved_of(self)
end

--- Opens (creating it when absent) and replays the journal at `path`. opts.compact_at: the
-- number of records beyond which a journal more than half dead is compacted (default 1000).
-- Returns the journal, or nil, err (kind "journal") when another process (or this one) has it
-- open, or it cannot be opened, read or repaired. The lock is on the file, whatever name reaches
-- it: a symbolic link or the real name are one journal, and compaction through a link rewrites
-- the file it points to. A journal with more than one name (a hard link) is refused: compaction
-- would split it in two (see src/journal.c).
function M.open(path, opts)
  check_path(path, "open")
  opts = opts or {}
  validate.check_table("journal.open", opts, OPEN_OPTIONS, 3)
  local file, msg = core.journal(path)
  if not file then return nil, journal_error(msg) end
  local self = setmetatable(new_state{ path = path, _file = file, compact_at = opts.compact_at or M.COMPACT_AT },
    Journal)

  local function fail(message)
    file:close()
    return nil, journal_error(("the journal %s %s"):format(path, message))
  end
  -- through the locked descriptor: the file read is the file locked, whatever the name leads to
  local data, rerr = file:read()
  if not data then
    file:close()
    return nil, journal_error(rerr)
  end
  local valid_end, needs_newline = replay(self, data)
  if not valid_end then return fail(needs_newline) end -- (the message)

  local ok, err = true, nil
  if valid_end < #data then ok, err = file:truncate(valid_end) end
  if ok and valid_end == 0 then
    ok, err = file:append(HEADER)
  elseif ok and needs_newline then
    ok, err = file:append("\n")
  end
  if not ok then
    file:close()
    return nil, journal_error(err)
  end
  self:_maybe_compact()
  return self
end

function Journal:__tostring()
  return ("dh3.journal(%s%s)"):format(self.path, self._closed and ", closed" or "")
end

function Journal:_check(what)
  if self._closed then error(("journal:%s: the journal %s is closed"):format(what, self.path), 3) end
end

-- A record as written: its line (URLs' user information redacted) and the record that line holds.
local function encode(r)
  r = redact(r, 0)
  local json, jerr = core.json_encode(r)
  if not json then return nil, journal_error("cannot encode a journal record: " .. tostring(jerr)) end
  return json .. "\n", r
end

-- Writes one record and applies it; true, or nil, err (then memory is unchanged too).
function Journal:_write(r)
  local line, rec = encode(r)
  if not line then return nil, rec end
  local ok, err = self._file:append(line)
  if not ok then return nil, journal_error(err) end
  apply(self, rec, line)
  return true
end

--- Before a create request leaves: records its wire body and returns the new local id, or
-- nil, err (then the create must not be sent: it would not be journaled).
function Journal:intent(input)
  self:_check("intent")
  if type(input) ~= "table" then
    error(("bad argument #1 to 'intent' (table expected, got %s)"):format(type(input)), 2)
  end
  local lid = random.hex(16)
  if not lid then return nil, journal_error("cannot read /dev/urandom for a local id") end
  local ok, err = self:_write{ t = "intent", lid = lid, at = os.time(), input = scrub(input, 0) }
  if not ok then return nil, err end
  return lid
end

--- The create's answer carried `task_id`: true once that is on the disk, or nil, err.
function Journal:created(local_id, task_id)
  self:_check("created")
  if type(local_id) ~= "string" or type(task_id) ~= "string" or task_id == "" then
    error("journal:created: a local id and a task id expected", 2)
  end
  local e = self._by_lid[local_id]
  if e and e.task_id == task_id then return true end
  return self:_write{ t = "created", lid = local_id, id = task_id, at = os.time() }
end

--- The create certainly made nothing: its intent is settled. `reason`: a string or a dh3 error.
function Journal:abandoned(local_id, reason)
  self:_check("abandoned")
  if type(local_id) ~= "string" then error("journal:abandoned: a local id expected", 2) end
  local e = self._by_lid[local_id]
  if not e or e.state ~= "intent" then return true end
  local ok, err = self:_write{ t = "abandoned", lid = local_id, reason = as_reason(reason), at = os.time() }
  if ok then self:_maybe_compact() end
  return ok, err
end

local TERMINAL = { success = true, fail = true }

--- The task ended: records its state and its images' URLs (a task this journal does not have
-- pending is left alone). true, or nil, err.
function Journal:finished(task_id, state, images)
  self:_check("finished")
  if type(task_id) ~= "string" then error("journal:finished: a task id expected", 2) end
  if not TERMINAL[state] then
    error(("journal:finished: state must be success or fail, got %s"):format(tostring(state)), 2)
  end
  local e = self._by_task[task_id]
  if not e or e.state ~= "created" then return true end
  local kept
  if type(images) == "table" and #images > 0 then
    kept = {}
    for i, img in ipairs(images) do
      kept[i] = { url = img.url, file_name = img.file_name, file_size = img.file_size }
    end
  end
  local ok, err = self:_write{ t = "finished", id = task_id, state = state, images = kept, at = os.time() }
  if ok then self:_maybe_compact() end
  return ok, err
end

--- The caller is about to save the images of `task_id` (before or after it finished): until
-- saved() says they are on the disk, the task stays pending, even once it finished with success,
-- so a crash in the download does not lose them. true, or nil, err. Writes nothing for a task
-- this journal does not have, one already being saved, or one that failed.
function Journal:saving(task_id)
  self:_check("saving")
  if type(task_id) ~= "string" or task_id == "" then error("journal:saving: a task id expected", 2) end
  local e = self._by_task[task_id]
  if e then
    if e.saving or e.result == "fail" or (e.state ~= "created" and e.state ~= "finished") then return true end
    return self:_write{ t = "saving", id = task_id, at = os.time() }
  end
  -- A chain that finished with success and that compaction dropped since (finished() may compact
  -- at once): its lines go back into the file, then the saving, in one append.
  local old = self._settled[task_id]
  if not old then return true end
  local saving, rec = encode{ t = "saving", id = task_id, at = os.time() }
  if not saving then return nil, rec end
  local ok, err = self._file:append(table.concat(old.lines) .. saving)
  if not ok then return nil, journal_error(err) end
  self._settled[task_id] = nil
  for _, line in ipairs(old.lines) do apply(self, decode(line:sub(1, -2)), line) end
  apply(self, rec, saving)
  return true
end

--- The images of `task_id` are on the disk, at `paths` (an array of strings): its saving() is
-- answered. true, or nil, err. Writes nothing for a task with no saving() pending.
function Journal:saved(task_id, paths)
  self:_check("saved")
  if type(task_id) ~= "string" or task_id == "" then error("journal:saved: a task id expected", 2) end
  if type(paths) ~= "table" then
    error(("bad argument #2 to 'saved' (table expected, got %s)"):format(type(paths)), 2)
  end
  local kept = {}
  for i, p in ipairs(paths) do
    if type(p) ~= "string" then error("journal:saved: paths must be strings", 2) end
    kept[i] = p
  end
  local e = self._by_task[task_id]
  if not e or not e.saving or e.saved or e.result == "fail" then return true end
  local ok, err = self:_write{ t = "saved", id = task_id, paths = #kept > 0 and kept or nil, at = os.time() }
  if ok then self:_maybe_compact() end
  return ok, err
end

--- What a restart must take up again: {tasks = {{task_id, local_id, input, created_at, state,
-- images, saving}...}, unanswered = {{local_id, input, at}...}}, both in the order of their
-- creates. A task is there while it was created and not seen to finish, or while its images were
-- being saved and saved() did not follow: then `saving` is true, and when it finished, `state` is
-- "success" and `images` what its finished record kept ({url, file_name, file_size}...), enough to
-- download them without asking the service again (the URLs may have expired, though). `input` is
-- nil when the intent's record was unreadable. The tables are copies.
function Journal:pending()
  self:_check("pending")
  return pending_of(self)
end

--- The tasks whose images were saved, as M.saved_tasks() returns them, from this journal.
function Journal:saved_tasks()
  self:_check("saved_tasks")
  return saved_of(self)
end

--- A person's word that the create of `local_id`, whose answer never came (an unanswered
-- intent), needs no more attention: a forgotten record settles it, so pending() no longer lists
-- it; its intent stays in the file (see the header). true once on the disk, also when it was
-- forgotten before; nil, err of kind "invalid_request" when the journal has no unanswered create
-- of that local id (unknown, created, abandoned), or of kind "journal" when the write failed.
function Journal:forget(local_id)
  self:_check("forget")
  if type(local_id) ~= "string" or local_id == "" then error("journal:forget: a local id expected", 2) end
  local e = self._by_lid[local_id]
  if e and e.state == "forgotten" then return true end
  if not e or e.state ~= "intent" then
    local what = not e and "no create" or e.task_id and "a create that was answered (task " .. e.task_id .. ")"
      or "a create that certainly made nothing"
    return nil, errors.new("invalid_request", ("%s has %s of local id %s: only an unanswered create can be "
      .. "forgotten"):format(self.path, what, errors.sanitize(local_id, 80)))
  end
  return self:_write{ t = "forgotten", lid = local_id, at = os.time() }
end

--- Counts: records (in the file, the header aside), live (of those), damaged (unreadable lines
-- skipped in the middle).
function Journal:stats()
  return { records = self._records, live = self._live, damaged = self._damaged }
end

--- Rewrites the file with the live chains only, atomically. true, or nil, err (the old file
-- then stays as it was, and in use).
function Journal:compact()
  self:_check("compact")
  local parts, entries, by_lid, by_task, dropped = { HEADER }, {}, {}, {}, {}
  for _, e in ipairs(self._entries) do
    if is_live(e) then
      for _, line in ipairs(e.lines) do parts[#parts + 1] = line end
      entries[#entries + 1] = e
      by_lid[e.lid] = e
      if e.task_id then by_task[e.task_id] = e end
    elseif e.task_id and e.result == "success" and not e.saving then
      dropped[#dropped + 1] = e
    end
  end
  local ok, err = self._file:rewrite(table.concat(parts))
  if not ok then return nil, journal_error(err) end
  self._entries, self._by_lid, self._by_task = entries, by_lid, by_task
  self._records = self._live
  self._damaged = 0
  -- the last REMEMBERED chains dropped that a saving() may still want back
  local settled, order = self._settled, self._settled_order
  for _, e in ipairs(dropped) do
    settled[e.task_id] = e
    order[#order + 1] = e
  end
  if #order > REMEMBERED then
    local kept = {}
    for i = #order - REMEMBERED + 1, #order do kept[#kept + 1] = order[i] end
    for i = 1, #order - REMEMBERED do
      if settled[order[i].task_id] == order[i] then settled[order[i].task_id] = nil end
    end
    self._settled_order = kept
  end
  return true
end

function Journal:_maybe_compact()
  local records = self._records
  if self._damaged == 0 and records > self.compact_at and (records - self._live) * 2 > records then
    -- a failure leaves the old file in use: the next settle tries again
    self:compact()
  end
end

--- Releases the lock. Safe to call more than once; also runs at garbage collection.
function Journal:close()
  if self._closed then return end
  self._closed = true
  self._file:close()
end

Journal.__close = Journal.close
-- (Lua 5.1 and LuaJIT run no __gc for a table: there the C file closes itself when collected)
Journal.__gc = Journal.close

return M
