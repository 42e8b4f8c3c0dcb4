-- busted output handler: gtest-style lines (one per test, names visible in CI
-- logs), plus "PASSED FAILED" written to $DRVRUN_RESULTS for tools/summary.
return function(options)
  local busted = require 'busted'
  local handler = require 'busted.outputHandlers.gtest'(options)

  busted.subscribe({ 'suite', 'end' }, function()
    local path = os.getenv('DRVRUN_RESULTS')
    if path then
      local f = assert(io.open(path, 'w'))
      f:write(string.format('%d %d\n', handler.successesCount,
        handler.failuresCount + handler.errorsCount))
      f:close()
    end
    return nil, true
  end)
  return handler
end
