local sys = require "drv.sys"
local proc = require "drv.proc"
local fs = require "drv.fs"

describe("drv.sys", function()
  it("reports uname like uname(1)", function()
    local u = sys.uname()
    assert.equal(assert(proc.run({ "uname", "-r" })).stdout, u.release .. "\n")
    assert.equal(assert(proc.run({ "uname", "-m" })).stdout, u.machine .. "\n")
    assert.equal("Linux", u.sysname)
  end)

  it("reads the boot id, the CPU count and the clocks", function()
    assert.matches("^%x+%-%x+%-%x+%-%x+%-%x+$", sys.boot_id())
    assert.is_true(sys.nproc() >= 1)
    local t0 = sys.monotonic()
    sys.sleep(0.05)
    assert.is_true(sys.monotonic() - t0 >= 0.05)
    assert.is_true(math.abs(sys.time() - os.time()) < 2)
    assert.equal(0, sys.geteuid())
  end)

  it("writes a time as UTC as os.date does, without the time zone", function()
    local times = { 0, 59, 86399, 86400, 951782400, 951868800, 4107542400, 4107628800, -1, -86401, -2208988800 }
    for _ = 1, 2000 do times[#times + 1] = math.random(-2 ^ 33, 2 ^ 34) end
    for _, t in ipairs(times) do assert.equal(os.date("!%Y-%m-%dT%H:%M:%SZ", t), sys.utc(t), t) end
    local now = os.time()
    assert.is_true(sys.utc() == os.date("!%Y-%m-%dT%H:%M:%SZ", now) or sys.utc() == os.date("!%Y-%m-%dT%H:%M:%SZ", now + 1))
    assert.has_error(function() sys.utc("soon") end)
  end)

  it("gives the host name, as the kernel has it", function()
    assert.equal((assert(fs.read("/proc/sys/kernel/hostname")):gsub("\n$", "")), sys.hostname())
  end)

  it("tells terminals apart", function()
    assert.is_false(sys.isatty(io.open("/dev/null")))
    local r = assert(proc.run({ "script", "-qec",
      os.getenv("DRVRUN") .. [[ -e 'io.write(tostring(require("drv.sys").isatty(io.stdout)))']], "/dev/null" }))
    assert.equal("true", r.stdout, "stdout on a pseudo-terminal")
  end)
end)
