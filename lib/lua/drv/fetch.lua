--- drv.fetch: verified downloads (doc/fetch.md). Each attempt is drv.transfer's
-- (host/transfer.c: libcurl, the locked .part, sha256 while it streams, the
-- install); here is what happens around them: retries with backoff, a deadline
-- across attempts, starting over when a kept .part does not fit, cancellation,
-- and the progress, stall and retry lines.
local M = {}

local transfer = require "drv.transfer"
local sys = require "drv.sys"
local fs = require "drv.fs"
local io, math, table = io, math, table
local debug, error, ipairs, math_type, package, pairs, pcall, setmetatable, tonumber, tostring, type =
  debug, error, ipairs, math.type, package, pairs, pcall, setmetatable, tonumber, tostring, type

local RESTARTS = 2          -- starts over per call (a kept .part that does not fit the file)
local BACKOFF_MAX = 3600    -- seconds
local RETRY_AFTER_MAX = 300 -- cap on a server's Retry-After, seconds
local BAR_INTERVAL = 0.2    -- terminal bar redraws
local LINE_INTERVAL = 5     -- plain progress lines
local LINE_QUIET = 1        -- no quartile lines in an attempt's first second
local STALL_MAX = 20        -- "stalled" lines: at most this long apart
local STALL_MIN = 1         -- a progress function's stalled_for: 0 below this

-- Reason phrases (RFC 9110): the same words over HTTP/1.1 and HTTP/2, which has none.
local REASONS = { [300] = "Multiple Choices", [301] = "Moved Permanently", [302] = "Found", [303] = "See Other",
                  [304] = "Not Modified", [305] = "Use Proxy", [307] = "Temporary Redirect",
                  [308] = "Permanent Redirect", [400] = "Bad Request", [401] = "Unauthorized",
                  [402] = "Payment Required", [403] = "Forbidden", [404] = "Not Found", [405] = "Method Not Allowed",
                  [406] = "Not Acceptable", [407] = "Proxy Authentication Required", [408] = "Request Timeout",
                  [409] = "Conflict", [410] = "Gone", [411] = "Length Required", [412] = "Precondition Failed",
                  [413] = "Content Too Large", [414] = "URI Too Long", [415] = "Unsupported Media Type",
                  [416] = "Range Not Satisfiable", [417] = "Expectation Failed", [421] = "Misdirected Request",
                  [422] = "Unprocessable Content", [426] = "Upgrade Required", [428] = "Precondition Required",
                  [429] = "Too Many Requests", [431] = "Request Header Fields Too Large",
                  [451] = "Unavailable For Legal Reasons", [500] = "Internal Server Error",
                  [501] = "Not Implemented", [502] = "Bad Gateway", [503] = "Service Unavailable",
                  [504] = "Gateway Timeout", [505] = "HTTP Version Not Supported" }

---------------------------------------------------------------------------
-- Options: misuse raises, naming the field, as the C bindings do.

local OPTIONS = { sha256 = true, resume = true, retries = true, backoff = true, connect_timeout = true, timeout = true,
                  low_speed_time = true, deadline = true, interrupt_fd = true, insecure = true, progress = true,
                  quiet = true }

-- luaL_argerror's words: get as its caller named it, else as drv.fetch.get.
local function argerror(arg, msg)
  local level, info = 2
  repeat
    level, info = level + 1, debug.getinfo(level, "nf")
  until not info or info.func == M.get
  error(("bad argument #%d to '%s' (%s)"):format(arg, info and info.name or "drv.fetch.get", msg), 0)
end

local function typename(v)
  return v == nil and "no value" or type(v)
end

local function field(o, key, kind)
  local v = o[key]
  if v == nil then return nil end
  local ok = kind == "integer" and math_type(v) == "integer" or type(v) == kind
  if not ok then argerror(3, ("field '%s': %s expected, got %s"):format(key, kind, type(v))) end
  return v
end

local function seconds_field(o, key, default, positive)
  local v = field(o, key, "number") or default
  if not (positive and v > 0 or not positive and v >= 0) or v == math.huge then
    argerror(3, ("field '%s': %s expected"):format(key, positive and "positive number" or "number >= 0"))
  end
  return v
end

-- An open descriptor: /proc knows it (when it is mounted).
local function fd_field(o, key)
  local fd = field(o, key, "integer")
  if fd and (fd < 0 or not fs.stat("/proc/self/fd/" .. fd) and fs.stat("/proc/self/fd")) then
    argerror(3, ("field '%s': open file descriptor expected, got %d"):format(key, fd))
  end
  return fd
end

local function check_options(url, dest, opts)
  if type(url) ~= "string" then argerror(1, "string expected, got " .. typename(url)) end
  if type(dest) ~= "string" then argerror(2, "string expected, got " .. typename(dest)) end
  if url:find("\0", 1, true) then argerror(1, "string contains a zero byte") end
  if dest == "" then argerror(2, "empty path") end
  if dest:find("\0", 1, true) then argerror(2, "string contains a zero byte") end
  if opts ~= nil and type(opts) ~= "table" then argerror(3, "table expected, got " .. type(opts)) end
  local o = opts or {}
  for k in pairs(o) do
    if not OPTIONS[k] then argerror(3, ("unknown option '%s'"):format(tostring(k))) end
  end
  local sha = field(o, "sha256", "string")
  if sha and not sha:match("^" .. ("%x"):rep(64) .. "$") then
    argerror(3, ("field 'sha256': 64 hex digits expected, got '%s'"):format(sha))
  end
  local r = { sha256 = sha and sha:lower(), resume = field(o, "resume", "boolean") or false,
              retries = field(o, "retries", "integer") or 3, backoff = seconds_field(o, "backoff", 1.0),
              connect_timeout = seconds_field(o, "connect_timeout", 30, true), timeout = seconds_field(o, "timeout", 0),
              low_speed_time = field(o, "low_speed_time", "integer") or 60, deadline = seconds_field(o, "deadline", 0),
              interrupt_fd = fd_field(o, "interrupt_fd"), insecure = field(o, "insecure", "boolean") or false,
              quiet = field(o, "quiet", "boolean") or false, progress = o.progress }
  if r.retries < 0 or r.retries > 1000 then argerror(3, "field 'retries': integer in 0..1000 expected") end
  if r.low_speed_time < 0 then argerror(3, "field 'low_speed_time': integer >= 0 expected") end
  if r.progress ~= nil and r.progress ~= false and type(r.progress) ~= "function" then
    argerror(3, ("field 'progress': function or false expected, got %s"):format(type(r.progress)))
  end
  -- No body byte for this long is a stall worth a line.
  r.stall_after = r.low_speed_time > 0 and math.min(math.max(r.low_speed_time / 3, 1), STALL_MAX) or STALL_MAX
  return r
end

---------------------------------------------------------------------------
-- Words.

-- "512 B", "1.5 KiB", "512.0 MiB"; a rate ("110 MiB/s") drops the decimal from 100 on.
local UNITS = { "B", "KiB", "MiB", "GiB", "TiB", "PiB" }
local function human(n, rate)
  local u = 1
  while n >= 1024 and u < #UNITS do n, u = n / 1024, u + 1 end
  return ((u == 1 or rate and n >= 100) and "%.0f %s%s" or "%.1f %s%s"):format(n, UNITS[u], rate and "/s" or "")
end

-- "1.2 GiB of 3.4 GiB received", or "1.2 GiB received" when the size is unknown.
local function received(bytes, total)
  if not total then return human(bytes) .. " received" end
  return ("%s of %s received"):format(human(bytes), human(total))
end

local function stalled_text(r)
  return ("stalled: no data for %d s (%s)"):format(math.floor(r.idle), received(r.bytes, r.total))
end

-- What a failed attempt's report means: message, errno, transient.
local function failure(r, o)
  local outcome = r.outcome
  if outcome == "failed" then return r.message, r.errno, r.transient end
  if outcome == "http" then
    local code, reason = r.status, REASONS[r.status]
    local text = ("HTTP %d%s"):format(code, reason and " " .. reason or "")
    if code == 206 then return "HTTP 206 Partial Content to a request without a range", "EPROTO", false end
    local errno = (code == 404 or code == 410) and "ENOENT" or (code == 401 or code == 403) and "EACCES" or "EIO"
    return text, errno, code == 408 or code == 429 or code >= 500
  end
  if outcome == "timeout" then   -- curl's timeout, or its low-speed limit: in words when it had stalled
    local slow = r.message:find("^Operation too slow")
    if r.idle >= o.stall_after then return stalled_text(r) .. (slow and "" or "; " .. r.message), "ETIMEDOUT", true end
    return slow and ("%s (%s)"):format(r.message, received(r.bytes, r.total)) or r.message, "ETIMEDOUT", true
  end
  if outcome == "stalled" then return stalled_text(r), "ETIMEDOUT", true end
  if outcome == "deadline" then
    if r.idle >= o.stall_after then return stalled_text(r) .. ", stopped by the deadline", "ETIMEDOUT" end
    return ("stopped by the deadline (%s)"):format(received(r.bytes, r.total)), "ETIMEDOUT"
  end
  if outcome == "interrupted" then return "interrupted", "EINTR" end
  if outcome == "restart" then return r.message, "EIO", false end
  return ("sha256 mismatch: expected %s, got %s"):format(o.sha256, r.sha256), "EBADMSG", false
end

---------------------------------------------------------------------------
-- The operator's lines: through drv.log when the script loaded it (so they
-- follow --log-format json and the log level), else plain on stderr; and the
-- bar a terminal gets.

local Show = {}
Show.__index = Show

local function new_show(url, o)
  local mode = not o.quiet and o.progress == nil and (sys.isatty(io.stderr) and "bar" or "lines") or nil
  local base = url:match("^[^?#]*")
  return setmetatable({ url = url, o = o, mode = mode, name = base:match("([^/]*)$"), bar_drawn = false }, Show)
end

function Show:say(level, line)
  self:end_bar()
  local log = package.loaded["drv.log"]
  if log then log.event(level, line) else io.stderr:write(line, "\n") end
end

function Show:end_bar()
  if self.bar_drawn then io.stderr:write("\n") end
  self.bar_drawn = false
end

function Show:bar(t, text)
  io.stderr:write(("\r%-24.24s %s\27[K"):format(self.name, text))
  self.bar_drawn, self.last_show = true, t
end

function Show:start(t)
  self.t_attempt, self.last_show, self.quarter, self.stall_next = t, t, 0, self.o.stall_after
end

-- What ends a stalled attempt first: "; giving up this attempt at 60 s", or "".
function Show:outlook(t, idle)
  local o = self.o
  local slow = o.low_speed_time > 0 and o.low_speed_time - idle or math.huge
  local timeout = o.timeout > 0 and self.t_attempt + o.timeout - t or math.huge
  local deadline = self.deadline_at and self.deadline_at - t or math.huge
  if deadline < math.huge and deadline <= slow and deadline <= timeout then
    return ("; the deadline ends the call in %.0f s"):format(math.max(deadline, 0))
  elseif timeout < math.huge and timeout <= slow then
    return ("; this attempt times out in %.0f s"):format(math.max(timeout, 0))
  elseif slow < math.huge then
    return ("; giving up this attempt at %d s"):format(o.low_speed_time)
  end
  return ""
end

-- No body byte for stall_after seconds or more: plain lines every stall_after
-- seconds, or "stalled" in place of the rate on the bar.
function Show:stall(t, bytes, total, idle)
  local o, whole = self.o, math.floor(idle)
  if self.mode == "bar" then
    if t - self.last_show < BAR_INTERVAL then return end
    local size = total and total > 0 and ("%3d%%  %s of %s"):format(100 * bytes // total, human(bytes), human(total))
    return self:bar(t, ("%s  stalled %d s"):format(size or human(bytes), whole))
  end
  if idle < self.stall_next or (o.low_speed_time > 0 and idle >= o.low_speed_time) then return end -- (the failure says it)
  self:say("warn", ("fetch %s: stalled: no data for %d s (%s)%s"):format(self.url, whole, received(bytes, total),
                                                                        self:outlook(t, idle)))
  while self.stall_next <= idle do self.stall_next = self.stall_next + o.stall_after end
  self.last_show = t
end

-- The bar (redrawn in place), or a line every LINE_INTERVAL, at each quartile and at the end.
function Show:progress(t, bytes, total, idle, got, final)
  if not final and idle >= self.o.stall_after then return self:stall(t, bytes, total, idle) end
  self.stall_next = self.o.stall_after
  local elapsed = t - self.t_attempt
  local rate = elapsed > 0 and got / elapsed or 0
  local pct = total and total > 0 and 100 * bytes // total or nil
  if self.mode == "bar" then
    if not final and t - self.last_show < BAR_INTERVAL then return end
    local eta = ""
    if pct and rate > 0 and not final then
      local s = (total - bytes) // rate
      eta = ("  ETA %d:%02d"):format(s // 60, s % 60)
    end
    self:bar(t, pct and ("%3d%%  %s of %s  %s%s"):format(pct, human(bytes), human(total), human(rate, true), eta)
                or ("%s  %s"):format(human(bytes), human(rate, true)))
    if final then self:end_bar() end
    return
  end
  if not final then
    local q = pct and pct // 25 or 0
    local crossed = q > self.quarter and q < 4
    self.quarter = math.max(self.quarter, q)
    if not (crossed and elapsed >= LINE_QUIET) and t - self.last_show < LINE_INTERVAL then return end
  end
  self:say("info", pct and ("fetch %s: %s of %s (%d%%), %s"):format(self.url, human(bytes), human(total), pct,
                                                                     human(rate, true))
                        or ("fetch %s: %s, %s"):format(self.url, human(bytes), human(rate, true)))
  self.last_show = t
end

-- The function job:attempt calls, or nil when nothing wants it (no Lua then runs during the transfer).
local function progress_function(show, fn)
  if not fn and not show.mode then return nil end
  return function(bytes, total, idle, got)
    if got == 0 and idle < show.o.stall_after then return end -- no body yet: only a stall is news
    if fn then return fn(bytes, total, idle >= STALL_MIN and idle or 0) end
    show:progress(sys.monotonic(), bytes, total, idle, got)
  end
end

---------------------------------------------------------------------------
-- Why each attempt stopped, for a deadline's message; attempts that failed
-- alike are one entry ("attempts 1-3: HTTP 503 Service Unavailable").

local function history_add(h, n, msg)
  local last = h[#h]
  if last and last.msg == msg and last.last == n - 1 then last.last = n
  else h[#h + 1] = { first = n, last = n, msg = msg } end
end

local function history_text(h)
  local parts = {}
  for _, e in ipairs(h) do
    parts[#parts + 1] = e.first == e.last and ("attempt %d: %s"):format(e.first, e.msg)
                        or ("attempts %d-%d: %s"):format(e.first, e.last, e.msg)
  end
  local text = table.concat(parts, "; ")
  return #text > 2000 and text:sub(1, 2000) .. "..." or text
end

---------------------------------------------------------------------------

-- One call of get: its attempts so far, and what they came to.
local Call = {}
Call.__index = Call

-- nil, "URL: message (after N attempts)", errno, keep (the .part is worth resuming).
function Call:fail(msg, errno, keep)
  local after = self.tries > 1 and (" (after %d attempts)"):format(self.tries) or ""
  return nil, ("%s: %s%s"):format(self.url, msg, after), errno, keep
end

function Call:interrupted()
  return nil, self.url .. ": interrupted", "EINTR", true
end

-- The deadline ended the call: how long it took, the attempts, what arrived, why each stopped.
function Call:deadline_fail(retry_due)
  local took = sys.monotonic() - self.o.t0
  local size = self.size and (" (file size %s)"):format(human(self.size)) or ""
  local retry = retry_due and ("; retry %d would start after the deadline (in %.1f s)"):format(self.tries, retry_due)
  return nil, ("%s: deadline of %g s reached: %d attempt%s in %s s, %s received in all%s; %s%s"):format(
    self.url, self.o.deadline, self.tries, self.tries == 1 and "" or "s", (took < 10 and "%.1f" or "%.0f"):format(took),
    human(self.transferred), size, history_text(self.history), retry or ""), "ETIMEDOUT", true
end

-- A kept .part that does not fit the file, or a resumed one that fails its digest (it may be
-- another version's): the next attempt starts the file again, which is not a retry.
function Call:start_over(r)
  self.restarts, self.tries = self.restarts + 1, self.tries - 1
  if not self.o.quiet then
    local why = r.outcome == "restart" and r.message
                or ("sha256 mismatch after resuming: expected %s, got %s"):format(self.o.sha256, r.sha256)
    self.show:say("warn", ("fetch %s: %s; downloading again from the start"):format(self.url, why))
  end
  return true
end

-- The wait before a retry: the backoff, or longer when the server asked for it (Retry-After).
function Call:backoff(r, msg)
  local o = self.o
  local asked = tonumber(r.retry_after) -- seconds; a date is ignored
  self.delay = math.max(self.delay, asked and asked > 0 and math.min(asked, RETRY_AFTER_MAX) or 0)
  if self.deadline_at and sys.monotonic() + self.delay >= self.deadline_at then
    return self:deadline_fail(self.delay)
  end
  if not o.quiet then
    self.show:say("warn", ("fetch %s: %s; retry %d of %d in %.1f s"):format(self.url, msg, self.tries, o.retries,
                                                                           self.delay))
  end
  if sys.sleep(self.delay, o.interrupt_fd) then return self:interrupted() end
  self.delay = math.min(self.delay * 2, BACKOFF_MAX)
  return true
end

-- After an attempt that failed: true to make another, else the call's failure.
function Call:again(r)
  local msg, errno, transient = failure(r, self.o)
  if (r.outcome == "restart" or r.outcome == "mismatch" and r.resumed) and self.restarts < RESTARTS then
    return self:start_over(r)
  end
  if r.outcome == "interrupted" then return self:interrupted() end
  if transient or r.outcome == "deadline" then history_add(self.history, self.tries, msg) end
  if r.outcome == "deadline" then return self:deadline_fail() end
  if not transient or self.tries > self.o.retries then return self:fail(msg, errno, transient) end
  return self:backoff(r, msg)
end

-- The attempts, then the install: the result, or nil, message, errno, keep.
function Call:run(job, dest)
  local o, show = self.o, self.show
  local progress = progress_function(show, o.progress or nil)
  local r
  repeat
    self.tries = self.tries + 1
    show:start(sys.monotonic())
    r = job:attempt(progress, self.deadline_at)
    self.transferred, self.size = self.transferred + r.received, r.total or self.size
    if r.outcome ~= "done" then
      local again, msg, errno, keep = self:again(r)
      if not again then return nil, msg, errno, keep end
    end
  until r.outcome == "done"
  if o.progress then o.progress(r.bytes, r.bytes, 0) end
  local ok, err, errno = job:install(dest)
  if not ok then return self:fail(err, errno, false) end
  if show.mode then show:progress(sys.monotonic(), r.bytes, r.bytes, 0, r.received, true) end
  return { path = dest, sha256 = r.sha256, bytes = r.bytes, transferred = self.transferred, resumed = r.resumed,
           attempts = self.tries, seconds = sys.monotonic() - o.t0 }
end

--- Download a URL to a file, verified by SHA-256 (doc/fetch.md).
-- The body goes to "<dest>.part" (locked while in use), hashed as it arrives;
-- once complete and matching `opts.sha256` it is fsync'ed and renamed onto
-- `dest`: a failure never leaves anything at `dest`. Transient failures are
-- retried with a backoff; with `resume` the .part survives them and later
-- attempts or calls continue it. `deadline` bounds the whole call; once
-- `interrupt_fd` is readable the call stops at once.
-- @tparam string url `https://`, `http://` or `file://` URL
-- @tparam string dest destination path
-- @tparam[opt] table opts `{ sha256, resume = false, retries = 3, backoff = 1.0, connect_timeout = 30,
--   timeout = 0, low_speed_time = 60, deadline = 0, interrupt_fd, insecure = false,
--   progress = function(done, total|nil, stalled_for) | false, quiet = false }`
-- @treturn[1] table `{ path, sha256, bytes, transferred, resumed, attempts, seconds }`
-- @treturn[2] nil, string message "URL: cause", string errno (ENOENT, EACCES, EBADMSG, ETIMEDOUT, EINTR, …)
-- @raise on bad arguments and options, or when `progress` raises (after cleanup)
function M.get(url, dest, opts)
  local o = check_options(url, dest, opts)
  o.t0 = sys.monotonic()
  local job, err, errno = transfer.open(url, dest .. ".part", {
    sha256 = o.sha256, resume = o.resume, insecure = o.insecure, connect_timeout = o.connect_timeout,
    timeout = o.timeout, low_speed_time = o.low_speed_time, interrupt_fd = o.interrupt_fd })
  if not job then return nil, url .. ": " .. err, errno end
  local call = setmetatable({ url = url, o = o, show = new_show(url, o), tries = 0, restarts = 0, transferred = 0,
                              history = {}, delay = o.backoff, deadline_at = o.deadline > 0 and o.t0 + o.deadline or nil },
                            Call)
  call.show.deadline_at = call.deadline_at
  local ok, res, msg, errname, keep = pcall(call.run, call, job, dest)
  call.show:end_bar()
  job:close(o.resume and (keep or not ok))
  if not ok then error(res, 0) end
  return res, msg, errname
end

return M
