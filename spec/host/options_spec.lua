local options = require "drv.options"

local specs = {
  VERSION = { default = "5.9", doc = "version" },
  URL = { default = "https://mirror/ofed-${VERSION}.tgz", doc = "bundle URL" },
  UNLOAD = { type = "boolean", default = false, doc = "unload storage" },
  JOBS = { type = "integer", default = 2, min = 0, doc = "jobs" },
  MODULES = { type = "list", default = "a b,c", doc = "modules" },
  MODE = { default = "run", choices = { "run", "build" }, doc = "mode" },
  SHA = { default = ("0"):rep(64), pattern = "^" .. ("%x"):rep(64) .. "$", doc = "sha256 of the bundle" },
  ARCH = { default = function() return "x86_64" end, doc = "arch" },
}

local function env(t) return function(k) return t[k] end end

describe("drv.options.resolve", function()
  it("takes defaults, expands ${REFS} and converts types", function()
    local o = assert(options.resolve(specs, {}, env {}))
    assert.equal("https://mirror/ofed-5.9.tgz", o.URL)
    assert.is_false(o.UNLOAD)
    assert.equal(2, o.JOBS)
    assert.same({ "a", "b", "c" }, o.MODULES)
    assert.equal("x86_64", o.ARCH)
    assert.equal("default", o._origin.URL)
  end)

  it("lets the environment override defaults and arguments override both", function()
    local o = assert(options.resolve(specs, { VERSION = "6.0" }, env { VERSION = "5.8", UNLOAD = "true" }))
    assert.equal("6.0", o.VERSION)
    assert.equal("https://mirror/ofed-6.0.tgz", o.URL)
    assert.is_true(o.UNLOAD)
    assert.equal("argument", o._origin.VERSION)
    assert.equal("environment", o._origin.UNLOAD)
  end)

  it("names the option, where the value came from and what is expected", function()
    local cases = {
      { { UNLOAD = "maybe" }, "option UNLOAD %(from argument%): 'maybe' is not a boolean %(use true or false%)" },
      { { JOBS = "two" }, "option JOBS %(from argument%): 'two' is not an integer" },
      { { JOBS = "-1" }, "option JOBS %(from argument%): %-1 is less than 0" },
      { { MODE = "fast" }, "option MODE %(from argument%): 'fast' is not one of: run, build" },
      { { SHA = "abc" }, "option SHA %(from argument%): 'abc' is malformed; expected: sha256 of the bundle" },
      { { NOPE = "1" }, "unknown option NOPE %(known: ARCH, JOBS, MODE, MODULES, SHA, UNLOAD, URL, VERSION%)" },
    }
    for _, c in ipairs(cases) do
      local o, err = options.resolve(specs, c[1], env {})
      assert.is_nil(o)
      assert.matches("^" .. c[2] .. "$", err)
    end
  end)

  it("takes an integer equal to its least value, from the environment too", function()
    assert.equal(0, assert(options.resolve(specs, {}, env { JOBS = "0" })).JOBS)
    local o, err = options.resolve(specs, {}, env { JOBS = "-3" })
    assert.is_nil(o)
    assert.equal("option JOBS (from environment): -3 is less than 0", err)
  end)

  it("checks the pattern of a value that is set, not of an empty one", function()
    assert.equal("", assert(options.resolve(specs, { SHA = "" }, env {})).SHA)
  end)

  it("calls a function default when the option is first read, not before, and only once", function()
    local calls = 0
    local lazy = { OS = { default = function() calls = calls + 1; return "debian12" end, doc = "os tag" },
                   TAG = { default = function(o) return o.OS .. "-x" end, doc = "tag" },
                   URL = { default = "https://mirror/${OS}.tgz", doc = "url" },
                   ARCH = { default = function() error("uname failed", 0) end, doc = "arch" } }
    local o = assert(options.resolve(lazy, {}, env {}))
    assert.equal(1, calls) -- URL refers to it
    assert.equal("https://mirror/debian12.tgz", o.URL)
    assert.is_nil(rawget(o, "TAG"))
    assert.equal("debian12-x", o.TAG)
    assert.equal("default", o._origin.TAG)
    assert.equal(1, calls)
    for _ = 1, 2 do -- its error at every read, not "refers to itself" at the second
      local ok, err = pcall(function() return o.ARCH end)
      assert.is_false(ok)
      assert.equal("option ARCH: its default failed: uname failed", err)
    end
    local described = table.concat(options.describe(lazy, o), "\n") -- --help and the plan say it, not raise it
    assert.matches("ARCH= +arch %[option ARCH: its default failed: uname failed%]", described)
    assert.matches("TAG=debian12%-x +tag %[default%]", described)
    assert.equal("s390x", assert(options.resolve(lazy, {}, env { ARCH = "s390x" })).ARCH)
    local _, err = options.resolve(lazy, { ARCH = 7 }, env {})
    assert.equal("option ARCH (from argument): string expected, got number", err)
  end)

  it("reports a reference to an unset option", function()
    local o, err = options.resolve({ A = { default = "${B}", doc = "a" } }, {}, env {})
    assert.is_nil(o)
    assert.equal("option A refers to ${B}, which is not set", err)
  end)
end)

describe("drv.options.parse_args", function()
  it("splits KEY=VALUE from other arguments", function()
    local kv, rest = options.parse_args { "A=1", "B=x=y", "stray", "C=" }
    assert.same({ A = "1", B = "x=y", C = "" }, kv)
    assert.same({ "stray" }, rest)
  end)
end)

describe("drv.options.describe", function()
  local described = { SHORT = { default = "1", doc = "a short one" },
                  LONG = { type = "list", default = { "mlx5_core", "mlx5_ib", "ib_core", "ib_uverbs" }, doc = "a long one" } }

  it("puts a doc beside its value, or on the next line when the value is too long for the column", function()
    local values = assert(options.resolve(described, { SHORT = "2" }, env {}))
    assert.same({
      "  LONG=mlx5_core mlx5_ib ib_core ib_uverbs",
      "                                     a long one [default]",
      "  SHORT=2                            a short one [argument]",
    }, options.describe(described, values))
  end)
end)

describe("drv.options.check_specs", function()
  it("rejects bad declarations", function()
    assert.has_error(function() options.check_specs({ lower = { doc = "x" } }, 1) end,
      "option name 'lower' must be UPPER_CASE")
    assert.has_error(function() options.check_specs({ A = { doc = "x", typo = 1 } }, 1) end,
      "option A: unknown field 'typo'")
    assert.has_error(function() options.check_specs({ A = { type = "float", doc = "x" } }, 1) end,
      "option A: unknown type 'float'")
    assert.has_error(function() options.check_specs({ A = {} }, 1) end, "option A: needs a doc string")
    assert.has_error(function() options.check_specs({ A = { min = 1, doc = "x" } }, 1) end,
      'option A: min needs type = "integer"')
  end)
end)
