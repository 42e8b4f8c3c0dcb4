-- drv.fetch against a real HTTP server on 127.0.0.1.
local fetch = require "drv.fetch"
local fs = require "drv.fs"
local httpd = require "spec.support.httpd"
local E = require("drv.sys").errno

describe("drv.fetch", function()
  local server, web, out, sha
  local data = ("0123456789abcdef"):rep(65536) -- 1 MiB

  setup(function()
    web = assert(fs.tmpdir("web"))
    assert(fs.write(web .. "/bundle.tgz", data))
    sha = fs.sha256(web .. "/bundle.tgz")
    server = httpd.start(web)
  end)
  teardown(function()
    server:stop()
    fs.remove(web, { recursive = true })
  end)
  before_each(function() out = assert(fs.tmpdir("out")) end)
  after_each(function() fs.remove(out, { recursive = true }) end)

  local function quiet(t)
    t = t or {}
    t.quiet = true
    return t
  end

  it("downloads with the checksum verified and reports what it did", function()
    local r = assert(fetch.get(server:url("bundle.tgz"), out .. "/b.tgz", quiet { sha256 = sha }))
    assert.same({ path = out .. "/b.tgz", sha256 = sha, bytes = #data, resumed = false, attempts = 1 },
      { path = r.path, sha256 = r.sha256, bytes = r.bytes, resumed = r.resumed, attempts = r.attempts })
    assert.equal(sha, fs.sha256(out .. "/b.tgz"))
    assert.same({ "b.tgz" }, fs.dir(out))
  end)

  it("refuses a wrong checksum, naming both digests, and leaves nothing", function()
    local wrong = ("ab"):rep(32)
    assert.same({ nil, ("%s: sha256 mismatch: expected %s, got %s"):format(server:url("bundle.tgz"), wrong, sha),
                  E.EBADMSG }, { fetch.get(server:url("bundle.tgz"), out .. "/b.tgz", quiet { sha256 = wrong }) })
    assert.same({}, fs.dir(out))
  end)

  it("keeps an existing destination when the download fails", function()
    assert(fs.write(out .. "/b.tgz", "old"))
    assert.is_nil((fetch.get(server:url("bundle.tgz"), out .. "/b.tgz", quiet { sha256 = ("0"):rep(64) })))
    assert.equal("old", fs.read(out .. "/b.tgz"))
  end)

  it("fails on 404 at once", function()
    assert.same({ nil, server:url("status/404") .. ": HTTP 404", E.ENOENT },
      { fetch.get(server:url("status/404"), out .. "/x", quiet { backoff = 0.01 }) })
    assert.same({}, fs.dir(out))
  end)

  it("retries a 500 and then succeeds", function()
    local r = assert(fetch.get(server:url("flaky/1/bundle.tgz"), out .. "/b.tgz", quiet { sha256 = sha, backoff = 0.05 }))
    assert.equal(2, r.attempts)
  end)

  it("gives up after the retries, saying how many attempts it made", function()
    assert.same({ nil, server:url("flaky/9/bundle.tgz") .. ": HTTP 500 (after 3 attempts)", E.EIO },
      { fetch.get(server:url("flaky/9/bundle.tgz"), out .. "/b.tgz", quiet { retries = 2, backoff = 0.01 }) })
    assert.same({}, fs.dir(out))
  end)

  it("times out a slow body and leaves nothing at the destination", function()
    local ok, err, errno = fetch.get(server:url("slow/bundle.tgz"), out .. "/b.tgz",
                                     quiet { timeout = 0.5, retries = 0, resume = false })
    assert.is_nil(ok)
    assert.matches("^" .. server:url("slow/bundle.tgz"):gsub("%p", "%%%0") .. ": Operation timed out", err)
    assert.equal(E.ETIMEDOUT, errno)
    assert.same({}, fs.dir(out))
  end)

  it("treats a truncated body as a failure; the partial file is kept only for resume", function()
    local ok, err, errno = fetch.get(server:url("truncated/bundle.tgz"), out .. "/b.tgz", quiet { retries = 0 })
    assert.is_nil(ok)
    assert.matches(": truncated: ", err)
    assert.equal(E.EIO, errno)
    assert.same({ "b.tgz.part" }, fs.dir(out))
    fs.remove(out .. "/b.tgz.part")
    assert.is_nil((fetch.get(server:url("truncated/bundle.tgz"), out .. "/b.tgz", quiet { retries = 0, resume = false })))
    assert.same({}, fs.dir(out))
  end)

  it("resumes a partial download, transferring only the rest", function()
    local half = 400000
    assert(fs.write(out .. "/b.tgz.part", data:sub(1, half)))
    local before = server:stats()["/bundle.tgz"] or 0
    local r = assert(fetch.get(server:url("bundle.tgz"), out .. "/b.tgz", quiet { sha256 = sha }))
    assert.is_true(r.resumed)
    assert.equal(#data, r.bytes)
    assert.equal(#data - half, server:stats()["/bundle.tgz"] - before)
    assert.equal(sha, fs.sha256(out .. "/b.tgz"))
  end)

  it("starts over when the server cannot resume", function()
    assert(fs.write(out .. "/b.tgz.part", data:sub(1, 1000)))
    local r = assert(fetch.get(server:url("norange/bundle.tgz"), out .. "/b.tgz", quiet { sha256 = sha }))
    assert.is_false(r.resumed)
    assert.equal(sha, fs.sha256(out .. "/b.tgz"))
  end)

  it("reads file:// URLs", function()
    local r = assert(fetch.get("file://" .. web .. "/bundle.tgz", out .. "/b.tgz", quiet { sha256 = sha }))
    assert.equal(#data, r.bytes)
    assert.same({ nil, "file:///nonexistent.tgz: Couldn't open file /nonexistent.tgz", E.ENOENT },
      { fetch.get("file:///nonexistent.tgz", out .. "/c", quiet()) })
  end)

  it("refuses other schemes", function()
    local ok, err = fetch.get("ftp://127.0.0.1/x", out .. "/x", quiet())
    assert.is_nil(ok)
    assert.matches('^ftp://127.0.0.1/x: Protocol "ftp" not supported', err)
  end)

  it("reports a refused connection", function()
    local ok, _, errno = fetch.get("http://127.0.0.1:1/x", out .. "/x", quiet { retries = 0 })
    assert.is_nil(ok)
    assert.equal(E.ECONNREFUSED, errno)
  end)

  it("calls a progress function with growing counts, ending at the total", function()
    local seen = {}
    assert(fetch.get(server:url("bundle.tgz"), out .. "/b.tgz", { progress = function(done, total)
      seen[#seen + 1] = { done, total } end }))
    assert.is_true(#seen >= 1)
    for i = 2, #seen do assert.is_true(seen[i][1] >= seen[i - 1][1]) end
    assert.same({ #data, #data }, seen[#seen])
  end)

  it("propagates an error raised by the progress function and cleans up", function()
    assert.has_error(function()
      fetch.get(server:url("slow/bundle.tgz"), out .. "/b.tgz", { progress = function() error("cancelled", 0) end })
    end, "cancelled")
    assert.same({}, fs.dir(out))
  end)

  it("prints plain progress lines when not on a terminal", function()
    local r = assert(require("drv.proc").run({ os.getenv("DRVRUN"), "-e",
      ("assert(require('drv.fetch').get(%q, %q))"):format(server:url("bundle.tgz"), out .. "/p") }))
    assert.equal(0, r.status, r.stderr)
    assert.matches("fetch " .. server:url("bundle.tgz"):gsub("%p", "%%%0") .. ": 1%.0 MiB of 1%.0 MiB %(100%%%)", r.stderr)
  end)
end)
