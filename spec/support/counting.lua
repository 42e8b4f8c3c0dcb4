-- busted output handler: gtest-style lines (one per test, names visible in CI
-- logs), plus "PASSED FAILED" written to $DRVRUN_RESULTS for tools/summary.
-- The counts are written after every test too, with one failure more for the
-- run that has not ended: a run cut off (a guest killed at its timeout, a
-- crash) still reports the tests it finished, and fails. The suite's end
-- writes the final counts. After a reboot of the guest (spec/vm/run: the same
-- COMMAND again, DRVRUN_VM_BOOT > 1) the counts of the boots before are added.
return function(options)
  local busted = require 'busted'
  local handler = require 'busted.outputHandlers.gtest'(options)
  local path = os.getenv('DRVRUN_RESULTS')
  local before = { 0, 0 }
  if path and tonumber(os.getenv('DRVRUN_VM_BOOT') or '1') > 1 then
    local f = io.open(path)
    if f then
      before = { f:read('n') or 0, f:read('n') or 0 }
      f:close()
    end
  end

  local function write_counts(unfinished)
    local f = assert(io.open(path, 'w'))
    f:write(string.format('%d %d\n', before[1] + handler.successesCount,
      before[2] + handler.failuresCount + handler.errorsCount + unfinished))
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
