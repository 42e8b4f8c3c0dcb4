--- drv.expose: whether the host sees what a run exposes (its root, the ready
-- file under it).
--
-- The container root is rbound at the expose path in the container's own mount
-- namespace; the host sees it only when the mount holding that path propagates
-- to the host's namespace: a shared mount (`docker run -v P:P:rshared`,
-- `mountPropagation: Bidirectional`). A plain `-v P:P` is private: the root and
-- the ready file would be seen inside the container only, and whatever waits for
-- them on the host (the peer-memory container, a probe) would wait for nothing.
local M = {}

local mount = require "drv.mount"
local fs = require "drv.fs"

-- The initial PID namespace's inode (PROC_PID_INIT_INO): no container's.
local INIT_PID_NS = "pid:[4026531836]"

-- In the host's own mount namespace (not in a container), what is mounted is what the host sees.
local function in_host_namespace()
  return fs.readlink("/proc/self/ns/pid") == INIT_PID_NS and
         fs.readlink("/proc/self/ns/mnt") == fs.readlink("/proc/1/ns/mnt")
end

-- The mount that holds `path`, or would once it is made: its nearest existing ancestor's.
local function holding_mount(path)
  while not fs.exists(path) do path = path:match("^(.*)/[^/]*$") or "" end
  return mount.find(path == "" and "/" or path)
end

--- How the host sees `target`: a phrase for the log, or nil and why it does not (for the operator, naming the fix).
-- @tparam string target the expose path
-- @treturn[1] string "shared with the host (peer group N)", or "the host's own mount namespace"
-- @treturn[2] nil, string message
function M.host_view(target)
  if in_host_namespace() then return "the host's own mount namespace" end
  local m, err = holding_mount(target)
  if not m then return nil, ("%s: %s"):format(target, err) end
  if m.propagation:find("shared", 1, true) then
    return ("shared with the host (peer group %s)"):format(m.shared_group or "?")
  end
  return nil, ("%s is not shared with the host: its mount (%s, from %s) is %s in /proc/self/mountinfo, so the "
    .. "container root and the ready file there would be seen in this container only. Mount it shared: "
    .. "`docker run -v %s:%s:rshared` (podman alike), or in a pod `mountPropagation: Bidirectional`"):format(
    target, m.target, m.root or "/", m.propagation, target, target)
end

--- Whether the top-most mount at `target` is an exposed root (this run's, or a
-- killed run's left behind): the root of a file system, not the namespace's own
-- "/". A volume mounted there (a bind of the host's directory) is not. This
-- run's own root is found by the file itself: under `chroot` (no engine's
-- pivot_root) the root is a directory, not the root of its mount.
-- @tparam string target the expose path
-- @treturn boolean
function M.exposed_at(target)
  if not mount.is_mountpoint(target) then return false end
  local here, root = fs.stat(target), fs.stat("/")
  if here and root and here.dev == root.dev and here.ino == root.ino then return true end
  local top = mount.info(target)
  return top ~= nil and (top.root or "/") == "/" and top.id ~= (mount.find("/") or {}).id
end

--- Whether the top-most mount at `target` is the volume the engine bound there,
-- nothing of this run's on it: the only mount at `target`, on the container's
-- own root mount. After `docker kill` of a container whose volume is the expose
-- path itself (the seed's `-v /run/mellanox/drivers:/run/mellanox/drivers`), the
-- host path still holds the killed run's root, and the next `docker run -v`
-- binds that root as the new container's volume. Unmounting it here would cut
-- this container off the host's path and not reach the host's copy (a umount
-- propagates only through the parent's peers). With the parent directory as the
-- volume (`-v /run/mellanox:/run/mellanox:rshared`) the killed root sits on the
-- volume, and unmounting it here unmounts the host's.
-- @tparam string target the expose path
-- @treturn boolean
function M.is_volume(target)
  if in_host_namespace() then return false end -- no engine, no volume: what is there is a run's
  local at, root = {}, mount.find("/")
  for _, m in ipairs(mount.list() or {}) do
    if m.target == target then at[#at + 1] = m end
  end
  return #at == 1 and root ~= nil and at[1].parent == root.id
end

--- Before the root is rbound at `target`: every other shared mount of this
-- namespace made a slave (it still receives from the host; it sends nothing).
-- An engine shares a container's root mounts once a volume is rshared; their
-- copies under `target` would then be their peers, and unmounting the exposed
-- root at stop would unmount the container's own mounts with it (its
-- /lib/modules layer, /proc...). In the host's own namespace nothing is changed.
-- @tparam string target the expose path
-- @treturn[1] true
-- @treturn[2] nil, string message, integer errno
function M.isolate(target)
  if in_host_namespace() then return true end
  local holder, err, errno = holding_mount(target)
  if not holder then return nil, err, errno end
  local list
  list, err, errno = mount.list()
  if not list then return nil, err, errno end
  for _, m in ipairs(list) do
    if m.id ~= holder.id and m.propagation:find("shared", 1, true) then
      local ok, e, en = mount.propagation(m.target, "slave")
      if not ok then return nil, e, en end
    end
  end
  return true
end

return M
