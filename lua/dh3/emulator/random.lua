-- Seeded, independent random streams (splitmix64 on Lua 5.4 integers).
-- One stream per purpose (outcomes, faults, colours, ids) so that, with --seed, the fail/success
-- sequence of creates does not shift when a test makes more or fewer GETs, which draw fault rolls.
-- math.random is left alone: it is one global generator the host program may also use.
local M = {}

local Stream = {}
Stream.__index = Stream

-- FNV-1a over the stream name, so "faults" and "outcomes" of one seed differ.
local function hash(s)
  local h = 0xcbf29ce484222325 -- hex integer literals wrap to 64 bits in Lua 5.4
  for i = 1, #s do
    h = (h ~ s:byte(i)) * 1099511628211
  end
  return h
end

--- A stream for `name` under `seed` (an integer; nil draws one from the clock).
function M.new(seed, name)
  if seed == nil then
    seed = os.time() ~ math.floor((os.clock() * 1e9) % 2 ^ 53) ~ hash(tostring({}))
  end
  return setmetatable({ state = seed ~ hash(name or "") }, Stream)
end

--- The next 64-bit integer (any sign).
function Stream:int64()
  local z = self.state + 0x9E3779B97F4A7C15
  self.state = z
  z = (z ~ (z >> 30)) * 0xBF58476D1CE4E5B9
  z = (z ~ (z >> 27)) * 0x94D049BB133111EB
  return z ~ (z >> 31)
end

--- A float in [0, 1).
function Stream:float()
  return (self:int64() >> 11) * 2.0 ^ -53
end

--- True with probability p (p <= 0 never, p >= 1 always).
function Stream:chance(p)
  if p <= 0 then return false end
  if p >= 1 then return true end
  return self:float() < p
end

--- An integer in [lo, hi].
function Stream:range(lo, hi)
  return lo + (self:int64() >> 1) % (hi - lo + 1)
end

--- 32 lowercase hex digits.
function Stream:hex128()
  return ("%016x%016x"):format(self:int64(), self:int64())
end

return M
