local signal = require "drv.signal"
local proc = require "drv.proc"
local sys = require "drv.sys"

local function drvrun(code)
  return assert(proc.run({ os.getenv("DRVRUN"), "-e", code }))
end

describe("drv.signal", function()
  it("waits for a signal sent to this process, and polls one that arrived", function()
    local w = signal.watch { "TERM", "INT", "HUP" }
    assert.is_nil(w:poll())
    assert.is_nil(w:wait(0.05))
    assert.is_true(sys.kill(sys.getpid(), "HUP"))
    assert.equal("HUP", w:wait(1))
    assert.is_true(sys.kill(sys.getpid(), "SIGTERM"))
    assert.equal("TERM", w:poll())
    assert.is_nil(w:poll())
    assert.matches("^drv%.signal%.watcher %(open%)$", tostring(w))
    w:close()
    assert.matches("%(closed%)$", tostring(w))
    assert.has_error(function() w:poll() end, "calling 'poll' on bad self (watcher is closed)")
    assert.has_error(function() w:fd() end, "calling 'fd' on bad self (watcher is closed)")
    w:close() -- idempotent
  end)

  it("discards what is still pending when closed: a second TERM in a stop does not kill the process after", function()
    local r = drvrun([[
      local sys = require "drv.sys"
      local w = require("drv.signal").watch { "TERM" }
      assert(sys.kill(sys.getpid(), "TERM"))
      assert(sys.kill(sys.getpid(), "TERM"))
      w:close()
      io.write("still here")]])
    assert.equal(0, r.status, r.stderr)
    assert.equal("still here", r.stdout)
  end)

  it("restores the signal mask when closed (by __close too)", function()
    local r = drvrun([[
      local sys = require "drv.sys"
      do local w <close> = require("drv.signal").watch { "USR1" } end
      sys.kill(sys.getpid(), "USR1")
      sys.sleep(1)
      io.write("not reached")]])
    assert.same({ "", "SIGUSR1" }, { r.stdout, r.signal }, "killed by USR1, as without a watcher")
  end)

  it("raises on bad signal lists", function()
    assert.has_error(function() signal.watch {} end, "bad argument #1 to 'watch' (no signals named)")
    local ok, err = pcall(signal.watch, { "TERM", "NOPE" })
    assert.is_false(ok)
    assert.matches("unknown signal 'NOPE'", err)
  end)
end)
