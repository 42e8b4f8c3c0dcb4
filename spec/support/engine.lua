-- A real container engine on the guest (the node): Debian's podman, through
-- podman-docker's `docker` command, with the images buildah built on the host.
--
-- The node as systemd and the engine's packages leave a real one: / shared
-- (systemd makes it so), cgroup v2 (spec/vm/init mounts it), the engine's
-- storage on a tmpfs (its containers' overlay layers cannot sit on the guest's
-- overlay root) with the host's buildah storage as a read-only image store
-- (spec/image/engine/storage.conf: the images are the ones built on the node,
-- as after the seed's `docker build`), its configuration for a node without
-- systemd (spec/image/engine/containers.conf). make check-images points
-- CONTAINERS_CONF and CONTAINERS_STORAGE_CONF at them.
local proc = require "drv.proc"
local fs = require "drv.fs"
local mount = require "drv.mount"
local sys = require "drv.sys"
local guest = require "spec.support.guest"

local M = {}

M.DOCKER = "/usr/bin/docker" -- podman-docker's (a Docker CLI elsewhere on PATH talks to no engine here)
M.IMAGES = "/run/drvrun-engine/images" -- where storage.conf finds the host's images
local HOST_STORE = "/var/lib/containers/storage"

local function must(argv)
  local r = assert(proc.run(argv, { stderr = "stdout" }))
  assert(r.status == 0, table.concat(argv, " ") .. ": " .. r.stdout)
  return r.stdout
end

--- Make the guest a node an engine runs on; returns the engine's name and version ("podman version 4.3.1").
function M.setup()
  for _, v in ipairs { "CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF" } do
    assert(os.getenv(v), v .. " is not set (make check-images sets it)")
  end
  must { "mount", "--make-rshared", "/" }
  assert(fs.mkdir(M.IMAGES))
  if not mount.is_mountpoint(M.IMAGES) then
    must { "mount", "--bind", HOST_STORE, M.IMAGES }
    must { "mount", "-t", "tmpfs", "-o", "mode=0700", "tmpfs", "/var/lib/containers" }
  end
  assert(fs.write("/etc/containers/nodocker", "")) -- podman-docker's notice on every call, off
  return (must { M.DOCKER, "--version" }):gsub("\n$", "")
end

--- Run `docker ARGS...` to its end: the result (status, stdout with stderr).
function M.docker(args, timeout)
  local argv = { M.DOCKER }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return assert(proc.run(argv, { stderr = "stdout", timeout = timeout or 600, max_capture = 8 * 1024 * 1024 }))
end

--- Run `podman ARGS...` (podman's own commands: kube, healthcheck) to its end.
function M.podman(args, timeout)
  local argv = { "podman" }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return assert(proc.run(argv, { stderr = "stdout", timeout = timeout or 600, max_capture = 8 * 1024 * 1024 }))
end

--- Start `docker ARGS...` (a `docker run -i` in the foreground); returns the process and its log path.
function M.spawn(args)
  local log = os.tmpname()
  local argv = { "sh", "-c", 'exec "$@" > "$0" 2>&1', log, M.DOCKER }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return assert(proc.spawn(argv, { stdin = "" })), log
end

--- The id of the running container of `image` (one), waiting for it to be there. podman names a
-- local image by its full name (localhost/ofed-driver:latest), `ps --filter ancestor` not by a short one.
function M.container_of(image, p, timeout)
  local full = image:find(":", 1, true) and image or image .. ":latest"
  local id
  guest.wait_until(function()
    local r = M.docker({ "ps", "--format", "{{.ID}} {{.Image}}" }, 60)
    for line in r.stdout:gmatch("[^\n]+") do
      local cid, img = line:match("^(%x+) (%S+)$")
      if img == full or (img and img:sub(-#full - 1) == "/" .. full) then id = cid end
    end
    return id ~= nil
  end, timeout or 300, p)
  return id
end

--- The node's build cache at /var/cache/drvrun: a copy of `from` (without its ccache: a cache
-- hit compiles nothing) on a tmpfs, as a node has it on its own disk; not the host's directory
-- through the guest's 9p share, where each file a run reads costs what no node pays.
function M.node_cache(from)
  local dest = "/var/cache/drvrun"
  assert(fs.mkdir(dest))
  if mount.is_mountpoint(dest) then return dest end
  must { "mount", "-t", "tmpfs", "-o", "mode=0755", "drvrun-cache", dest }
  for _, recipe in ipairs(assert(fs.dir(from))) do
    assert(fs.mkdir(dest .. "/" .. recipe))
    for _, name in ipairs(fs.dir(from .. "/" .. recipe) or {}) do
      if name ~= "ccache" then must { "cp", "-a", from .. "/" .. recipe .. "/" .. name, dest .. "/" .. recipe .. "/" } end
    end
  end
  return dest
end

-- podman 4.3 with the cgroupfs manager on cgroup v2 (the guest runs no systemd) makes a pod's
-- cgroup with an eBPF device filter that allows no device (containers/common's cgroups,
-- runc's fs2 manager, given no device rules; podman fixed it later: the pod's cgroup skips
-- devices), and every container of the pod is under it: the infra container cannot make
-- /dev/null ("crun: mknod `/dev/null`: Operation not permitted"), a privileged one cannot open
-- a device. A node's podman (systemd's cgroup manager) makes the pod a slice without one. So
-- the pod is created, its cgroup's device filters detached (bpftool), then started.
local function detach_device_filters(pod)
  local cgroup = "/sys/fs/cgroup" .. must({ "podman", "pod", "inspect", "--format", "{{.CgroupPath}}", pod }):gsub("\n$", "")
  local detached = {}
  for line in must({ "bpftool", "cgroup", "show", cgroup }):gmatch("[^\n]+") do
    local id = line:match("^%s*(%d+)%s+cgroup_device%s")
    if id then
      must { "bpftool", "cgroup", "detach", cgroup, "cgroup_device", "id", id }
      detached[#detached + 1] = id
    end
  end
  return cgroup, detached
end

--- `podman kube play FILE` (its one pod), started once its cgroup lets devices be used
-- (detach_device_filters). Returns the result of the play, then of `podman pod start`.
function M.kube_play(file, timeout)
  local play = M.podman({ "kube", "play", "--start=false", file }, timeout)
  if play.status ~= 0 then return play end
  local pod = assert(play.stdout:match("Pod:\n(%x+)\n"), play.stdout)
  local cgroup, detached = detach_device_filters(pod)
  print(("    the pod's cgroup %s: %s"):format(cgroup, #detached > 0 and "device filter " .. table.concat(detached, ", ")
        .. " detached" or "no device filter"))
  local start = M.podman({ "pod", "start", pod }, timeout)
  start.stdout = play.stdout .. start.stdout
  return start
end

--- Seconds `fn` took, and what it returned.
function M.timed(fn)
  local t0 = sys.monotonic()
  local r = fn()
  return sys.monotonic() - t0, r
end

return M
