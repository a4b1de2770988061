-- The live display on a terminal: one row per task still running (its id, state, elapsed time,
-- and its prompt, or a progress bar with size and speed while downloading), redrawn in place
-- several times a second. A task that ends leaves its final row above the live ones (its prompt
-- and where its images were saved, on a second line when they do not fit in one: a path cut
-- keeps its end), so the scrollback keeps every outcome; a run of several ends with a summary
-- line. Below M.WIDE columns, rows show the start of task ids only. Every error goes to stderr,
-- above the live rows too: a task's under its final row, any other (a prompt refused before the
-- run started) at once.
local core = require "dh3.core"
local format = require "dh3.cli.format"
local pending = require "dh3.cli.pending"
local jobs_mod = require "dh3.cli.jobs"

local M = {}

M.REDRAW = 0.1 -- seconds between redraws of the live rows

local Terminal = {}
Terminal.__index = Terminal

--- True when stdout is a terminal that understands cursor movement. Asked once: it runs test(1).
function M.is_terminal()
  local term = os.getenv("TERM")
  if term == nil or term == "" or term == "dumb" then return false end
  local status = os.execute("test -t 1")
  return status == true or status == 0 -- 5.2+: true; 5.1 and LuaJIT: the exit status
end

--- The terminal's columns and lines: from stty on stdin when it is the terminal, else from
-- COLUMNS/LINES, else 80x24.
function M.size()
  local p = io.popen("stty size 2>/dev/null")
  local out = p and p:read("*a") or ""
  if p then p:close() end
  local lines, columns = out:match("^(%d+)%s+(%d+)")
  lines = tonumber(lines) or tonumber(os.getenv("LINES")) or 24
  columns = tonumber(columns) or tonumber(os.getenv("COLUMNS")) or 80
  if lines < 3 then lines = 24 end
  if columns < 20 then columns = 80 end
  return columns, lines
end

--- opts: out, err (files), columns, lines (the screen's size), now (a clock, for specs).
function M.new(opts)
  opts = opts or {}
  local columns, lines = opts.columns, opts.lines
  if not (columns and lines) then columns, lines = M.size() end
  return setmetatable({
    out = opts.out or io.stdout, err = opts.err or io.stderr,
    columns = columns, lines = lines, now = opts.now or core.now,
    live = {},      -- jobs still running, in command-line order
    showing = {},   -- [job] = true while it has a live row
    drawn = 0,      -- live lines on the screen, just above the cursor
    errors = {},    -- [job] = err, printed under the job's final row
  }, Terminal)
end

-- Below this many columns a row shows the first characters of a task id only, leaving room for
-- the prompt and the path (every error line and the JSON lines carry whole ids).
M.WIDE = 100
local SHORT_ID = 8

-- Where a saved job's images went: the paths, and their size.
local function saved_where(job)
  return table.concat(job.paths, " ") .. "  (" .. format.bytes(job.saved_bytes or 0) .. ")"
end

local function detail(self, job, room)
  if job.phase == "downloading" and job.total and job.total > 0 then
    local took = self.now() - job.download_started
    local speed = took > 0.05 and (format.bytes(job.bytes / took) .. "/s") or ""
    return ("%s %s / %s  %s"):format(format.bar(job.bytes / job.total, 20),
      format.bytes(job.bytes), format.bytes(job.total), speed)
  end
  if job.paths and #job.paths > 0 then
    -- its prompt and where it went, when both fit; else the prompt, and final_rows says where
    local where = saved_where(job)
    if not job.prompt then return format.fit_end(where, room) end
    local both = job.prompt .. " -> " .. where
    if format.width(both) <= room then return both end
    return job.prompt
  end
  if job.summary then return job.summary end
  if job.read_error and not job.ended then
    -- a wait goes on through failed reads until --timeout: say so, or the row looks stuck
    return ("reads failing (%s), trying again  %s"):format(job.read_error, job.prompt or "")
  end
  return job.prompt or ""
end

-- The start of a row: the task's id, its state and elapsed time; and the room left after it.
function Terminal:_head(job)
  local id = job.task and job.task.id or job.id or "(creating)"
  local wide = self.columns >= M.WIDE
  if not wide and #id > SHORT_ID + 2 and id ~= "(creating)" then id = id:sub(1, SHORT_ID) .. ".." end
  local elapsed = job.status_only and "" or format.duration(job:elapsed(self.now()))
  local head = (wide and "%-32s  %-11s %6s  " or "%-10s  %-11s %6s  "):format(id, job.phase, elapsed)
  return head, self.columns - 1 - format.width(head)
end

-- One row, cut to the screen's width so that it never wraps (a wrapped row would break the
-- cursor arithmetic of the redraw).
function Terminal:row(job)
  local head, room = self:_head(job)
  return format.fit(head .. detail(self, job, room), self.columns - 1)
end

--- The lines a job that ended leaves on the screen: its row; for a saved job whose prompt and
-- path do not fit in it, a second line with where its images went, cut at its start when even
-- a line is too short (the file's name, at the end, is what tells one from another).
function Terminal:final_rows(job)
  local row = self:row(job)
  if not (job.paths and #job.paths > 0 and job.prompt) then return { row } end
  local _, room = self:_head(job)
  local where = saved_where(job)
  if format.width(job.prompt .. " -> " .. where) <= room then return { row } end
  return { row, "    -> " .. format.fit_end(where, self.columns - 1 - 7) }
end

-- Rewrites the screen from the first live line: `above` lines become permanent, then the live
-- rows (as many as fit; the rest counted on one line) are drawn again.
function Terminal:draw(above)
  local buf = {}
  if self.drawn > 0 then buf[1] = ("\27[%dA"):format(self.drawn) end
  for _, line in ipairs(above or {}) do buf[#buf + 1] = "\r\27[K" .. line .. "\n" end
  local room = self.lines - 2
  local shown = 0
  for i, job in ipairs(self.live) do
    if i > room and #self.live > room + 1 then
      buf[#buf + 1] = "\r\27[K" .. ("... and %d more"):format(#self.live - room) .. "\n"
      shown = shown + 1
      break
    end
    buf[#buf + 1] = "\r\27[K" .. self:row(job) .. "\n"
    shown = shown + 1
  end
  buf[#buf + 1] = "\27[J" -- whatever was below (the live area may have shrunk)
  self.out:write(table.concat(buf))
  self.out:flush()
  self.drawn = shown
end

-- Writes a line to stderr above the live rows, which are drawn again under it.
function Terminal:_to_stderr(line)
  if self.drawn > 0 then
    self.out:write(("\27[%dA\r\27[J"):format(self.drawn))
    self.out:flush()
    self.drawn = 0
  end
  self.err:write(line, "\n")
  self.err:flush()
  self:draw()
end

function Terminal:start(jobs)
  for _, job in ipairs(jobs) do
    self.live[#self.live + 1] = job
    self.showing[job] = true
  end
  self:draw()
end

function Terminal:created() end -- the next redraw shows the id

function Terminal:state() end

function Terminal:progress() end

function Terminal:saved() end

function Terminal:tick()
  if #self.live > 0 then self:draw() end
end

--- An error of a `job` that has a row is shown under its final row; any other at once (a job
-- without a row: a prompt refused before the run started).
function Terminal:error(err, job)
  if job and self.showing[job] then
    self.errors[job] = err
  else
    self:_to_stderr(jobs_mod.error_line(err, job))
  end
end

--- Prompts not created again, for the journal has their images saved: one line says how many.
function Terminal:skipped(list, journal)
  if #list == 0 then return end
  self:draw{ format.fit(("Skipped %d %s whose images the journal %s has saved (--again creates %s "
    .. "anew)."):format(#list, #list == 1 and "prompt" or "prompts", journal or "", #list == 1 and "it" or "them"),
    self.columns - 1) }
end

local SUMMARY_WORDS = {
  { "skipped", "skipped (saved before)" }, { "saved", "saved" }, { "succeeded", "succeeded" },
  { "created", "created" }, { "read", "read" }, { "failed", "failed" },
  { "timeout", "timed out (dh3 wait ID)" }, { "not_created", "not created" }, { "stopped", "stopped" },
  { "error", "ended in an error" },
}

--- The run's end, when it had more than one prompt or task: one line, "5 tasks: 3 saved, ...".
function Terminal:summary(counts)
  local total = counts.tasks + (counts.skipped or 0)
  if total < 2 then return end
  local parts = {}
  for _, w in ipairs(SUMMARY_WORDS) do
    local n = counts[w[1]] or 0
    if n > 0 then parts[#parts + 1] = ("%d %s"):format(n, w[2]) end
  end
  self:draw{ format.fit(("%d %s: %s"):format(total, counts.skipped and counts.skipped > 0 and "prompts" or "tasks",
    table.concat(parts, ", ")), self.columns - 1) }
end

--- A create of the journal whose answer never came (dh3 resume): a line on stderr.
function Terminal:unanswered(u)
  self:_to_stderr(pending.unanswered_line(u))
end

function Terminal:finished(job)
  for i, j in ipairs(self.live) do
    if j == job then
      table.remove(self.live, i)
      break
    end
  end
  self.showing[job] = nil
  self:draw(self:final_rows(job))
  local err = self.errors[job]
  if err then
    self.errors[job] = nil
    self:_to_stderr(jobs_mod.error_line(err, job))
  end
end

--- Leaves the rows of jobs still running (after Ctrl-C) on the screen as they are, and the
-- errors they hold under them; idempotent.
function Terminal:close()
  local rows, held = {}, {}
  for i, job in ipairs(self.live) do
    rows[i] = self:row(job)
    if self.errors[job] then held[#held + 1] = jobs_mod.error_line(self.errors[job], job) end
    self.errors[job], self.showing[job] = nil, nil
  end
  self.live = {}
  self:draw(rows)
  for _, line in ipairs(held) do self:_to_stderr(line) end
end

return M
