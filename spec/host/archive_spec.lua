-- drv.archive: extraction refuses anything that could land outside the destination.
local archive = require "drv.archive"
local fs = require "drv.fs"
local proc = require "drv.proc"

describe("drv.archive", function()
  local dir
  before_each(function() dir = fs.realpath(assert(fs.tmpdir("arc"))) end)
  after_each(function() fs.remove(dir, { recursive = true }) end)

  local function tarball(name, ...)
    local path = dir .. "/" .. name
    local r = assert(proc.run({ "python3", "spec/support/mktar.py", path, ... }))
    assert(r.status == 0, r.stderr)
    return path
  end

  it("extracts files, directories and links, keeping modes but not setuid", function()
    local t = tarball("good.tgz", "dir:top/", "file:top/a.txt:hello", "file:top/bin/tool:#!/bin/sh:4755",
      "sym:top/link:a.txt", "hard:top/hard:top/a.txt")
    local r = assert(archive.extract(t, dir .. "/out", { strip = 1 }))
    assert.equal(4, r.entries)
    assert.same({ "a.txt", "bin", "hard", "link" }, fs.dir(dir .. "/out"))
    assert.equal("hello", fs.read(dir .. "/out/link"))
    assert.equal(tonumber("755", 8), fs.stat(dir .. "/out/bin/tool").mode)
    assert.equal(2, fs.stat(dir .. "/out/hard").nlink)
  end)

  it("extracts in a child process: the caller never maps libarchive and its dependencies", function()
    local t = tarball("good.tgz", "dir:top/", "file:top/a.txt:hello")
    local code = ([[
      local r = assert(require("drv.archive").extract(%q, %q, { strip = 1 }))
      local maps = assert(require("drv.fs").read("/proc/self/maps"))
      local function has(lib) return tostring(maps:find(lib, 1, true) ~= nil) end
      io.write(r.entries, " ", has("libarchive"), " ", has("libxml2"))
    ]]):format(t, dir .. "/out")
    local r = assert(proc.run({ os.getenv("DRVRUN") or "build/drvrun", "-e", code }))
    assert.equal(0, r.status, r.stderr)
    assert.equal("1 false false", r.stdout)
    assert.equal("hello", fs.read(dir .. "/out/a.txt"))
  end)

  it("extracts only the entries matching a glob, and says when none does", function()
    local t = tarball("bundle.tgz", "dir:B/", "dir:B/SOURCES/", "file:B/SOURCES/k_1.orig.tar.gz:K",
      "file:B/SOURCES/rdma-core_1.orig.tar.gz:U", "file:B/SOURCES/sub/k_2.orig.tar.gz:deep")
    local r = assert(archive.extract(t, dir .. "/out", { strip = 1, only = "SOURCES/k_*.orig.tar.gz" }))
    assert.equal(1, r.entries)
    assert.same({ "k_1.orig.tar.gz" }, fs.dir(dir .. "/out/SOURCES"))
    assert.equal("K", fs.read(dir .. "/out/SOURCES/k_1.orig.tar.gz"))
    local ok, err, errno = archive.extract(t, dir .. "/none", { strip = 1, only = "SOURCES/nothing*" })
    assert.is_nil(ok)
    assert.equal(t .. ": no entry matches 'SOURCES/nothing*'", err)
    assert.equal("ENOENT", errno)
    local bad = tarball("bad.tgz", "file:B/ok:1", "file:../escape:x")
    assert.matches("refusing entry '%.%./escape'", select(2, archive.extract(bad, dir .. "/bad", { only = "B/ok" })))
  end)

  it("lists entries with types and link targets", function()
    local t = tarball("l.tgz", "file:a:1", "sym:b:a", "hard:c:a", "dir:d/")
    local l = assert(archive.list(t))
    assert.same({ "file", "link", "hardlink", "directory" }, { l[1].type, l[2].type, l[3].type, l[4].type })
    assert.equal("a", l[2].link)
  end)

  local evil = {
    { "dotdot", { "file:ok:x", "file:../../escape:x" }, "'../../escape': path escapes the destination ('..')" },
    { "absolute", { "file:/tmp/drvrun-abs-escape:x" }, "'/tmp/drvrun-abs-escape': absolute path" },
    { "link out", { "sym:link:../../", "file:link/file:x" }, "'link': symbolic link points outside the destination" },
    { "link absolute", { "sym:link:/etc" }, "'link': symbolic link to an absolute path" },
    { "through a link", { "sym:link:sub", "file:link/file:x" }, "'link/file': path goes through the symbolic link 'link'" },
    { "hard link out", { "hard:h:/etc/passwd" }, "'h': hard link to a path outside the destination" },
    { "hard link missing", { "hard:h:nothere" }, "'h': hard link to a file that is not in the archive" },
    { "device", { "chr:null" }, "'null': device nodes, fifos and sockets are not extracted" },
  }
  for _, case in ipairs(evil) do
    it("refuses an archive with " .. case[1] .. " and writes nothing", function()
      local t = tarball("evil.tgz", table.unpack(case[2]))
      assert.same({ nil, t .. ": refusing entry " .. case[3], "EPERM" }, { archive.extract(t, dir .. "/out") })
      assert.is_false(fs.exists(dir .. "/out"))
      assert.is_false(fs.exists("/tmp/drvrun-abs-escape"))
      assert.same({ "evil.tgz" }, fs.dir(dir))
    end)
  end

  it("reads zip archives", function()
    local r = assert(proc.run({ "python3", "-c", "import zipfile,sys; z=zipfile.ZipFile(sys.argv[1],'w'); "
      .. "z.writestr('d/f.txt','zipped'); z.close()", dir .. "/a.zip" }))
    assert.equal(0, r.status, r.stderr)
    assert(archive.extract(dir .. "/a.zip", dir .. "/out"))
    assert.equal("zipped", fs.read(dir .. "/out/d/f.txt"))
  end)

  it("fails cleanly on a corrupt or missing archive", function()
    local t = tarball("good.tgz", "file:a:" .. ("x"):rep(1000))
    local data = assert(fs.read(t))
    assert(fs.write(dir .. "/cut.tgz", data:sub(1, 40)))
    local ok, err, errno = archive.extract(dir .. "/cut.tgz", dir .. "/out")
    assert.is_nil(ok)
    assert.matches("^" .. dir:gsub("%p", "%%%0") .. "/cut.tgz: ", err)
    assert.matches("^E%u+$", errno)
    assert.is_false(fs.exists(dir .. "/out"))
    ok, err, errno = archive.list(dir .. "/none.tgz")
    assert.is_nil(ok)
    assert.equal(dir .. "/none.tgz: Failed to open '" .. dir .. "/none.tgz'", err)
    assert.equal("ENOENT", errno)
  end)
end)
