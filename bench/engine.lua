--- bench/engine.lua ROWS_FILE: the driver image run by a real engine (podman, through
-- podman-docker's `docker`) in the real-kernel guest, against the engine's own
-- floor, in one run (bench/main.lua's "engine" part boots the guest for it, with
-- the images tools/build-test-images built and the host's build/cache-real as
-- the node's build cache; spec/support/engine.lua sets the engine up).
--
--   - a container restart: README's `docker run` line to ready on a node whose
--     stack is loaded already (RESTORE_DRIVER_ON_POD_TERMINATION=false keeps it
--     loaded between runs), against `docker run --rm --entrypoint true` of the
--     same image with the same options: the engine's floor for a container start;
--   - `docker stop` to the run's exit, with the restore on (the inbox stack
--     loaded back), against the engine's default grace (10 s).
-- The image sizes are measured on the host (bench/main.lua).
package.path = "./?.lua;" .. package.path
local fs = require "drv.fs"
local kmod = require "drv.kmod"
local proc = require "drv.proc"
local sys = require "drv.sys"
local util = require "bench.util"
local engine = require "spec.support.engine"
local guest = require "spec.support.guest"

local OUT = assert(arg[1], "usage: drvrun bench/engine.lua ROWS_FILE")
local CACHE = assert(os.getenv("DRVRUN_IMAGE_CACHE"), "DRVRUN_IMAGE_CACHE is not set")
local REPS = tonumber(os.getenv("BENCH_REPS") or "5")
local READY = "/run/mellanox/drivers/.driver-ready"
local GRACE = 10 -- docker stop's and podman stop's default
local INBOX = { "mlx5_ib", "mlx5_core", "rdma_ucm", "rdma_cm", "ib_uverbs", "ib_core", "ib_umad", "ib_ipoib" }
local say = util.say
local rows = {}

local RUN = { "run", "-d", "-v", "/run/mellanox/drivers:/run/mellanox/drivers:rshared",
              "-v", "/etc/network:/etc/network", "-v", "/lib/modules:/host/lib/modules:ro",
              "-v", "/var/cache/drvrun:/var/cache/drvrun", "-v", "/run/drvrun:/run/drvrun", "--net=host",
              "--privileged" }

local function run_args(extra)
  local args = { table.unpack(RUN) }
  for _, a in ipairs(extra) do args[#args + 1] = a end
  return args
end

local function must(argv)
  local r = assert(proc.run(argv, { stderr = "stdout" }))
  assert(r.status == 0, table.concat(argv, " ") .. ": " .. r.stdout)
end

local function save() assert(fs.write(OUT, util.serialize(rows))) end

-- Seconds from `docker run -d` until the node sees the ready file (the
-- container's log says it); the container's id, and drvrun's own seconds from its start
-- to ready (its log).
local function run_to_ready(extra)
  fs.remove(READY, { missing_ok = true })
  local t0 = sys.monotonic()
  local r = engine.docker(run_args(extra), 900)
  assert(r.status == 0, r.stdout)
  local id = r.stdout:match("(%x+)\n$")
  assert(guest.wait_until(function() return fs.exists(READY) end, 900),
         "not ready: " .. engine.docker({ "logs", id }).stdout)
  local seconds = sys.monotonic() - t0
  local own = engine.docker({ "logs", id }).stdout:match("INFO ready: [^\n]*%(([%d.]+) s after start%)")
  return seconds, id, tonumber(own)
end

-- Seconds from `docker stop` to the container's exit (the engine's record of it; the
-- command itself returns later, after the engine's own cleanup), then the container removed.
local function stop(id)
  local t0 = sys.time()
  local r = engine.docker({ "stop", id }, 120)
  assert(r.status == 0, r.stdout)
  local st = engine.docker({ "inspect", "--format", "{{.State.ExitCode}} {{.State.FinishedAt.UnixNano}}", id })
  local code, finished = st.stdout:match("^(%d+) (%d+)")
  assert(code == "0", "the container exited " .. tostring(code) .. ": " .. engine.docker({ "logs", id }).stdout)
  engine.docker({ "rm", id })
  return tonumber(finished) / 1e9 - t0
end

local function inbox_back()
  local ctx = assert(kmod.new())
  for _, n in ipairs(INBOX) do
    local st = ctx:state(n)
    if not st or st.taint ~= "" then return false end
  end
  return true
end

local version = engine.setup()
say("engine: %s", version)
assert(fs.mkdir("/run/mellanox/drivers"))
assert(fs.mkdir("/etc/network"))
engine.node_cache(assert(fs.realpath(CACHE)))
guest.unload_all()
must { "modprobe", "-a", table.unpack(INBOX) }

-- The first run swaps the stack (and fills the depmod memo); the restarts find it loaded.
local keep = { "-e", "RESTORE_DRIVER_ON_POD_TERMINATION=false", "ofed-driver" }
local first, id = run_to_ready(keep)
say("first docker run: ready in %.1f s (the stack swapped)", first)
stop(id)

-- The floor: the same image and options, its entrypoint `true`, in the foreground to its end.
local FLOOR = { engine.DOCKER, "run", "--rm" }
for i = 2, #RUN do if RUN[i] ~= "-d" then FLOOR[#FLOOR + 1] = RUN[i] end end
for _, a in ipairs { "--entrypoint", "true", "ofed-driver" } do FLOOR[#FLOOR + 1] = a end
must(FLOOR) -- once untimed: the engine's first container of the boot sets up its state

local restart, floor = {}, {}
for rep = 1, REPS do
  floor[rep] = util.time(FLOOR)
  local own
  restart[rep], id, own = run_to_ready(keep)
  stop(id)
  say("restart %d: ready in %.1f s (drvrun %.2f s of it, from its start); docker run --rm --entrypoint true: %.1f s",
      rep, restart[rep], own or -1, floor[rep])
end
local mr, mf = util.median(restart), util.median(floor)
rows[#rows + 1] = util.target("engine: docker run to ready, stack loaded (restart) / docker run --rm IMAGE true", mr, "s",
                              mf, mr / mf, "<=", 1.3)
save()

local stops = {}
for rep = 1, REPS do
  guest.unload_all() -- the inbox stack loaded and swapped by each run: its stop has it to put back
  must { "modprobe", "-a", table.unpack(INBOX) }
  local _, sid = run_to_ready({ "ofed-driver" })
  stops[rep] = stop(sid)
  assert(inbox_back(), "the inbox stack is not back after docker stop")
  say("stop %d: %.2f s, the inbox stack back", rep, stops[rep])
end
local ms = util.median(stops)
rows[#rows + 1] = util.target("engine: docker stop to exit, restore on (inbox back) / default grace 10 s", ms, "s",
                              GRACE, ms / GRACE, "<=", 0.5)
save()
