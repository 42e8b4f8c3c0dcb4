--- drv.kernels: the kernels a host has installed, and where a build finds their headers.
--
-- A driver container sees the host through what its DaemonSet mounts under HOST_ROOT
-- (`/host`): the host's /lib/modules (the kernels installed: a kernel is installed while
-- its modules directory has its index, modules.dep, which removing its package deletes)
-- and the host's /usr (its kernel headers, /usr/src/linux-headers-K, and what they link
-- to: Debian's /usr/lib/linux-kbuild-VERSION). The headers' own links name host paths
-- (`build -> /usr/src/linux-headers-K`, the arch tree's Makefile includes the common
-- tree's by its absolute path), so a build uses them where the host has them: bound at
-- the host's paths in a mount namespace of the build's own (`use_host_headers`).
local M = {}

local fs = require "drv.fs"

local MAX_LINKS = 40 -- as the kernel's path walk: a loop of links ends here

--- The host's modules directory under `host_root` (`/` on the host itself), if there is one.
function M.host_modules(host_root)
  local dir = (host_root == "/" and "" or host_root) .. "/lib/modules"
  local st = fs.stat(dir)
  return st and st.type == "directory" and dir or nil
end

--- `a` and `b` as versions, their runs of digits compared as numbers (6.1.0-9 before
-- 6.1.0-10): -1, 0 (the same numbers) or 1.
function M.compare(a, b)
  local pa, pb = {}, {}
  for part in a:gmatch("%d+") do pa[#pa + 1] = tonumber(part) end
  for part in b:gmatch("%d+") do pb[#pb + 1] = tonumber(part) end
  for i = 1, math.max(#pa, #pb) do
    if (pa[i] or -1) ~= (pb[i] or -1) then return (pa[i] or -1) < (pb[i] or -1) and -1 or 1 end
  end
  return 0
end

local function older(a, b)
  local c = M.compare(a, b)
  if c ~= 0 then return c < 0 end
  return a < b
end

--- The kernel releases installed in modules directory `dir` (each with its modules.dep), oldest first.
function M.installed(dir)
  local found = {}
  for _, name in ipairs(fs.dir(dir) or {}) do
    if fs.exists(("%s/%s/modules.dep"):format(dir, name)) then found[#found + 1] = name end
  end
  table.sort(found, older)
  return found
end

--- The kernels that may boot, whose builds a build cache keeps: those the host has installed
-- (under `host_root`; this system's own /lib/modules when the host's is not mounted there),
-- and the running one.
function M.bootable(host_root)
  local list = M.installed(M.host_modules(host_root) or "/lib/modules")
  list[#list + 1] = require("drv.sys").uname().release
  return list
end

--- `path`, a host path, as it is under `root`: each link on the way followed as the host
-- would follow it (an absolute target from `root`). Returns the path under `root` (which
-- may not exist), and the host path it stands for.
function M.resolve(root, path)
  local host, rest, links = "", path, 0
  while true do
    local name, more = rest:match("^/*([^/]+)(.*)$")
    if not name then return (root == "/" and "" or root) .. (host == "" and "/" or host), host == "" and "/" or host end
    rest = more
    if name == ".." then
      host = host:match("^(.*)/[^/]*$") or ""
    elseif name ~= "." then
      local under = (root == "/" and "" or root) .. host .. "/" .. name
      local st = fs.lstat(under)
      if st and st.type == "link" then
        links = links + 1
        if links > MAX_LINKS then return under, host .. "/" .. name end
        local target = assert(fs.readlink(under))
        if target:sub(1, 1) == "/" then host = "" end
        rest = target .. rest
      else
        host = host .. "/" .. name
      end
    end
  end
end

-- The links at the top of a header tree whose targets leave it (Debian's scripts and tools
-- -> ../../lib/linux-kbuild-V/...): the host paths a build follows out of the tree.
local function links_out(root, tree)
  local out, dir = {}, M.resolve(root, tree)
  for _, name in ipairs(fs.dir(dir) or {}) do
    local st = fs.lstat(dir .. "/" .. name)
    if st and st.type == "link" then
      local _, host = M.resolve(root, tree .. "/" .. name)
      if host:sub(1, #tree + 1) ~= tree .. "/" then out[#out + 1] = host end
    end
  end
  table.sort(out)
  return out
end

--- Where the host under `host_root` has kernel `kver`'s headers: `{ build, source, binds }`
-- (`build` and `source` the host paths of the arch and source trees, `binds` the
-- `{ from, to }` a build needs: each tree and what it links to, from under `host_root` to
-- the host's path); or nil and why not, naming the paths.
function M.on_host(kver, host_root)
  local modules = M.host_modules(host_root)
  if not modules then return nil, ("the host's /lib/modules is not at %s"):format(host_root .. "/lib/modules") end
  local link = ("/lib/modules/%s/build"):format(kver)
  if not fs.lstat(modules .. "/" .. kver .. "/build") then
    return nil, ("the host has no headers for it (no %s%s)"):format(modules, link:sub(#"/lib/modules" + 1))
  end
  local under, build = M.resolve(host_root, link)
  if not fs.exists(under .. "/Makefile") then
    return nil, ("the host's %s names %s, which is not at %s (its headers are not installed, or the host's "
                 .. "/usr is not mounted at %s/usr)"):format(link, build, under, host_root)
  end
  local h = { build = build, binds = {} }
  local source_under, source = M.resolve(host_root, ("/lib/modules/%s/source"):format(kver))
  h.source = fs.exists(source_under .. "/Makefile") and source or build
  local seen = {}
  for _, tree in ipairs { h.build, h.source } do
    for _, host in ipairs { tree, table.unpack(links_out(host_root, tree)) } do
      local from = M.resolve(host_root, host)
      if not seen[host] then
        if not fs.exists(from) then
          return nil, ("the host's headers for %s link to %s, which is not at %s (mount the host's /usr at "
                       .. "%s/usr)"):format(kver, host, from, host_root)
        end
        seen[host] = true
        h.binds[#h.binds + 1] = { from = from, to = host }
      end
    end
  end
  return h
end

--- Where a build in this container finds kernel `kver`'s headers: a description ("in this
-- container (...)", "the host's (...)"), or nil and why neither has them.
function M.headers(kver, host_root)
  local here = ("/lib/modules/%s/build"):format(kver)
  if fs.exists(here .. "/Makefile") then return ("in this container (%s)"):format(here) end
  local h, why = M.on_host(kver, host_root)
  if h then return ("the host's (%s)"):format(h.build) end
  return nil, ("neither in this container (no %s/Makefile) nor on the host: %s"):format(here, why)
end

--- Make the host's headers for `kver` (`h`, from `on_host`) this process's own: a mount
-- namespace of its own (the driver's mounts are not touched), each of `h.binds` bound
-- read-only at the host's path, and `/lib/modules/KVER` a fresh directory (a tmpfs) with
-- the `build` and `source` links the host has. What a build then installs there stays in
-- that namespace.
-- @treturn[1] true
-- @treturn[2] nil, message, errno
function M.use_host_headers(kver, h)
  local mount = require "drv.mount" -- a build on the container's own headers never loads it
  local ok, err, errno = mount.unshare()
  if not ok then return nil, err, errno end
  for _, b in ipairs(h.binds) do
    ok, err, errno = fs.mkdir(b.to)
    if ok then ok, err, errno = mount.bind(b.from, b.to, { readonly = true }) end
    if not ok then return nil, ("bind the host's %s at %s: %s"):format(b.from, b.to, err), errno end
  end
  local dir = "/lib/modules/" .. kver
  ok, err, errno = fs.mkdir(dir)
  if ok then ok, err, errno = mount.mount("drvrun-headers", dir, "tmpfs", { options = "mode=0755" }) end
  if ok then ok, err, errno = fs.symlink(h.build, dir .. "/build") end
  if ok then ok, err, errno = fs.symlink(h.source, dir .. "/source") end
  if not ok then return nil, ("%s for the host's headers: %s"):format(dir, err), errno end
  return true
end

return M
