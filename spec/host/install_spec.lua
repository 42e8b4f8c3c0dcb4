-- make install lays out what the images copy; the installed drvrun finds its
-- library and recipes without flags.
local proc = require "drv.proc"
local fs = require "drv.fs"

describe("make install", function()
  local dest
  setup(function()
    dest = fs.tmpdir("install")
    local r = assert(proc.run({ "make", "-s", "install", "DESTDIR=" .. dest, "PREFIX=/usr" }))
    assert(r.status == 0, r.stdout .. r.stderr)
  end)
  teardown(function() fs.remove(dest, { recursive = true }) end)

  it("installs the binary, the Lua library and the recipes under PREFIX", function()
    assert.equal("file", fs.stat(dest .. "/usr/bin/drvrun").type)
    assert.equal(tonumber("755", 8), fs.stat(dest .. "/usr/bin/drvrun").mode)
    for _, m in ipairs { "recipe", "stack", "log", "compile" } do
      assert.is_true(fs.exists(dest .. "/usr/share/drvrun/lua/drv/" .. m .. ".lua"), m)
    end
    assert.is_true(fs.exists(dest .. "/usr/share/drvrun/recipes/ubuntu-ofed.lua"))
  end)

  it("finds its library and recipes next to itself", function()
    local r = assert(proc.run({ dest .. "/usr/bin/drvrun", "-e",
      "local c = require 'drv.config' require 'drv.recipe' io.write(c.libdir, '|', c.recipedir)" }))
    assert.equal(0, r.status, r.stderr)
    assert.equal(dest .. "/usr/share/drvrun/lua|" .. dest .. "/usr/share/drvrun/recipes", r.stdout)
  end)

  it("plans the installed recipe", function()
    local r = assert(proc.run({ dest .. "/usr/bin/drvrun", "--plan", dest .. "/usr/share/drvrun/recipes/ubuntu-ofed.lua",
                                "OFED_SHA256=" .. ("a"):rep(64) }))
    assert.equal(0, r.status, r.stderr)
    assert.matches("plan: ubuntu%-ofed ", r.stdout)
  end)
end)
