-- guest-timeout: 1500 (six recipe runs and a plan, one depmod: the boot took 227-414 s here at load 2-11)
-- Network continuity through recipes/ubuntu-ofed.lua on the guest's real kernel
-- (drv.netcfg): the fixture NIC (sim_pci, bound by the simulated mlx5_core) is
-- configured under another build of the stack (sim-ofed-next, loaded by hand),
-- then the recipe reloads to the bundle's build and stop reloads back, and the
-- configuration survives both; the guard refuses a reload that would take the
-- default route, changing nothing, and when allowed the route comes back; a
-- run killed between its unload and its restore is recovered by the next run.
local fs = require "drv.fs"
local kmod = require "drv.kmod"
local net = require "drv.net"
local netstate = require "drv.netstate"
local proc = require "drv.proc"
local sys = require "drv.sys"
local guest = require "spec.support.guest"
local ofed = require "spec.support.ofed"
local simnic = require "spec.support.simnic"

local BUS, PF, SIMBUS = simnic.BUS, simnic.PF, simnic.SIMBUS
local sysfs_write, link_of, rep_of = simnic.sysfs_write, simnic.link_of, simnic.rep_of
local VF2 = "0000:03:00.3" -- the VF given no admin MAC: the recipe pins its own
local VF2_MAC = "02:5e:00:00:03:03" -- the simulated driver's MAC for it
local KDIR = "/lib/modules/" .. sys.uname().release
local NEXT_DIR = KDIR .. "/extra/drvrun-spec-next" -- the other build, where stop's restore finds its files
-- Post-ready hooks: one says the PF's MTU (its netdev is the one whose port is p0) and the ready
-- file's first line, one fails.
local HOOK = "sh -c 'for n in " .. SIMBUS .. "/devices/" .. PF .. "/net/*; do "
             .. "[ \"$(cat $n/phys_port_name)\" = p0 ] && echo hook: mtu=$(cat $n/mtu); done 2>/dev/null; "
             .. "echo hook: $(head -n 1 /.driver-ready)'; false"

-- The srcversions of the stack's .ko files in `dir` (the other build, or what the recipe installed).
local function srcversions(dir)
  local v = {}
  for _, name in ipairs(ofed.STACK) do v[name] = assert(kmod.modinfo(dir .. "/" .. name .. ".ko")).srcversion end
  return v
end

local function loaded_build(dir)
  local ok, bad = require("drv.stack").verify(assert(kmod.new()), srcversions(dir))
  return ok, table.concat(bad, "; ")
end

-- The other build of the stack, loaded by hand from NEXT_DIR, and the NIC configured under it:
-- switchdev, three VFs (two with admin MACs, one without), MTU 9000, addresses, a route, a VF's MTU,
-- a representor up with MTU 9000.
local function configure(sock)
  guest.unload_all()
  local paths = {}
  for _, p in ipairs(fs.glob(NEXT_DIR .. "/*.ko")) do paths[p:match("([^/]+)%.ko$")] = p end
  guest.load_fixture_stack(paths)
  local pf = assert(link_of(sock, PF), "the NIC driver made a netdev for the device")
  assert.is_true(sock:set_eswitch(BUS, PF, "switchdev"))
  assert.is_true(net.set_numvfs(BUS, PF, 3))
  simnic.configure_pf(sock, pf) -- the VFs given a MAC take it
  local vf0 = assert(link_of(sock, "0000:03:00.1"))
  assert.equal("02:aa:00:00:00:01", vf0.mac)
  assert.is_true(sock:set_link(vf0.name, { mtu = 4000, up = true }))
  assert.is_true(sock:set_link(assert(rep_of(sock, "pf0vf0")).name, { mtu = 9000, up = true }))
  return pf
end

-- A device's saved state minus what a reload may change (its name), and VF 2's admin MAC, which
-- the recipe pins (asserted apart); addresses in one order.
local function comparable(d)
  local c = {}
  for k, v in pairs(d) do if k ~= "name" then c[k] = v end end
  c.vfs = {}
  for i, vf in ipairs(d.vfs) do
    c.vfs[i] = {}
    for k, v in pairs(vf) do c.vfs[i][k] = v end
    if vf.vf == 2 then c.vfs[i].mac = nil end
  end
  table.sort(c.addresses, function(a, b) return a.address < b.address end)
  return c
end

-- The network now is as `before` (for the devices keyed in `only`, `{ ["sim_pci/..."] = true }`).
local function assert_same_network(sock, before, only)
  local now = netstate.save(sock, ofed.STACK)
  local want = {}
  for _, d in ipairs(before.devices) do
    if not only or only[netstate.device_key(d)] then want[#want + 1] = comparable(d) end
  end
  local have = {}
  for _, d in ipairs(now.devices) do
    if not only or only[netstate.device_key(d)] then have[#have + 1] = comparable(d) end
  end
  assert.same(want, have)
  return now
end

local function assert_vf2_pinned(sock)
  local pf = assert(link_of(sock, PF))
  assert.equal(VF2_MAC, pf.vfs[3].mac, "VF 2 has its own MAC as its admin MAC")
  assert.equal(VF2_MAC, assert(link_of(sock, VF2)).mac)
end

local stop = ofed.stop_recipe

local function assert_in_order(text, lines)
  local at = 1
  for _, line in ipairs(lines) do
    local i = text:find(line, at, true)
    assert(i, ("%q not in the log (after offset %d):\n%s"):format(line, at, text))
    at = i + #line
  end
end

describe("network continuity through the ubuntu-ofed recipe", function()
  local env, sock

  setup(function()
    guest.unload_all()
    env = ofed.setup()
    env.cache = ofed.fresh_cache()
    assert(kmod.insert_many { { name = "sim_pci", path = guest.built .. "/sim-pci/sim_pci.ko" } })
    sysfs_write(SIMBUS .. "/new_device", "3")
    assert(fs.mkdir(NEXT_DIR))
    local paths = guest.fixture_paths("sim-ofed-next")
    for _, name in ipairs(ofed.STACK) do assert(fs.copy(assert(paths[name]), NEXT_DIR .. "/" .. name .. ".ko")) end
    sock = assert(net.open())
  end)

  after_each(function() ofed.cleanup() end)

  teardown(function()
    if sock then sock:close() end
    env.server:stop()
    guest.unload_all()
    if fs.exists(SIMBUS) then
      sysfs_write(SIMBUS .. "/del_device", "3")
      assert(kmod.remove_many { "sim_pci" })
    end
    fs.remove(NEXT_DIR, { recursive = true, missing_ok = true })
    ofed.reset_modules()
  end)

  it("keeps the configuration across the reload to the bundle's build and stop's back, saying what it restored",
     function()
    local pf = configure(sock)
    local before = netstate.save(sock, ofed.STACK)
    assert.equal(7, #before.devices, "the PF, its three VFs and their representors")
    local t0 = sys.monotonic()
    local p, log = ofed.start(env, { "POST_READY_HOOKS=" .. HOOK })
    assert.is_true(ofed.wait_for_log(log, "waiting for a signal", p), fs.read(log))
    print(("    ready after %.1f s (a depmod the first time)"):format(sys.monotonic() - t0))
    local installed = KDIR .. "/updates/ubuntu-ofed"
    assert(loaded_build(installed))
    local now = assert_same_network(sock, before)
    assert_vf2_pinned(sock)
    assert.is_false(fs.exists(ofed.NETWORK), "the saved configuration goes once restored")

    local text = fs.read(log)
    for line in text:gmatch("[^\n]+") do -- what the operator reads
      if line:find(" network: ", 1, true) or line:find(" hook %d") then print("    | " .. line) end
    end
    local label = ("(%s/%s, mlx5_core)"):format(BUS, PF)
    assert.matches("network: saved " .. pf.name .. " " .. label .. ": up, mtu 9000, 10.20.0.1/24, fd00:20::1/64, "
                   .. "1 route, eswitch switchdev, 3 VFs (macs 02:aa:00:00:00:01 02:aa:00:00:00:02)\n", text, nil, true)
    local newpf = ("%s (%s/%s)"):format(assert(link_of(sock, PF)).name, BUS, PF)
    local rep = ("%s (%s/%s#pf0vf0)"):format(assert(rep_of(sock, "pf0vf0")).name, BUS, PF)
    assert.matches(("(%s/%s#pf0vf0, mlx5_core): up, mtu 9000, representor\n"):format(BUS, PF), text, nil, true)
    assert.matches("network: restored " .. rep .. ": mtu 9000\n", text, nil, true)
    assert.matches("network: restored " .. rep .. ": up\n", text, nil, true)
    assert_in_order(text, {
      "load: unload ",
      "network: saved ", -- before the unload; the swap; then the wait and the restore, before the verify
      "network: the stack's devices were back ",
      "network: restored " .. newpf .. ": eswitch mode switchdev\n",
      "network: restored " .. newpf .. ": 3 VFs\n",
      "network: restored " .. newpf .. ": VF 0 mac 02:aa:00:00:00:01 link-state enable\n",
      "network: restored " .. newpf .. ": VF 2 mac " .. VF2_MAC .. " (its own, so that its RDMA GUID is generated from it)\n",
      "network: restored " .. BUS .. "/" .. PF .. ": VF 2 (" .. VF2 .. ") rebound to mlx5_core\n",
      "network: restored " .. newpf .. ": mtu 9000\n",
      "network: restored " .. newpf .. ": address 10.20.0.1/24\n",
      "network: restored " .. newpf .. ": up\n",
      "network: restored " .. newpf .. ": route 10.21.0.0/16 via 10.20.0.254\n",
      ", 0 could not be, in ",
      "load: the stack was down for",
      "ready: /.driver-ready",
      "hook 1 (sh): hook: mtu=9000\n", -- after ready, with the MTU restored
      "hook 1 (sh): hook: recipe=ubuntu-ofed\n",
      "ERROR hook 2 (false): failed (exit 1) after",
      "waiting for a signal",
    })
    -- OFED's udev rules and VF naming helper, from the build, on the "host" while the driver runs
    for i, f in ipairs(ofed.UDEV_FILES) do
      local src = "spec/fixtures/sim-ofed/ofed_scripts/" .. f:match("[^/]+$")
      assert.equal(fs.read(src), fs.read(f), f)
      if i == 2 then assert.equal(tonumber("755", 8), fs.stat(f).mode & tonumber("777", 8), "the helper runs") end
    end

    text = stop(p, log)
    assert(loaded_build(NEXT_DIR))
    assert_same_network(sock, now)
    for _, f in ipairs(ofed.UDEV_FILES) do assert.is_false(fs.exists(f), f .. " removed on stop") end
    local stopped = text:sub((assert(text:find("phase stop started", 1, true))))
    assert_in_order(stopped, { "network: saved ", "restore: loading back ", "network: restored " .. BUS .. "/" .. PF,
                               "network: restored ", ", 0 could not be, in " })
    assert.is_false(fs.exists(ofed.NETWORK))
    assert.is_false(fs.exists(ofed.JOURNAL))
  end)

  it("refuses a reload that would take the default route, changing nothing; allowed, the route comes back", function()
    local pf = configure(sock)
    assert.is_true(sock:add_route { dst = "default", gateway = "10.20.0.254", dev = pf.name })
    local before = netstate.save(sock, ofed.STACK)
    local why = ("the default route (via 10.20.0.254) goes through %s (%s/%s), a device of the stack"):format(
      pf.name, BUS, PF)

    local plan = assert(proc.run({ os.getenv("DRVRUN"), "--plan", "recipes/ubuntu-ofed.lua",
                                   "OFED_URL=" .. env.server:url(env.bundle) }))
    assert.equal(0, plan.status, plan.stderr)
    local vf0 = assert(link_of(sock, "0000:03:00.1"))
    for _, line in ipairs {
      ("\nnetwork: save and restore %s (%s/%s, mlx5_core): up, mtu 9000, 10.20.0.1/24, fd00:20::1/64, 2 routes, "
       .. "eswitch switchdev, 3 VFs (macs 02:aa:00:00:00:01 02:aa:00:00:00:02)\n"):format(pf.name, BUS, PF),
      ("\nnetwork: save and restore %s (%s/0000:03:00.1, mlx5_core): up, mtu 4000, VF of %s\n"):format(vf0.name, BUS, PF),
      "\nguard: refused: " .. why .. "; ALLOW_UPLINK_RELOAD=true would allow it\n",
    } do
      assert.matches(line, plan.stdout, nil, true)
    end

    local status, text = ofed.run(env)
    assert.equal(1, status, text)
    assert.matches("refusing to reload the driver stack: " .. why .. ": the node would lose that network while the "
                   .. "driver reloads. Set ALLOW_UPLINK_RELOAD=true to reload anyway", text, nil, true)
    assert.is_nil(text:find("phase build started", 1, true), "refused in prepare")
    assert(loaded_build(NEXT_DIR))
    assert_same_network(sock, before)
    ofed.assert_host_as_it_was({})
    assert.is_false(fs.exists(ofed.JOURNAL))

    -- allowed, with NET_RESTORE=false: only the uplink's configuration is kept
    local p, log = ofed.start(env, { "ALLOW_UPLINK_RELOAD=true", "NET_RESTORE=false" })
    assert.is_true(ofed.wait_for_log(log, "waiting for a signal", p), fs.read(log))
    text = fs.read(log)
    assert.matches("WARN network: " .. why .. "; reloading anyway (ALLOW_UPLINK_RELOAD=true)", text, nil, true)
    assert(loaded_build(KDIR .. "/updates/ubuntu-ofed"))
    assert_same_network(sock, before, { [BUS .. "/" .. PF] = true })
    local routes = assert(sock:routes())
    local default
    for _, r in ipairs(routes) do
      if r.dst == "default" and r.dev == assert(link_of(sock, PF)).name then default = r end
    end
    assert.equal("10.20.0.254", assert(default, "the default route is back").gateway)
    assert.equal(1500, assert(link_of(sock, "0000:03:00.1")).mtu, "NET_RESTORE=false: the other devices are not kept")
    stop(p, log)
    assert(loaded_build(NEXT_DIR))
    assert_same_network(sock, before, { [BUS .. "/" .. PF] = true })
  end)

  it("recovers a run killed between its unload and its restore: the next run restores what it saved", function()
    configure(sock)
    local before = netstate.save(sock, ofed.STACK)
    local p, log = ofed.start(env, nil, false, { DRVRUN_FAULT = "reload:KILL" })
    local r = assert(p:wait(300))
    assert.equal("SIGKILL", r.signal, fs.read(log))
    -- what the killed run left: its journal, the saved configuration, a NIC without a driver
    assert.is_true(fs.exists(ofed.JOURNAL))
    assert.equal(#before.devices, #assert(netstate.read(ofed.NETWORK)).devices)
    assert.is_nil(link_of(sock, PF), "the NIC driver is unloaded")

    local p2, log2 = ofed.start(env, nil, true)
    assert.is_true(ofed.wait_for_log(log2, "waiting for a signal", p2), fs.read(log2))
    local text = fs.read(log2)
    local recovery = text:sub((assert(text:find("recovery: undoing", 1, true))),
                              (assert(text:find("phase prepare started", 1, true))))
    assert_in_order(recovery, {
      "network: " .. ofed.NETWORK .. " holds what a run that did not finish its reload saved",
      "restore: loading back ", "network: the stack's devices were back ", "network: restored ",
      ": mtu 9000\n", ", 0 could not be, in ",
    })
    assert(loaded_build(KDIR .. "/updates/ubuntu-ofed"))
    assert_same_network(sock, before)
    stop(p2, log2)
    assert(loaded_build(NEXT_DIR))
    assert_same_network(sock, before)
    ofed.assert_host_as_it_was({})
    assert.is_false(fs.exists(ofed.JOURNAL))
  end)
end)
