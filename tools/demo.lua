-- tools/demo.lua: the main job, shown to a person. Runs in the real-kernel
-- guest (`make demo` starts it there): the inbox RDMA stack is loaded and in
-- use; recipes/ubuntu-ofed.lua swaps in the simulated OFED bundle fetched over
-- HTTP, exposes its root, says ready, and on SIGTERM puts everything back.
local kmod = require "drv.kmod"
local proc = require "drv.proc"
local fs = require "drv.fs"
local sys = require "drv.sys"
local mount = require "drv.mount"
local httpd = require "spec.support.httpd"

local STACK = { "mlx_compat", "ib_core", "ib_uverbs", "ib_umad", "ib_cm", "iw_cm", "rdma_cm", "rdma_ucm",
                "ib_ipoib", "mlx5_core", "mlx5_ib" }
local EXPOSE, BLACKLIST = "/run/mellanox/drivers", "/etc/modprobe.d/blacklist-ofed-modules.conf"
local UDEV_RULES = "/lib/udev/rules.d/82-net-setup-link.rules" -- OFED's net naming rules, while it runs

local function title(s) io.write("\n== ", s, "\n") io.stdout:flush() end

local function module_table()
  local ctx = assert(kmod.new())
  io.write(("  %-11s %-9s %-25s %-6s %s\n"):format("module", "refcount", "srcversion", "taint", "used by"))
  for _, n in ipairs(STACK) do
    local st = ctx:state(n)
    if st then
      io.write(("  %-11s %-9d %-25s %-6s %s\n"):format(n, st.refcount, st.srcversion or "(inbox)",
        st.taint == "" and "-" or st.taint, table.concat(st.holders, ",")))
    else
      io.write(("  %-11s (not loaded)\n"):format(n))
    end
  end
end

local function sh(cmd) assert(proc.run({ "sh", "-c", cmd }, { stdout = "inherit", stderr = "inherit" })) end

local function sha_of(file)
  for line in io.lines("build/fixtures/SHA256SUMS") do
    local sha, name = line:match("^(%x+)%s+(%S+)$")
    if name == file then return sha end
  end
end

title("the node: inbox RDMA stack loaded and in use (rdma_ucm holds rdma_cm, mlx5_ib holds mlx5_core)")
local ctx = assert(kmod.new())
for _, m in ipairs { "mlx5_ib", "rdma_ucm", "ib_umad" } do assert(ctx:insert(m)) end
module_table()

-- the host side of the shared path, as with mountPropagation: Bidirectional
assert(fs.mkdir(EXPOSE))
assert(mount.bind(EXPOSE, EXPOSE))
assert(mount.propagation(EXPOSE, "shared"))
local bundle = assert(fs.glob("build/fixtures/sim-ofed-[0-9]*.tgz"))[1]:match("[^/]+$")
local server = httpd.start(fs.realpath("build/fixtures"))
local cache = fs.tmpdir("cache")
sh(("cp -a build/cache/ubuntu-ofed %s/ && rm -rf %s/ubuntu-ofed/sources"):format(cache, cache))
local args = { "recipes/ubuntu-ofed.lua", "OFED_URL=" .. server:url(bundle), "OFED_SHA256=" .. sha_of(bundle),
               "BLACKLIST_FILE=" .. BLACKLIST, "CACHE_DIR=" .. cache, "UDEV_RULES_DIR=/lib/udev/rules.d",
               "UDEV_HELPER_DIR=/etc/infiniband" }

title("drvrun --plan recipes/ubuntu-ofed.lua OFED_URL=" .. server:url(bundle) .. " ...")
assert(proc.run({ os.getenv("DRVRUN"), "--plan", table.unpack(args) }, { stdout = "inherit", stderr = "inherit" }))

title("drvrun recipes/ubuntu-ofed.lua ... (in its own mount namespace, as a container)")
local argv = { "unshare", "-m", "--propagation", "unchanged", os.getenv("DRVRUN"), table.unpack(args) }
local recipe = assert(proc.spawn(argv, { stdout = "inherit", stderr = "inherit" }))
local t0 = sys.monotonic()
while not fs.exists("/.driver-ready") and recipe:running() and sys.monotonic() - t0 < 300 do sys.sleep(0.1) end
assert(fs.exists("/.driver-ready"), "the recipe did not become ready")

title("ready file " .. EXPOSE .. "/.driver-ready")
io.write(fs.read(EXPOSE .. "/.driver-ready"))
title("modules after: the OFED stack, out-of-tree (O), with the built srcversions")
module_table()
title("the container's root, seen from the host's mount namespace")
local info = assert(mount.info(EXPOSE))
io.write(("  %s is a mount (%s, %s); it holds usr/src/ofa_kernel/default -> %s\n"):format(EXPOSE, info.fstype,
  info.propagation, fs.readlink(EXPOSE .. "/usr/src/ofa_kernel/default")))
io.write(("  temporary blacklist %s: %s\n"):format(BLACKLIST, fs.exists(BLACKLIST) and "present" or "gone"))
io.write(("  OFED's udev rules %s: %s\n"):format(UDEV_RULES, fs.exists(UDEV_RULES) and "installed" or "MISSING"))

title("kill -TERM (the pod is terminated)")
assert(recipe:kill("TERM"))
local r = assert(recipe:wait(120))
io.write(("  drvrun exited with status %s\n"):format(tostring(r.status or r.signal)))
title("after stop: the inbox stack is back, nothing left behind")
module_table()
for _, f in ipairs { "/.driver-ready", BLACKLIST, UDEV_RULES, "/run/drvrun/ubuntu-ofed.journal" } do
  io.write(("  %s: %s\n"):format(f, fs.exists(f) and "PRESENT" or "gone"))
end
io.write(("  %s mounted: %s\n"):format(EXPOSE .. "/etc", fs.exists(EXPOSE .. "/etc") and "YES" or "no"))
server:stop()
os.exit(r.status == 0 and 0 or 1)
