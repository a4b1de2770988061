-- busted output handler: busted's plain terminal output, then one closing line that CI reads:
-- "N passed, N failed" (errors count as failed, pending specs as skipped).
return function(options)
  local busted = require "busted"
  local handler = require "busted.outputHandlers.plainTerminal"(options)

  busted.subscribe({ "suite", "end" }, function()
    local failed = handler.failuresCount + handler.errorsCount
    local line = ("%d passed, %d failed"):format(handler.successesCount, failed)
    if handler.pendingsCount > 0 then
      line = line .. (", %d skipped"):format(handler.pendingsCount)
    end
    io.write(line, "\n")
    io.flush()
    return nil, true
  end)
  return handler
end
