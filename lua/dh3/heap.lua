-- A binary min-heap of tables ordered by their `at` field, ties broken by `seq` where the items
-- carry one (then equal deadlines come out in the order they went in): the scheduler's timers,
-- the poller's due tasks and the emulator's timers.
local M = {}

--- The order of the heap: true when a comes out before b.
function M.before(a, b)
  local x, y = a.at, b.at
  return x < y or x == y and (a.seq or 0) < (b.seq or 0)
end
local before = M.before

function M.push(heap, item)
  local i = #heap + 1
  while i > 1 do -- the hole moves up until item fits under its parent
    local parent = (i - i % 2) / 2
    local p = heap[parent]
    if not before(item, p) then break end
    heap[i] = p
    i = parent
  end
  heap[i] = item
end

--- Removes and returns the item that comes first (nil when empty).
function M.pop(heap)
  local n = #heap
  local top, last = heap[1], heap[n]
  heap[n] = nil
  n = n - 1
  if n > 0 then
    -- the hole left at the root moves down, each step taking the child that comes first, until
    -- `last` fits there: no swaps
    local i = 1
    while true do
      local c = 2 * i
      if c > n then break end
      local child = heap[c]
      if c < n then
        local right = heap[c + 1]
        if before(right, child) then c, child = c + 1, right end
      end
      if not before(child, last) then break end
      heap[i] = child
      i = c
    end
    heap[i] = last
  end
  return top
end

return M
