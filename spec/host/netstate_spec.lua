-- drv.netstate's pure parts on the host: the guard's route lookup and the
-- state file (save/wait/restore run on the fixture NIC: spec/guest/net_spec.lua).
local netstate = require "drv.netstate"
local fs = require "drv.fs"

local function state(routes, addresses)
  return { version = netstate.VERSION, routes = routes, devices = {
    { bus = "pci", device = "0000:03:00.0", name = "ens1", addresses = addresses or {}, routes = {}, vfs = {} } } }
end

describe("drv.netstate", function()
  describe("guard", function()
    local routes = {
      { dst = "default", gateway = "192.0.2.1", dev = "eth0", family = "inet", metric = 0 },
      { dst = "10.0.0.0/8", gateway = "192.0.2.9", dev = "eth0", family = "inet", metric = 0 },
      { dst = "10.20.0.0/16", dev = "ens1", family = "inet", metric = 0 },
      { dst = "10.20.30.0/24", dev = "eth0", family = "inet", metric = 0 },
      { dst = "fd00:20::/64", dev = "ens1", family = "inet6", metric = 256 },
      { dst = "fd00::/16", dev = "eth0", family = "inet6", metric = 256 },
    }

    it("takes the longest prefix, IPv4 and IPv6", function()
      assert.is_true(netstate.guard(state(routes), { "10.1.2.3", "10.20.30.4", "fd00:21::1", "192.0.2.7", "::1" }))
      assert.same({ false, "address 10.20.1.1 is reached through ens1 (pci/0000:03:00.0), a device of the stack "
                           .. "(route 10.20.0.0/16)" }, { netstate.guard(state(routes), { "10.20.1.1" }) })
      assert.same({ false, "address fd00:20:0:0::ab is reached through ens1 (pci/0000:03:00.0), a device of the "
                           .. "stack (route fd00:20::/64)" }, { netstate.guard(state(routes), { "fd00:20:0:0::ab" }) })
    end)

    it("names the default route and an address on a stack device, all of them", function()
      local r = { { dst = "default", gateway = "10.20.0.1", dev = "ens1", family = "inet", metric = 0 } }
      local ok, why = netstate.guard(state(r, { { family = "inet", address = "10.20.0.5", prefix = 16 } }),
                                     { "10.20.0.5" })
      assert.is_false(ok)
      assert.equal("the default route (via 10.20.0.1) goes through ens1 (pci/0000:03:00.0), a device of the stack; "
                   .. "address 10.20.0.5 is on ens1 (pci/0000:03:00.0), a device of the stack", why)
    end)

    it("prefers the lower metric between routes of one prefix", function()
      local r = { { dst = "default", dev = "eth0", family = "inet", metric = 100 },
                  { dst = "10.0.0.0/8", dev = "ens1", family = "inet", metric = 200 },
                  { dst = "10.0.0.0/8", dev = "eth0", family = "inet", metric = 100 } }
      assert.is_true(netstate.guard(state(r), { "10.9.9.9" }))
    end)

    it("raises on what is not an address", function()
      local ok, err = pcall(netstate.guard, state(routes), { "api.example" })
      assert.is_false(ok)
      assert.matches("netstate.guard: 'api.example' is not an IPv4 or IPv6 address", err, nil, true)
    end)
  end)

  describe("state files", function()
    it("read back what write kept, and refuse anything else", function()
      local dir = assert(fs.tmpdir("netstate"))
      local s = state({ { dst = "default", gateway = "10.20.0.1", dev = "ens1", family = "inet", metric = 0 } })
      assert(netstate.write(dir .. "/state", s))
      assert.same(s, assert(netstate.read(dir .. "/state")))
      assert(fs.write(dir .. "/other", "return { version = 99 }\n"))
      assert.same({ nil, dir .. "/other: not a saved network state (version 99)" }, { netstate.read(dir .. "/other") })
      assert(fs.write(dir .. "/junk", "not lua"))
      local none, err = netstate.read(dir .. "/junk")
      assert.is_nil(none)
      assert.matches("^" .. dir:gsub("%p", "%%%0") .. "/junk: not a saved network state %(", err)
      assert.is_nil((netstate.read(dir .. "/missing")))
      fs.remove(dir, { recursive = true })
    end)
  end)
end)
