-- drv.fetch against a real HTTP(S) server on 127.0.0.1 (spec/support/httpd.py).
local fetch = require "drv.fetch"
local proc = require "drv.proc"
local sys = require "drv.sys"
local signal = require "drv.signal"
local httpd = require "spec.support.httpd"

local quote = httpd.quote
-- lib/lua of this tree, for drvrun processes (build/san/drvrun does not find it by itself).
local LIBDIR = (debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "../../lib/lua"

local SIZE = 1024 * 1024 + 123

local function sh(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  local ok, _, code = p:close()
  return out, ok, code
end

local function readfile(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local function writefile(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

local function exists(path)
  return readfile(path) ~= nil
end

local function sha256(path)
  return (sh("sha256sum " .. quote(path)):match("^(%x+)"))
end

local function pattern(s)
  return (s:gsub("%p", "%%%0"))
end

-- The default display goes to stderr: run drvrun as a process to see it.
local function run(code, env)
  return sh(("%s %s -e %s 2>&1"):format(env or "", quote(os.getenv("DRVRUN")), quote(code)))
end

describe("drv.fetch", function()
  local root, outdir, server, data, sum
  local n = 0

  -- A fresh destination path.
  local function dest()
    n = n + 1
    return ("%s/out%d"):format(outdir, n)
  end

  -- Put data (default: the 1 MiB test file) on the server under a fresh name;
  -- return the name (stats are counted per name).
  local function serve(content)
    n = n + 1
    local name = ("f%d.bin"):format(n)
    writefile(root .. "/" .. name, content or data)
    return name
  end

  setup(function()
    root = sh("mktemp -d"):gsub("%s+$", "")
    outdir = sh("mktemp -d"):gsub("%s+$", "")
    data = assert(io.open("/dev/urandom", "rb")):read(SIZE)
    writefile(root .. "/data.bin", data)
    sum = sha256(root .. "/data.bin")
    server = httpd.start(root)
  end)

  teardown(function()
    if server then server:stop() end
    if root then os.execute("rm -rf " .. quote(root) .. " " .. quote(outdir)) end
  end)

  describe("get", function()
    it("downloads, verifies and installs the file", function()
      local out = dest()
      local r = assert(fetch.get(server:url("data.bin"), out, { sha256 = sum, quiet = true }))
      assert.same({ path = out, sha256 = sum, bytes = SIZE, transferred = SIZE, resumed = false,
                    attempts = 1 }, { path = r.path, sha256 = r.sha256, bytes = r.bytes,
                    transferred = r.transferred, resumed = r.resumed, attempts = r.attempts })
      assert.is_number(r.seconds)
      assert.is_true(r.seconds >= 0)
      assert.equal(data, readfile(out))
      assert.is_false(exists(out .. ".part"))
    end)

    it("returns the digest when none is expected, and accepts upper-case hex", function()
      local r = assert(fetch.get(server:url("data.bin"), dest(), { quiet = true }))
      assert.equal(sum, r.sha256)
      r = assert(fetch.get(server:url("data.bin"), dest(), { sha256 = sum:upper(), quiet = true }))
      assert.equal(sum, r.sha256)
    end)

    it("fails on a checksum mismatch, leaving nothing behind", function()
      local out, bad = dest(), ("0"):rep(64)
      local url = server:url("data.bin")
      local r, msg, errno = fetch.get(url, out, { sha256 = bad, quiet = true, backoff = 0 })
      assert.same({ nil, url .. ": sha256 mismatch: expected " .. bad .. ", got " .. sum, "EBADMSG" },
                  { r, msg, errno })
      assert.is_false(exists(out))
      assert.is_false(exists(out .. ".part"))
    end)

    it("leaves an existing destination untouched on failure", function()
      local out = dest()
      writefile(out, "old contents")
      assert.is_nil(fetch.get(server:url("data.bin"), out, { sha256 = ("a"):rep(64), quiet = true }))
      assert.is_nil(fetch.get(server:url("status/404"), out, { quiet = true }))
      assert.equal("old contents", readfile(out))
    end)

    it("replaces an existing destination on success", function()
      local out = dest()
      writefile(out, "old contents")
      assert(fetch.get(server:url("data.bin"), out, { sha256 = sum, quiet = true }))
      assert.equal(data, readfile(out))
    end)

    it("returns HTTP errors as tuples with a fitting errno, without retrying 4xx", function()
      for code, want in pairs({ [404] = { "Not Found", "ENOENT" }, [403] = { "Forbidden", "EACCES" },
                                [401] = { "Unauthorized", "EACCES" }, [400] = { "Bad Request", "EIO" },
                                [500] = { "Internal Server Error", "EIO" } }) do
        local out, url = dest(), server:url("status/" .. code)
        local r, msg, errno = fetch.get(url, out, { retries = code < 500 and 3 or 0, quiet = true })
        assert.same({ nil, ("%s: HTTP %d %s"):format(url, code, want[1]), want[2] }, { r, msg, errno })
        assert.is_false(exists(out))
        assert.is_false(exists(out .. ".part"))
      end
    end)

    it("reports a final 3xx without a Location as an error", function()
      local url = server:url("status/304")
      assert.same({ nil, url .. ": HTTP 304 Not Modified", "EIO" },
                  { fetch.get(url, dest(), { quiet = true }) })
    end)

    it("retries a 500 and succeeds", function()
      local name = serve()
      local r = assert(fetch.get(server:url("flaky/" .. name .. "?fail=1"), dest(),
                                 { sha256 = sum, backoff = 0.01, quiet = true }))
      assert.equal(2, r.attempts)
      assert.equal(SIZE, r.bytes)
      assert.equal(2, (server:stats(name)))
    end)

    it("retries 408 and 429, honouring Retry-After", function()
      local name = serve()
      local r = assert(fetch.get(server:url("flaky/" .. name .. "?fail=2&code=408"), dest(),
                                 { backoff = 0.01, quiet = true }))
      assert.equal(3, r.attempts)
      name = serve()
      r = assert(fetch.get(server:url("flaky/" .. name .. "?fail=1&code=429&retry_after=1"), dest(),
                           { backoff = 0.01, quiet = true }))
      assert.equal(2, r.attempts)
      assert.is_true(r.seconds >= 1)
    end)

    it("gives up after the retries, naming the number of attempts", function()
      local name = serve()
      local url = server:url("flaky/" .. name .. "?fail=100")
      local out = dest()
      assert.same({ nil, url .. ": HTTP 500 Internal Server Error (after 3 attempts)", "EIO" },
                  { fetch.get(url, out, { retries = 2, backoff = 0.01, quiet = true }) })
      assert.equal(3, (server:stats(name)))
      assert.is_false(exists(out))
    end)

    it("times out a slow body (ETIMEDOUT), leaving nothing behind", function()
      local out, url = dest(), server:url("slow/data.bin")
      local t0 = os.time()
      local r, msg, errno = fetch.get(url, out, { timeout = 0.5, retries = 0, quiet = true })
      assert.is_nil(r)
      assert.equal("ETIMEDOUT", errno)
      assert.matches("^" .. url:gsub("%p", "%%%0") .. ": Operation timed out after %d+ milliseconds", msg)
      assert.is_true(os.time() - t0 <= 3)
      assert.is_false(exists(out))
      assert.is_false(exists(out .. ".part"))
    end)

    it("aborts a stalled transfer after low_speed_time", function()
      local url = server:url("slow/data.bin?chunk=1&delay=0.5")
      local r, msg, errno = fetch.get(url, dest(), { low_speed_time = 1, retries = 0, quiet = true })
      assert.is_nil(r)
      assert.equal("ETIMEDOUT", errno)
      assert.matches("Operation too slow", msg)
    end)

    it("reports a truncated body (EIO), leaving nothing behind", function()
      local out, url = dest(), server:url("truncated/data.bin")
      assert.same({ nil, ("%s: truncated: got %d of %d bytes"):format(url, SIZE // 2, SIZE), "EIO" },
                  { fetch.get(url, out, { retries = 0, quiet = true }) })
      assert.is_false(exists(out))
      assert.is_false(exists(out .. ".part"))
    end)

    it("reports connection refused (ECONNREFUSED)", function()
      local r, msg, errno = fetch.get("http://127.0.0.1:1/x", dest(), { retries = 0, quiet = true })
      assert.is_nil(r)
      assert.equal("ECONNREFUSED", errno)
      assert.matches("^http://127.0.0.1:1/x: Failed to connect to 127.0.0.1 port 1 .*Connection refused", msg)
    end)

    it("follows redirects, but only to http and https", function()
      local r = assert(fetch.get(server:url("redirect/x?to=/data.bin"), dest(),
                                 { sha256 = sum, quiet = true }))
      assert.equal(SIZE, r.bytes)
      for _, to in ipairs({ "ftp://127.0.0.1/x", "file:///etc/passwd" }) do
        local url, out = server:url("redirect/x?to=" .. to), dest()
        local scheme = to:match("^%a+")
        assert.same({ nil, ('%s: Protocol "%s" not supported or disabled in libcurl'):format(url, scheme),
                      "EPROTONOSUPPORT" }, { fetch.get(url, out, { quiet = true }) })
        assert.is_false(exists(out))
      end
    end)

    it("stops a redirect loop (ELOOP)", function()
      local url = server:url("loop/x")
      assert.same({ nil, url .. ": Maximum (10) redirects followed", "ELOOP" },
                  { fetch.get(url, dest(), { quiet = true }) })
    end)

    describe("resume", function()
      it("continues a partial .part with a Range request", function()
        local name, out = serve(), dest()
        writefile(out .. ".part", data:sub(1, 300000))
        local r = assert(fetch.get(server:url(name), out, { resume = true, sha256 = sum, quiet = true }))
        assert.is_true(r.resumed)
        assert.equal(SIZE, r.bytes)
        assert.equal(SIZE - 300000, r.transferred)
        assert.same({ 1, SIZE - 300000 }, { server:stats(name) })
        assert.equal(data, readfile(out))
        assert.is_false(exists(out .. ".part"))
      end)

      it("keeps the .part of a truncated transfer and finishes it next time", function()
        local name, out = serve(), dest()
        local url = server:url("truncated/" .. name)
        assert.same({ nil, ("%s: truncated: got %d of %d bytes"):format(url, SIZE // 2, SIZE), "EIO" },
                    { fetch.get(url, out, { resume = true, retries = 0, quiet = true }) })
        assert.is_false(exists(out))
        assert.equal(data:sub(1, SIZE // 2), readfile(out .. ".part"))
        local r = assert(fetch.get(server:url(name), out, { resume = true, sha256 = sum, quiet = true }))
        assert.is_true(r.resumed)
        assert.equal(SIZE - SIZE // 2, r.transferred)
        assert.same({ 2, SIZE }, { server:stats(name) })    -- every byte served once
        assert.equal(data, readfile(out))
      end)

      it("continues within one call when a retry follows a truncation", function()
        local name, out = serve(), dest()
        local r = assert(fetch.get(server:url("truncated/" .. name .. "?times=1"), out,
                                   { resume = true, backoff = 0, sha256 = sum, quiet = true }))
        assert.same({ 2, true, SIZE }, { r.attempts, r.resumed, r.transferred })
        assert.same({ 2, SIZE }, { server:stats(name) })
        assert.equal(data, readfile(out))
      end)

      it("starts each retry over without resume", function()
        local name, out = serve(), dest()
        local r = assert(fetch.get(server:url("truncated/" .. name .. "?times=1"), out,
                                   { backoff = 0, sha256 = sum, quiet = true }))
        assert.same({ 2, false, SIZE + SIZE // 2 }, { r.attempts, r.resumed, r.transferred })
        assert.equal(data, readfile(out))
      end)

      it("restarts cleanly when the server ignores Range", function()
        local name, out = serve(), dest()
        writefile(out .. ".part", data:sub(1, 300000))
        local r = assert(fetch.get(server:url("norange/" .. name), out,
                                   { resume = true, sha256 = sum, quiet = true }))
        assert.is_false(r.resumed)
        assert.equal(SIZE, r.transferred)
        assert.equal(data, readfile(out))
      end)

      it("starts over when a 206 answers another range than asked", function()
        local name, out = serve(), dest()
        writefile(out .. ".part", data:sub(1, 300000))
        local r = assert(fetch.get(server:url("badrange/" .. name), out,
                                   { resume = true, sha256 = sum, quiet = true }))
        assert.is_false(r.resumed)
        assert.equal(2, (server:stats(name)))
        assert.equal(data, readfile(out))
      end)

      it("finishes a .part that is already complete without transferring", function()
        local name, out = serve(), dest()
        writefile(out .. ".part", data)
        local r = assert(fetch.get(server:url(name), out, { resume = true, sha256 = sum, quiet = true }))
        assert.is_true(r.resumed)
        assert.equal(0, r.transferred)
        assert.equal(data, readfile(out))
      end)

      it("starts over when the .part is longer than the file", function()
        local name, out = serve(), dest()
        writefile(out .. ".part", data .. "extra")
        local r = assert(fetch.get(server:url(name), out, { resume = true, sha256 = sum, quiet = true }))
        assert.is_false(r.resumed)
        assert.equal(data, readfile(out))
      end)

      it("starts over once when a resumed file fails its checksum", function()
        local name, out = serve(), dest()
        writefile(out .. ".part", ("x"):rep(5000))      -- a stale .part of another file
        local r = assert(fetch.get(server:url(name), out, { resume = true, sha256 = sum, quiet = true }))
        assert.is_false(r.resumed)
        assert.equal(SIZE - 5000 + SIZE, r.transferred)
        assert.equal(data, readfile(out))
        assert.is_false(exists(out .. ".part"))
      end)

      it("ignores and replaces a .part without resume", function()
        local name, out = serve(), dest()
        writefile(out .. ".part", ("x"):rep(5000))
        local r = assert(fetch.get(server:url(name), out, { sha256 = sum, quiet = true }))
        assert.is_false(r.resumed)
        assert.equal(SIZE, r.transferred)
        assert.equal(data, readfile(out))
      end)

      it("removes the .part after a permanent error even with resume", function()
        local out = dest()
        writefile(out .. ".part", ("x"):rep(5000))
        assert.is_nil(fetch.get(server:url("status/404"), out, { resume = true, quiet = true }))
        assert.is_false(exists(out .. ".part"))
      end)
    end)

    describe("file:// URLs", function()
      it("copies a local file", function()
        local out = dest()
        local r = assert(fetch.get("file://" .. root .. "/data.bin", out, { sha256 = sum, quiet = true }))
        assert.equal(SIZE, r.bytes)
        assert.equal(data, readfile(out))
      end)

      it("fails on a missing file (ENOENT) or a directory (EISDIR)", function()
        local url = "file://" .. root .. "/missing"
        assert.same({ nil, ("%s: Couldn't open file %s/missing (No such file or directory)")
                             :format(url, root), "ENOENT" }, { fetch.get(url, dest(), { quiet = true }) })
        url = "file://" .. root
        assert.same({ nil, ("%s: %s: Is a directory"):format(url, root), "EISDIR" },
                    { fetch.get(url, dest(), { quiet = true }) })
      end)
    end)

    it("refuses other schemes and malformed URLs without touching the destination", function()
      local out = dest()
      assert.same({ nil, "ftp://127.0.0.1/x: unsupported scheme 'ftp' (https, http or file)",
                    "EPROTONOSUPPORT" }, { fetch.get("ftp://127.0.0.1/x", out) })
      assert.same({ nil, "not a url: malformed URL (Bad scheme)", "EINVAL" }, { fetch.get("not a url", out) })
      assert.same({ nil, "http://[::1/x: malformed URL (Bad IPv6 address)", "EINVAL" },
                  { fetch.get("http://[::1/x", out) })
      assert.is_false(exists(out .. ".part"))
    end)

    it("fails when the destination directory does not exist (ENOENT)", function()
      local url, out = server:url("data.bin"), outdir .. "/no/such/file"
      assert.same({ nil, ("%s: %s.part: No such file or directory"):format(url, out), "ENOENT" },
                  { fetch.get(url, out, { quiet = true }) })
    end)

    it("fails when the destination is a directory, removing the .part", function()
      local url, out = server:url("data.bin"), dest()
      assert(os.execute("mkdir " .. quote(out)))
      assert.same({ nil, ("%s: cannot rename %s.part to %s: Is a directory"):format(url, out, out),
                    "EISDIR" },
                  { fetch.get(url, out, { quiet = true }) })
      assert.is_false(exists(out .. ".part"))
    end)

    it("refuses a .part another download holds (EBUSY) and leaves it alone", function()
      local url, out = server:url("data.bin"), dest()
      local p = assert(io.popen("exec flock " .. quote(out .. ".part") .. " -c 'echo locked; sleep 1'"))
      assert.equal("locked", p:read("l"))
      assert.same({ nil, ("%s: %s.part: in use by another download"):format(url, out), "EBUSY" },
                  { fetch.get(url, out, { quiet = true }) })
      assert.is_true(exists(out .. ".part"))
      p:close()
    end)

    it("reports a full disk (ENOSPC) and removes the .part", function()
      local mnt = dest()
      assert(os.execute("mkdir " .. quote(mnt)))
      local script = ("local r, m, e = require'drv.fetch'.get(%q, %q, { quiet = true, resume = true }) " ..
                      "io.write(tostring(m), '|', tostring(e), '|', tostring(io.open(%q) ~= nil))")
                     :format(server:url("data.bin"), mnt .. "/x", mnt .. "/x.part")
      local inner = ("mount -t tmpfs -o size=64k tmpfs %s && exec %s -e %s")
                    :format(quote(mnt), quote(os.getenv("DRVRUN")), quote(script))
      local out = sh("unshare -m sh -c " .. quote(inner))
      assert.equal(("%s: %s/x.part: No space left on device|ENOSPC|false"):format(server:url("data.bin"), mnt),
                   out)
    end)

    describe("TLS", function()
      local tls, tdir

      setup(function()
        tdir = sh("mktemp -d"):gsub("%s+$", "")
        local _, ok = sh(("openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -days 2 " ..
                          "-keyout %s/key.pem -out %s/cert.pem 2>&1"):format(tdir, tdir))
        assert(ok, "openssl cannot make a certificate")
        tls = httpd.start(root, { tls = { cert = tdir .. "/cert.pem", key = tdir .. "/key.pem" } })
      end)

      teardown(function()
        if tls then tls:stop() end
        os.execute("rm -rf " .. quote(tdir))
      end)

      it("verifies certificates by default (EPROTO for a self-signed one)", function()
        local url, out = tls:url("data.bin"), dest()
        assert.same({ nil, url .. ": SSL certificate problem: self-signed certificate", "EPROTO" },
                    { fetch.get(url, out, { quiet = true }) })
        assert.is_false(exists(out))
        assert.is_false(exists(out .. ".part"))
      end)

      it("skips verification only with insecure = true", function()
        local r = assert(fetch.get(tls:url("data.bin"), dest(),
                                   { insecure = true, sha256 = sum, quiet = true }))
        assert.equal(SIZE, r.bytes)
      end)
    end)

    describe("progress", function()
      it("calls the function with growing counts, rate-limited, and once at the end", function()
        local calls = {}
        local r = assert(fetch.get(server:url("slow/data.bin?chunk=65536&delay=0.05"), dest(), {
          progress = function(done, total) calls[#calls + 1] = { done, total } end }))
        assert.is_true(#calls >= 3)
        assert.is_true(#calls <= r.seconds * 10 + 2)
        for i, c in ipairs(calls) do
          assert.equal(SIZE, c[2])
          if i > 1 then assert.is_true(c[1] >= calls[i - 1][1]) end
        end
        assert.same({ SIZE, SIZE }, calls[#calls])
      end)

      it("propagates an error raised in the function, after cleanup", function()
        local out = dest()
        local boom = setmetatable({}, { __tostring = function() return "boom" end })
        local ok, err = pcall(fetch.get, server:url("slow/data.bin?chunk=65536&delay=0.05"), out, {
          progress = function(done) if done > 0 then error(boom) end end })
        assert.is_false(ok)
        assert.equal(boom, err)
        assert.is_false(exists(out))
        assert.is_false(exists(out .. ".part"))
        ok, err = pcall(fetch.get, server:url("data.bin"), out, { progress = function() error("late") end })
        assert.is_false(ok)
        assert.matches("late$", err)
        assert.is_false(exists(out))
        assert.is_false(exists(out .. ".part"))
      end)

      it("keeps the .part when the function raises and resume is on", function()
        local out = dest()
        local ok = pcall(fetch.get, server:url("slow/data.bin?chunk=65536&delay=0.05"), out, {
          resume = true, progress = function(done) if done > 0 then error("stop") end end })
        assert.is_false(ok)
        assert.is_false(exists(out))
        local part = readfile(out .. ".part")
        assert.is_true(#part > 0)
        assert.equal(data:sub(1, #part), part)
      end)

      it("prints plain lines when stderr is not a terminal", function()
        local url = server:url("data.bin")
        local out = run(("assert(require'drv.fetch'.get(%q, %q))"):format(url, dest()))
        assert.matches("^fetch " .. url:gsub("%p", "%%%0") ..
                       ": 1%.0 MiB of 1%.0 MiB %(100%%%), [%d.]+ [KMG]?i?B/s\n$", out)
      end)

      it("logs retries, through drv.log when it is loaded", function()
        local name = serve()
        local url = server:url("flaky/" .. name .. "?fail=1")
        local out = run(("require'drv.log' assert(require'drv.fetch'.get(%q, %q, { backoff = 0 }))")
                        :format(url, dest()), "DRVRUN_LOG_FORMAT=json DRVRUN_PATH=" .. quote(LIBDIR))
        local lines = {}
        for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
        assert.equal(2, #lines)
        assert.truthy(lines[1]:find('"level":"warn","msg":"fetch ' .. url ..
                                    ': HTTP 500 Internal Server Error; retry 1 of 3 in 0.0 s"', 1, true))
        assert.matches('"level":"info","msg":"fetch .*%(100%%%)', lines[2])
      end)

      it("draws a bar on a terminal", function()
        local url = server:url("data.bin")
        local code = ("assert(require'drv.fetch'.get(%q, %q))"):format(url, dest())
        local out = sh(("script -qec %s /dev/null"):format(quote(quote(os.getenv("DRVRUN")) .. " -e " ..
                                                            quote(code))))
        assert.matches("\rdata%.bin +100%%  1%.0 MiB of 1%.0 MiB", out)
        assert.matches("\27%[K\r?\n", out)
      end)

      it("warns when it starts a resumed download over", function()
        local name, out = serve(), dest()
        local url = server:url(name)
        writefile(out .. ".part", ("x"):rep(5000))
        local got = run(("assert(require'drv.fetch'.get(%q, %q, { resume = true, sha256 = %q }))")
                        :format(url, out, sum))
        local wrong = sh("head -c 5000 /dev/zero | tr '\\0' x > " .. quote(out .. ".x") ..
                         " && tail -c +5001 " .. quote(root .. "/" .. name) .. " >> " .. quote(out .. ".x") ..
                         " && sha256sum " .. quote(out .. ".x")):match("^%x+")
        assert.equal(("fetch %s: sha256 mismatch after resuming: expected %s, got %s; " ..
                      "downloading again from the start\n"):format(url, sum, wrong),
                     got:match("^[^\n]*\n"))
        assert.equal(data, readfile(out))

        out = dest()
        writefile(out .. ".part", data .. "extra")
        got = run(("assert(require'drv.fetch'.get(%q, %q, { resume = true }))"):format(url, out))
        assert.equal(("fetch %s: HTTP 416: the kept .part (%d bytes) does not fit the file (%d bytes); " ..
                      "downloading again from the start\n"):format(url, SIZE + 5, SIZE),
                     got:match("^[^\n]*\n"))
        assert.equal(data, readfile(out))

        out = dest()
        writefile(out .. ".part", data:sub(1, 1000))
        got = run(("assert(require'drv.fetch'.get(%q, %q, { resume = true }))")
                  :format(server:url("badrange/" .. name), out))
        assert.equal(("fetch %s: asked for bytes from 1000, got a range from 0; " ..
                      "downloading again from the start\n"):format(server:url("badrange/" .. name)),
                     got:match("^[^\n]*\n"))
        assert.equal(data, readfile(out))
      end)

      it("prints nothing with quiet = true or progress = false", function()
        local url = server:url("flaky/" .. serve() .. "?fail=1")
        assert.equal("", run(("assert(require'drv.fetch'.get(%q, %q, { quiet = true, backoff = 0 }))")
                            :format(url, dest())))
        assert.equal("", run(("assert(require'drv.fetch'.get(%q, %q, { progress = false }))")
                            :format(server:url("data.bin"), dest())))
      end)
    end)

    -- Waits below are sized for a machine 3x slower than the one they were
    -- measured on: drvrun starts in ~10 ms, a local request takes ~5 ms, and
    -- each bound is seconds above what the step needs.
    describe("stalls", function()
      -- The first 300000 bytes of the body, then silence with the connection open.
      local STALL, GOT = "?send=300000", "293.0 KiB of 1.0 MiB received"

      it("says so in plain lines while it lasts, and fails saying it stalled", function()
        local url = server:url("stall/" .. serve() .. STALL)
        local t0 = sys.monotonic()
        local out = run(("local _, m, e = require'drv.fetch'.get(%q, %q, { low_speed_time = 3, retries = 0 }) " ..
                         "io.write('result: ', m, ' ', e, '\\n')"):format(url, dest()))
        local took = sys.monotonic() - t0
        local stalls, last = 0, nil
        for line in out:gmatch("[^\n]+") do
          if line:find("stalled", 1, true) and not line:find("^result") then
            stalls = stalls + 1
            assert.matches("^fetch " .. pattern(url) .. ": stalled: no data for [12] s %(" .. pattern(GOT) ..
                           "%); giving up this attempt at 3 s$", line)
          end
          last = line
        end
        assert.is_true(stalls >= 1, out)
        assert.matches("^result: " .. pattern(url) .. ": stalled: no data for %d s %(" .. pattern(GOT) ..
                       "%) ETIMEDOUT$", last)
        assert.is_true(took >= 3 and took < 3 + 10, "took " .. took .. " s")
      end)

      it("reports a server that never answers as stalled", function()
        local url = server:url("hang/x")
        local out = run(("local _, m = require'drv.fetch'.get(%q, %q, { low_speed_time = 3, retries = 0 }) " ..
                         "io.write('result: ', m, '\\n')"):format(url, dest()))
        assert.matches("^fetch " .. pattern(url) .. ": stalled: no data for [12] s %(0 B received%); " ..
                       "giving up this attempt at 3 s\n", out)
        assert.matches("\nresult: " .. pattern(url) .. ": stalled: no data for %d s %(0 B received%)\n$", out)
      end)

      it("shows it on the bar on a terminal", function()
        local url = server:url("stall/" .. serve() .. STALL)
        local code = ("require'drv.fetch'.get(%q, %q, { low_speed_time = 3, retries = 0 })"):format(url, dest())
        local out = sh(("script -qec %s /dev/null"):format(quote(quote(os.getenv("DRVRUN")) .. " -e " ..
                                                            quote(code))))
        assert.matches("\rf%d+%.bin +28%%  293%.0 KiB of 1%.0 MiB  stalled [12] s\27%[K", out)
      end)

      it("passes stalled_for to a progress function", function()
        local url = server:url("stall/" .. serve() .. STALL)
        local calls = {}
        local r, msg, errno = fetch.get(url, dest(), { low_speed_time = 2, retries = 0, progress =
          function(done, total, stalled_for) calls[#calls + 1] = { done, total, stalled_for } end })
        assert.same({ nil, ETIMEDOUT = "ETIMEDOUT" }, { r, ETIMEDOUT = errno })
        assert.matches(": stalled: no data for %d s %(" .. pattern(GOT) .. "%)$", msg)
        assert.same({ SIZE, 0 }, { calls[1][2], calls[1][3] })      -- while bytes arrive
        local longest = 0
        for _, c in ipairs(calls) do
          assert.equal(SIZE, c[2])
          assert.is_true(c[3] == 0 or (c[3] >= 1 and c[1] == 300000))
          longest = math.max(longest, c[3])
        end
        assert.is_true(longest >= 1 and longest < 2 + 5, "longest stall seen: " .. longest)
      end)

      it("retries a stalled attempt, continuing it with resume", function()
        local name, out = serve(), dest()
        local r = assert(fetch.get(server:url("stall/" .. name .. STALL .. "&times=1"), out,
                                   { low_speed_time = 1, backoff = 0, resume = true, sha256 = sum, quiet = true }))
        assert.same({ 2, true, SIZE }, { r.attempts, r.resumed, r.transferred })
        assert.equal(data, readfile(out))
      end)
    end)

    describe("deadline", function()
      it("bounds a call that would otherwise retry for long", function()
        local name = serve()
        local url = server:url("flaky/" .. name .. "?fail=100000")
        local t0 = sys.monotonic()
        -- Sleeps of 0.25, 0.5 and 1 s between 4 attempts; the 2 s before a 5th would pass the deadline.
        local r, msg, errno = fetch.get(url, dest(), { deadline = 3, retries = 1000, backoff = 0.25, quiet = true })
        local took = sys.monotonic() - t0
        assert.same({ nil, "ETIMEDOUT" }, { r, errno })
        assert.matches("^" .. pattern(url) .. ": deadline of 3 s reached: 4 attempts in [%d.]+ s, 0 B received " ..
                       "in all; attempts 1%-4: HTTP 500 Internal Server Error; retry 4 would start after the " ..
                       "deadline %(in 2%.0 s%)$", msg)
        assert.equal(4, (server:stats(name)))
        assert.is_true(took < 3, "took " .. took .. " s")
      end)

      it("cuts an attempt short, keeps the .part with resume, and the next call continues it", function()
        local name, out = serve(), dest()
        local url = server:url("stall/" .. name .. "?send=300000&times=1")
        local t0 = sys.monotonic()
        local r, msg, errno = fetch.get(url, out, { deadline = 2, resume = true, quiet = true })
        local took = sys.monotonic() - t0
        assert.same({ nil, "ETIMEDOUT" }, { r, errno })
        assert.matches("^" .. pattern(url) .. ": deadline of 2 s reached: 1 attempt in [%d.]+ s, 293%.0 KiB " ..
                       "received in all %(file size 1%.0 MiB%); attempt 1: stopped by the deadline %(293%.0 KiB " ..
                       "of 1%.0 MiB received%)$", msg)
        assert.is_true(took >= 2 and took < 2 + 5, "took " .. took .. " s")
        assert.equal(data:sub(1, 300000), readfile(out .. ".part"))
        r = assert(fetch.get(url, out, { deadline = 60, resume = true, sha256 = sum, quiet = true }))
        assert.same({ true, SIZE - 300000 }, { r.resumed, r.transferred })
        assert.equal(data, readfile(out))
      end)

      it("says why each attempt stopped", function()
        local url = server:url("stall/" .. serve() .. "?send=300000")
        local r, msg = fetch.get(url, dest(), { deadline = 3, low_speed_time = 1, backoff = 0, retries = 100,
                                                quiet = true })
        assert.is_nil(r)
        -- Attempts that stopped alike are one entry ("attempts 1-2: …"), unless the seconds differ.
        assert.matches("; attempts? 1[-%d]*: stalled: no data for [12] s %(293%.0 KiB of 1%.0 MiB received%); ", msg)
        assert.matches("; attempt %d+: stopped by the deadline %(293%.0 KiB of 1%.0 MiB received%)$", msg)
      end)
    end)

    describe("interrupt_fd", function()
      local w

      before_each(function() w = signal.watch { "USR1" } end)
      after_each(function()
        while w:poll() do end     -- a signal left pending would kill busted once unblocked
        w:close()
      end)

      -- USR1 to this process after `delay` seconds.
      local function signal_after(delay)
        return assert(proc.spawn({ "sh", "-c", ("sleep %s; kill -USR1 %d"):format(delay, sys.getpid()) }))
      end

      it("aborts a transfer soon after the signal, keeps the .part, and the next call resumes it", function()
        local name, out = serve(), dest()
        local url = server:url("slow/" .. name .. "?chunk=1024&delay=0.05")   -- 20 KiB/s: 50 s in all
        local killer = signal_after(1)
        local t0 = sys.monotonic()
        local res = { fetch.get(url, out, { resume = true, interrupt_fd = w:fd(), quiet = true }) }
        local took = sys.monotonic() - t0
        killer:wait()
        assert.same({ nil, url .. ": interrupted", "EINTR" }, res)
        assert.is_true(took < 1 + 5, "took " .. took .. " s")     -- 50 s without the signal
        assert.equal("USR1", w:poll())                        -- the signal is left to the caller
        assert.is_false(exists(out))
        local part = readfile(out .. ".part")
        assert.is_true(#part > 0 and #part < SIZE)
        assert.equal(data:sub(1, #part), part)
        local r = assert(fetch.get(server:url(name), out, { resume = true, sha256 = sum, quiet = true,
                                                           interrupt_fd = w:fd() }))
        assert.same({ true, SIZE - #part }, { r.resumed, r.transferred })
        assert.equal(data, readfile(out))
      end)

      it("removes the .part without resume", function()
        local out = dest()
        local killer = signal_after(0.5)
        assert.same({ nil, server:url("slow/data.bin") .. ": interrupted", "EINTR" },
                    { fetch.get(server:url("slow/data.bin"), out, { interrupt_fd = w:fd(), quiet = true }) })
        killer:wait()
        assert.equal("USR1", w:poll())
        assert.is_false(exists(out .. ".part"))
      end)

      it("ends a backoff sleep", function()
        local name = serve()
        local url = server:url("flaky/" .. name .. "?fail=100")
        local killer = signal_after(1)
        local t0 = sys.monotonic()
        local res = { fetch.get(url, dest(), { backoff = 60, interrupt_fd = w:fd(), quiet = true }) }
        local took = sys.monotonic() - t0
        killer:wait()
        assert.same({ nil, url .. ": interrupted", "EINTR" }, res)
        assert.is_true(took < 1 + 5, "took " .. took .. " s")
        assert.equal("USR1", w:poll())
        assert.equal(1, (server:stats(name)))
      end)

      it("returns at once, before any request, when a signal is already pending", function()
        local name, out = serve(), dest()
        assert(sys.kill(sys.getpid(), "USR1"))
        assert.same({ nil, server:url(name) .. ": interrupted", "EINTR" },
                    { fetch.get(server:url(name), out, { interrupt_fd = w:fd(), quiet = true }) })
        assert.equal(0, (server:stats(name)))
        assert.equal("USR1", w:poll())
        assert.is_false(exists(out .. ".part"))
      end)

      it("does not disturb a download when no signal comes", function()
        local r = assert(fetch.get(server:url("data.bin"), dest(), { sha256 = sum, interrupt_fd = w:fd(),
                                                                     deadline = 60, quiet = true }))
        assert.same({ SIZE, 1 }, { r.bytes, r.attempts })
        assert.is_nil(w:poll())
      end)
    end)

    describe("bad arguments", function()
      local url = "http://127.0.0.1:1/x"

      it("raises naming the function and the argument", function()
        assert.has_error(function() fetch.get() end,
                         "bad argument #1 to 'get' (string expected, got no value)")
        assert.has_error(function() fetch.get(url) end,
                         "bad argument #2 to 'get' (string expected, got no value)")
        assert.has_error(function() fetch.get(url, "") end, "bad argument #2 to 'get' (empty path)")
        assert.has_error(function() fetch.get(url .. "\0x", "/tmp/x") end,
                         "bad argument #1 to 'get' (string contains a zero byte)")
        assert.has_error(function() fetch.get(url, "/tmp/x\0y") end,
                         "bad argument #2 to 'get' (string contains a zero byte)")
        assert.has_error(function() fetch.get(url, "/tmp/x", 5) end,
                         "bad argument #3 to 'get' (table expected, got number)")
      end)

      it("raises on bad options, naming the field", function()
        local g64, a65 = ("g"):rep(64), ("a"):rep(65)
        local cases = {
          { { sha256 = "abc" }, "field 'sha256': 64 hex digits expected, got 'abc'" },
          { { sha256 = g64 }, "field 'sha256': 64 hex digits expected, got '" .. g64 .. "'" },
          { { sha256 = a65 }, "field 'sha256': 64 hex digits expected, got '" .. a65 .. "'" },
          { { sha256 = 5 }, "field 'sha256': string expected, got number" },
          { { resume = "yes" }, "field 'resume': boolean expected, got string" },
          { { retries = 1.5 }, "field 'retries': integer expected, got number" },
          { { retries = -1 }, "field 'retries': integer in 0..1000 expected" },
          { { backoff = -1 }, "field 'backoff': number >= 0 expected" },
          { { backoff = "1" }, "field 'backoff': number expected, got string" },
          { { connect_timeout = 0 }, "field 'connect_timeout': positive number expected" },
          { { timeout = 0 / 0 }, "field 'timeout': number >= 0 expected" },
          { { low_speed_time = -1 }, "field 'low_speed_time': integer >= 0 expected" },
          { { deadline = -1 }, "field 'deadline': number >= 0 expected" },
          { { deadline = 1 / 0 }, "field 'deadline': number >= 0 expected" },
          { { deadline = "5" }, "field 'deadline': number expected, got string" },
          { { interrupt_fd = -1 }, "field 'interrupt_fd': open file descriptor expected, got -1" },
          { { interrupt_fd = 1.5 }, "field 'interrupt_fd': integer expected, got number" },
          { { interrupt_fd = 99999 }, "field 'interrupt_fd': open file descriptor expected, got 99999" },
          { { insecure = 1 }, "field 'insecure': boolean expected, got number" },
          { { progress = true }, "field 'progress': function or false expected, got boolean" },
          { { progress = "x" }, "field 'progress': function or false expected, got string" },
          { { quiet = "no" }, "field 'quiet': boolean expected, got string" },
          { { sha265 = ("a"):rep(64) }, "unknown option 'sha265'" },
          { { [1] = true }, "unknown option '1'" },
        }
        for _, c in ipairs(cases) do
          assert.has_error(function() fetch.get(url, "/tmp/x", c[1]) end,
                           "bad argument #3 to 'get' (" .. c[2] .. ")")
        end
      end)
    end)
  end)
end)
