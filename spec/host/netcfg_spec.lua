-- drv.netcfg on the host, which has no device of a stack: the options' checks,
-- POST_READY_HOOKS (split, run, logged), the plan's lines, and a reload with
-- nothing to keep (the NIC cases run in the guest: spec/guest/net_recipe_spec.lua).
local netcfg = require "drv.netcfg"
local log = require "drv.log"
local fs = require "drv.fs"
local sys = require "drv.sys"

-- The log lines `fn()` writes.
local function logged(fn)
  local saved, f = log.out, assert(io.tmpfile())
  log.out = f
  local ok, err = pcall(fn)
  log.out = saved
  f:seek("set")
  local text = f:read("a")
  f:close()
  if not ok then error(err, 0) end
  return text
end

-- A run as prepare and post_ready see it: options, the stack, r:fail.
local function run_of(opt)
  local r = { name = "t", stack = { "mlx5_core", "ib_core" }, unload_also = {}, recipe = {},
              opt = { GUARD_ADDRESSES = {}, POST_READY_HOOKS = "", ALLOW_UPLINK_RELOAD = false, NET_RESTORE = true,
                      NET_WAIT_TIMEOUT = 120, POST_READY_HOOK_TIMEOUT = 60, STATE_DIR = "/run/drvrun" } }
  for k, v in pairs(opt or {}) do r.opt[k] = v end
  function r.fail(_, fmt, ...) error(fmt:format(...), 0) end
  function r.check_cancel() end
  return r
end

describe("drv.netcfg", function()
  describe("POST_READY_HOOKS", function()
    it("splits commands at ';' and newlines, words at blanks, with quotes and backslashes, expanding nothing", function()
      assert.same({}, netcfg.parse_commands(""))
      assert.same({ { "/usr/local/bin/fix-net" }, { "systemctl", "restart", "kubelet" } },
                  netcfg.parse_commands("/usr/local/bin/fix-net; systemctl restart kubelet;"))
      assert.same({ { "sh", "-c", "ip -4 addr show dev eth0 | grep -q inet || dhclient eth0" }, { "logger", "ok" } },
                  netcfg.parse_commands("sh -c 'ip -4 addr show dev eth0 | grep -q inet || dhclient eth0'\n logger ok"))
      assert.same({ { "echo", 'say "hi"; $HOME', "a b", "", "x;y" } },
                  netcfg.parse_commands([[echo "say \"hi\"; $HOME" a\ b '' x\;y]]))
    end)

    it("refuses an unclosed quote or a trailing backslash", function()
      assert.same({ nil, "a single quote is not closed" }, { netcfg.parse_commands("sh -c 'echo") })
      assert.same({ nil, "a double quote is not closed" }, { netcfg.parse_commands('echo "hi') })
      assert.same({ nil, "it ends with a '\\'" }, { netcfg.parse_commands("echo \\") })
    end)

    it("runs each hook after the other, logs every line of its output, and logs a failure without failing", function()
      local r = run_of { POST_READY_HOOK_TIMEOUT = 1 }
      r.hooks = assert(netcfg.parse_commands("sh -c 'echo one; echo two >&2'; false; /nonexistent/hook; sleep 30; "
                                             .. "sh -c 'echo last'"))
      local t0 = sys.monotonic()
      local text = logged(function() netcfg.post_ready(r) end)
      assert.is_true(sys.monotonic() - t0 < 20, "the sleeping hook was killed at its timeout")
      for _, want in ipairs {
        "INFO hook 1 (sh): running sh -c echo one; echo two >&2\n", "INFO hook 1 (sh): one\n", "INFO hook 1 (sh): two\n",
        "INFO hook 1 (sh): done in ", "ERROR hook 2 (false): failed (exit 1) after ", "; the driver stays ready\n",
        "ERROR hook 3 (/nonexistent/hook): cannot run it: ", "ERROR hook 4 (sleep): killed after 1 s (POST_READY_HOOK_TIMEOUT)\n",
        "INFO hook 5 (sh): last\n",
      } do
        assert.matches(want, text, nil, true)
      end
      assert.is_true(text:find("hook 4", 1, true) < text:find("hook 5", 1, true), "in order")
    end)
  end)

  describe("prepare", function()
    it("refuses a GUARD_ADDRESSES entry that is not an address, and a malformed POST_READY_HOOKS", function()
      local ok, err = pcall(netcfg.prepare, run_of { GUARD_ADDRESSES = { "10.0.0.1", "api.example" } })
      assert.is_false(ok)
      assert.equal("option GUARD_ADDRESSES: 'api.example' is not an IPv4 or IPv6 address (give addresses, not names)",
                   err)
      ok, err = pcall(netcfg.prepare, run_of { POST_READY_HOOKS = "sh -c 'true" })
      assert.is_false(ok)
      assert.equal("option POST_READY_HOOKS: a single quote is not closed: sh -c 'true", err)
    end)

    it("lets the reload through, quietly, when no network device is the stack's", function()
      local r = run_of { GUARD_ADDRESSES = { "127.0.0.1" }, POST_READY_HOOKS = "true" }
      assert.equal("", logged(function() netcfg.prepare(r) end))
      assert.same({ { "true" } }, r.hooks)
      assert.is_nil(r.net_uplinks)
    end)
  end)

  describe("around a reload", function()
    it("keeps in the journal what to keep: the file beside it, the modules, the wait; nothing without NET_RESTORE", function()
      local r = run_of { STATE_DIR = "/run/x" }
      r.unload_also = { "mlx5_vdpa" }
      assert.same({ file = "/run/x/t.network", modules = { "mlx5_core", "ib_core", "mlx5_vdpa" }, timeout = 120 },
                  netcfg.spec(r))
      r.opt.NET_RESTORE = false
      assert.is_nil(netcfg.spec(r))
      r.net_uplinks = { "pci/0000:03:00.0" }
      assert.same({ "pci/0000:03:00.0" }, netcfg.spec(r).only, "the uplink the guard let through, only")
    end)

    it("reloads, saying nothing, when no device of the stack exists and no earlier run left a saved state", function()
      local dir = assert(fs.tmpdir("netcfg"))
      local spec = netcfg.spec(run_of { STATE_DIR = dir })
      local text = logged(function()
        assert.same({ nil, "failed", 5 }, { netcfg.around(spec, function() return nil, "failed", 5 end) })
        assert.same({ true, 0.25 }, { netcfg.around(spec, function() return true, 0.25 end, sys.monotonic() + 10) })
        assert.same({ true }, { netcfg.around(nil, function() return true end) })
      end)
      assert.equal("", text)
      assert.same({}, fs.dir(dir), "nothing saved")
      fs.remove(dir, { recursive = true })
    end)

    it("ignores what is not a saved state in the file, and removes it", function()
      local dir = assert(fs.tmpdir("netcfg"))
      local spec = netcfg.spec(run_of { STATE_DIR = dir })
      assert(fs.write(spec.file, "junk"))
      local text = logged(function() assert.is_true(netcfg.around(spec, function() return true end)) end)
      assert.matches("WARN network: ignoring " .. spec.file .. ": " .. spec.file .. ": not a saved network state", text,
                     nil, true)
      assert.is_false(fs.exists(spec.file))
      fs.remove(dir, { recursive = true })
    end)
  end)

  it("plans: the devices kept (none here), the guard's verdict, the hooks", function()
    local lines = {}
    netcfg.plan(run_of { POST_READY_HOOKS = "sh -c 'ip route'; /bin/true" },
                function(fmt, ...) lines[#lines + 1] = fmt:format(...) end)
    assert.same({ "network: no network device of the stack: nothing to save or restore",
                  "guard: the reload takes neither the default route nor a GUARD_ADDRESSES address with it",
                  "post-ready hook 1: sh -c ip route", "post-ready hook 2: /bin/true" }, lines)
  end)
end)
