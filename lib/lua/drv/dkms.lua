--- drv.dkms: a DKMS source tree, read as DKMS reads it.
--
-- A DKMS source tree is a directory as DKMS keeps it in /usr/src/NAME-VERSION: the
-- sources and a dkms.conf. That file is a bash fragment, not a list of assignments
-- (v4l2loopback's reads the kernel's .config to decide BUILD_EXCLUSIVE_KERNEL), so it is
-- read as DKMS's read_conf reads it: sourced by bash, with `kernelver`, `arch`,
-- `kernel_source_dir`, `dkms_tree` and `source_tree` set, its module arrays completed with
-- DKMS's defaults and checked with DKMS's rules, the BUILD_EXCLUSIVE_* tests evaluated
-- by bash as DKMS evaluates them. What a driver container does not run (MAKE, PATCH, the
-- PRE_/POST_ scripts) is listed, so that a recipe can say so.
local M = {}

local proc = require "drv.proc"
local fs = require "drv.fs"
local sys = require "drv.sys"
local log = require "drv.log"

-- The fields read, each printed as NUL-terminated name, index, value (every bash variable is
-- an array); then what the BUILD_EXCLUSIVE_* tests say (empty: the tree builds here).
local FIELDS = { "PACKAGE_NAME", "PACKAGE_VERSION", "BUILT_MODULE_NAME", "BUILT_MODULE_LOCATION", "DEST_MODULE_NAME",
                 "DEST_MODULE_LOCATION" }
-- Set, but not what a driver container runs: kbuild builds a fresh copy of the tree, which is
-- what DKMS does for a dkms.conf without MAKE (most MAKE[0]s are a wrapper of it).
local REPLACED = { "MAKE", "MAKE_MATCH", "CLEAN" }
-- Set, and not done: a tree that needs them may build differently, or not at all.
local NOT_RUN = { "PATCH", "PATCH_MATCH", "PRE_BUILD", "POST_BUILD", "PRE_INSTALL", "POST_INSTALL", "BUILD_DEPENDS" }

local SCRIPT = [=[
cd "$1" || exit 1
kernelver=$2 arch=$3 kernel_source_dir=$4 dkms_tree=/var/lib/dkms source_tree=/usr/src
. ./dkms.conf >/dev/null
shift 4
_dkms_excluded=
[[ $BUILD_EXCLUSIVE_KERNEL && ! $kernelver =~ $BUILD_EXCLUSIVE_KERNEL ]] &&
	_dkms_excluded="BUILD_EXCLUSIVE_KERNEL=\"$BUILD_EXCLUSIVE_KERNEL\" (kernel $kernelver)"
[[ $BUILD_EXCLUSIVE_ARCH && ! $arch =~ $BUILD_EXCLUSIVE_ARCH ]] &&
	_dkms_excluded="BUILD_EXCLUSIVE_ARCH=\"$BUILD_EXCLUSIVE_ARCH\" (arch $arch)"
if [[ $BUILD_EXCLUSIVE_CONFIG && -e $kernel_source_dir/.config ]]; then
	for _dkms_c in $BUILD_EXCLUSIVE_CONFIG; do
		case $_dkms_c in
		!*) ! grep -q -E "^${_dkms_c#!}=[ym]" "$kernel_source_dir/.config" ;;
		*) grep -q -E "^$_dkms_c=[ym]" "$kernel_source_dir/.config" ;;
		esac || _dkms_excluded="BUILD_EXCLUSIVE_CONFIG=\"$BUILD_EXCLUSIVE_CONFIG\" ($_dkms_c in $kernel_source_dir/.config)"
	done
fi
for _dkms_v in "$@" _dkms_excluded; do
	declare -n _dkms_r=$_dkms_v
	for _dkms_i in "${!_dkms_r[@]}"; do printf '%s\0%s\0%s\0' "$_dkms_v" "$_dkms_i" "${_dkms_r[$_dkms_i]}"; done
done
]=]

-- Run SCRIPT over `dir`: `{ NAME = { [index] = value } }` and what bash said on stderr, or nil, message.
local function source(dir, kver, arch)
  local argv = { "bash", "-c", SCRIPT, "dkms.conf", dir, kver, arch, ("/lib/modules/%s/build"):format(kver) }
  for _, list in ipairs { FIELDS, REPLACED, NOT_RUN } do table.move(list, 1, #list, #argv + 1, argv) end
  local res, err = proc.run(argv, { timeout = 60, clear_env = true, env = { PATH = "/usr/sbin:/usr/bin:/sbin:/bin" } })
  if not res then return nil, err end
  if res.status ~= 0 then return nil, ("bash could not read it (exit %s): %s"):format(res.status or res.signal, res.stderr) end
  local vars = {}
  for name, index, value in res.stdout:gmatch("(%Z+)%z(%d+)%z(%Z*)%z") do
    vars[name] = vars[name] or {}
    vars[name][tonumber(index)] = value
  end
  return vars, res.stderr
end

local function count(array)
  local n = 0
  for _ in pairs(array or {}) do n = n + 1 end
  return n
end

-- The modules, as read_conf completes and checks them: a record per index up to the longest
-- of the four arrays; BUILT_MODULE_NAME defaults to PACKAGE_NAME where there is one
-- DEST_MODULE_LOCATION, DEST_MODULE_NAME to BUILT_MODULE_NAME.
local function modules(v, name)
  local built, location, dest_name, dest = v.BUILT_MODULE_NAME or {}, v.BUILT_MODULE_LOCATION or {},
                                           v.DEST_MODULE_NAME or {}, v.DEST_MODULE_LOCATION or {}
  local n = math.max(count(built), count(location), count(dest_name), count(dest))
  if n == 0 then return nil, "it names no module (BUILT_MODULE_NAME[0], DEST_MODULE_LOCATION[0])" end
  local list = {}
  for i = 0, n - 1 do
    local m = { built = built[i] or "", location = (location[i] or ""):gsub("([^/])$", "%1/"), dest = dest[i] or "" }
    if m.built == "" and count(dest) == 1 then m.built = name end
    m.dest_name = (dest_name[i] or "") ~= "" and dest_name[i] or m.built
    if m.built == "" then return nil, ("no BUILT_MODULE_NAME[%d]"):format(i) end
    if m.built:match("%.k?o$") or m.dest_name:match("%.k?o$") then
      return nil, ("BUILT_MODULE_NAME[%d] or DEST_MODULE_NAME[%d] ends in .o or .ko"):format(i, i)
    end
    if not (m.dest:match("^/kernel") or m.dest:match("^/updates") or m.dest:match("^/extra")) then
      return nil, ("DEST_MODULE_LOCATION[%d] %s: it must begin with /kernel, /updates or /extra")
        :format(i, m.dest == "" and "is missing" or "'" .. m.dest .. "'")
    end
    m.name = m.built:gsub("-", "_") -- as the kernel lists it
    list[#list + 1] = m
  end
  return list
end

-- "NAME[i]=value" of each field of `names` the file sets.
local function set_fields(v, names)
  local found = {}
  for _, name in ipairs(names) do
    for i = 0, count(v[name]) - 1 do
      if v[name][i] then found[#found + 1] = ("%s[%d]=%q"):format(name, i, v[name][i]) end
    end
  end
  return found
end

--- Read the DKMS source tree `dir` for kernel `kver`.
-- @tparam string dir the tree (with its dkms.conf)
-- @tparam string kver the kernel release it is read for (`kernelver`)
-- @tparam[opt] string arch (default: the machine's)
-- @treturn[1] table `{ dir, conf, name, version, modules = { { name, built, location, dest, dest_name }... },
--   stack = { module names }, excluded = why the BUILD_EXCLUSIVE_* tests exclude this kernel or nil,
--   replaced = { "MAKE[0]=..." }, not_run = { "PATCH[0]=..." } }`
-- @treturn[2] nil, message naming the file and what is wrong
function M.read(dir, kver, arch)
  if type(dir) ~= "string" then error("bad argument #1 to 'read' (string expected, got " .. type(dir) .. ")", 2) end
  if type(kver) ~= "string" then error("bad argument #2 to 'read' (string expected, got " .. type(kver) .. ")", 2) end
  local conf, said = dir .. "/dkms.conf", ""
  local function bad(fmt, ...)
    return nil, ("%s: " .. fmt):format(conf, ...) .. (said:match("%S") and " (bash said: " .. said:gsub("%s+$", "") .. ")" or "")
  end
  if dir == "" then return nil, "no DKMS source tree given (a directory with a dkms.conf, as /usr/src/NAME-VERSION)" end
  if not fs.exists(conf) then return bad("cannot read it: is %s a DKMS source tree (/usr/src/NAME-VERSION)?", dir) end
  local v, err = source(dir, kver, arch or sys.uname().machine)
  if not v then return bad("%s", err) end
  said = err
  local name, version = (v.PACKAGE_NAME or {})[0] or "", (v.PACKAGE_VERSION or {})[0] or ""
  if not name:match("^[%w][%w_.+-]*$") then return bad("PACKAGE_NAME '%s' is not a package name", name) end
  if not version:match("^[%w][%w_.+~:-]*$") then return bad("PACKAGE_VERSION '%s' is not a version", version) end
  local list, merr = modules(v, name)
  if not list then return bad("%s", merr) end
  local t = { dir = dir, conf = conf, name = name, version = version, modules = list, stack = {},
              excluded = (v._dkms_excluded or {})[0], replaced = set_fields(v, REPLACED), not_run = set_fields(v, NOT_RUN) }
  if t.excluded == "" then t.excluded = nil end
  for _, m in ipairs(list) do t.stack[#t.stack + 1] = m.name end
  return t
end

--- `t` (what `read` returned), or nil and why the tree does not build for the kernel it was read
-- for; `read`'s nil, message passes through.
function M.buildable(t, err)
  if not t then return nil, err end
  if t.excluded then
    return nil, ("%s %s does not build for this kernel: %s sets %s"):format(t.name, t.version, t.conf, t.excluded)
  end
  return t
end

--- The modules the tree's conf names from a build of a copy of it in `tree` (`built`: drv.compile's
-- modules), each where its BUILT_MODULE_LOCATION says; nil, message when one is not there.
function M.built(t, tree, built)
  local by_path, found = {}, {}
  for _, m in ipairs(built) do by_path[m.path:gsub("/+", "/")] = m end
  for _, m in ipairs(t.modules) do
    local path = (tree .. "/" .. m.location .. m.built .. ".ko"):gsub("/+", "/")
    if not by_path[path] then
      local made = {}
      for p in pairs(by_path) do made[#made + 1] = p:sub(#tree + 2) end
      table.sort(made)
      return nil, ("%s names %s%s.ko (BUILT_MODULE_NAME, BUILT_MODULE_LOCATION), which the build did not make; it made: %s")
        :format(t.conf, m.location, m.built, #made > 0 and table.concat(made, " ") or "nothing")
    end
    found[#found + 1] = by_path[path]
  end
  return found
end

--- What the tree is and what is done with it, a line each (for the plan and the log): the
-- package, each module and where DKMS would install it, the fields not run.
function M.describe(t, kver)
  local lines = { ("%s %s, read from %s for kernel %s"):format(t.name, t.version, t.conf, kver) }
  for _, m in ipairs(t.modules) do
    lines[#lines + 1] = ("module %s: %s%s.ko of the tree; DKMS would install it as %s/%s.ko (Debian's and Ubuntu's "
                         .. "DKMS in /updates/dkms/), this run in updates/%s/")
      :format(m.name, m.location, m.built, m.dest, m.dest_name, t.name)
  end
  if t.excluded then lines[#lines + 1] = "excluded: this kernel: " .. t.excluded end
  if #t.replaced > 0 then
    lines[#lines + 1] = ("not run: %s (kbuild builds a copy of the tree, as DKMS does where a dkms.conf has no MAKE)")
      :format(table.concat(t.replaced, " "))
  end
  if #t.not_run > 0 then lines[#lines + 1] = "not done: " .. table.concat(t.not_run, " ") end
  return lines
end

--- Log what `describe` says, what is not done as a warning.
function M.log(t, kver)
  for _, line in ipairs(M.describe(t, kver)) do log[line:match("^not done") and "warn" or "info"]("dkms: %s", line) end
end

--- Module parameters in the kernel command line's form (`"v4l2loopback.devices=2 v4l2loopback.video_nr=7,8"`),
-- for modules of `stack`: `{ module = "param=value ..." }`, or nil, message.
function M.params(text, stack)
  local in_stack, params = {}, {}
  for _, n in ipairs(stack) do in_stack[n] = true end
  for word in text:gmatch("%S+") do
    local module, param = word:match("^([%w_-]+)%.([%w_]+=%S*)$")
    if not module then return nil, ("'%s' is not MODULE.PARAM=VALUE"):format(word) end
    module = module:gsub("-", "_")
    if not in_stack[module] then
      return nil, ("'%s': %s is not a module of the stack (%s)"):format(word, module, table.concat(stack, " "))
    end
    params[module] = params[module] and params[module] .. " " .. param or param
  end
  return params
end

return M
