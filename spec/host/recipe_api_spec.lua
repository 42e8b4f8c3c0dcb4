-- The recipe API and its versions: a recipe written for an earlier documented form
-- runs with a warning naming what changed, or is refused with exit 2 naming its
-- file, line and field; never a traceback of drvrun's own files.
local proc = require "drv.proc"
local fs = require "drv.fs"

local kver = require("spec.support.kernel").release
local dir

-- Write recipe `name` with `text`; run drvrun on it with `args` (before it) and `kv` (KEY=VALUE) in a fresh state.
local function recipe(name, text)
  local path = ("%s/%s.lua"):format(dir, name)
  assert(fs.write(path, text))
  return path
end

local function run(path, args, kv)
  local argv = { os.getenv("DRVRUN") }
  for _, a in ipairs(args or {}) do argv[#argv + 1] = a end
  argv[#argv + 1] = path
  for _, a in ipairs { "STATE_DIR=" .. dir .. "/state", "LOCK_FILE=" .. dir .. "/lock", "CACHE_DIR=" .. dir .. "/cache",
                       "READY_FILES=" .. dir .. "/ready", table.unpack(kv or {}) } do
    argv[#argv + 1] = a
  end
  return assert(proc.run(argv))
end

local function no_traceback(r)
  assert.is_nil(r.stderr:find("traceback", 1, true), r.stderr)
  assert.is_nil(r.stderr:find("lib/lua/drv/", 1, true), "no drvrun file named: " .. r.stderr)
end

describe("the recipe API", function()
  setup(function()
    dir = fs.tmpdir("recipe-api")
    assert(fs.mkdir(dir .. "/src"))
    assert(fs.write(dir .. "/src/Kbuild", "obj-m := hello_core.o hello_user.o\n"))
    assert(fs.write(dir .. "/src/hello_core.c", '#include <linux/module.h>\nMODULE_LICENSE("GPL");\n'
                    .. "int hello_core_answer(void) { return 42; }\nEXPORT_SYMBOL(hello_core_answer);\n"))
    assert(fs.write(dir .. "/src/hello_user.c", '#include <linux/module.h>\nMODULE_LICENSE("GPL");\n'
                    .. "int hello_core_answer(void);\nstatic int __init u(void) { return hello_core_answer() - 42; }\n"
                    .. "module_init(u);\n"))
  end)

  teardown(function() fs.remove(dir, { recursive = true }) end)

  it("runs last month's documented form (API 1: stack as a map), saying what changed and where", function()
    local path = recipe("hello1", [[
return {
  name = "hello", version = "1.0",
  options = { SRC = { default = "", doc = "the source" } },
  stack = { hello_core = {}, hello_user = { "hello_core" } },
  sources = { src = { path = "${SRC}" } },
  build = function(r)
    return r:kbuild { src = r:extract(r.sources.src) }
  end,
}]])
    local r = assert(proc.run { os.getenv("DRVRUN"), path, "BUILD_ONLY=true", "KVER=" .. kver, "ROOT=" .. dir .. "/root",
                          "CACHE_DIR=" .. dir .. "/cache", "SRC=" .. dir .. "/src" })
    assert.equal(0, r.status, r.stderr)
    no_traceback(r)
    assert.matches(path .. ":4: recipe field 'stack': { module = { its dependencies } } is API 1's form; since API 2 "
                   .. "(2026-12-01) it is the list of module names, the dependencies come from the build: write "
                   .. 'stack = { "hello_core", "hello_user" }', r.stderr, nil, true)
    assert.matches(path .. ": the recipe says no API version: read as API 2", r.stderr, nil, true)
    assert.is_true(fs.exists(("%s/root/lib/modules/%s/updates/hello/hello_user.ko"):format(dir, kver)))
  end)

  it("refuses an API it does not know, and a malformed field, with exit 2 naming the file, line and field", function()
    local r = run(recipe("future", 'return {\n  api = 9,\n  name = "x", version = "1", stack = { "x" },\n}\n'),
                  { "--plan" })
    assert.equal(2, r.status, r.stderr)
    no_traceback(r)
    assert.matches("future.lua:2: recipe field 'api': this drvrun knows the recipe API 1 to 3, not 9", r.stderr, nil, true)
    r = run(recipe("bad", 'return {\n  api = 3, name = "x", version = "1",\n  stack = "mlx5_core",\n}\n'), { "--plan" })
    assert.equal(2, r.status, r.stderr)
    no_traceback(r)
    assert.matches("bad.lua:3: recipe field 'stack': table or function expected, got string", r.stderr, nil, true)
    r = run(recipe("unknown", 'return {\n  api = 3, name = "x", version = "1", stack = { "x" },\n  stak = {},\n}\n'),
            { "--plan" })
    assert.equal(2, r.status, r.stderr)
    assert.matches("unknown.lua:3: recipe: unknown field 'stak'", r.stderr, nil, true)
  end)

  it("names the recipe's field when what its function returned is malformed", function()
    local r = run(recipe("fn", 'return { api = 3, name = "x", version = "1", stack = function() return { 1 } end }\n'),
                  { "--plan" })
    assert.equal(2, r.status, r.stderr)
    no_traceback(r)
    assert.matches("fn.lua: recipe field 'stack': a list of module names expected", r.stderr, nil, true)
    assert.matches("(as the recipe's stack function returned it)", r.stderr, nil, true)
  end)

  it("takes name and version from functions of the run, as stack, and lines for the plan from the recipe", function()
    local text = 'return { api = 3, name = function(r) return r.opt.N end, version = function(r) return r.kver end,\n'
                 .. '  options = { N = { default = "pkg", doc = "its name" } }, stack = { "x" },\n'
                 .. '  plan = function(r, say) say("mine: %s for %s", r.opt.N, r.kver) end }\n'
    local path = recipe("named_fn", text)
    local r = run(path, { "--plan" }, { "KVER=" .. kver })
    assert.equal(0, r.status, r.stderr)
    assert.matches("plan: pkg " .. kver .. " for kernel " .. kver, r.stdout, nil, true)
    assert.matches("\nmine: pkg for " .. kver .. "\n", r.stdout, nil, true)
    assert.matches("build: pkg into " .. dir .. "/cache/pkg/" .. kver, r.stdout, nil, true)
    r = run(path, { "--plan" }, { "N=../etc" })
    assert.equal(2, r.status, r.stderr)
    no_traceback(r)
    assert.matches("named_fn.lua: recipe field 'name': a word of letters, digits and _ . + ~ : - expected, got '../etc' "
                   .. "(as the recipe's name function returned it)", r.stderr, nil, true)
  end)

  it("says why a field's function failed at the start, with exit 1 and no traceback, changing nothing", function()
    local r = run(recipe("fails", 'return { api = 3, name = "x", version = "1",\n'
                         .. '  stack = function(r) r:fail("no dkms.conf in %s", "/nowhere") end }\n'), {})
    assert.equal(1, r.status, r.stderr)
    no_traceback(r)
    assert.matches("fails.lua: no dkms.conf in /nowhere\n", r.stderr, nil, true)
    assert.is_nil(fs.dir(dir .. "/state"), "no state")
  end)

  it("gives an API 3 recipe the library, and a raw C module only when it names it", function()
    local raw = 'local kmod = require "drv.kmod"\nreturn { api = 3, name = "x", version = "1", stack = { "x" }%s }\n'
    local r = run(recipe("raw", raw:format("")), { "--plan" })
    assert.equal(2, r.status, r.stderr)
    no_traceback(r)
    assert.matches('raw.lua:1: require "drv.kmod": a raw C module; recipes use the library (r:..., drv.fs, drv.log...) '
                   .. 'or name it in raw_modules = { "drv.kmod" }', r.stderr, nil, true)
    r = run(recipe("named", raw:format(', raw_modules = { "drv.kmod" }')), { "--plan" })
    assert.equal(0, r.status, r.stderr)
    r = run(recipe("lib", 'local fs, log = require "drv.fs", require "drv.log"\n'
                   .. 'return { api = 3, name = "x", version = "1", stack = { "x" } }\n'), { "--plan" })
    assert.equal(0, r.status, r.stderr)
    assert.equal("", r.stderr:gsub("[^\n]*INFO[^\n]*\n", ""), "no warning")
  end)

  it("runs an API 2 recipe that reaches a raw C module, with a warning", function()
    local r = run(recipe("old", 'local sys = require "drv.sys"\n'
                         .. 'return { name = "x", version = "1", stack = { sys.uname().sysname:lower() } }\n'),
                  { "--plan" })
    assert.equal(0, r.status, r.stderr)
    assert.matches('old.lua:1: require "drv.sys": a raw C module;', r.stderr, nil, true)
    assert.matches("load: linux (after the build", r.stdout, nil, true)
  end)

  it("keeps a recipe's globals its own, and the run's fields the run's", function()
    local r = run(recipe("globals", [[
counter = 0
return { api = 3, name = "g", version = "1", stack = { "g" },
         prepare = function(r)
           counter = counter + 1
           assert(rawget(_G, "counter") == nil, "a recipe global leaked into drvrun's")
           r.mine = counter
           r.opt = {}
         end }
]]), {})
    assert.equal(1, r.status, r.stderr)
    assert.matches("recipe g: r.opt is the run's, not the recipe's to set", r.stderr, nil, true)
    assert.is_nil(r.stderr:find("leaked", 1, true), r.stderr)
  end)
end)
