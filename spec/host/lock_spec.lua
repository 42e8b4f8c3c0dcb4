local lock = require "drv.lock"
local signal = require "drv.signal"
local proc = require "drv.proc"
local fs = require "drv.fs"
local sys = require "drv.sys"

local function drvrun(code)
  return assert(proc.run({ os.getenv("DRVRUN"), "-e", code }))
end

describe("drv.lock", function()
  local path
  before_each(function() path = fs.tmpdir("lock") .. "/host.lock" end)

  it("names the holder to a second process, and is released on close", function()
    do
      local l <close> = assert(lock.acquire(path, { owner = "ubuntu-ofed 5.9" }))
      assert.matches("held%)$", tostring(l))
      assert.equal(path, l:path())
      local r = drvrun(("io.write(select(2, require('drv.lock').acquire(%q, { timeout = 0 })))"):format(path))
      assert.matches("^" .. path:gsub("%p", "%%%0") .. ": held by pid %d+ %(ubuntu%-ofed 5%.9%) since ", r.stdout)
      r = drvrun(("local l, e, n = require('drv.lock').acquire(%q, { timeout = 0.3 }) io.write(e, '|', n)"):format(path))
      assert.matches("%(timed out waiting%)|ETIMEDOUT$", r.stdout)
    end
    local r = drvrun(("io.write(tostring(require('drv.lock').acquire(%q, { timeout = 0 })))"):format(path))
    assert.matches("^drv%.lock %(", r.stdout)
  end)

  it("is released when the holder dies", function()
    local holder = assert(proc.spawn({ os.getenv("DRVRUN"), "-e",
      ("local l = require('drv.lock').acquire(%q) io.write('locked\\n') io.stdout:flush() require('drv.sys').sleep(30)")
        :format(path) }, { stdout = "null" }))
    for _ = 1, 100 do
      if (fs.read(path) or ""):match("pid") then break end
      sys.sleep(0.02)
    end
    assert.is_nil((lock.acquire(path, { timeout = 0 })))
    holder:kill("KILL")
    holder:wait()
    local l = assert(lock.acquire(path, { timeout = 1 }))
    l:unlock()
  end)

  it("with remove, leaves no file behind, and a waiter takes the lock on the file that is there", function()
    local l = assert(lock.acquire(path, { owner = "first", remove = true }))
    local waiter = assert(proc.spawn({ os.getenv("DRVRUN"), "-e", ([[
      local sys, lock = require "drv.sys", require "drv.lock"
      local l = assert(lock.acquire(%q, { owner = "second", remove = true, on_wait = function()
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
    local err = select(2, lock.acquire(path, { timeout = 0, remove = true }))
    assert.matches("held by pid %d+ %(second%)", err)
    waiter:kill("KILL")
    waiter:wait()
    local last = assert(lock.acquire(path, { timeout = 5, remove = true }))
    last:unlock()
    assert.is_false(fs.exists(path), "nothing left behind")
  end)

  it("allows shared holders together", function()
    local a = assert(lock.acquire(path, { shared = true }))
    local r = drvrun(("io.write(tostring(require('drv.lock').acquire(%q, { shared = true, timeout = 0 }) ~= nil))")
      :format(path))
    assert.equal("true", r.stdout)
    a:unlock()
  end)

  it("stops waiting when interrupt_fd becomes readable, leaving the signal to the watcher", function()
    local l = assert(lock.acquire(path))
    local r = drvrun(([[
      local sys = require "drv.sys"
      local w = require("drv.signal").watch { "TERM" }
      require("drv.proc").spawn({ "sh", "-c", "sleep 0.3; kill -TERM " .. sys.getpid() })
      local ok, err, errno = require("drv.lock").acquire(%q, { interrupt_fd = w:fd(),
        on_wait = function(h) io.write("waiting for ", h, "\n") end })
      io.write(err, "|", errno, "|", w:poll())]]):format(path))
    assert.matches("^waiting for pid %d+ %(drvrun%)", r.stdout)
    assert.matches("interrupted while waiting for pid %d+ %(drvrun%) since [^|]+|EINTR|TERM$", r.stdout)
    l:unlock()
  end)

  it("does not stop for a signal without interrupt_fd: a watcher of the caller's is none of its business", function()
    local l = assert(lock.acquire(path))
    local w <close> = signal.watch { "USR1" }
    assert(sys.kill(sys.getpid(), "USR1"))
    local none, err, errno = lock.acquire(path, { timeout = 0.3 })
    assert.same({ nil, "ETIMEDOUT" }, { none, errno })
    assert.matches("%(timed out waiting%)$", err)
    assert.equal("USR1", w:poll())
    l:unlock()
  end)

  it("fails with the path when the directory is missing", function()
    assert.same({ nil, "/nonexistent/x.lock: No such file or directory", "ENOENT" },
      { lock.acquire("/nonexistent/x.lock") })
  end)
end)
