-- busted output handler: gtest-style lines (one per test, names visible in CI
-- logs), plus "PASSED FAILED" written to $DRVRUN_RESULTS for tools/summary.
-- The counts are written after every test too, with one failure more for the
-- run that has not ended: a run cut off (a guest killed at its timeout, a
-- crash) still reports the tests it finished, and fails. The suite's end
-- writes the final counts.
return function(options)
  local busted = require 'busted'
  local handler = require 'busted.outputHandlers.gtest'(options)
  local path = os.getenv('DRVRUN_RESULTS')

  local function write_counts(unfinished)
    local f = assert(io.open(path, 'w'))
    f:write(string.format('%d %d\n', handler.successesCount,
      handler.failuresCount + handler.errorsCount + unfinished))
    f:close()
  end

  if path then
    -- after the base handler (priority 1) has counted the test or the error
    for _, event in ipairs { { 'suite', 'start' }, { 'test', 'end' }, { 'error' }, { 'failure' } } do
      busted.subscribe(event, function()
        write_counts(1)
        return nil, true
      end)
    end
    busted.subscribe({ 'suite', 'end' }, function()
      write_counts(0)
      return nil, true
    end)
  end
  return handler
end
