local log = require "drv.log"

-- The lines drv.log writes for `fields`, in both formats.
local function lines(fields)
  local out, saved = {}, { log.out, log.format }
  log.out = { write = function(_, s) out[#out + 1] = s end, flush = function() end }
  for _, format in ipairs { "text", "json" } do
    log.format = format
    log.event("info", "m", fields)
  end
  log.out, log.format = saved[1], saved[2]
  return out[1], out[2]
end

describe("drv.log", function()
  it("writes durations to the millisecond as %.3f does", function()
    for _, s in ipairs { 0.0, 0.0004, 0.003, 0.12, 1.5, 2.0, 12.345, 59.9996, 3600.25 } do
      assert.equal(("%.3f"):format(s), log.seconds(s), s)
    end
    assert.equal(("%.3f"):format(1e13), log.seconds(1e13))
  end)

  it("writes numeric fields as tostring does, in text and in JSON", function()
    local fields = { seconds = 0.003, whole = 2.0, third = 1 / 3, count = 5, big = 1e20, neg = -0.5 }
    local text, json = lines(fields)
    for k, v in pairs(fields) do
      assert.matches(" " .. k .. "=" .. tostring(v):gsub("%p", "%%%0") .. "[ \n]", text)
      assert.matches('"' .. k .. '":' .. tostring(v):gsub("%p", "%%%0") .. "[,}]", json)
    end
  end)

  it("stamps lines in UTC", function()
    local text = lines({})
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ INFO m\n$", text)
    assert.equal(os.date("!%Y-%m-%dT%H:%M:%SZ", 86400 * 366), log.timestamp(86400 * 366))
  end)

  it("formats no message below its level", function()
    local saved = log.level
    log.set_level("info")
    log.debug("%d", "not a number") -- would raise if it were formatted
    log.level = saved
  end)
end)
