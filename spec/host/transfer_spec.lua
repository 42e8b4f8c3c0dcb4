-- drv.transfer, the C half of drv.fetch: one attempt at a time, its report, the
-- .part and the install, against a real HTTP server on 127.0.0.1
-- (spec/support/httpd.py). The policy around attempts is fetch_spec.lua's.
local transfer = require "drv.transfer"
local signal = require "drv.signal"
local fs = require "drv.fs"
local sys = require "drv.sys"
local httpd = require "spec.support.httpd"

local SIZE = 300 * 1024 + 7

describe("drv.transfer", function()
  local root, out, server, data, sum
  local n = 0

  -- A fresh destination path.
  local function dest()
    n = n + 1
    return ("%s/out%d"):format(out, n)
  end

  setup(function()
    root, out = assert(fs.tmpdir("transfer-root")), assert(fs.tmpdir("transfer-out"))
    data = assert(io.open("/dev/urandom", "rb")):read(SIZE)
    assert(fs.write(root .. "/data.bin", data))
    sum = assert(fs.sha256(root .. "/data.bin"))
    server = httpd.start(root)
  end)

  teardown(function()
    if server then server:stop() end
    fs.remove(root, { recursive = true })
    fs.remove(out, { recursive = true })
  end)

  it("runs an attempt into the locked .part, reports it, and installs the verified file", function()
    local path = dest()
    local job = assert(transfer.open(server:url("data.bin"), path .. ".part", { sha256 = sum }))
    assert.matches("^drv%.transfer%.job %(" .. (path .. ".part"):gsub("%p", "%%%0") .. "%)$", tostring(job))
    local r = job:attempt()
    assert.same({ outcome = "done", bytes = SIZE, received = SIZE, total = SIZE, resumed = false, sha256 = sum },
                { outcome = r.outcome, bytes = r.bytes, received = r.received, total = r.total, resumed = r.resumed,
                  sha256 = r.sha256 })
    assert.is_true(r.idle >= 0 and r.idle < 5)
    assert.equal(data, fs.read(path .. ".part"))
    assert.is_true(job:install(path))
    job:close()
    assert.matches("closed%)$", tostring(job))
    assert.equal(data, fs.read(path))
    assert.is_false(fs.exists(path .. ".part"))
  end)

  it("reports an HTTP status that is no success as it came, for drv.fetch to word", function()
    local path = dest()
    local job <close> = assert(transfer.open(server:url("flaky/data.bin?fail=100&code=503&retry_after=7"),
                                            path .. ".part"))
    local r = job:attempt()
    assert.same({ "http", 503, "7", 0 }, { r.outcome, r.status, r.retry_after, r.bytes })
    r = assert(transfer.open(server:url("status/404"), dest() .. ".part")):attempt()
    assert.same({ "http", 404 }, { r.outcome, r.status })
  end)

  it("reports a digest that is not the expected one, and starts over at the next attempt", function()
    local path = dest()
    local job <close> = assert(transfer.open(server:url("data.bin"), path .. ".part", { sha256 = ("0"):rep(64) }))
    local r = job:attempt()
    assert.same({ "mismatch", sum, SIZE }, { r.outcome, r.sha256, r.bytes })
    assert.has_error(function() job:install(path) end,
                     "calling 'install' on bad self (the transfer is not complete and verified)")
    r = job:attempt()
    assert.same({ "mismatch", SIZE, SIZE }, { r.outcome, r.bytes, r.received }, "the whole file again, not appended")
  end)

  it("continues a kept .part with a Range request when resuming, hashing it first", function()
    local path = dest()
    assert(fs.write(path .. ".part", data:sub(1, 1000)))
    local job <close> = assert(transfer.open(server:url("data.bin"), path .. ".part", { resume = true, sha256 = sum }))
    local r = job:attempt()
    assert.same({ "done", true, SIZE - 1000, SIZE }, { r.outcome, r.resumed, r.received, r.bytes })
  end)

  it("empties a kept .part that does not fit the file, and says so", function()
    local path = dest()
    assert(fs.write(path .. ".part", data .. "extra"))
    local job <close> = assert(transfer.open(server:url("data.bin"), path .. ".part", { resume = true }))
    local r = job:attempt()
    assert.same({ "restart", "EIO", 0 }, { r.outcome, r.errno, r.bytes })
    assert.equal(("HTTP 416: the kept .part (%d bytes) does not fit the file (%d bytes)"):format(SIZE + 5, SIZE),
                 r.message)
    assert.equal(0, #fs.read(path .. ".part"))
    assert.equal("done", job:attempt().outcome)
  end)

  it("fails a transfer as curl failed it: errno, message, and whether another attempt may do better", function()
    local r = assert(transfer.open("http://127.0.0.1:1/x", dest() .. ".part")):attempt()
    assert.same({ "failed", "ECONNREFUSED", true }, { r.outcome, r.errno, r.transient })
    assert.matches("^Failed to connect to 127%.0%.0%.1 port 1", r.message)
    r = assert(transfer.open(server:url("truncated/data.bin"), dest() .. ".part")):attempt()
    assert.same({ "failed", "EIO", true, ("truncated: got %d of %d bytes"):format(SIZE // 2, SIZE) },
                { r.outcome, r.errno, r.transient, r.message })
    r = assert(transfer.open(server:url("loop/x"), dest() .. ".part")):attempt()
    assert.same({ "failed", "ELOOP", false, "Maximum (10) redirects followed" },
                { r.outcome, r.errno, r.transient, r.message })
  end)

  it("ends an attempt whose body stalls after low_speed_time, or at the deadline", function()
    local job <close> = assert(transfer.open(server:url("stall/data.bin?send=1000"), dest() .. ".part",
                                             { low_speed_time = 1 }))
    local t0 = sys.monotonic()
    local r = job:attempt()
    assert.same({ "stalled", 1000 }, { r.outcome, r.bytes })
    assert.is_true(r.idle >= 1 and sys.monotonic() - t0 < 1 + 5)
    local job2 <close> = assert(transfer.open(server:url("hang/x"), dest() .. ".part"))
    t0 = sys.monotonic()
    r = job2:attempt(nil, t0 + 0.5)
    assert.equal("deadline", r.outcome)
    assert.is_true(sys.monotonic() - t0 >= 0.5 and sys.monotonic() - t0 < 0.5 + 5)
  end)

  it("is interrupted by interrupt_fd before any request, leaving the signal pending", function()
    local w <close> = signal.watch { "USR1" }
    local path = dest()
    local job = assert(transfer.open(server:url("data.bin"), path .. ".part", { interrupt_fd = w:fd() }))
    assert(sys.kill(sys.getpid(), "USR1"))
    assert.equal("interrupted", job:attempt().outcome)
    assert.equal("USR1", w:poll())
    job:close(true)
    assert.is_false(fs.exists(path .. ".part"), "an empty .part is not kept")
  end)

  it("calls the progress function, and raises its error once curl is done; no method runs meanwhile", function()
    local job <close> = assert(transfer.open(server:url("slow/data.bin?chunk=65536&delay=0.05"), dest() .. ".part",
                                             { resume = true }))
    local calls, last = 0, nil
    local boom = setmetatable({}, { __tostring = function() return "boom" end })
    local ok, err = pcall(job.attempt, job, function(bytes, total, idle, got)
      calls, last = calls + 1, { bytes, total, got }
      assert.is_number(idle)
      if bytes > 0 then
        local closed, why = pcall(job.close, job)
        assert.is_false(closed)
        assert.matches("in an attempt", why)
        error(boom)
      end
    end)
    assert.same({ false, boom }, { ok, err })
    assert.is_true(calls >= 1)
    assert.same({ last[1], SIZE }, { last[3], last[2] })
    assert.equal("done", job:attempt().outcome, "the job is usable after the error")
  end)

  it("keeps the .part on close only when asked and it holds bytes", function()
    local path = dest()
    local job = assert(transfer.open(server:url("truncated/data.bin"), path .. ".part", { resume = true }))
    job:attempt()
    job:close(true)
    assert.equal(data:sub(1, SIZE // 2), fs.read(path .. ".part"))
    job = assert(transfer.open(server:url("truncated/data.bin"), path .. ".part", { resume = true }))
    job:close()
    assert.is_false(fs.exists(path .. ".part"))
  end)

  it("fails to open with the failure tuple, touching nothing for a bad URL", function()
    local path = dest()
    assert.same({ nil, "unsupported scheme 'ftp' (https, http or file)", "EPROTONOSUPPORT" },
                { transfer.open("ftp://127.0.0.1/x", path .. ".part") })
    assert.same({ nil, "malformed URL (Bad scheme)", "EINVAL" }, { transfer.open("not a url", path .. ".part") })
    assert.same({ nil, root .. ": Is a directory", "EISDIR" }, { transfer.open("file://" .. root, path .. ".part") })
    assert.is_false(fs.exists(path .. ".part"))
    assert.same({ nil, out .. "/no/such.part: No such file or directory", "ENOENT" },
                { transfer.open(server:url("data.bin"), out .. "/no/such.part") })
    local held = assert(transfer.open(server:url("data.bin"), path .. ".part"))
    assert.same({ nil, path .. ".part: in use by another download", "EBUSY" },
                { transfer.open(server:url("data.bin"), path .. ".part") })
    held:close()
  end)

  it("raises on bad arguments", function()
    local url = server:url("data.bin")
    assert.has_error(function() transfer.open() end, "bad argument #1 to 'open' (string expected, got no value)")
    assert.has_error(function() transfer.open(url, "") end,
                     "bad argument #2 to 'open' (path expected, without a zero byte)")
    assert.has_error(function() transfer.open(url, "/tmp/x", { sha256 = ("A"):rep(64) }) end,
                     "bad argument #3 to 'open' (field 'sha256': 64 lowercase hex digits expected)")
    assert.has_error(function() transfer.open(url, "/tmp/x", { low_speed_time = -1 }) end,
                     "bad argument #3 to 'open' (a time or interrupt_fd out of range)")
    local job <close> = assert(transfer.open(url, dest() .. ".part"))
    assert.has_error(function() job:attempt("fast") end,
                     "bad argument #1 to 'attempt' (function expected, got string)")
  end)
end)
