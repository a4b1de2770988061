-- A binary min-heap of tables ordered by their `at` field: the scheduler's timers and the
-- poller's due tasks.
local M = {}

function M.push(heap, item)
  local i, at = #heap + 1, item.at
  while i > 1 do -- the hole moves up until item fits under its parent
    local parent = i // 2
    local p = heap[parent]
    if p.at <= at then break end
    heap[i] = p
    i = parent
  end
  heap[i] = item
end

--- Removes and returns the item with the smallest `at` (nil when empty).
function M.pop(heap)
  local n = #heap
  local top, last = heap[1], heap[n]
  heap[n] = nil
  n = n - 1
  if n > 0 then
    -- the hole left at the root moves down, each step taking the smaller child, until `last`
    -- fits there: one read of each child's `at` per level, and no swaps
    local at, i = last.at, 1
    while true do
      local c = 2 * i
      if c > n then break end
      local child, cat = heap[c], heap[c].at
      if c < n then
        local right = heap[c + 1]
        if right.at < cat then c, child, cat = c + 1, right, right.at end
      end
      if at <= cat then break end
      heap[i] = child
      i = c
    end
    heap[i] = last
  end
  return top
end

return M
