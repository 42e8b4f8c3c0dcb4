-- Running a container root in the guest the way a container runtime runs a
-- privileged pod's container: its own mount namespace (unshare -m; the pod
-- shares the host's PID and network namespaces, hostPID and hostNetwork), the
-- root's file systems (a `prepare` step: an image's layers, or a laid-out
-- tree), /proc, /sys and the host's /dev (privileged), the pod's hostPath
-- volumes at their mountPaths with their readOnly and mountPropagation, then
-- the command chrooted into the root with only the given environment.
local proc = require "drv.proc"
local fs = require "drv.fs"
local sh = require "spec.support.sh"

local M = {}

-- The mount of the root's parent is made private first: nothing mounted under the
-- root propagates to the guest's namespace (Bidirectional volumes do, as peers).
local HEAD = [[
set -e
R=$1
shift
mount --make-private "$(findmnt -n -o TARGET -T "$R")"
]]

local RUNTIME = [[
mount -t proc proc "$R/proc"
mount -t sysfs sysfs "$R/sys"
mount --rbind /dev "$R/dev"
]]

local PROPAGATION = { None = "--make-private", HostToContainer = "--make-rslave", Bidirectional = nil }

local function volume_lines(v)
  local at = '"$R"' .. sh.quote(v.path)
  local lines = { "mkdir -p " .. sh.quote(v.host) .. " " .. at, ("mount --bind %s %s"):format(sh.quote(v.host), at) }
  if v.read_only then lines[#lines + 1] = "mount -o remount,bind,ro " .. at end
  local flag = PROPAGATION[v.propagation or "None"]
  if flag then lines[#lines + 1] = ("mount %s %s"):format(flag, at) end
  return table.concat(lines, "\n") .. "\n"
end

--- The volumes and environment of the container of a DaemonSet, from a manifest
-- as tools/images/inspect.mjs reads it (`return { { kind = "manifest", objects } }`):
-- `{ volumes = { { host, path, read_only, propagation } }, env = { "K=V"... } }`.
-- `hosts` replaces hostPaths (`{ ["/var/cache/drvrun"] = dir }`).
function M.pod(inspected, hosts)
  local chunk = assert(load(assert(fs.read(inspected)), "=" .. inspected, "t", {}))
  for _, o in ipairs(chunk()[1].objects) do
    if o.kind == "DaemonSet" then
      local spec = o.spec.template.spec
      local c = spec.containers[1]
      local paths = {}
      for _, v in ipairs(spec.volumes) do paths[v.name] = assert(v.hostPath, v.name .. ": not a hostPath").path end
      local pod = { volumes = {}, env = {} }
      for _, vm in ipairs(c.volumeMounts) do
        local host = paths[vm.name]
        pod.volumes[#pod.volumes + 1] = { host = (hosts or {})[host] or host, path = vm.mountPath,
                                          read_only = vm.readOnly, propagation = vm.mountPropagation }
      end
      for _, e in ipairs(c.env or {}) do pod.env[#pod.env + 1] = e.name .. "=" .. e.value end
      return pod
    end
  end
  error(inspected .. ": no DaemonSet")
end

--- Start a container; returns the process (its pid is the command's, once it
-- runs) and the path of its log (stdout and stderr).
--   c.root     the root directory (a mount point after `prepare`, or a directory)
--   c.prepare  shell lines that mount the root's file systems at "$R" (optional)
--   c.volumes  { { host, path, read_only, propagation } ... }, mounted in order
--   c.env      { "K=V"... }: the command's whole environment
--   c.argv     the command (an image's ENTRYPOINT and CMD)
function M.start(c)
  local script = { HEAD, c.prepare or "", RUNTIME }
  for _, v in ipairs(c.volumes or {}) do script[#script + 1] = volume_lines(v) end
  script[#script + 1] = 'exec chroot "$R" /usr/bin/env -i "$@"\n'
  local log = os.tmpname()
  local argv = { "sh", "-c", 'exec "$@" > "$0" 2>&1', log, "unshare", "-m", "--propagation", "unchanged",
                 "sh", "-c", table.concat(script), "container", c.root }
  for _, e in ipairs(c.env or {}) do argv[#argv + 1] = e end
  for _, a in ipairs(c.argv) do argv[#argv + 1] = a end
  return assert(proc.spawn(argv)), log
end

--- Run argv in a running container (its mount namespace and root) with the
-- environment `env`, as the kubelet runs an exec probe; returns proc.run's result.
function M.exec(p, env, argv)
  local cmd = { "nsenter", "-t", tostring(p:pid()), "-m", "-r", "-w", "/usr/bin/env", "-i" }
  for _, e in ipairs(env or {}) do cmd[#cmd + 1] = e end
  for _, a in ipairs(argv) do cmd[#cmd + 1] = a end
  return assert(proc.run(cmd, { timeout = 60 }))
end

return M
