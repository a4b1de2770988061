-- The journal: an append-only file of every create, so that no paid task is lost to a crash.
--
-- One JSON object a line. The first line says what the file is; then one record per event:
--   {"t":"dh3-journal","v":1}                                          the header
--   {"t":"intent","lid":LID,"at":T,"input":BODY}    before the create request leaves (BODY: its wire body)
--   {"t":"created","lid":LID,"id":TASK_ID,"at":T}   as soon as the id arrives
--   {"t":"abandoned","lid":LID,"reason":S,"at":T}   the create certainly made nothing
--   {"t":"finished","id":TASK_ID,"state":"success"|"fail","images":[{url,file_name,file_size}],"at":T}
-- LID is a local id (32 hex digits from /dev/urandom), T the time in Unix seconds. Every record
-- is on the disk (fdatasync) before the call that writes it returns.
--
-- A create's records form a chain (intent, created, finished; or intent, abandoned). A chain is
-- live while it is unsettled: an intent without an answer, or a task created and not finished.
-- Compaction rewrites the file with the live chains only, atomically (see src/journal.c).
--
-- Replay tolerates a torn tail (a crash in the middle of a write): unreadable bytes after the last
-- readable record are cut away before anything is appended. A complete record that lost only its
-- newline is kept (it may carry a task id). An unreadable line followed by readable ones is not
-- something this writer produces (a failed append is cut back at once); it is skipped, counted in
-- stats().damaged, and the journal is then never compacted, so the evidence stays for a human.
local core = require "dh3.core"
local errors = require "dh3.errors"

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
  [HEADER_TYPE] = function(r) return math.type(r.v) == "integer" end,
  intent = function(r) return is_string(r.lid) and type(r.input) == "table" end,
  created = function(r) return is_string(r.lid) and is_string(r.id) end,
  abandoned = function(r) return is_string(r.lid) end,
  finished = function(r)
    return is_string(r.id) and is_string(r.state) and (r.images == nil or type(r.images) == "table")
  end,
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

local function random_id()
  local f = io.open("/dev/urandom", "rb")
  local bytes = f and f:read(16)
  if f then f:close() end
  if not bytes or #bytes ~= 16 then return nil end
  return (bytes:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
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

local function is_live(e) return e.state == "intent" or e.state == "created" end

local function new_entry(self, lid)
  local e = { lid = lid, lines = {}, state = "intent" }
  self._entries[#self._entries + 1] = e
  self._by_lid[lid] = e
  return e
end

-- Adds the record `line` to the chain e (counted live while e is).
local function add_line(self, e, line)
  e.lines[#e.lines + 1] = line
  if is_live(e) then self._live = self._live + 1 end
end

local function set_state(self, e, state)
  local was = is_live(e)
  e.state = state
  local now = is_live(e)
  if was and not now then
    self._live = self._live - #e.lines
  elseif now and not was then
    self._live = self._live + #e.lines
  end
end

-- Applies one record (read back, or just written) to the state in memory.
local function apply(self, r, line)
  self._records = self._records + 1
  local e = r.lid and self._by_lid[r.lid]
  if r.t == "intent" then
    if e then return end -- a duplicate: dead weight
    e = new_entry(self, r.lid)
    e.input, e.at = r.input, r.at
    add_line(self, e, line)
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
    e.task_id, e.created_at = r.id, r.at
    set_state(self, e, "created")
    add_line(self, e, line)
    self._by_task[r.id] = e
  elseif r.t == "abandoned" then
    if not e or e.state ~= "intent" then return end
    add_line(self, e, line)
    set_state(self, e, "abandoned")
  elseif r.t == "finished" then
    e = self._by_task[r.id]
    if not e or e.state ~= "created" then return end
    add_line(self, e, line)
    set_state(self, e, "finished")
  end
  -- any other type: a later writer's record, dead weight here
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

--- Opens (creating it when absent) and replays the journal at `path`. opts.compact_at: the
-- number of records beyond which a journal more than half dead is compacted (default 1000).
-- Returns the journal, or nil, err (kind "journal") when another process (or this one) has it
-- open, or it cannot be opened, read or repaired.
function M.open(path, opts)
  if type(path) ~= "string" or path == "" then
    error(("bad argument #1 to 'open' (a path expected, got %s)"):format(type(path)), 2)
  end
  opts = opts or {}
  for k, v in pairs(opts) do
    if OPEN_OPTIONS[k] == nil then error(("journal.open: unknown option '%s'"):format(tostring(k)), 2) end
    if type(v) ~= OPEN_OPTIONS[k] then error(("journal.open: %s must be a %s"):format(k, OPEN_OPTIONS[k]), 2) end
  end
  local file, msg = core.journal(path)
  if not file then return nil, journal_error(msg) end
  local self = setmetatable({
    path = path, _file = file, compact_at = opts.compact_at or M.COMPACT_AT,
    _entries = {}, _by_lid = {}, _by_task = {}, _records = 0, _live = 0, _damaged = 0,
  }, Journal)

  local function fail(message)
    file:close()
    return nil, journal_error(("the journal %s %s"):format(path, message))
  end
  local fh, ferr = io.open(path, "rb")
  if not fh then return fail("cannot be read: " .. tostring(ferr)) end
  local data = fh:read("a")
  fh:close()
  if not data then return fail("cannot be read") end
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

-- Writes one record and applies it; true, or nil, err (then memory is unchanged too).
function Journal:_write(r)
  local json, jerr = core.json_encode(r)
  if not json then return nil, journal_error("cannot encode a journal record: " .. tostring(jerr)) end
  local line = json .. "\n"
  local ok, err = self._file:append(line)
  if not ok then return nil, journal_error(err) end
  apply(self, r, line)
  return true
end

--- Before a create request leaves: records its wire body and returns the new local id, or
-- nil, err (then the create must not be sent: it would not be journaled).
function Journal:intent(input)
  self:_check("intent")
  if type(input) ~= "table" then
    error(("bad argument #1 to 'intent' (table expected, got %s)"):format(type(input)), 2)
  end
  local lid = random_id()
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

--- What a restart must take up again: {tasks = {{task_id, local_id, input, created_at}...},
-- unanswered = {{local_id, input, at}...}}, both in the order of their creates. `input` is nil
-- when the intent's record was unreadable. The tables are copies.
function Journal:pending()
  self:_check("pending")
  local tasks, unanswered = {}, {}
  for _, e in ipairs(self._entries) do
    if e.state == "created" then
      tasks[#tasks + 1] = { task_id = e.task_id, local_id = e.lid, input = copy(e.input), created_at = e.created_at }
    elseif e.state == "intent" then
      unanswered[#unanswered + 1] = { local_id = e.lid, input = copy(e.input), at = e.at }
    end
  end
  return { tasks = tasks, unanswered = unanswered }
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
  local parts, entries, by_lid, by_task = { HEADER }, {}, {}, {}
  for _, e in ipairs(self._entries) do
    if is_live(e) then
      for _, line in ipairs(e.lines) do parts[#parts + 1] = line end
      entries[#entries + 1] = e
      by_lid[e.lid] = e
      if e.task_id then by_task[e.task_id] = e end
    end
  end
  local ok, err = self._file:rewrite(table.concat(parts))
  if not ok then return nil, journal_error(err) end
  self._entries, self._by_lid, self._by_task = entries, by_lid, by_task
  self._records = self._live
  self._damaged = 0
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
Journal.__gc = Journal.close

return M
