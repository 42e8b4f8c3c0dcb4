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
    local function entrypoint(env_text, env, args)
      assert(fs.write(envfile, env_text))
      local e = { PATH = dest .. "/usr/bin:" .. os.getenv("PATH"), DRVRUN_IMAGE_ENV = envfile }
      for k, v in pairs(env or {}) do e[k] = v end
      local argv = { dest .. "/usr/share/drvrun/entrypoint", "--plan", dest .. "/usr/share/drvrun/recipes/ubuntu-ofed.lua" }
      for _, a in ipairs(args or {}) do argv[#argv + 1] = a end
      return assert(proc.run(argv, { env = e }))
    end

    -- A build cache holding one build (PRECOMPILE_KERNEL's layout): its directory under dir.
    local function precompiled(dir, id, manifest)
      local entry = ("%s/ubuntu-ofed/6.1.0-57-amd64/builds/%s"):format(dir, id)
      assert(fs.mkdir(entry .. "/keep/include"))
      assert(fs.write(entry .. "/mlx5_core.ko", "module " .. id .. "\n"))
      assert(fs.write(entry .. "/keep/include/x.h", "header\n"))
      assert(fs.write(entry .. "/manifest.lua", manifest))
      return entry:sub(#dir + 1)
    end

    it("copies the image's precompiled builds into the build cache, those it lacks", function()
      local image, cache = assert(fs.tmpdir("precompiled")), assert(fs.tmpdir("cache"))
      local new = precompiled(image, "1111", "return { key = 'new' }\n")
      local held = precompiled(image, "2222", "return { key = 'image' }\n")
      precompiled(cache, "2222", "return { key = 'cache' }\n")
      local env = { DRVRUN_PRECOMPILED = image, CACHE_DIR = cache, OFED_SHA256 = ("a"):rep(64) }
      local r = entrypoint("", env)
      assert.equal(0, r.status, r.stderr)
      assert.equal("drvrun entrypoint: " .. cache .. new .. ": the build the image holds (precompiled)\n", r.stderr)
      for _, f in ipairs { "/manifest.lua", "/mlx5_core.ko", "/keep/include/x.h" } do
        assert.equal(fs.read(image .. new .. f), fs.read(cache .. new .. f), f)
      end
      assert.equal("return { key = 'cache' }\n", fs.read(cache .. held .. "/manifest.lua"))
      assert.same({ "1111", "2222" }, fs.dir(cache .. "/ubuntu-ofed/6.1.0-57-amd64/builds"))
      -- CACHE_DIR as an argument is the recipe's too: the entrypoint copies there
      local other = assert(fs.tmpdir("cache"))
      r = entrypoint("", env, { "CACHE_DIR=" .. other })
      assert.equal(0, r.status, r.stderr)
      assert.matches("\nbuild: ubuntu%-ofed into " .. other:gsub("%p", "%%%0") .. "/ubuntu%-ofed/", r.stdout)
      assert.equal(fs.read(image .. held .. "/manifest.lua"), fs.read(other .. held .. "/manifest.lua"))
      assert.equal(fs.read(image .. new .. "/manifest.lua"), fs.read(other .. new .. "/manifest.lua"))
      for _, d in ipairs { image, cache, other } do fs.remove(d, { recursive = true }) end
    end)

    it("says when it cannot copy a precompiled build, and runs the recipe all the same", function()
      local image = assert(fs.tmpdir("precompiled"))
      local new = precompiled(image, "1111", "return {}\n")
      local blocker = os.tmpname() -- a file where the cache's directory would be
      local r = entrypoint("", { DRVRUN_PRECOMPILED = image, CACHE_DIR = blocker, OFED_SHA256 = ("a"):rep(64) })
      assert.equal(0, r.status, r.stderr)
      assert.matches("drvrun entrypoint: cannot copy " .. (image .. new):gsub("%p", "%%%0") .. " into the build cache as "
                     .. (blocker .. new):gsub("%p", "%%%0") .. ": the recipe builds instead\n", r.stderr)
      assert.matches("plan: ubuntu%-ofed ", r.stdout)
      os.remove(blocker)
      fs.remove(image, { recursive = true })
    end)

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
