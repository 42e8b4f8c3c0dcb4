-- The images run by a real container engine on the real kernel: the guest is
-- the node, Debian's podman (its `docker` command, podman-docker) runs the
-- images tools/build-test-images built with buildah on the host (the seed's
-- `docker build` lines), spec/support/engine.lua. What runs is README.md's
-- "Running the driver containers" section: the seed's two `docker run` lines as the README
-- gives them for a node (with `-i` for `-it`: no terminal here), on the real
-- MLNX_OFED 25.10 stack from the node's build cache (the host's
-- build/cache-real as /var/cache/drvrun: the guest compiles nothing), the
-- real nv_peer_memory 1.3; the image pulled from a registry on 127.0.0.1 by
-- its per-kernel tag; the OFED DaemonSet's pod played by `podman kube play`.
local fs = require "drv.fs"
local kmod = require "drv.kmod"
local mount = require "drv.mount"
local proc = require "drv.proc"
local sys = require "drv.sys"
local guest = require "spec.support.guest"
local engine = require "spec.support.engine"

local IMAGES = assert(os.getenv("DRVRUN_IMAGES"), "DRVRUN_IMAGES is not set (make check-images sets it)")
local CACHE = assert(os.getenv("DRVRUN_IMAGE_CACHE"), "DRVRUN_IMAGE_CACHE is not set (make check-images sets it)")
local KVER = sys.uname().release
local EXPOSE, READY = "/run/mellanox/drivers", "/run/mellanox/drivers/.driver-ready"
local NVIDIA_ROOT = "/run/nvidia/driver"
local INBOX = { "mlx5_ib", "mlx5_core", "rdma_ucm", "rdma_cm", "ib_uverbs", "ib_core", "ib_umad", "ib_ipoib" }
local OFED_VERSION = "25.10-1.7.1"

-- README.md's lines (the `docker run` of each image, as a node runs them).
local OFED_RUN = { "run", "--rm", "-i", "-v", "/run/mellanox/drivers:/run/mellanox/drivers:rshared",
                   "-v", "/etc/network:/etc/network", "-v", "/lib/modules:/host/lib/modules:ro",
                   "-v", "/var/cache/drvrun:/var/cache/drvrun", "-v", "/run/drvrun:/run/drvrun", "--net=host",
                   "--privileged", "ofed-driver" }
local PEERMEM_RUN = { "run", "--rm", "-i", "-v", "/run/mellanox/drivers:/run/mellanox/drivers",
                      "-v", "/run/nvidia/driver:/run/nvidia/drivers", "-v", "/lib/modules:/host/lib/modules:ro",
                      "-v", "/var/cache/drvrun:/var/cache/drvrun", "-v", "/run/drvrun:/run/drvrun", "--privileged",
                      "nv-peer-mem" }

local function show(args) return "docker " .. table.concat(args, " ") end

local function sh(cmd)
  local r = assert(proc.run({ "sh", "-c", cmd }, { stderr = "stdout" }))
  assert(r.status == 0, cmd .. ": " .. r.stdout)
  return r.stdout
end

local function load_inbox()
  guest.unload_all()
  sh("modprobe -a " .. table.concat(INBOX, " "))
end

local function assert_inbox_loaded()
  local ctx = assert(kmod.new())
  for _, n in ipairs(INBOX) do
    local st = assert(ctx:state(n), n .. " is loaded back")
    assert.equal("", st.taint, n .. " is the kernel's own")
  end
  print("    the inbox stack is back: " .. table.concat(INBOX, " "))
end

-- Nothing of a run is left on the node: no ready file, nothing mounted at the expose path.
-- What is mounted at or below `path`, a line for a failure message.
local function mounts_below(path)
  local out = {}
  for _, m in ipairs(mount.list(path) or {}) do out[#out + 1] = ("%s (root %s, %s)"):format(m.target, m.root, m.fstype) end
  return table.concat(out, ", ")
end

local function assert_nothing_left()
  assert.is_false(fs.exists(READY), ("%s is left: %s; mounted at or below %s: %s"):format(READY, fs.read(READY) or "?",
                                                                                         EXPOSE, mounts_below(EXPOSE)))
  assert.same({}, mount.list(EXPOSE) or {}, "nothing mounted at or below " .. EXPOSE .. " but the volume")
end

-- The NVIDIA driver as its container leaves a node: its root at /run/nvidia/driver (the
-- simulated driver's, make fixtures), the nvidia module loaded.
local function nvidia_driver()
  assert(fs.mkdir(NVIDIA_ROOT))
  if not mount.is_mountpoint(NVIDIA_ROOT) then sh("mount --bind " .. guest.built .. "/nvidia-root " .. NVIDIA_ROOT) end
  local ko = ("%s/lib/modules/%s/kernel/drivers/video/nvidia.ko"):format(NVIDIA_ROOT, KVER)
  if not guest.proc_line("nvidia") then assert(kmod.insert_many { { name = "nvidia", path = ko } }) end
end

-- Until the run's log says ready (a killed run's ready file may still be there) and the node sees the file.
local function wait_ready(p, log, timeout)
  assert.is_true(guest.wait_until(function()
    return (fs.read(log) or ""):find("INFO ready: ", 1, true) ~= nil and fs.exists(READY)
  end, timeout, p), fs.read(log))
end

-- Stop the container of `image` with the engine's default grace; the run's
-- process ends. Returns the seconds from `docker stop` to its end, and the run's status.
local function stop(image, p)
  local id = assert(engine.container_of(image, p, 60), "no running container of " .. image)
  local seconds, r = engine.timed(function() return engine.docker({ "stop", id }) end)
  assert.equal(0, r.status, r.stdout)
  return seconds, assert(p:wait(120)).status
end

describe("the images run by a real engine on the node (the guest)", function()
  local version
  setup(function()
    version = engine.setup()
    print("    engine: " .. version .. " (Debian's podman, its docker command from podman-docker)")
    assert(fs.mkdir(EXPOSE))
    assert(fs.mkdir("/etc/network"))
    -- the node's build cache: the host's build of the real bundle (tools/fill-cache)
    engine.node_cache(assert(fs.realpath(CACHE)))
  end)
  teardown(function() guest.unload_all() end)

  it("refuses the seed's OFED line with a plain -v at once: the host would not see the root; nothing changes", function()
    load_inbox()
    local args = { table.unpack(OFED_RUN) }
    args[5] = "/run/mellanox/drivers:/run/mellanox/drivers" -- the seed's -v, without :rshared
    assert.equal("-v", args[4])
    local r = engine.docker(args, 900)
    assert.equal(1, r.status, r.stdout)
    assert.matches("expose: /run/mellanox/drivers is not shared with the host", r.stdout, nil, true)
    assert.matches("-v /run/mellanox/drivers:/run/mellanox/drivers:rshared", r.stdout, nil, true)
    assert.matches("mountPropagation: Bidirectional", r.stdout, nil, true)
    assert.is_nil(r.stdout:find("phase build", 1, true), "refused in prepare, before anything")
    assert_inbox_loaded()
    assert_nothing_left()
  end)

  local ofed_p, ofed_log
  it("the seed's OFED line reaches ready on the real OFED 25.10 stack; the node sees the root and the ready file",
     function()
    load_inbox()
    print("    " .. show(OFED_RUN))
    local seconds
    seconds = engine.timed(function()
      ofed_p, ofed_log = engine.spawn(OFED_RUN)
      wait_ready(ofed_p, ofed_log, 1500)
    end)
    local text = assert(fs.read(ofed_log))
    assert.matches("drvrun entrypoint: /lib/modules/" .. KVER:gsub("%p", "%%%0") .. ": the host's", text)
    assert.matches("build: cache hit for kernel " .. KVER:gsub("%p", "%%%0"), text)
    assert.matches("expose: container root at /run/mellanox/drivers, shared with the host", text, nil, true)
    -- seen from the guest's own mount namespace: the ready file, the container's root
    print("    " .. READY .. " (the node's mount namespace):\n      "
          .. assert(fs.read(READY)):gsub("\n(.)", "\n      %1"):gsub("\n$", ""))
    assert.is_true(fs.exists(EXPOSE .. "/usr/local/share/drvrun/recipes/ubuntu-ofed.lua"), "the container's root")
    local ctx = assert(kmod.new())
    local core = assert(ctx:state("mlx5_core"), "mlx5_core is loaded")
    assert.equal(OFED_VERSION, core.version)
    assert.equal("OE", core.taint)
    print(("    mlx5_core %s loaded (srcversion %s), ready %.0f s after docker run"):format(core.version,
          core.srcversion, seconds))
    -- the image's HEALTHCHECK, run by the engine in the container (podman exec)
    local id = assert(engine.container_of("ofed-driver", ofed_p))
    local health = engine.docker({ "healthcheck", "run", id })
    assert.equal(0, health.status, health.stdout)
    local pid1 = engine.docker({ "exec", id, "cat", "/proc/1/cmdline" })
    assert.equal(0, pid1.status, pid1.stdout)
    assert.matches("^/usr/local/bin/drvrun\0%-%-init\0", pid1.stdout)
    print("    docker healthcheck run: healthy; the container's PID 1: " .. pid1.stdout:gsub("\0", " "))
  end)

  local peer_p, peer_log
  it("then the seed's nv-peer-mem line loads the real nv_peer_mem 1.3, built against the OFED container's root",
     function()
    assert(ofed_p and ofed_p:running(), "the OFED container runs")
    nvidia_driver()
    print("    " .. show(PEERMEM_RUN))
    peer_p, peer_log = engine.spawn(PEERMEM_RUN)
    assert.is_true(guest.wait_until(function() return guest.proc_line("nv_peer_mem") ~= nil and
      (fs.read(peer_log) or ""):find("INFO ready: ", 1, true) ~= nil end, 900, peer_p), fs.read(peer_log))
    local text = assert(fs.read(peer_log))
    assert.matches("build: cache hit", text, nil, true)
    local st = assert(assert(kmod.new()):state("nv_peer_mem"))
    assert.equal("1.3-0", st.version)
    assert.is_true(fs.exists("/sys/kernel/mm/memory_peers/nv_mem"), "its client registered with OFED's peer-memory API")
    print("    nv_peer_mem " .. st.version .. " loaded; " .. guest.proc_line("nv_peer_mem"))
  end)

  it("docker stop of each, with the engine's default grace: a clean stop, the inbox stack back, nothing left",
     function()
    assert(peer_p and ofed_p, "both run")
    local s1, status1 = stop("nv-peer-mem", peer_p)
    assert.equal(0, status1, fs.read(peer_log))
    assert.is_nil(guest.proc_line("nv_peer_mem"), "nv_peer_mem unloaded")
    local s2, status2 = stop("ofed-driver", ofed_p)
    assert.equal(0, status2, fs.read(ofed_log))
    print(("    docker stop: nv-peer-mem in %.1f s, ofed-driver in %.1f s (the default grace: 10 s)"):format(s1, s2))
    assert.matches("received SIGTERM", fs.read(ofed_log), nil, true)
    assert_inbox_loaded()
    assert_nothing_left()
    sh("rmmod nvidia")
  end)

  -- docker kill of the run of `args`, then the same run again: recovered and ready, then stopped.
  -- Returns the second run's log.
  local function kill_and_rerun(args)
    load_inbox()
    local p, log = engine.spawn(args)
    wait_ready(p, log, 900)
    assert.matches("install: depmod outputs copied from the build cache", fs.read(log), nil, true)
    local id = assert(engine.container_of("ofed-driver", p))
    local k = engine.docker({ "kill", id })
    assert.equal(0, k.status, k.stdout)
    p:wait(120)
    assert.equal(OFED_VERSION, assert(assert(kmod.new()):state("mlx5_core")).version, "left loaded by the kill")
    local seconds
    seconds = engine.timed(function()
      p, log = engine.spawn(args)
      wait_ready(p, log, 900)
    end)
    local text = assert(fs.read(log))
    -- the killed run's journal, on the node's /run/drvrun: undone (the exposed root, the swap), then a reload
    assert.matches("recovery: undoing %d+ changes left by an earlier run that did not stop cleanly", text)
    assert.matches("load: the stack was down for", text, nil, true)
    print(("    after docker kill: docker run again, recovered and ready in %.0f s"):format(seconds))
    local _, status = stop("ofed-driver", p)
    assert.equal(0, status, fs.read(log))
    assert_inbox_loaded()
    return assert(fs.read(log))
  end

  it("docker kill, then the same docker run: the new container recovers and reaches ready; a stop puts the inbox "
     .. "stack back; the killed root, the new container's volume, stays on the node and the log says how to unmount it",
     function()
    local text = kill_and_rerun(OFED_RUN)
    -- the engine bound the killed run's root as the volume: no umount from inside reaches the node's copy
    assert.matches("expose: " .. EXPOSE .. " holds the root the killed run exposed", text, nil, true)
    assert.matches("`umount -R " .. EXPOSE .. "`", text, nil, true)
    -- the killed run's files in it too: the engine removed that container's layer, its overlay still shows them
    local left = mount.list(EXPOSE) or {}
    assert.is_true(#left > 0 and left[1].target == EXPOSE and left[1].fstype == "overlay",
                   "the killed root: " .. mounts_below(EXPOSE))
    print("    left on the node, as the log says: " .. mounts_below(EXPOSE))
    sh("umount -R " .. EXPOSE)
    assert_nothing_left()
  end)

  it("with the parent directory as the volume (-v /run/mellanox:/run/mellanox:rshared), docker kill then docker run "
     .. "leaves nothing: the new container unmounts the killed root on the node", function()
    local args = { table.unpack(OFED_RUN) }
    assert.equal(EXPOSE .. ":" .. EXPOSE .. ":rshared", args[5])
    args[5] = "/run/mellanox:/run/mellanox:rshared"
    print("    " .. show(args))
    local text = kill_and_rerun(args)
    assert.is_nil(text:find("holds the root the killed run exposed", 1, true), "the killed root is unmounted")
    assert_nothing_left()
  end)

  it("pulls the precompiled image from a registry on 127.0.0.1 by its per-kernel tag; it reaches ready on an empty "
     .. "build cache with the build it holds, without a compiler", function()
    local tag = assert(fs.read(IMAGES .. "/registry.tag")):match("^(%S+)\n$")
    assert.matches("^[%d.-]+%-0%-" .. KVER:gsub("%p", "%%%0") .. "%-debian12%-amd64$", tag)
    local port = math.random(20000, 60000)
    local registry = assert(proc.spawn({ "docker-registry", "serve", "spec/image/engine/registry.yml" },
      { env = { REGISTRY_HTTP_ADDR = "127.0.0.1:" .. port, REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY = IMAGES .. "/registry" },
        stdout = "null", stderr = "null" }))
    finally(function() registry:kill("TERM") registry:wait(30) end)
    local ref = ("127.0.0.1:%d/ofed-driver:%s"):format(port, tag)
    local pulled
    local seconds = engine.timed(function()
      for _ = 1, 30 do -- until the registry listens
        pulled = engine.docker({ "pull", "--tls-verify=false", ref }, 1800)
        if pulled.status == 0 or not pulled.stdout:find("connection refused", 1, true) then break end
        sys.sleep(1)
      end
    end)
    assert.equal(0, pulled.status, pulled.stdout)
    local size = tonumber(engine.docker({ "image", "inspect", "--format", "{{.Size}}", ref }).stdout)
    print(("    docker pull %s: %.0f s, %.0f MB"):format(ref, seconds, size / 1e6))
    local tools = engine.docker({ "run", "--rm", "--entrypoint", "sh", ref, "-c",
      "for t in gcc cc make patch; do command -v $t && exit 1; done; exit 0" })
    assert.equal(0, tools.status, "a compiler, make or patch in the precompiled image: " .. tools.stdout)
    load_inbox()
    local empty = assert(fs.tmpdir("empty-cache"))
    local args = { table.unpack(OFED_RUN) }
    assert.equal("/var/cache/drvrun:/var/cache/drvrun", args[11])
    args[11], args[#args] = empty .. ":/var/cache/drvrun", ref
    local p, log = engine.spawn(args)
    wait_ready(p, log, 1500)
    local text = assert(fs.read(log))
    assert.matches("drvrun entrypoint: /var/cache/drvrun/ubuntu%-ofed/" .. KVER:gsub("%p", "%%%0")
                   .. "/builds/%x+: the build the image holds %(precompiled%)", text)
    assert.matches("build: cache hit for kernel " .. KVER:gsub("%p", "%%%0"), text)
    local _, status = stop(ref, p)
    assert.equal(0, status, fs.read(log))
    assert_inbox_loaded()
    assert_nothing_left()
  end)

  -- podman kube play of a DaemonSet's pod (tools/images/pod.mjs), ready when `ready_file` says so
  -- with its container's log; its container's name, log and the pod's terminationGracePeriodSeconds.
  local function play(name, ready_file)
    local pod = IMAGES .. "/" .. name .. ".pod.yaml"
    local grace = tonumber(assert(fs.read(pod)):match("\n%s*terminationGracePeriodSeconds: (%d+)\n"))
    print("    podman kube play " .. pod)
    local r = engine.kube_play(pod, 900)
    assert.equal(0, r.status, r.stdout)
    local ctr = ("%s-drvrun-guest-%s"):format(name, name)
    local function logs() return engine.podman({ "logs", ctr }).stdout end
    assert.is_true(guest.wait_until(function()
      return fs.exists(ready_file) and logs():find('"msg":"ready: ', 1, true) ~= nil
    end, 1500), logs())
    local health = engine.podman({ "healthcheck", "run", ctr })
    print(("    %s ready; podman healthcheck run (the pod's probe): exit %s %s"):format(ctr, tostring(health.status),
          health.stdout))
    assert.equal(0, health.status, health.stdout)
    return { pod = pod, ctr = ctr, logs = logs, grace = grace }
  end

  -- A played pod deleted as the kubelet deletes it: its containers sent SIGTERM and given the pod's
  -- terminationGracePeriodSeconds (`podman pod stop -t GRACE`), then removed (`podman kube down`).
  -- podman 4.3's kube down alone stops with a timeout of 0 (PodStopOptions{}: SIGKILL at once), which
  -- no kubelet does. Returns the container's whole log, its stop too.
  local function down(p)
    local name = assert(assert(fs.read(p.pod)):match("\nmetadata:\n.-\n  name: (%S+)\n"), "the pod's name")
    local seconds, r = engine.timed(function()
      return engine.podman({ "pod", "stop", "-t", tostring(p.grace), name }, p.grace + 60)
    end)
    local text = p.logs() -- the stopped container's, until kube down removes it
    assert.equal(0, r.status, r.stdout .. "\n" .. text)
    local rm = engine.podman({ "kube", "down", p.pod }, 120)
    assert.equal(0, rm.status, rm.stdout)
    print(("    podman pod stop -t %d %s (the kubelet's SIGTERM and grace): %.1f s; podman kube down %s")
          :format(p.grace, name, seconds, p.pod))
    assert.is_true(seconds < p.grace)
    assert.matches('"msg":"received SIGTERM"', text, nil, true)
    return text
  end

  it("podman kube play of the two DaemonSets' pods: ready with their volumes, Bidirectional propagation, "
     .. "privileged, env and probes; each stopped within its terminationGracePeriodSeconds, then removed by podman kube "
     .. "down", function()
    load_inbox()
    local ofed = play("ofed-driver", READY)
    local text = ofed.logs()
    assert.matches('"msg":"expose: container root at /run/mellanox/drivers, shared with the host', text, nil, true)
    assert.matches('"msg":"build: cache hit for kernel ', text, nil, true)
    assert.equal(OFED_VERSION, assert(assert(kmod.new()):state("mlx5_core")).version)
    local inspect = engine.podman({ "inspect", ofed.ctr, "--format",
      "{{.HostConfig.Privileged}} {{range .Mounts}}{{.Destination}}:{{.Propagation}} {{end}}" }).stdout
    print("    " .. ofed.ctr .. ": privileged, mounts: " .. inspect)
    assert.matches("^true ", inspect)
    assert.matches("/run/mellanox/drivers:rshared", inspect, nil, true)

    nvidia_driver()
    local peer = play("nv-peer-mem", "/run/drvrun/peermem.driver-ready")
    assert.matches('"msg":"build: cache hit', peer.logs(), nil, true)
    local st = assert(assert(kmod.new()):state("nv_peer_mem"))
    assert.equal("1.3-0", st.version)
    print("    nv_peer_mem " .. st.version .. " loaded by the pod")

    local stopped = down(peer)
    assert.is_nil(guest.proc_line("nv_peer_mem"), "nv_peer_mem unloaded: " .. stopped)
    assert.is_false(fs.exists("/run/drvrun/peermem.driver-ready"))
    down(ofed)
    assert_inbox_loaded()
    assert_nothing_left()
    for _, f in ipairs { "/run/modprobe.d/drvrun-ubuntu-ofed.conf", "/run/drvrun/ubuntu-ofed.journal",
                         "/run/drvrun/peermem.journal", "/lib/udev/rules.d/82-net-setup-link.rules",
                         "/etc/infiniband/vf-net-link-name.sh" } do
      assert.is_false(fs.exists(f), f .. " is left")
    end
    sh("rmmod nvidia")
  end)
end)
