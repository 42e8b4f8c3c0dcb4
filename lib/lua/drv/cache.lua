--- drv.cache: a recipe's build cache, so a restart does not rebuild.
--
-- CACHE_DIR/<recipe>/sources/        fetched sources
-- CACHE_DIR/<recipe>/<kernel>/work/  the build tree of the build under way
-- CACHE_DIR/<recipe>/<kernel>/builds/<id>/  one entry per build key: the built
--   modules, the files install needs (keep/), build.log and manifest.lua (with
--   manifest.luac, its compiled chunk: a restart loads that, not the text)
-- CACHE_DIR/<recipe>/<kernel>/builds/recent  the entries, most recently used first
-- CACHE_DIR/<recipe>/<kernel>/failed, failed.log  the last build for the kernel that failed:
--   why, and its log (removed by the next build that succeeds)
--
-- The key is readable text kept in the manifest (recipe, version, kernel, the
-- content of every source and build input, by name, not path; the options marked `build`); the
-- entry's directory is named by a short hash of it. Phase functions call these
-- with the run `r`; a failure fails the phase.
local M = {}

local chunk = require "drv.chunk"
local graph = require "drv.graph"
local fs = require "drv.fs"
local lock = require "drv.lock"
local log = require "drv.log"

local function short_hash(s) -- FNV-1a, 64 bits: names a directory, not a security check
  local h = 0xcbf29ce484222325
  for i = 1, #s do h = (h ~ s:byte(i)) * 0x100000001b3 end
  return ("%016x"):format(h)
end

-- What a source's content is, for the key: a file's sha256, a directory's files with theirs.
local function content_digest(r, path)
  local st = fs.stat(path)
  if not st or st.type ~= "directory" then return r:sha256(path) or "?" end
  local lines = {}
  for _, f in ipairs(require("drv.compile").find_files(path)) do -- loaded here, not at the start
    lines[#lines + 1] = f:sub(#path + 2) .. " " .. (r:sha256(f) or "?")
  end
  return "tree " .. short_hash(table.concat(lines, "\n"))
end

local function build_key(r, kver)
  local parts = { r.name, r.version, kver }
  for _, key in ipairs(graph.sorted(r.sources)) do
    parts[#parts + 1] = key .. "=" .. content_digest(r, r.sources[key])
  end
  -- by name and content, not by where they are: a build for the same inputs seen at
  -- another path (another container's root, an image build) is the same build
  for _, input in ipairs(r.inputs) do
    local value = input.value and "value " .. short_hash(input.value) or content_digest(r, input.path)
    parts[#parts + 1] = input.path:match("[^/]*$") .. "=" .. value
  end
  for _, k in ipairs(graph.sorted(r.recipe.options or {})) do
    if r.recipe.options[k].build then
      local v = r.opt[k]
      parts[#parts + 1] = k .. "=" .. (type(v) == "table" and table.concat(v, " ") or tostring(v))
    end
  end
  return table.concat(parts, "\n")
end

local function recent_builds(builds)
  local ids = {}
  for id in (fs.read(builds .. "/recent") or ""):gmatch("%x+") do ids[#ids + 1] = id end
  return ids
end

--- Where a source fetched from `url` is kept: CACHE/sources/<its file name>.
function M.source_path(r, url)
  return ("%s/sources/%s"):format(r.cache, url:match("([^/?#]+)[^/]*$"))
end

-- CACHE/KVER: everything the cache holds for a kernel.
local function kernel_dir(r, kver)
  return ("%s/%s"):format(r.cache, kver or r.kver)
end

--- Where this run's build tree goes (or, with `kver`, a build's for that kernel): CACHE/KVER/work.
function M.work_dir(r, kver)
  return kernel_dir(r, kver) .. "/work"
end

--- The entry for this run's sources, inputs and options: `{ key, id, dir, builds }`; for
-- kernel `kver` when given (default: the run's).
function M.entry(r, kver)
  local key = build_key(r, kver or r.kver)
  local builds, id = kernel_dir(r, kver) .. "/builds", short_hash(key)
  return { key = key, id = id, dir = builds .. "/" .. id, builds = builds }
end

--- The table a cache file at `path` returns (a manifest), or nil when it is
-- missing or broken. Its text is compiled at its first load (the one right
-- after the store, or an older drvrun's entry's): parsing it costs a warm
-- restart more than loading it.
function M.read_table(path, name)
  local fn, compiled = chunk.load(path, {})
  if not fn then return nil end
  local ok, t = pcall(fn)
  if not ok or type(t) ~= "table" then return nil end
  if not compiled then chunk.compile(path, name) end
  return t
end

local function read_manifest(dir)
  return M.read_table(dir .. "/manifest.lua", "manifest")
end

--- The built modules of an entry (`{ name, path, srcversion, vermagic, depends }`...) and
-- its kept files (`{ name = path }`); nil when the entry is missing, of another
-- key, or a module file does not have the checksum it was stored with.
function M.load(r, entry)
  local manifest = read_manifest(entry.dir)
  if not manifest or manifest.key ~= entry.key then return nil end
  for _, m in ipairs(manifest) do
    if not m.depends then return nil end -- an entry of an older drvrun
    m.path = entry.dir .. "/" .. m.file
    if r:sha256(m.path) ~= m.sha256 then return nil end
  end
  local kept = {}
  for _, name in ipairs(manifest.keep or {}) do kept[name] = entry.dir .. "/keep/" .. name end
  return manifest, kept
end

-- The names of the fetched sources (in CACHE/sources) a build was made from.
local function fetched_sources(r)
  local names, prefix = {}, r.cache .. "/sources/"
  for _, key in ipairs(graph.sorted(r.sources)) do
    local path = r.sources[key]
    if path:sub(1, #prefix) == prefix then names[#names + 1] = ("%q"):format(path:sub(#prefix + 1)) end
  end
  return names
end

--- Store a build's result (`{ modules, log, keep = { name = path } }`): the
-- modules, the log and the kept files, then the manifest last, so a
-- half-written entry never loads.
function M.store(r, entry, res)
  local dir = entry.dir
  fs.remove(dir, { recursive = true, missing_ok = true })
  r:must("cache " .. dir, fs.mkdir(dir .. "/keep"))
  local lines = { ("return { key = %q,"):format(entry.key) }
  for _, m in ipairs(res.modules) do
    local file = m.name .. ".ko"
    r:must("cache " .. file, fs.copy(m.path, dir .. "/" .. file))
    local depends = {}
    for _, d in ipairs(m.depends or {}) do depends[#depends + 1] = ("%q"):format(d) end
    lines[#lines + 1] = ("{ name = %q, file = %q, srcversion = %q, vermagic = %q, sha256 = %q, depends = { %s } },")
      :format(m.name, file, m.srcversion or "", m.vermagic or "", r:sha256(dir .. "/" .. file),
              table.concat(depends, ", "))
  end
  local keep = {}
  for _, name in ipairs(graph.sorted(res.keep or {})) do
    r:copy_tree(res.keep[name], dir .. "/keep/" .. name)
    keep[#keep + 1] = ("%q"):format(name)
  end
  if res.log and fs.exists(res.log) then r:must("cache build.log", fs.copy(res.log, dir .. "/build.log")) end
  lines[#lines + 1] = "keep = {" .. table.concat(keep, ", ") .. "},"
  lines[#lines + 1] = "sources = {" .. table.concat(fetched_sources(r), ", ") .. "} }"
  r:must("cache manifest", fs.write(dir .. "/manifest.lua", table.concat(lines, "\n") .. "\n"))
  for _, name in ipairs { "failed", "failed.log" } do fs.remove(kernel_dir(r) .. "/" .. name, { missing_ok = true }) end
end

--- Note that a build for `entry` failed with `message` (the log at `logfile`, when there is
-- one, kept beside as failed.log): what `failure` tells a plan until a build succeeds.
function M.note_failure(entry, message, logfile)
  local dir = entry.builds:match("^(.*)/builds$")
  local ok, err = fs.mkdir(dir)
  local kept = dir .. "/failed.log"
  if ok and logfile and fs.exists(logfile) then ok, err = fs.copy(logfile, kept) else kept = nil end
  if ok then
    ok, err = fs.write(dir .. "/failed", ("return { key = %q, time = %q, message = %q, log = %q }\n")
                                          :format(entry.key, log.timestamp(), message, kept or ""))
  end
  if not ok then log.warn("cache: cannot note the failed build: %s", err) end
end

--- The last failed build for kernel `kver`: `{ key, time, message, log }` (log: "" when there
-- was none), or nil.
function M.failure(r, kver)
  local text = fs.read(kernel_dir(r, kver) .. "/failed")
  local fn = text and load(text, "=failed", "t", {})
  if not fn then return nil end
  local ok, t = pcall(fn)
  return ok and type(t) == "table" and t or nil
end

--- Who builds for kernel `kver` now (the holder of its build lock), or nil. Changes nothing.
function M.builder(r, kver)
  local path = M.work_dir(r, kver) .. ".lock"
  if not fs.exists(path) then return nil end
  local held, err = lock.acquire(path, { timeout = 0, shared = true })
  if held then
    held:unlock()
    return nil
  end
  return err:match("held by (.*)$") or err
end

--- The most recently used build for kernel `kver` that is whole: its modules, kept files and
-- entry; nil when there is none.
function M.latest(r, kver)
  local builds = kernel_dir(r, kver) .. "/builds"
  for _, id in ipairs(recent_builds(builds)) do
    local manifest = read_manifest(builds .. "/" .. id)
    local entry = { key = manifest and manifest.key, id = id, dir = builds .. "/" .. id, builds = builds }
    local modules, kept = M.load(r, entry)
    if modules then return modules, kept, entry end
  end
end

--- Note the entry as the most recently used one. Written only when the order
-- changes, so a warm restart writes nothing.
function M.used(r, entry)
  local ids = recent_builds(entry.builds)
  if ids[1] == entry.id then return end
  local order = { entry.id }
  for _, other in ipairs(ids) do
    if other ~= entry.id and #order < r.opt.CACHE_KEEP then order[#order + 1] = other end
  end
  local ok, err = fs.write(entry.builds .. "/recent", table.concat(order, "\n") .. "\n")
  if not ok then log.warn("cache: cannot note which builds were used last: %s", err) end
end

local function remove(what, path)
  if not fs.lstat(path) then return end
  local ok, err = fs.remove(path, { recursive = true, missing_ok = true })
  if ok then log.info("cache: removed %s", what) else log.warn("cache: cannot remove %s: %s", what, err) end
end

--- After a build: keep this kernel's CACHE_KEEP most recently used builds and
-- the sources they were made from; remove the build tree (the objects of the
-- whole bundle), older builds and the builds for kernels not in `kernels` (the
-- releases that may boot: the host's installed kernels, the running one; this run's
-- is always kept).
function M.prune(r, entry, kernels)
  remove("the build tree", M.work_dir(r))
  local keep, sources = {}, {}
  for i, id in ipairs(recent_builds(entry.builds)) do
    if i <= r.opt.CACHE_KEEP then
      keep[id] = true
      for _, name in ipairs((read_manifest(entry.builds .. "/" .. id) or {}).sources or {}) do sources[name] = true end
    end
  end
  for _, id in ipairs(fs.dir(entry.builds) or {}) do
    if id ~= "recent" and not keep[id] then remove("an older build " .. id, entry.builds .. "/" .. id) end
  end
  for _, name in ipairs(fs.dir(r.cache .. "/sources") or {}) do
    if not sources[name] then remove("source " .. name .. ", which no kept build uses", r.cache .. "/sources/" .. name) end
  end
  local bootable = { [r.kver] = true }
  for _, k in ipairs(kernels) do bootable[k] = true end
  for _, name in ipairs(fs.dir(r.cache) or {}) do
    if not bootable[name] and name ~= "sources" and fs.exists(r.cache .. "/" .. name .. "/builds") then
      remove("the builds for kernel " .. name .. ", which is not installed", r.cache .. "/" .. name)
    end
  end
end

return M
