-- A binary min-heap of tables ordered by their `at` field: the scheduler's timers and the
-- poller's due tasks.
local M = {}

function M.push(heap, item)
  local i = #heap + 1
  heap[i] = item
  while i > 1 do
    local parent = i // 2
    if heap[parent].at <= item.at then break end
    heap[i], heap[parent] = heap[parent], item
    i = parent
  end
end

--- Removes and returns the item with the smallest `at` (nil when empty).
function M.pop(heap)
  local n = #heap
  local top, last = heap[1], heap[n]
  heap[n] = nil
  n = n - 1
  if n > 0 then
    heap[1] = last
    local i = 1
    while true do
      local l, r, m = 2 * i, 2 * i + 1, i
      if l <= n and heap[l].at < heap[m].at then m = l end
      if r <= n and heap[r].at < heap[m].at then m = r end
      if m == i then break end
      heap[i], heap[m] = heap[m], heap[i]
      i = m
    end
  end
  return top
end

return M
