-- tools/images.lua: check the driver images (docker/) and their DaemonSets
-- (deploy/) against the recipes they run and the seed's command lines.
--
--   drvrun tools/images.lua [--root DIR] [--install DESTDIR]
--
-- The Dockerfiles are linted with dockerfile-utils and the manifests validated
-- against the Kubernetes schemas (kubernetes-models), by tools/images/inspect.mjs
-- (npm packages in tools/images/node_modules: `make tools/images/node_modules/.stamp`).
-- Then every path, build argument, probe and timeout is compared with the
-- recipe's option defaults, read by loading recipes/NAME.lua from DIR (default:
-- the source tree), and with the install layout (`make install DESTDIR=…`, or
-- the tree given with --install).
-- Prints one "FAIL file: message" line per problem, then a summary line.
-- Exit status: 0 when all is consistent, 1 otherwise, 2 on a usage error.
local proc = require "drv.proc"
local fs = require "drv.fs"
local options = require "drv.options"
local recipe_lib = require "drv.recipe"

local TOOLS = fs.realpath(arg[0]:match("^(.*)/[^/]+$") or ".") or "tools"
local SOURCE = TOOLS:match("^(.*)/tools$") or "."

-- The seed's README ("Build - Ubuntu", "Run"), verbatim, and the defaults it states.
local SEED = {
  ofed = {
    build = "docker build -t ofed-driver --build-arg D_BASE_IMAGE=ubuntu:20.04 --build-arg D_OFED_VERSION=5.0-2.1.8.0 "
            .. "--build-arg D_OS=ubuntu20.04 --build-arg D_ARCH=x86_64 ubuntu/",
    run = "docker run --rm -it -v /run/mellanox/drivers:/run/mellanox/drivers -v /etc/network:/etc/network "
          .. "--net=host --privileged ofed-driver",
    defaults = { D_BASE_IMAGE = "ubuntu:20.04" },
  },
  peermem = {
    build = "docker build -t nv-peer-mem --build-arg D_BASE_IMAGE=ubuntu:20.04 --build-arg D_NV_PEER_MEM_BRANCH=1.0-9 "
            .. "gpu-direct/ubuntu/",
    run = "docker run --rm -it -v /run/mellanox/drivers:/run/mellanox/drivers -v /run/nvidia/driver:/run/nvidia/drivers "
          .. "--privileged nv-peer-mem",
    defaults = { D_BASE_IMAGE = "ubuntu:20.04", D_NV_PEER_MEM_BRANCH = "master" },
  },
}

-- What each image is: its recipe, where its files are, and which recipe
-- options its paths, sources and timeouts must follow.
--   arg_options: build arguments that are recipe options (ENV NAME=${NAME} passes them on;
--                a default, when the recipe's is a constant, must be the recipe's)
--   run_mounts:  the container side of the seed's `docker run -v`, and the option it must be
--   own_args:    the build arguments of this project (not the seed's), with their defaults
--   sources:     put into the image by the build stage: downloaded from the recipe's default
--                URL, or `local_arg` (a path in the build context) when that is set; handed to
--                the recipe through ENV (file_url: as a file:// URL; digest: its sha256 in image.env)
--   precompile:  PRECOMPILE_KERNEL builds the recipe into the image's own build cache
--   mounts:      options that are host paths in the DaemonSet (parent: the option is a file;
--                host: "seed" = the host side of the seed's -v, "/host" = under /host is the
--                host's root, else the same path on the host)
--   timeouts:    what the startup probe must wait for, at most
--   env_overrides: options the DaemonSet may set to other values than the image's
local IMAGES = {
  {
    name = "ofed", seed = SEED.ofed, recipe = "ubuntu-ofed",
    dockerfile = "docker/ubuntu/Dockerfile", manifest = "deploy/ofed-driver.yaml",
    arg_options = { "D_OFED_VERSION", "D_OS", "D_ARCH" },
    own_args = { LUA = "auto", LUA_URL = true, LUA_SHA256 = true, OFED_BUNDLE = "", PRECOMPILE_KERNEL = "" },
    run_mounts = { ["/run/mellanox/drivers"] = "EXPOSE_PATH" },
    sources = { { env = "OFED_URL", url_option = "OFED_URL", file_url = true, digest = "OFED_SHA256",
                  local_arg = "OFED_BUNDLE" } },
    precompile = true,
    mounts = {
      { option = "EXPOSE_PATH", propagation = "Bidirectional", host = "seed" },
      { option = "STATE_DIR" }, { option = "LOCK_FILE", parent = true }, { option = "CACHE_DIR" },
      { option = "BLACKLIST_FILE", parent = true, host = "/host" },
      { option = "UDEV_RULES_DIR", host = "/host" }, { option = "UDEV_HELPER_DIR", host = "/host" },
    },
    timeouts = { "LOCK_TIMEOUT", "BUILD_TIMEOUT" },
    env_overrides = { BLACKLIST_FILE = "the recipe's default", UDEV_RULES_DIR = "the recipe's default" },
  },
  {
    name = "peermem", seed = SEED.peermem, recipe = "peermem",
    dockerfile = "docker/gpu-direct/ubuntu/Dockerfile", manifest = "deploy/nv-peer-mem.yaml",
    arg_options = { "D_NV_PEER_MEM_BRANCH" },
    own_args = { LUA = "auto", LUA_URL = true, LUA_SHA256 = true, PEERMEM_ARCHIVE = "" },
    run_mounts = { ["/run/mellanox/drivers"] = "OFED_ROOT", ["/run/nvidia/drivers"] = "NVIDIA_ROOT" },
    sources = { { env = "PEERMEM_SOURCE", url_option = "PEERMEM_SOURCE", local_arg = "PEERMEM_ARCHIVE" } },
    mounts = {
      { option = "OFED_ROOT", propagation = "HostToContainer", host = "seed" },
      { option = "NVIDIA_ROOT", propagation = "HostToContainer", host = "seed" },
      { option = "STATE_DIR" }, { option = "LOCK_FILE", parent = true }, { option = "CACHE_DIR" },
    },
    timeouts = { "LOCK_TIMEOUT", "AWAIT_TIMEOUT", "BUILD_TIMEOUT" },
    env_overrides = { READY_FILES = "any" },
  },
}

-- Build arguments that are not the image's: Debian's, for apt-get.
local TOOL_ARGS = { DEBIAN_FRONTEND = true }

-- Lua 5.4's release source (the build stage compiles it where the base has no package).
local LUA_RELEASE_URL = "^https://www%.lua%.org/ftp/lua%-5%.4%.%d+%.tar%.gz$"

-- Variables Docker defines for every stage.
local PREDEFINED_ARGS = { HTTP_PROXY = true, HTTPS_PROXY = true, FTP_PROXY = true, NO_PROXY = true, ALL_PROXY = true,
                          http_proxy = true, https_proxy = true, ftp_proxy = true, no_proxy = true, all_proxy = true,
                          TARGETPLATFORM = true, TARGETOS = true, TARGETARCH = true, BUILDPLATFORM = true }

-- ---- reporting ----------------------------------------------------------------------
local problems, checks = {}, 0

local function fail(file, fmt, ...)
  problems[#problems + 1] = ("FAIL %s: %s"):format(file, fmt:format(...))
end

-- Count a check; report it when `ok` is false. Returns ok.
local function check(ok, file, fmt, ...)
  checks = checks + 1
  if not ok then fail(file, fmt, ...) end
  return ok
end

local function contains(list, v)
  for _, x in ipairs(list or {}) do if x == v then return true end end
  return false
end

local function show(v)
  if type(v) == "table" then return table.concat(v, " ") end
  return tostring(v)
end

-- ---- the seed's command lines --------------------------------------------------------
local function words(s)
  local t = {}
  for w in s:gmatch("%S+") do t[#t + 1] = w end
  return t
end

--- `docker build` / `docker run` arguments: build args, volumes, flags, tag, last word.
local function parse_docker(cmdline)
  local w = words(cmdline)
  local p = { build_args = {}, arg_names = {}, volumes = {}, flags = {}, last = w[#w] }
  local i = 3
  while i <= #w do
    if w[i] == "--build-arg" then
      local k, v = w[i + 1]:match("^([^=]+)=(.*)$")
      p.build_args[k], p.arg_names[#p.arg_names + 1], i = v, k, i + 2
    elseif w[i] == "-v" then
      local host, ctr = w[i + 1]:match("^([^:]+):([^:]+)")
      p.volumes[#p.volumes + 1], i = { host = host, container = ctr }, i + 2
    elseif w[i] == "-t" then
      p.tag, i = w[i + 1], i + 2
    else
      p.flags[w[i]], i = true, i + 1
    end
  end
  return p
end

-- ---- recipes --------------------------------------------------------------------------

local function load_recipe(root, name)
  local path = ("%s/recipes/%s.lua"):format(root, name)
  local recipe, err = recipe_lib.load(path)
  if not recipe then return nil, ("cannot load it: %s"):format(err) end
  return { table = recipe, specs = recipe_lib.option_specs(recipe), path = path }
end

-- The options `names` and the ones their defaults refer to (${NAME}).
local function closure(specs, names)
  local subset, todo = {}, {}
  for _, n in ipairs(names) do todo[#todo + 1] = n end
  while #todo > 0 do
    local n = table.remove(todo)
    if specs[n] and not subset[n] then
      subset[n] = specs[n]
      if type(specs[n].default) == "string" then
        for ref in specs[n].default:gmatch("%${([%w_]+)}") do todo[#todo + 1] = ref end
      end
    end
  end
  return subset
end

--- Option values as the recipe would resolve them with `env` in its environment.
local function effective(recipe, env, names)
  for _, n in ipairs(names) do
    if not recipe.specs[n] then return nil, ("recipe %s has no option %s"):format(recipe.table.name, n) end
  end
  return options.resolve(closure(recipe.specs, names), {}, function(k) return env[k] end)
end

-- ---- Dockerfiles ---------------------------------------------------------------------
local function final_stage(d) return d.stages[#d.stages] end

-- ARG and ENV of a stage: { NAME = value }.
local function stage_props(stage, keyword)
  local t = {}
  for _, ins in ipairs(stage.instructions) do
    if ins.keyword == keyword then
      for _, p in ipairs(ins.properties or {}) do t[p.name] = p.value or "" end
    end
  end
  return t
end

-- Every build ARG of the file, initial and per stage: { NAME = default }.
local function all_args(d)
  local t = {}
  for _, ins in ipairs(d.initial) do
    for _, p in ipairs(ins.properties or {}) do t[p.name] = p.value end
  end
  for _, st in ipairs(d.stages) do
    for k, v in pairs(stage_props(st, "ARG")) do t[k] = t[k] or v end
  end
  return t
end

local function expand(s, vars)
  return (s:gsub("%${([%w_]+)}", function(k) return vars[k] end))
end

-- The image's environment, ${ARG} references replaced by the defaults.
local function image_env(d)
  local st = final_stage(d)
  local args = all_args(d)
  local env = {}
  for k, v in pairs(stage_props(st, "ENV")) do env[k] = expand(v, args) end
  return env, st
end

local function lint_checks(d, file)
  checks = checks + 1
  for _, l in ipairs(d.lint) do fail(("%s:%d"):format(file, l.line), "dockerfile-utils %s: %s", l.severity, l.message) end
end

-- A variable used in a stage must be declared there (ARG) or set before (ENV).
local function scope_checks(d, file)
  local initial = {}
  for _, ins in ipairs(d.initial) do for _, p in ipairs(ins.properties or {}) do initial[p.name] = true end end
  for _, v in ipairs(d.stages[1] and d.stages[1].from.variables or {}) do
    check(initial[v], file, "FROM uses ${%s}, which no ARG before the first FROM declares", v)
  end
  for _, st in ipairs(d.stages) do
    local known = {}
    for _, ins in ipairs(st.instructions) do
      for _, v in ipairs(ins.variables) do
        if v ~= "" and not PREDEFINED_ARGS[v] then
          check(known[v], ("%s:%d"):format(file, ins.line),
                "%s uses ${%s}, which this stage does not declare (ARG %s after its FROM)", ins.keyword, v, v)
        end
      end
      for _, p in ipairs(ins.properties or {}) do known[p.name] = true end
    end
  end
end

local function uses_variable(d, name)
  for _, st in ipairs(d.stages) do
    if contains(st.from.variables, name) then return true end
    for _, ins in ipairs(st.instructions) do
      if ins.keyword ~= "ARG" and contains(ins.variables, name) then return true end
    end
  end
  return false
end

-- The seed's build arguments: the same names, its stated defaults, each one used.
local function build_arg_checks(img, d, recipe, file)
  local seed = parse_docker(img.seed.build)
  local args = all_args(d)
  local mine = {}
  for k in pairs(args) do if k:match("^D_") then mine[#mine + 1] = k end end
  table.sort(mine)
  local want = { table.unpack(seed.arg_names) }
  table.sort(want)
  check(table.concat(mine, " ") == table.concat(want, " "), file,
        "build arguments are %s; the seed's are %s", table.concat(mine, " "), table.concat(want, " "))
  for k, v in pairs(img.seed.defaults) do
    check(args[k] == v, file, "ARG %s defaults to %s; the seed's default is %s", k, show(args[k]), v)
  end
  for _, k in ipairs(seed.arg_names) do
    check(args[k] == nil or uses_variable(d, k), file, "build argument %s is declared but nothing uses it", k)
  end
  for _, k in ipairs(img.arg_options) do
    local default = recipe.specs[k] and recipe.specs[k].default
    if type(default) == "string" and not default:find("${", 1, true) then
      check(args[k] == default, file, "ARG %s defaults to %s; recipe %s's default is %s", k, show(args[k]),
            recipe.table.name, default)
    end
  end
  if args.D_OS and args.D_BASE_IMAGE then
    local os_tag = args.D_BASE_IMAGE:gsub("^.*/", ""):gsub(":", "")
    check(args.D_OS == os_tag, file, "ARG D_OS defaults to %s, but the default base image %s is %s",
          args.D_OS, args.D_BASE_IMAGE, os_tag)
  end
  check(("docker/%sDockerfile"):format(seed.last) == file, file,
        "the seed builds %s from docker/: its context is not this file's directory", seed.last)
end

-- An ARG declared in several stages has one default.
local function arg_default_checks(d, file)
  local first = {}
  for _, st in ipairs(d.stages) do
    for k, v in pairs(stage_props(st, "ARG")) do
      if first[k] == nil then first[k] = v
      else
        check(first[k] == v, file, "ARG %s defaults to %s in one stage and to %s in another", k, show(first[k]), show(v))
      end
    end
  end
end

local function sorted_keys(t)
  local ks = {}
  for k in pairs(t) do ks[#ks + 1] = k end
  table.sort(ks)
  return table.concat(ks, " ")
end

-- This project's build arguments (not the seed's): the known ones, each declared, used and
-- with its default (a string), none other; Lua's release source pinned by sha256.
local function own_arg_checks(img, d, file)
  local args = all_args(d)
  for k in pairs(args) do
    if not k:match("^D_") and not TOOL_ARGS[k] then
      check(img.own_args[k] ~= nil, file, "build argument %s is not one tools/images.lua knows (%s): add it there",
            k, sorted_keys(img.own_args))
    end
  end
  for k, default in pairs(img.own_args) do
    if check(args[k] ~= nil, file, "build argument %s is not declared", k) then
      check(uses_variable(d, k), file, "build argument %s is declared but nothing uses it", k)
      check(type(default) ~= "string" or (args[k] or "") == default, file, "ARG %s defaults to %s; it must be %s",
            k, show(args[k]), default == "" and "empty" or default)
    end
  end
  if args.LUA_URL then
    check(args.LUA_URL:match(LUA_RELEASE_URL) ~= nil, file, "ARG LUA_URL defaults to %s, not a Lua 5.4 release "
          .. "source of www.lua.org (https://www.lua.org/ftp/lua-5.4.N.tar.gz)", args.LUA_URL)
  end
  if args.LUA_SHA256 then
    check(args.LUA_SHA256:match("^" .. ("%x"):rep(64) .. "$") ~= nil, file, "ARG LUA_SHA256 defaults to %s, not a sha256",
          show(args.LUA_SHA256))
  end
end

local function stage_named(d, name)
  for _, st in ipairs(d.stages) do if st.from.stage == name then return st end end
end

local function is_url(s) return s:match("^%a[%w+.-]*://") ~= nil end

-- Build in one stage, ship the install tree only.
local function stage_checks(d, file, ctx_dir)
  if not check(#d.stages >= 2, file, "one stage: build drvrun in one stage and ship only the runtime in another") then
    return
  end
  local st = final_stage(d)
  local copied = false
  for _, ins in ipairs(st.instructions) do
    local from = ins.flags and ins.flags.from
    if ins.keyword == "COPY" and from then
      copied = check(stage_named(d, from) ~= nil, file, "COPY --from=%s: no such stage", from) or copied
    elseif (ins.keyword == "COPY" or ins.keyword == "ADD") and not is_url(ins.args[1] or "") then
      fail(("%s:%d"):format(file, ins.line), "the image stage copies %s from the build context: "
           .. "only the build stage may (ship the runtime only)", show(ins.args[1]))
    end
    if ins.keyword == "RUN" and ins.text:match("apt%-get install") then
      for pkg in ins.text:gmatch("(%S+%-dev)%f[%s%z]") do
        fail(("%s:%d"):format(file, ins.line), "the image stage installs %s: build dependencies belong to the build stage", pkg)
      end
      check(not ins.text:match("build%-essential"), ("%s:%d"):format(file, ins.line),
            "the image stage installs build-essential: install only what the recipe runs (gcc, make)")
    end
  end
  check(copied, file, "the image stage copies nothing from the build stage (COPY --from=build /out/ /)")
  -- Local sources of the build stage must be in the context (.dockerignore re-includes them).
  local ignore = fs.read(ctx_dir .. "/.dockerignore")
  if not check(ignore ~= nil, file, "no .dockerignore beside the Dockerfile") then return end
  for _, s in ipairs(d.stages) do
    for _, ins in ipairs(s.instructions) do
      if (ins.keyword == "COPY" or ins.keyword == "ADD") and not (ins.flags and ins.flags.from)
         and not is_url(ins.args[1] or "") then
        check(ignore:match("\n!" .. ins.args[1]:gsub("%p", "%%%0") .. "\n") ~= nil, file,
              ".dockerignore leaves %s out of the build context, but %s %s needs it", ins.args[1], ins.keyword, ins.args[1])
      end
    end
  end
end

-- The Makefile's DEB_BUILD: what building drvrun needs.
local function makefile_build_deps()
  local text = assert(fs.read(SOURCE .. "/Makefile")):gsub("\\\n", " ")
  return words(text:match("\nDEB_BUILD%s*=([^\n]*)") or "")
end

-- The build stage installs what the Makefile says building drvrun needs.
local function build_deps_checks(d, file)
  local have = {}
  for _, ins in ipairs(d.stages[1].instructions) do
    if ins.keyword == "RUN" and ins.text:match("apt%-get install") then
      for _, w in ipairs(words(ins.text)) do have[w] = true end
    end
    -- tools/lua-5.4 installs liblua5.4-dev, or builds Lua 5.4 where the base has no package
    if ins.keyword == "RUN" and ins.text:match("/tmp/lua%-5%.4 ") then have["liblua5.4-dev"] = true end
  end
  for _, pkg in ipairs(makefile_build_deps()) do
    check(have[pkg], file, "the build stage does not install %s (the Makefile's DEB_BUILD)", pkg)
  end
end

-- `make install PREFIX=…` in the build stage: where the image has drvrun.
local function install_prefix(d)
  for _, st in ipairs(d.stages) do
    for _, ins in ipairs(st.instructions) do
      local prefix = ins.keyword == "RUN" and ins.text:match("make[^&|;]*install[^&|;]*PREFIX=(%S+)")
      if prefix then return prefix end
    end
  end
end

-- The RUN of a stage before the image stage whose text has `text`.
local function build_run_with(d, text)
  for i = 1, #d.stages - 1 do
    for _, ins in ipairs(d.stages[i].instructions) do
      if ins.keyword == "RUN" and ins.text:find(text, 1, true) then return ins end
    end
  end
end

-- The build stage puts a source into /out (the image gets /out): downloaded from the recipe's
-- default URL, or, when src.local_arg is set, that file of the build context; ENV hands it to
-- the recipe (and image.env its sha256).
local function source_checks(d, recipe, src, env, file)
  local url = (recipe.specs[src.url_option] or {}).default
  local run = url and build_run_with(d, url)
  if not check(run ~= nil, file, "the build stage downloads no %s (recipe %s's %s default)", tostring(url),
               recipe.table.name, src.url_option) then return end
  local dest = run.text:match("%-o /out(/%S+) ")
  if not check(dest ~= nil, file, "the download of %s is not written under /out (curl -o /out/PATH)", url) then return end
  check(run.text:find(('"$%s" /out%s'):format(src.local_arg, dest), 1, true) ~= nil, file,
        "the build stage does not put %s (a file of the build context) at /out%s when it is set", src.local_arg, dest)
  local want = (src.file_url and "file://" or "") .. dest
  check(env[src.env] == want, file, "ENV %s is %s; the bundle fetched at build time is %s", src.env, show(env[src.env]), want)
  if src.digest then
    check(run.text:find(src.digest .. "=$(sha256sum /out" .. dest, 1, true) ~= nil
          and run.text:find("> /out/etc/drvrun/image.env", 1, true) ~= nil, file,
          "%s of %s is not written to /etc/drvrun/image.env (the entrypoint exports it)", src.digest, dest)
  end
end

local function env_checks(img, d, recipe, file)
  local env, st = image_env(d)
  for k in pairs(env) do
    check(recipe.specs[k] ~= nil or k:match("^DRVRUN_"), file, "ENV %s is not an option of recipe %s", k, recipe.table.name)
  end
  local raw = stage_props(st, "ENV")
  for _, k in ipairs(img.arg_options) do
    check(raw[k] == "${" .. k .. "}", file, "build argument %s does not reach the recipe: ENV %s=${%s} missing", k, k, k)
  end
  for _, src in ipairs(img.sources) do source_checks(d, recipe, src, raw, file) end
  return env
end

-- The probe command: drvrun PREFIX/share/drvrun/probe.lua FILE; returns FILE.
local function probe_file(cmd, prefix, where, file)
  local probe = prefix .. "/share/drvrun/probe.lua"
  if check(type(cmd) == "table" and #cmd == 3 and cmd[1] == "drvrun" and cmd[2] == probe, file,
           "%s must run [drvrun, %s, READY_FILE], not %s", where, probe, cmd and show(cmd) or "a shell command") then
    return cmd[3]
  end
end

local DURATION = { s = 1, m = 60, h = 3600 }

local function seconds(s)
  local total = 0
  for n, unit in (s or ""):gmatch("(%d+)([smh])") do total = total + tonumber(n) * DURATION[unit] end
  return total
end

local function entry_checks(img, d, recipe, env, file, install)
  local prefix = install_prefix(d)
  if not check(prefix ~= nil, file, "no `make install PREFIX=…` in the build stage") then return end
  local st = final_stage(d)
  local entry, health
  for _, ins in ipairs(st.instructions) do
    if ins.keyword == "ENTRYPOINT" then entry = ins.exec end
    if ins.keyword == "HEALTHCHECK" then health = ins end
  end
  -- drvrun --init: PID 1 of the container, a minimal init that forwards the engine's signals and reaps orphans
  local files = { prefix .. "/bin/drvrun", prefix .. "/share/drvrun/entrypoint",
                  ("%s/share/drvrun/recipes/%s.lua"):format(prefix, img.recipe) }
  local want = { files[1], "--init", files[2], files[3] }
  check(entry and show(entry) == show(want), file, "ENTRYPOINT must be %s (exec form), not %s", show(want),
        entry and show(entry) or "missing or a shell form")
  for _, p in ipairs(files) do
    check(fs.exists(install .. p), file, "%s is not in the install tree (make install PREFIX=%s)", p, prefix)
  end
  check(fs.exists(install .. prefix .. "/share/drvrun/probe.lua"), file, "%s/share/drvrun/probe.lua is not installed", prefix)
  if not check(health and health.subcommand == "CMD", file, "no HEALTHCHECK CMD") then return prefix end
  local ready = probe_file(health.exec, prefix, "HEALTHCHECK", file)
  local opt = effective(recipe, env, { "READY_FILES" })
  if ready and opt then
    check(contains(opt.READY_FILES, ready), file, "HEALTHCHECK probes %s, which is not a ready file of recipe %s (%s)",
          ready, recipe.table.name, show(opt.READY_FILES))
  end
  local budget = 0
  local t = effective(recipe, env, img.timeouts)
  for _, k in ipairs(img.timeouts) do budget = budget + (t and t[k] or 0) end
  check(seconds(health.flags["start-period"]) >= budget, file,
        "HEALTHCHECK --start-period=%s is shorter than %s (%d s)", tostring(health.flags["start-period"]),
        table.concat(img.timeouts, " + "), budget)
  return prefix
end

-- The default of one of the entrypoint's variables (${NAME:-default}).
local function entrypoint_default(name)
  local text = assert(fs.read(SOURCE .. "/docker/entrypoint"))
  return assert(text:match(name .. ":%-([^}]+)}"), "docker/entrypoint: no " .. name .. " default")
end

-- PRECOMPILE_KERNEL: a stage before the image's builds the image's recipe (as installed, under the
-- install's DESTDIR) build-only for that kernel, into the build cache the entrypoint seeds from, in
-- that install tree, which the image gets; the image stage installs no compiler for it.
local function precompile_checks(img, d, prefix, file)
  local run, destdir
  for i = 1, #d.stages - 1 do
    for _, ins in ipairs(d.stages[i].instructions) do
      destdir = destdir or (ins.keyword == "RUN" and ins.text:match("make[^&|;]*install[^&|;]*DESTDIR=(%S+)"))
      if ins.keyword == "RUN" and contains(ins.variables, "PRECOMPILE_KERNEL") then run = ins end
    end
  end
  if not check(run ~= nil, file, "no RUN of a stage before the image's uses PRECOMPILE_KERNEL") then return end
  destdir = destdir or ""
  local where = ("%s:%d"):format(file, run.line)
  local root = destdir .. prefix
  local cmd = ('%s/bin/drvrun %s/share/drvrun/recipes/%s.lua BUILD_ONLY=true'):format(root, root, img.recipe)
  check(run.text:find(cmd, 1, true) ~= nil and run.text:find('KVER="$PRECOMPILE_KERNEL"', 1, true) ~= nil, where,
        'the precompile must run %s KVER="$PRECOMPILE_KERNEL"', cmd)
  local seeds_from = entrypoint_default("DRVRUN_PRECOMPILED")
  check(run.text:find("CACHE_DIR=" .. destdir .. seeds_from .. " ", 1, true) ~= nil, where, "the precompile does not "
        .. "build into CACHE_DIR=%s%s, where the entrypoint seeds the build cache from (DRVRUN_PRECOMPILED)", destdir,
        seeds_from)
end

-- The seed's `docker run`: its mounts are where the recipe looks by default.
local function run_line_checks(img, recipe, env, file)
  local run = parse_docker(img.seed.run)
  for _, v in ipairs(run.volumes) do
    local name = img.run_mounts[v.container]
    if name then
      local opt, err = effective(recipe, env, { name })
      local value = opt and opt[name]
      check(value ~= nil and (value == v.container or (type(value) == "table" and contains(value, v.container))),
            file, "the seed's `docker run -v %s:%s` is not where recipe %s looks: %s is %s", v.host, v.container,
            recipe.table.name, name, value and show(value) or err)
    end
  end
end

local function dockerfile_checks(img, d, recipe, install)
  local file = img.dockerfile
  if #d.stages == 0 then return fail(file, "no FROM") end
  scope_checks(d, file)
  build_arg_checks(img, d, recipe, file)
  arg_default_checks(d, file)
  own_arg_checks(img, d, file)
  stage_checks(d, file, img.root .. "/" .. file:match("^(.*)/[^/]+$"))
  build_deps_checks(d, file)
  local env = env_checks(img, d, recipe, file)
  run_line_checks(img, recipe, env, file)
  local prefix = entry_checks(img, d, recipe, env, file, install)
  if img.precompile and prefix then precompile_checks(img, d, prefix, file) end
  return env, prefix
end

-- ---- manifests --------------------------------------------------------------------------
local function daemonset(m, file)
  local found
  for _, o in ipairs(m.objects) do
    if o.kind == "DaemonSet" then
      if not check(found == nil, file, "more than one DaemonSet") then return nil end
      found = o
    end
  end
  check(found ~= nil, file, "no DaemonSet")
  return found
end

local function by_name(list)
  local t = {}
  for _, x in ipairs(list or {}) do t[x.name] = x end
  return t
end

local function parent(p) return p:match("^(.*)/[^/]+$") end

-- The mountPath that holds `path`, its volume and its hostPath.
local function mount_of(pod, c, path)
  local volumes = by_name(pod.volumes)
  local best
  for _, vm in ipairs(c.volumeMounts or {}) do
    local mp = vm.mountPath:gsub("/$", "")
    if (path == mp or path:sub(1, #mp + 1) == mp .. "/") and (not best or #mp > #best.mountPath) then best = vm end
  end
  if not best then return nil end
  local v = volumes[best.name]
  return best, v and v.hostPath and v.hostPath.path
end

local function host_side(spec, seed_run, mountpath)
  if spec.host == "seed" then
    for _, v in ipairs(seed_run.volumes) do
      if v.container == mountpath then return v.host end
    end
    return nil
  elseif spec.host == "/host" then
    return (mountpath:gsub("^/host/", "/"))
  end
  return mountpath
end

-- The volumeMount for one of the option's paths (a list option: any of them).
local function option_mount(pod, c, spec, value)
  local tried = {}
  for _, v in ipairs(type(value) == "table" and value or { value }) do
    local path = spec.parent and parent(v) or v
    if path and path ~= "" then
      tried[#tried + 1] = path
      local vm, host = mount_of(pod, c, path)
      if vm and vm.mountPath:gsub("/$", "") == path then return vm, host end
    end
  end
  return nil, table.concat(tried, " or ")
end


-- The host's /lib/modules, read-only where the entrypoint looks for it.
local function host_modules_checks(pod, c, file)
  local want = entrypoint_default("DRVRUN_HOST_MODULES")
  local vm, host = mount_of(pod, c, want)
  if check(vm ~= nil and vm.mountPath:gsub("/$", "") == want, file,
           "no volumeMount at %s (the entrypoint's DRVRUN_HOST_MODULES) for the host's /lib/modules", want) then
    check(host == "/lib/modules" and vm.readOnly == true, file,
          "the volume at %s must be the host's /lib/modules, read-only (hostPath %s, readOnly %s)", want,
          show(host), tostring(vm.readOnly))
  end
end

local function mount_checks(img, pod, c, opt, file)
  local seed_run = parse_docker(img.seed.run)
  local hosts = {}
  host_modules_checks(pod, c, file)
  for _, spec in ipairs(img.mounts) do
    local what = ("%s (%s)"):format(spec.option, show(opt[spec.option]))
    local vm, host = option_mount(pod, c, spec, opt[spec.option])
    if check(vm ~= nil, file, "no volumeMount at %s for %s", host ~= "" and host or "(no path)", what) then
      local want_host = host_side(spec, seed_run, vm.mountPath)
      check(host ~= nil, file, "the volume at %s is not a hostPath (%s must be on the host)", vm.mountPath, what)
      check(want_host == nil or host == want_host, file, "the volume at %s is hostPath %s; %s wants the host's %s",
            vm.mountPath, show(host), what, show(want_host))
      check((vm.mountPropagation or "None") == (spec.propagation or "None"), file,
            "the volumeMount at %s has mountPropagation %s; %s needs %s", vm.mountPath, vm.mountPropagation or "None",
            spec.option, spec.propagation or "None")
      hosts[spec.option] = host
    end
  end
  return hosts
end

local function env_of(c)
  local t = {}
  for _, e in ipairs(c.env or {}) do t[e.name] = e.value end
  return t
end

local function budget_of(p)
  return (p.initialDelaySeconds or 0) + (p.periodSeconds or 10) * (p.failureThreshold or 3)
end

local function probe_checks(img, c, opt, prefix, hostfile, file)
  local ready = opt.READY_FILES
  local sp, lp = c.startupProbe, c.livenessProbe
  if check(sp and sp.exec, file, "no exec startupProbe") then
    local f = probe_file(sp.exec.command, prefix, "the startupProbe", file)
    if f then
      check(contains(ready, f), file, "the startupProbe probes %s, which is not a ready file of recipe %s (%s)",
            f, img.recipe, show(ready))
      check(hostfile(f), file, "the startupProbe probes %s, which is not on a host path (host-visible)", f)
    end
    local need = 0
    for _, k in ipairs(img.timeouts) do need = need + opt[k] end
    check(budget_of(sp) >= need, file, "the startupProbe gives up after %d s; %s may take %d s",
          budget_of(sp), table.concat(img.timeouts, " + "), need)
  end
  if check(lp and lp.exec, file, "no exec livenessProbe") then
    local f = probe_file(lp.exec.command, prefix, "the livenessProbe", file)
    check(f == nil or contains(ready, f), file, "the livenessProbe probes %s, which is not a ready file of recipe %s (%s)",
          tostring(f), img.recipe, show(ready))
  end
end

local NFD = "feature.node.kubernetes.io/"

-- Nodes of the image's OS and of one kernel release (labels of Node Feature Discovery).
local function selector_checks(pod, base_image, file)
  local sel = pod.nodeSelector or {}
  local id, version = base_image:gsub("^.*/", ""):match("^([^:]+):?(.*)$")
  local sel_id, sel_version = sel[NFD .. "system-os_release.ID"], sel[NFD .. "system-os_release.VERSION_ID"]
  check(sel["kubernetes.io/os"] == "linux", file, "nodeSelector kubernetes.io/os is not linux")
  check(sel_id == id and sel_version == version, file,
        "nodeSelector system-os_release.ID/VERSION_ID is %s/%s; the image's base is %s", show(sel_id),
        show(sel_version), base_image)
  local kver = sel[NFD .. "kernel-version.full"]
  check(type(kver) == "string" and kver:match("^%d+%.%d+%.%d+") ~= nil, file,
        "nodeSelector %skernel-version.full is not a kernel release: %s", NFD, show(kver))
end

local function container_checks(img, pod, c, env, recipe, file)
  local seed_run = parse_docker(img.seed.run)
  local tag = parse_docker(img.seed.build).tag
  check((c.image or ""):match("([^/:]+):?[^/]*$") == tag, file, "container image %s is not the seed's %s", show(c.image), tag)
  check(c.command == nil, file, "the container sets command: the image's ENTRYPOINT must run the recipe")
  if seed_run.flags["--privileged"] then
    check(c.securityContext and c.securityContext.privileged == true, file, "the container is not privileged")
  end
  if seed_run.flags["--net=host"] then check(pod.hostNetwork == true, file, "hostNetwork is not true") end
  local menv = env_of(c)
  for k, v in pairs(menv) do
    if not k:match("^DRVRUN_") then
      if check(recipe.specs[k] ~= nil, file, "env %s is not an option of recipe %s", k, recipe.table.name) then
        local why = img.env_overrides[k]
        local default = effective(recipe, {}, { k })
        check(why == "any" or (default and show(default[k]) == v), file,
              "env %s=%s differs from recipe %s's default %s", k, v, recipe.table.name, default and show(default[k]) or "?")
      end
    end
  end
  local merged = {}
  for k, v in pairs(env) do merged[k] = v end
  for k, v in pairs(menv) do merged[k] = v end
  return merged
end

local function manifest_checks(img, m, recipe, env, prefix, base_image)
  local file = img.manifest
  local ds = daemonset(m, file)
  local pod = ds and ds.spec and ds.spec.template and ds.spec.template.spec
  if not pod then return end
  local c = pod.containers and pod.containers[1]
  if not check(c ~= nil and #pod.containers == 1, file, "the DaemonSet must have one container") then return end
  local merged = container_checks(img, pod, c, env, recipe, file)
  local names = { "READY_FILES", "STOP_TIMEOUT" }
  for _, mnt in ipairs(img.mounts) do names[#names + 1] = mnt.option end
  for _, k in ipairs(img.timeouts) do names[#names + 1] = k end
  local opt, err = effective(recipe, merged, names)
  if not check(opt ~= nil, file, "%s", tostring(err)) then return end
  local hosts = mount_checks(img, pod, c, opt, file)
  local function hostfile(f)
    local vm, host = mount_of(pod, c, f)
    return vm ~= nil and host ~= nil
  end
  probe_checks(img, c, opt, prefix or "?", hostfile, file)
  local grace = pod.terminationGracePeriodSeconds or 30
  check(grace >= opt.STOP_TIMEOUT + opt.LOCK_TIMEOUT, file,
        "terminationGracePeriodSeconds is %d; stop may wait LOCK_TIMEOUT + STOP_TIMEOUT = %d s", grace,
        opt.STOP_TIMEOUT + opt.LOCK_TIMEOUT)
  selector_checks(pod, base_image or "?", file)
  return { hosts = hosts, selector = pod.nodeSelector or {} }
end

-- Both images build drvrun on the same Lua; both DaemonSets on one node: one lock, one OFED root.
local function cross_checks(seen)
  local ofed, peer = seen.ofed, seen.peermem
  if not (ofed and peer) then return end
  for _, k in ipairs { "LUA_URL", "LUA_SHA256" } do
    check(ofed.args[k] == peer.args[k], "docker/", "the Dockerfiles pin different Lua sources: ARG %s is %s and %s",
          k, show(ofed.args[k]), show(peer.args[k]))
  end
  if not (ofed.hosts and peer.hosts) then return end
  local file = "deploy/"
  check(ofed.hosts.LOCK_FILE ~= nil and ofed.hosts.LOCK_FILE == peer.hosts.LOCK_FILE, file,
        "the host-wide lock is not the same host directory in both DaemonSets (%s, %s)",
        show(ofed.hosts.LOCK_FILE), show(peer.hosts.LOCK_FILE))
  check(ofed.hosts.EXPOSE_PATH ~= nil and ofed.hosts.EXPOSE_PATH == peer.hosts.OFED_ROOT, file,
        "the OFED root is exposed at the host's %s but the peermem DaemonSet mounts the host's %s",
        show(ofed.hosts.EXPOSE_PATH), show(peer.hosts.OFED_ROOT))
  local k = NFD .. "kernel-version.full"
  check(ofed.selector[k] == peer.selector[k], file, "the DaemonSets select different kernels (%s, %s)",
        show(ofed.selector[k]), show(peer.selector[k]))
end

-- ---- main --------------------------------------------------------------------------------
local function inspect(root)
  local files = {}
  for _, img in ipairs(IMAGES) do
    files[#files + 1] = root .. "/" .. img.dockerfile
    files[#files + 1] = root .. "/" .. img.manifest
  end
  local node_modules = TOOLS .. "/images/node_modules"
  if not fs.exists(node_modules .. "/.stamp") then
    return nil, ("%s is missing: run `make tools/images/node_modules/.stamp` (npm ci)"):format(node_modules)
  end
  local r, err = proc.run({ "node", TOOLS .. "/images/inspect.mjs", table.unpack(files) }, { timeout = 120 })
  if not r then return nil, "node: " .. tostring(err) end
  local chunk, lerr = load(r.stdout, "=inspect.mjs", "t", {})
  if not chunk then return nil, ("inspect.mjs printed no Lua (%s): %s"):format(lerr, r.stderr) end
  local out = chunk()
  local by_path = {}
  for _, f in ipairs(out) do
    by_path[f.path:sub(#root + 2)] = f
    if f.kind == "unreadable" then fail(f.path:sub(#root + 2), "%s", f.errors[1]) end
  end
  return by_path
end

local function make_install()
  local dest = assert(fs.tmpdir("images-install"))
  local r = assert(proc.run({ "make", "-s", "-C", SOURCE, "install", "DESTDIR=" .. dest }, { stderr = "stdout" }))
  if r.status ~= 0 then error("make install failed:\n" .. r.stdout) end
  return dest, true
end

local function schema_checks(m, file)
  checks = checks + 1
  for _, e in ipairs(m.errors) do fail(file, "kubernetes-models: %s", e) end
end

-- Lint and schemas first: they need no recipe.
local function check_image(img, files, install, seen)
  local d, m = files[img.dockerfile], files[img.manifest]
  if not (d and d.kind == "dockerfile" and m and m.kind == "manifest") then return end
  lint_checks(d, img.dockerfile)
  schema_checks(m, img.manifest)
  local recipe, rerr = load_recipe(img.root, img.recipe)
  if not check(recipe ~= nil, ("recipes/%s.lua"):format(img.recipe), "%s (the %s image runs it)",
               tostring(rerr), img.dockerfile) then return end
  local env, prefix = dockerfile_checks(img, d, recipe, install)
  seen[img.name] = manifest_checks(img, m, recipe, env or {}, prefix, all_args(d).D_BASE_IMAGE) or {}
  seen[img.name].args = all_args(d)
end

local function main(args)
  local root, install = SOURCE, nil
  local i = 1
  while args[i] do
    if args[i] == "--root" and args[i + 1] then root, i = args[i + 1], i + 2
    elseif args[i] == "--install" and args[i + 1] then install, i = args[i + 1], i + 2
    else
      io.stderr:write("usage: drvrun tools/images.lua [--root DIR] [--install DESTDIR]\n")
      return 2
    end
  end
  local files, err = inspect(root)
  if not files then
    print("FAIL tools/images: " .. err)
    return 1
  end
  local made
  if not install then install, made = make_install() end
  local seen = {}
  for _, img in ipairs(IMAGES) do
    img.root = root
    check_image(img, files, install, seen)
  end
  cross_checks(seen)
  if made then fs.remove(install, { recursive = true }) end
  for _, p in ipairs(problems) do print(p) end
  print(("images: %d checks, %d problems"):format(checks, #problems))
  return #problems == 0 and 0 or 1
end

os.exit(main({ ... }))
