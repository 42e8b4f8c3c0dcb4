local sys = require "drv.sys"
local proc = require "drv.proc"
local fs = require "drv.fs"
local E = sys.errno

local function drvrun(code)
  return assert(proc.run({ os.getenv("DRVRUN"), "-e", code }))
end

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

  describe("signals", function()
    it("waits for a signal sent to this process", function()
      local w = sys.signals { "TERM", "INT", "HUP" }
      assert.is_nil(w:poll())
      assert.is_nil(w:wait(0.05))
      assert.is_true(sys.kill(sys.getpid(), "HUP"))
      assert.equal("HUP", w:wait(1))
      assert.is_true(sys.kill(sys.getpid(), "SIGTERM"))
      assert.equal("TERM", sys.pending_signal())
      w:close()
      assert.is_nil(sys.pending_signal())
    end)

    it("discards what is still pending when closed: a second TERM in a stop does not kill the process after", function()
      local r = drvrun([[
        local sys = require "drv.sys"
        local w = sys.signals { "TERM" }
        assert(sys.kill(sys.getpid(), "TERM"))
        assert(sys.kill(sys.getpid(), "TERM"))
        w:close()
        io.write("still here")]])
      assert.equal(0, r.status, r.stderr)
      assert.equal("still here", r.stdout)
    end)
  end)

  describe("lock", function()
    local path
    before_each(function() path = fs.tmpdir("lock") .. "/host.lock" end)

    it("names the holder to a second process, and is released on close", function()
      do
        local l <close> = assert(sys.lock(path, { owner = "ubuntu-ofed 5.9" }))
        assert.matches("held%)$", tostring(l))
        assert.equal(path, l:path())
        local r = drvrun(("io.write(select(2, require('drv.sys').lock(%q, { timeout = 0 })))"):format(path))
        assert.matches("^" .. path:gsub("%p", "%%%0") .. ": held by pid %d+ %(ubuntu%-ofed 5%.9%) since ", r.stdout)
        r = drvrun(("local l, e, n = require('drv.sys').lock(%q, { timeout = 0.3 }) io.write(e, '|', n)"):format(path))
        assert.matches("%(timed out waiting%)|" .. E.ETIMEDOUT .. "$", r.stdout)
      end
      local r = drvrun(("io.write(tostring(require('drv.sys').lock(%q, { timeout = 0 })))"):format(path))
      assert.matches("^drv.sys.lock", r.stdout)
    end)

    it("is released when the holder dies", function()
      local holder = assert(proc.spawn({ os.getenv("DRVRUN"), "-e",
        ("local l = require('drv.sys').lock(%q) io.write('locked\\n') io.stdout:flush() require('drv.sys').sleep(30)")
          :format(path) }, { stdout = "null" }))
      for _ = 1, 100 do
        if (fs.read(path) or ""):match("pid") then break end
        sys.sleep(0.02)
      end
      assert.is_nil((sys.lock(path, { timeout = 0 })))
      holder:kill("KILL")
      holder:wait()
      local l = assert(sys.lock(path, { timeout = 1 }))
      l:unlock()
    end)

    it("with remove, leaves no file behind, and a waiter takes the lock on the file that is there", function()
      local l = assert(sys.lock(path, { owner = "first", remove = true }))
      local waiter = assert(proc.spawn({ os.getenv("DRVRUN"), "-e", ([[
        local sys = require "drv.sys"
        local l = assert(sys.lock(%q, { owner = "second", remove = true, on_wait = function()
          io.write("waiting\n") io.stdout:flush() end }))
        io.write("locked\n") io.stdout:flush()
        sys.sleep(30)]]):format(path) }, { stdout = "capture" }))
      assert.is_true(fs.exists(path))
      -- the waiter blocks on the file that will be removed, then must lock the new one
      sys.sleep(0.5)
      l:unlock()
      local held
      for _ = 1, 300 do
        held = (fs.read(path) or ""):match("%(second%)")
        if held then break end
        sys.sleep(0.05)
      end
      assert.truthy(held, "the waiter holds the lock on the file at the path")
      local err = select(2, sys.lock(path, { timeout = 0, remove = true }))
      assert.matches("held by pid %d+ %(second%)", err)
      waiter:kill("KILL")
      waiter:wait()
      local last = assert(sys.lock(path, { timeout = 5, remove = true }))
      last:unlock()
      assert.is_false(fs.exists(path), "nothing left behind")
    end)

    it("allows shared holders together", function()
      local a = assert(sys.lock(path, { shared = true }))
      local r = drvrun(("io.write(tostring(require('drv.sys').lock(%q, { shared = true, timeout = 0 }) ~= nil))")
        :format(path))
      assert.equal("true", r.stdout)
      a:unlock()
    end)

    it("is interrupted by a handled signal while waiting", function()
      local l = assert(sys.lock(path))
      local r = drvrun(([[
        local sys = require "drv.sys"
        local w = sys.signals { "TERM" }
        require("drv.proc").spawn({ "sh", "-c", "sleep 0.3; kill -TERM " .. sys.getpid() })
        local ok, err, errno = sys.lock(%q, { on_wait = function(h) io.write("waiting for ", h, "\n") end })
        io.write(err, "|", errno)]]):format(path))
      assert.matches("^waiting for pid %d+ %(drvrun%)", r.stdout)
      assert.matches("interrupted by SIGTERM while waiting for pid %d+ %(drvrun%) since [^|]+|" .. E.EINTR .. "$",
        r.stdout)
      l:unlock()
    end)

    it("fails with the path when the directory is missing", function()
      assert.same({ nil, "/nonexistent/x.lock: No such file or directory", E.ENOENT },
        { sys.lock("/nonexistent/x.lock") })
    end)
  end)
end)
