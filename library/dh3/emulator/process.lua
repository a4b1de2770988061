---@meta dh3.emulator.process
-- LuaLS definitions of dh3.emulator.process: a dh3-emulator started from your own tests
-- (README.md, "dh3-emulator"). Never loaded at run time.

---@class dh3.emulator.StartOptions
---@field lua? string the interpreter ("lua5.4")
---@field bin? string a launcher to run instead, e.g. "bin/dh3-emulator"
---@field stderr? string a file for what it prints on stderr (default: kept for stop())

---A running emulator.
---@class dh3.emulator.Process
---@field url string "http://127.0.0.1:PORT"
---@field pid integer
local Process = {}

---Stops it (SIGTERM) and waits; returns what it printed on stderr. Idempotent.
---@return string output
function Process:stop() end

---@class dh3.emulator.process
---@field Process dh3.emulator.Process the class, to extend in a helper of your own
local process = {}

---Starts dh3-emulator on 127.0.0.1 and a free port with `argv` (its flags).
---@param argv? string[] e.g. {"--keys", "test-key", "--queue-time", "0"}
---@param opts? dh3.emulator.StartOptions
---@return dh3.emulator.Process? emulator
---@return string? err
function process.start(argv, opts) end

return process
