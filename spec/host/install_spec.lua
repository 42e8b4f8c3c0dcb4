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
    assert.is_true(fs.exists(dest .. "/usr/share/drvrun/probe.lua"))
    assert.equal(tonumber("755", 8), fs.stat(dest .. "/usr/share/drvrun/entrypoint").mode)
  end)

  it("compiles the library, the probe and the recipes; their chunks are named as installed", function()
    for _, f in ipairs { "lua/drv/recipe", "lua/drv/stack", "probe", "recipes/ubuntu-ofed", "recipes/peermem" } do
      assert.matches("^#drvrun compiled chunk", fs.read(dest .. "/usr/share/drvrun/" .. f .. ".luac"), f)
    end
    local r = assert(proc.run({ dest .. "/usr/bin/drvrun", "-e", "require('drv.graph').sorted(nil)" }))
    assert.equal(1, r.status)
    assert.matches("^drvrun: /usr/share/drvrun/lua/drv/graph%.lua:%d+: ", r.stderr)
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

  it("runs the installed probe", function()
    local r = assert(proc.run({ dest .. "/usr/bin/drvrun", dest .. "/usr/share/drvrun/probe.lua", "/nonexistent/.driver-ready" }))
    assert.equal(1, r.status)
    assert.equal("probe: not ready: /nonexistent/.driver-ready: No such file or directory\n", r.stderr)
  end)

  describe("the image entrypoint", function()
    local envfile
    before_each(function() envfile = os.tmpname() end)
    after_each(function() os.remove(envfile) end)

    -- Run the installed entrypoint with the installed drvrun first in PATH.
    local function entrypoint(env_text, env)
      assert(fs.write(envfile, env_text))
      local e = { PATH = dest .. "/usr/bin:" .. os.getenv("PATH"), DRVRUN_IMAGE_ENV = envfile }
      for k, v in pairs(env or {}) do e[k] = v end
      return assert(proc.run({ dest .. "/usr/share/drvrun/entrypoint", "--plan",
                               dest .. "/usr/share/drvrun/recipes/ubuntu-ofed.lua" }, { env = e }))
    end

    it("exports the defaults the image computed at build time to the recipe", function()
      local r = entrypoint("# computed at build time\nOFED_SHA256=" .. ("a"):rep(64) .. "\n")
      assert.equal(0, r.status, r.stderr)
      assert.matches("OFED_SHA256=" .. ("a"):rep(64) .. "%s+sha256 of the bundle[^\n]*%[environment%]", r.stdout)
    end)

    it("leaves what the environment sets alone", function()
      local r = entrypoint("OFED_SHA256=" .. ("a"):rep(64) .. "\n", { OFED_SHA256 = ("b"):rep(64) })
      assert.equal(0, r.status, r.stderr)
      assert.matches("OFED_SHA256=" .. ("b"):rep(64), r.stdout)
    end)

    it("refuses a line that is not KEY=VALUE", function()
      local r = entrypoint("OFED SHA256=x\n")
      assert.equal(2, r.status)
      assert.equal("drvrun entrypoint: " .. envfile .. ": not KEY=VALUE: OFED SHA256=x\n", r.stderr)
    end)
  end)
end)
