-- Every binding raises on a wrong argument type, naming the function and the
-- argument (programming errors raise; only failures of the machine return nil).
-- Generated from each binding's signature: for every parameter, a call with a
-- value of the wrong type in that place and valid values elsewhere.
local S, T, N, F = "s", {}, 1, function() end -- valid string, table, number, function

local signatures = {
  ["drv.fs"] = {
    read = { S }, write = { S, S, T }, mkdir = { S, T }, remove = { S, T }, symlink = { S, S, T },
    readlink = { S }, realpath = { S }, rename = { S, S }, copy = { S, S, T }, stat = { S }, lstat = { S }, identity = { S },
    exists = { S }, dir = { S }, glob = { S }, sha256 = { S }, chmod = { S, N },
  },
  ["drv.proc"] = { run = { { "true" }, T }, spawn = { { "true" }, T }, which = { S } },
  ["drv.sys"] = { kill = { N, "TERM" }, sleep = { 0 } },
  ["drv.lock"] = { acquire = { "/tmp/x", T } },
  ["drv.signal"] = { watch = { { "TERM" } } },
  ["drv.kmod"] = { new = { T }, modinfo = { S }, versions = { S }, insert_many = { { { path = "/x" } } },
                   remove_many = { { "x" } }, change_many = { { { name = "x" } } } },
  ["drv.mount"] = {
    mount = { S, S, S, T }, bind = { S, S, T }, rbind = { S, S, T }, remount = { S, { readonly = true } },
    propagation = { S, "shared", T }, umount = { S, T }, is_mountpoint = { S }, info = { S }, find = { S },
    list = { S },
  },
  ["drv.fetch"] = { get = { S, S, T } },
  ["drv.transfer"] = { open = { S, S, T } },
  ["drv.archive"] = { list = { S }, extract = { S, S, T } },
  ["drv.net"] = { open = { T }, set_numvfs = { S, S, N }, rebind = { S, S }, ping = { "127.0.0.1", N },
                  connect = { "127.0.0.1", N, N }, announce = { "va", "10.0.0.1" } },
  ["drv.keyctl"] = { describe = { N }, list = { N } },
  ["drv.cert"] = { parse = { S } },
}

-- A value of the wrong type for a parameter whose valid example is v.
local function wrong(v)
  if type(v) == "table" then return true end -- a boolean where a table goes
  if type(v) == "number" then return {} end
  return F -- a function where a string goes (numbers would be coerced)
end

local sorted_keys = require("drv.graph").sorted

for _, modname in ipairs(sorted_keys(signatures)) do
  local mod = require(modname)
  describe(modname, function()
    for _, fname in ipairs(sorted_keys(signatures[modname])) do
      local params = signatures[modname][fname]
      for i = 1, #params do
        it(("%s raises on a wrong type for argument #%d"):format(fname, i), function()
          local args = {}
          for j = 1, #params do args[j] = j == i and wrong(params[j]) or params[j] end
          local ok, err = pcall(mod[fname], table.unpack(args, 1, #params))
          assert.is_false(ok)
          assert.matches(("^bad argument #%d to '%s.%s' %%("):format(i, modname, fname):gsub("%.", "%%."), err)
        end)
      end
    end
  end)
end

describe("option tables", function()
  it("name the field at fault", function()
    local ok, err = pcall(require("drv.fs").write, "/tmp/x", "y", { mode = "0644" })
    assert.is_false(ok)
    assert.equal("bad argument #3 to 'drv.fs.write' (field 'mode': integer expected, got string)", err)
    ok, err = pcall(require("drv.fetch").get, "u", "d", { sha256 = "abc" })
    assert.is_false(ok)
    assert.equal("bad argument #3 to 'drv.fetch.get' (field 'sha256': 64 hex digits expected, got 'abc')", err)
    ok, err = pcall(require("drv.proc").run, { "true" }, { stdout = "tty" })
    assert.is_false(ok)
    assert.equal("bad argument #2 to 'drv.proc.run' (field 'stdout': invalid value 'tty')", err)
  end)
end)

describe("methods", function()
  it("check self", function()
    local ctx = assert(require("drv.kmod").new { dirname = "/lib/modules/" .. require("spec.support.kernel").release })
    local ok, err = pcall(function() return ctx.info({}, "x") end)
    assert.is_false(ok)
    assert.matches("bad argument #1 to 'info' %(drv%.kmod%.ctx expected, got table%)", err)
    ok, err = pcall(function() return ctx:info({}) end)
    assert.is_false(ok)
    assert.matches("bad argument #1 to 'info' %(string expected, got table%)", err)
  end)
end)
