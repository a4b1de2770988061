-- The live display on a terminal: one row per task still running (its id, state, elapsed time,
-- and its prompt, or a progress bar with size and speed while downloading), redrawn in place
-- several times a second. A task that ends leaves its final row above the live ones, so the
-- scrollback keeps every outcome; errors go to stderr, above the live rows too.
local core = require "dh3.core"
local format = require "dh3.cli.format"
local pending = require "dh3.cli.pending"

local M = {}

M.REDRAW = 0.1 -- seconds between redraws of the live rows

local Terminal = {}
Terminal.__index = Terminal

--- True when stdout is a terminal that understands cursor movement. Asked once: it runs test(1).
function M.is_terminal()
  local term = os.getenv("TERM")
  if term == nil or term == "" or term == "dumb" then return false end
  return os.execute("test -t 1") == true
end

--- The terminal's columns and lines: from stty on stdin when it is the terminal, else from
-- COLUMNS/LINES, else 80x24.
function M.size()
  local p = io.popen("stty size 2>/dev/null")
  local out = p and p:read("a") or ""
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
    drawn = 0,      -- live lines on the screen, just above the cursor
    errors = {},    -- [job] = err, printed under the job's final row
  }, Terminal)
end

local function detail(self, job)
  if job.phase == "downloading" and job.total and job.total > 0 then
    local took = self.now() - job.download_started
    local speed = took > 0.05 and (format.bytes(job.bytes / took) .. "/s") or ""
    return ("%s %s / %s  %s"):format(format.bar(job.bytes / job.total, 20),
      format.bytes(job.bytes), format.bytes(job.total), speed)
  end
  if job.paths and #job.paths > 0 then
    return table.concat(job.paths, " ") .. "  (" .. format.bytes(job.saved_bytes) .. ")"
  end
  if job.summary then return job.summary end
  return job.prompt or ""
end

-- One row, cut to the screen's width so that it never wraps (a wrapped row would break the
-- cursor arithmetic of the redraw).
function Terminal:row(job)
  local id = job.task and job.task.id or job.id or "(creating)"
  local elapsed = job.status_only and "" or format.duration(job:elapsed(self.now()))
  return format.fit(("%-32s  %-11s %6s  %s"):format(id, job.phase, elapsed, detail(self, job)),
    self.columns - 1)
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
  for _, job in ipairs(jobs) do self.live[#self.live + 1] = job end
  self:draw()
end

function Terminal:created() end -- the next redraw shows the id

function Terminal:state() end

function Terminal:progress() end

function Terminal:saved() end

function Terminal:tick()
  if #self.live > 0 then self:draw() end
end

--- An error of `job` is shown under its final row; any other at once.
function Terminal:error(err, job)
  if job then
    self.errors[job] = err
  else
    self:_to_stderr(tostring(err))
  end
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
  self:draw{ self:row(job) }
  local err = self.errors[job]
  if err then
    self.errors[job] = nil
    self:_to_stderr(tostring(err))
  end
end

--- Leaves the rows of jobs still running (after Ctrl-C) on the screen as they are; idempotent.
function Terminal:close()
  local rows = {}
  for i, job in ipairs(self.live) do rows[i] = self:row(job) end
  self.live = {}
  self:draw(rows)
end

return M
