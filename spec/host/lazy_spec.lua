-- The C libraries behind drv.* are opened at their first use, not at start-up
-- (host/lazy.h): a run maps only the libraries it calls into.
local sh = require "spec.support.sh"

local LIBS = { "libcurl", "libarchive", "libkmod", "libmount", "libcrypto", "libnl" }

-- The drv libraries mapped in a drvrun process after running `code`.
local function mapped_after(code)
  local r = sh.drvrun("-e", code .. [[
    local seen = {}
    for line in io.lines("/proc/self/maps") do
      local lib = line:match("/(lib[%w_]+)[%w._-]*%.so")
      if lib and not seen[lib] then seen[lib] = true; io.write(lib, "\n") end
    end]])
  assert.equal(0, r.status, r.stderr)
  local set = {}
  for lib in r.stdout:gmatch("[^\n]+") do set[lib] = true end
  local found = {}
  for _, lib in ipairs(LIBS) do if set[lib] then found[#found + 1] = lib end end
  return table.concat(found, " ")
end

describe("lazily opened libraries", function()
  it("none is mapped by a run that calls none", function()
    assert.equal("", mapped_after(""))
  end)

  it("requiring every module maps none of them", function()
    assert.equal("", mapped_after([[
      for _, m in ipairs { "drv.fetch", "drv.transfer", "drv.archive", "drv.kmod", "drv.mount", "drv.fs", "drv.net",
                           "drv.recipe" } do
        require(m)
      end]]))
  end)

  it("the first call maps its library (and only its own)", function()
    assert.equal("libcrypto", mapped_after([[assert(require("drv.fs").sha256("/proc/self/exe"))]]))
    assert.equal("libmount", mapped_after([[assert(not require("drv.mount").mount("x", "/nonexistent", "tmpfs"))]]))
    assert.equal("libarchive", mapped_after([[assert(not require("drv.archive").list("/nonexistent"))]]))
    assert.equal("libnl", mapped_after([[assert(require("drv.net").open():links())]]), "libnl-3, -route-3, -genl-3")
    assert.equal("libcurl libcrypto", mapped_after([[assert(not require("drv.fetch").get("http://127.0.0.1:1/x",
      os.tmpname() .. "/x", { retries = 0, quiet = true }))]]), "libcurl, and the libcrypto it links")
  end)
end)

describe("mountinfo", function()
  it("is read without libmount (loading it would cost a restart more than the read)", function()
    assert.equal("", mapped_after([[local m = require("drv.mount")
      assert(m.find("/") and m.info("/") and m.list() and m.is_mountpoint("/"))]]))
  end)
end)

describe("kmod contexts", function()
  local kmod = require "drv.kmod"
  local fs = require "drv.fs"
  local dirname = "/lib/modules/" .. require("spec.support.kernel").release

  it("load libkmod and the module indexes at the first lookup, not when made", function()
    assert.equal("", mapped_after(("local c = assert(require('drv.kmod').new { dirname = %q }); c:state('ib_core')")
      :format(dirname)))
    assert.equal("libkmod libcrypto", mapped_after(("local c = assert(require('drv.kmod').new { dirname = %q }); "
      .. "assert(c:info('ib_core'))"):format(dirname))) -- libkmod needs libcrypto
  end)

  it("refuse a modules directory without its indexes when made", function()
    local dir = assert(fs.tmpdir("noindex"))
    local c, err, errno = kmod.new { dirname = dir }
    assert.is_nil(c)
    assert.equal(dir .. ": cannot load the module indexes: No such file or directory (run depmod)", err)
    assert.equal("ENOENT", errno)
    fs.remove(dir, { recursive = true })
  end)
end)

-- A library that is not there: its file covered, in a mount namespace of the run's own
-- (unshare -m), by /dev/null (not a library) or by another library (without its functions).
describe("a library that cannot be loaded", function()
  local fs = require "drv.fs"
  local CALL = [[local ok, err = pcall(%s) io.write(tostring(ok), "|", tostring(err), "|still running")]]

  -- The file the dynamic loader finds for soname.
  local function library_file(soname)
    local r = sh.run("ldconfig -p")
    local path = assert(r.stdout:match(soname:gsub("%p", "%%%0") .. " %([^)]*x86%-64[^)]*%) => (%S+)"), soname)
    return assert(fs.realpath(path))
  end

  -- Run code in drvrun with soname's file covered by cover.
  local function run_without(soname, cover, code)
    return sh.run(("unshare -m sh -c %s"):format(sh.quote(("mount --bind %s %s && exec %s -e %s")
      :format(sh.quote(cover), sh.quote(library_file(soname)), sh.quote(os.getenv("DRVRUN")), sh.quote(code)))))
  end

  it("is a Lua error of the binding that needs it, naming the library and the package to install", function()
    local r = run_without("libcurl.so.4", "/dev/null",
      CALL:format([[require("drv.fetch").get, "http://127.0.0.1:1/x", os.tmpname() .. "/x", { quiet = true }]]))
    assert.equal(0, r.status, r.stderr)
    assert.matches("^false|cannot load the library libcurl%.so%.4: [^|]+: install the package libcurl4 %(Debian, Ubuntu%)"
      .. "|still running$", r.stdout)
  end)

  it("says which function a library lacks", function()
    local r = run_without("libcurl.so.4", library_file("libz.so.1"),
      CALL:format([[require("drv.fetch").get, "http://127.0.0.1:1/x", os.tmpname() .. "/x", { quiet = true }]]))
    assert.equal(0, r.status, r.stderr)
    assert.matches("^false|the library libcurl%.so%.4 has no function curl_[%w_]+ %(too old a version%?%): "
      .. "install the package libcurl4 %(Debian, Ubuntu%)|still running$", r.stdout)
  end)

  it("raises in the caller when the extraction's child cannot load it", function()
    local r = run_without("libarchive.so.13", "/dev/null",
      CALL:format([[require("drv.archive").extract, "/nonexistent.tgz", os.tmpname() .. "/x"]]))
    assert.equal(0, r.status, r.stderr)
    assert.matches("^false|cannot load the library libarchive%.so%.13: [^|]+: install the package libarchive13 "
      .. "%(Debian, Ubuntu%)|still running$", r.stdout)
  end)
end)
