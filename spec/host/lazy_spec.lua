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
      for _, m in ipairs { "drv.fetch", "drv.archive", "drv.kmod", "drv.mount", "drv.fs", "drv.net", "drv.recipe" } do
        require(m)
      end]]))
  end)

  it("the first call maps its library (and only its own)", function()
    assert.equal("libcrypto", mapped_after([[assert(require("drv.fs").sha256("/proc/self/exe"))]]))
    assert.equal("libmount", mapped_after([[assert(require("drv.mount").find("/"))]]))
    assert.equal("libarchive", mapped_after([[assert(not require("drv.archive").list("/nonexistent"))]]))
    assert.equal("libnl", mapped_after([[assert(require("drv.net").open():links())]]), "libnl-3, -route-3, -genl-3")
    assert.equal("libcurl libcrypto", mapped_after([[assert(not require("drv.fetch").get("http://127.0.0.1:1/x",
      os.tmpname() .. "/x", { retries = 0, quiet = true }))]]), "libcurl, and the libcrypto it links")
  end)
end)

describe("kmod contexts", function()
  local kmod = require "drv.kmod"
  local fs = require "drv.fs"
  local dirname = "/lib/modules/" .. assert(fs.dir("/lib/modules"))[1]

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
