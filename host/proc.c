/* proc.c - drv.proc: run programs from an argv array, never through a shell.
 *
 * Children start with an empty signal mask and default dispositions (the
 * parent may block TERM/INT/HUP for a drv.signal watcher), in their own process
 * group (a timeout kills make and every compiler under it), with only the
 * descriptors they are given. exec failures travel back over a CLOEXEC pipe. */
#include <errno.h>
#include <math.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "drv.h"

#define PROC_MT "drv.proc.process"
#define PROC_DEFAULT_CAPTURE (1 << 20)

extern char **environ;

enum stream_mode { S_CAPTURE, S_INHERIT, S_NULL, S_STDOUT };

struct stream {
	int fd;			/* read end in the parent, -1 when closed */
	char *buf;		/* captured bytes: the last max bytes */
	size_t len, cap, max;
	char *line;		/* partial line for on_line */
	size_t linelen, linecap;
};

struct process {
	pid_t pid;		/* 0 once reaped */
	int status;		/* wait status once reaped */
	int timed_out, interrupted;
	int pidfd;		/* readable when the child exits; -1 if unsupported */
	int interrupt_fd;	/* caller's fd (e.g. a signalfd): readable => stop; -1 if none */
	double started;
	struct stream out, err;
	int in_fd;		/* write end of stdin, -1 when done */
	const char *in_data;
	size_t in_len, in_off;
	int log_fd;
	int on_line_ref;	/* registry ref of on_line, LUA_NOREF if none */
	int on_tick_ref;	/* registry ref of on_tick, LUA_NOREF if none */
	double tick, next_tick;	/* on_tick every tick seconds: when it is next due */
	enum stream_mode out_mode, err_mode;
	int nice;		/* added to the child's nice value (0: as the parent) */
	int io_idle;		/* the child in the idle I/O scheduling class */
};

static enum stream_mode proc_mode(lua_State *L, int opts, const char *key,
				  enum stream_mode def, int allow_stdout)
{
	static const char *const names[] = { "capture", "inherit", "null", "stdout", NULL };
	const char *v = drv_optfield_string(L, opts, key, NULL);

	if (!v)
		return def;
	for (int i = 0; names[i]; i++)
		if (strcmp(v, names[i]) == 0 && (i != S_STDOUT || allow_stdout))
			return (enum stream_mode)i;
	return (enum stream_mode)luaL_argerror(L, opts,
		lua_pushfstring(L, "field '%s': invalid value '%s'", key, v));
}

/* Push opts[key] and return 1 when it is set; push nothing and return 0 otherwise. */
static int proc_field(lua_State *L, int opts, const char *key)
{
	if (!opts)
		return 0;
	if (lua_getfield(L, opts, key) != LUA_TNIL)
		return 1;
	lua_pop(L, 1);
	return 0;
}

/* argv at index 1 as a NULL-terminated array of strings owned by the Lua table. */
static const char **proc_argv(lua_State *L)
{
	lua_Integer n;
	const char **argv;

	luaL_checktype(L, 1, LUA_TTABLE);
	n = luaL_len(L, 1);
	luaL_argcheck(L, n > 0, 1, "argv must not be empty");
	argv = lua_newuserdatauv(L, sizeof(char *) * (size_t)(n + 1), 0);
	for (lua_Integer i = 1; i <= n; i++) {
		if (lua_rawgeti(L, 1, i) != LUA_TSTRING)
			luaL_argerror(L, 1, lua_pushfstring(L, "argv[%d]: string expected, got %s",
							     (int)i, luaL_typename(L, -1)));
		argv[i - 1] = lua_tostring(L, -1);
		lua_pop(L, 1);
	}
	argv[n] = NULL;
	return argv;
}

/* The child's environment: the parent's (unless clear_env) with opts.env applied. */
static const char **proc_envp(lua_State *L, int opts)
{
	int clear = drv_optfield_boolean(L, opts, "clear_env", 0);
	size_t n = 0, i = 0;
	const char **envp;
	int env = 0;

	if (proc_field(L, opts, "env")) {
		luaL_argcheck(L, lua_istable(L, -1), opts, "field 'env': table expected");
		env = lua_gettop(L);
		for (lua_pushnil(L); lua_next(L, env); lua_pop(L, 1))
			n++;
	} else if (!clear) {
		return (const char **)environ;
	}
	if (!clear)
		for (char **e = environ; *e; e++)
			n++;
	envp = lua_newuserdatauv(L, sizeof(char *) * (n + 1), 0);
	if (!clear) {
		for (char **e = environ; *e; e++) {
			const char *eq = strchr(*e, '=');

			if (env && eq) {
				lua_pushlstring(L, *e, (size_t)(eq - *e));
				if (lua_rawget(L, env) != LUA_TNIL) {
					lua_pop(L, 1);
					continue; /* overridden below */
				}
				lua_pop(L, 1);
			}
			envp[i++] = *e;
		}
	}
	if (env) {
		for (lua_pushnil(L); lua_next(L, env); lua_pop(L, 1)) {
			if (lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1))
				continue;	/* false: unset */
			if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
				luaL_argerror(L, opts, "field 'env': string keys and values (or false, to unset) expected");
			lua_pushfstring(L, "%s=%s", lua_tostring(L, -2), lua_tostring(L, -1));
			envp[i++] = lua_tostring(L, -1);
			lua_rawsetp(L, LUA_REGISTRYINDEX, &envp[i - 1]); /* keep it alive */
		}
	}
	envp[i] = NULL;
	return envp;
}

/* Release the registry anchors proc_envp made for built strings. */
static void proc_envp_release(lua_State *L, const char **envp)
{
	if (envp == (const char **)environ)
		return;
	for (size_t i = 0; envp[i]; i++) {
		lua_pushnil(L);
		lua_rawsetp(L, LUA_REGISTRYINDEX, &envp[i]);
	}
}

/* Find argv0 in PATH like execvp, but without its fallback to /bin/sh: drvrun
 * never runs anything through a shell. 0 with buf filled, or -1 with errno. */
static int proc_search(const char *name, char *buf, size_t size)
{
	const char *path = getenv("PATH");
	int err = ENOENT;

	if (strchr(name, '/')) {
		snprintf(buf, size, "%s", name);
		return 0;
	}
	for (const char *p = path ? path : "/usr/bin:/bin"; *p;) {
		const char *end = strchrnul(p, ':');
		struct stat st;

		snprintf(buf, size, "%.*s/%s", (int)(end - p), p, name);
		if (end > p && stat(buf, &st) == 0 && S_ISREG(st.st_mode)) {
			if (access(buf, X_OK) == 0)
				return 0;
			err = EACCES;
		}
		p = *end ? end + 1 : end;
	}
	errno = err;
	return -1;
}

static void proc_child_fail(int fd, int err)
{
	ssize_t n = write(fd, &err, sizeof(err));

	(void)n;
	_exit(127);
}

#define PROC_IOPRIO_WHO_PROCESS 1
#define PROC_IOPRIO_IDLE (3 << 13)	/* IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT */

/* In the child: a lower CPU and I/O priority, as p asks. 0, or -1 with errno. */
static int proc_lower_priority(const struct process *p)
{
	if (p->nice) {
		errno = 0;
		if (nice(p->nice) == -1 && errno)
			return -1;
	}
	if (p->io_idle && syscall(SYS_ioprio_set, PROC_IOPRIO_WHO_PROCESS, 0, PROC_IOPRIO_IDLE) < 0)
		return -1;
	return 0;
}

/* In the child: clean signals, own group, priority, wire fds, chdir, exec. Never returns. */
static void proc_exec_child(const struct process *p, const char *path, const char **argv,
			    const char **envp, const char *cwd, int in, int out, int err, int report)
{
	sigset_t none;

	sigemptyset(&none);
	for (int s = 1; s < NSIG; s++)
		signal(s, SIG_DFL);
	sigprocmask(SIG_SETMASK, &none, NULL);
	setpgid(0, 0);
	if (proc_lower_priority(p) < 0)
		proc_child_fail(report, errno);
	if ((in >= 0 && dup2(in, 0) < 0) || (out >= 0 && dup2(out, 1) < 0) ||
	    (err >= 0 && dup2(err, 2) < 0))
		proc_child_fail(report, errno);
	if (cwd && chdir(cwd) < 0)
		proc_child_fail(report, errno);
	execve(path, (char *const *)argv, (char *const *)envp);
	proc_child_fail(report, errno);
}

static int proc_devnull(int flags)
{
	return open("/dev/null", flags | O_CLOEXEC);
}

static void proc_close(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

static void proc_close_pair(int fds[2])
{
	proc_close(&fds[0]);
	proc_close(&fds[1]);
}

/* Set up the pipes for p as opts say; fork and exec. 0 or -1 with errno. */
static int proc_start(struct process *p, const char *path, const char **argv,
		      const char **envp, const char *cwd)
{
	int in[2] = { -1, -1 }, out[2] = { -1, -1 }, err[2] = { -1, -1 }, rep[2] = { -1, -1 };
	int child_err = -1, e = 0;
	ssize_t n;

	if (pipe2(rep, O_CLOEXEC) < 0)
		return -1;
	if (p->in_data) {
		if (pipe2(in, O_CLOEXEC) < 0)
			goto fail;
	} else if ((in[0] = proc_devnull(O_RDONLY)) < 0) {
		goto fail;
	}
	if (p->out_mode == S_CAPTURE && pipe2(out, O_CLOEXEC) < 0)
		goto fail;
	if (p->out_mode == S_NULL && (out[1] = proc_devnull(O_WRONLY)) < 0)
		goto fail;
	if (p->err_mode == S_CAPTURE && pipe2(err, O_CLOEXEC) < 0)
		goto fail;
	if (p->err_mode == S_NULL && (err[1] = proc_devnull(O_WRONLY)) < 0)
		goto fail;
	p->pid = fork();
	if (p->pid < 0)
		goto fail;
	if (p->pid == 0) {
		int errfd = p->err_mode == S_STDOUT ? (out[1] >= 0 ? out[1] : 1) : err[1];

		proc_exec_child(p, path, argv, envp, cwd, in[0], out[1], errfd, rep[1]);
	}
	setpgid(p->pid, p->pid); /* also in the parent: no race with kill() */
	p->pidfd = (int)syscall(SYS_pidfd_open, p->pid, 0);
	proc_close(&rep[1]);
	proc_close(&in[0]);
	proc_close(&out[1]);
	proc_close(&err[1]);
	do
		n = read(rep[0], &child_err, sizeof(child_err));
	while (n < 0 && errno == EINTR);
	proc_close(&rep[0]);
	if (n == sizeof(child_err)) {
		waitpid(p->pid, &p->status, 0);
		p->pid = 0;
		proc_close(&p->pidfd);
		proc_close(&in[1]);
		proc_close(&out[0]);
		proc_close(&err[0]);
		errno = child_err;
		return -1;
	}
	p->in_fd = in[1];
	if (p->in_fd >= 0 && p->in_len == 0)
		proc_close(&p->in_fd); /* empty stdin: EOF at once */
	p->out.fd = out[0];
	p->err.fd = err[0];
	if (p->in_fd >= 0)
		fcntl(p->in_fd, F_SETFL, O_NONBLOCK);
	return 0;
fail:
	e = errno;
	proc_close_pair(in);
	proc_close_pair(out);
	proc_close_pair(err);
	proc_close_pair(rep);
	errno = e;
	return -1;
}

static void stream_free(struct stream *s)
{
	proc_close(&s->fd);
	free(s->buf);
	free(s->line);
	s->buf = s->line = NULL;
	s->len = s->cap = s->linelen = s->linecap = 0;
}

/* Keep the last s->max bytes. */
static void stream_keep(struct stream *s, const char *data, size_t n)
{
	if (n >= s->max) {
		data += n - s->max;
		n = s->max;
		s->len = 0;
	}
	if (s->len + n > s->max) {
		size_t drop = s->len + n - s->max;

		memmove(s->buf, s->buf + drop, s->len - drop);
		s->len -= drop;
	}
	if (s->len + n > s->cap) {
		size_t cap = s->cap ? s->cap : 4096;
		char *b;

		while (cap < s->len + n)
			cap *= 2;
		if (cap > s->max)
			cap = s->max;
		b = realloc(s->buf, cap);
		if (!b)
			return; /* keep what we have; capture is best effort under OOM */
		s->buf = b;
		s->cap = cap;
	}
	memcpy(s->buf + s->len, data, n);
	s->len += n;
}

static void proc_release(lua_State *L, struct process *p);

/* An error in on_line kills the process before it propagates. */
static void proc_call_on_line(lua_State *L, struct process *p, const char *name,
			      const char *line, size_t len)
{
	lua_rawgeti(L, LUA_REGISTRYINDEX, p->on_line_ref);
	lua_pushstring(L, name);
	lua_pushlstring(L, line, len);
	if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
		proc_release(L, p);
		lua_error(L);
	}
}

/* on_tick(seconds since the start), when it is due; an error kills the process too. */
static void proc_maybe_tick(lua_State *L, struct process *p)
{
	double now = drv_clock(CLOCK_MONOTONIC);

	if (p->on_tick_ref == LUA_NOREF || now < p->next_tick)
		return;
	p->next_tick = now + p->tick;
	lua_rawgeti(L, LUA_REGISTRYINDEX, p->on_tick_ref);
	lua_pushnumber(L, now - p->started);
	if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
		proc_release(L, p);
		lua_error(L);
	}
}

/* Split data into lines for on_line; a partial line waits for the rest. */
static void stream_lines(lua_State *L, struct process *p, struct stream *s, const char *name,
			 const char *data, size_t n)
{
	while (n > 0) {
		const char *nl = memchr(data, '\n', n);
		size_t take = nl ? (size_t)(nl - data) : n;

		if (s->linelen + take > s->linecap) {
			size_t cap = s->linecap ? s->linecap : 256;
			char *b;

			while (cap < s->linelen + take)
				cap *= 2;
			b = realloc(s->line, cap);
			if (!b)
				luaL_error(L, "not enough memory");
			s->line = b;
			s->linecap = cap;
		}
		memcpy(s->line + s->linelen, data, take);
		s->linelen += take;
		if (!nl)
			return;
		take = s->linelen;
		s->linelen = 0;
		proc_call_on_line(L, p, name, s->line, take);
		take = (size_t)(nl - data);
		data = nl + 1;
		n -= take + 1;
	}
}

static void stream_flush_line(lua_State *L, struct process *p, struct stream *s, const char *name)
{
	if (p->on_line_ref != LUA_NOREF && s->linelen > 0) {
		size_t len = s->linelen;

		s->linelen = 0;
		proc_call_on_line(L, p, name, s->line, len);
	}
}

/* Read what is available on s; 0 at EOF (fd closed). */
static int stream_read(lua_State *L, struct process *p, struct stream *s, const char *name)
{
	char buf[65536];
	ssize_t n = read(s->fd, buf, sizeof(buf));

	if (n < 0 && (errno == EINTR || errno == EAGAIN))
		return 1;
	if (n <= 0) {
		proc_close(&s->fd);
		stream_flush_line(L, p, s, name);
		return 0;
	}
	if (p->log_fd >= 0) {
		ssize_t w = write(p->log_fd, buf, (size_t)n);

		(void)w;
	}
	stream_keep(s, buf, (size_t)n);
	if (p->on_line_ref != LUA_NOREF)
		stream_lines(L, p, s, name, buf, (size_t)n);
	return 1;
}

static void proc_feed_stdin(struct process *p)
{
	ssize_t n = write(p->in_fd, p->in_data + p->in_off, p->in_len - p->in_off);

	if (n > 0)
		p->in_off += (size_t)n;
	if ((n < 0 && errno != EAGAIN && errno != EINTR) || p->in_off >= p->in_len)
		proc_close(&p->in_fd);
}

static void proc_kill_group(struct process *p, int sig)
{
	if (p->pid > 0)
		kill(-p->pid, sig);
}

static int proc_try_reap(struct process *p, int flags)
{
	pid_t r;

	if (p->pid <= 0)
		return 1;
	do
		r = waitpid(p->pid, &p->status, flags);
	while (r < 0 && errno == EINTR);
	if (r == p->pid || (r < 0 && errno == ECHILD)) {
		p->pid = 0;
		return 1;
	}
	return 0;
}

enum { PUMP_DONE, PUMP_DEADLINE, PUMP_INTERRUPTED };

/* Pump pipes until the child has exited and its pipes are closed, the deadline
 * (monotonic seconds, <0 for none) passes, or interrupt_fd becomes readable. */
static int proc_pump(lua_State *L, struct process *p, double deadline)
{
	for (;;) {
		struct pollfd fds[5];
		int nfds = 0, timeout = -1;

		if (p->out.fd >= 0)
			fds[nfds++] = (struct pollfd){ .fd = p->out.fd, .events = POLLIN };
		if (p->err.fd >= 0)
			fds[nfds++] = (struct pollfd){ .fd = p->err.fd, .events = POLLIN };
		if (p->in_fd >= 0)
			fds[nfds++] = (struct pollfd){ .fd = p->in_fd, .events = POLLOUT };
		if (p->out.fd < 0 && p->err.fd < 0 && proc_try_reap(p, WNOHANG))
			return PUMP_DONE;
		if (p->pidfd >= 0)
			fds[nfds++] = (struct pollfd){ .fd = p->pidfd, .events = POLLIN };
		else if (p->out.fd < 0 && p->err.fd < 0)
			timeout = 10; /* no pidfd: poll for the exit */
		if (p->interrupt_fd >= 0)
			fds[nfds++] = (struct pollfd){ .fd = p->interrupt_fd, .events = POLLIN };
		if (deadline >= 0) {
			double left = deadline - drv_clock(CLOCK_MONOTONIC);

			if (left <= 0)
				return PUMP_DEADLINE;
			if (timeout < 0 || left * 1000 < timeout)
				timeout = (int)(left * 1000) + 1;
		}
		if (p->on_tick_ref != LUA_NOREF) {
			double left = fmax(p->next_tick - drv_clock(CLOCK_MONOTONIC), 0);

			if (timeout < 0 || left * 1000 < timeout)
				timeout = (int)(left * 1000) + 1;
		}
		if (poll(fds, (nfds_t)nfds, timeout) < 0 && errno != EINTR)
			return PUMP_DEADLINE;
		proc_maybe_tick(L, p);
		for (int i = 0; i < nfds; i++) {
			if (!fds[i].revents)
				continue;
			if (fds[i].fd == p->interrupt_fd)
				return PUMP_INTERRUPTED;
			if (fds[i].fd == p->in_fd)
				proc_feed_stdin(p);
			else if (fds[i].fd == p->out.fd)
				stream_read(L, p, &p->out, "stdout");
			else if (fds[i].fd == p->err.fd)
				stream_read(L, p, &p->err, "stderr");
		}
	}
}

static const char *proc_signame(int sig)
{
	static char buf[16];
	const char *abbrev = sigabbrev_np(sig);

	if (!abbrev) {
		snprintf(buf, sizeof(buf), "SIG%d", sig);
		return buf;
	}
	snprintf(buf, sizeof(buf), "SIG%s", abbrev);
	return buf;
}

static void proc_push_result(lua_State *L, struct process *p, pid_t pid)
{
	lua_createtable(L, 0, 8);
	if (WIFEXITED(p->status)) {
		lua_pushinteger(L, WEXITSTATUS(p->status));
		lua_setfield(L, -2, "status");
	} else if (WIFSIGNALED(p->status)) {
		lua_pushstring(L, proc_signame(WTERMSIG(p->status)));
		lua_setfield(L, -2, "signal");
	}
	lua_pushboolean(L, p->timed_out);
	lua_setfield(L, -2, "timed_out");
	lua_pushboolean(L, p->interrupted);
	lua_setfield(L, -2, "interrupted");
	lua_pushlstring(L, p->out.buf ? p->out.buf : "", p->out.len);
	lua_setfield(L, -2, "stdout");
	lua_pushlstring(L, p->err.buf ? p->err.buf : "", p->err.len);
	lua_setfield(L, -2, "stderr");
	lua_pushnumber(L, drv_clock(CLOCK_MONOTONIC) - p->started);
	lua_setfield(L, -2, "seconds");
	lua_pushinteger(L, pid);
	lua_setfield(L, -2, "pid");
}

/* Kill the group and reap: the one release of a process, idempotent. */
static void proc_release(lua_State *L, struct process *p)
{
	if (p->pid > 0) {
		proc_kill_group(p, SIGKILL);
		proc_try_reap(p, 0);
	}
	stream_free(&p->out);
	stream_free(&p->err);
	proc_close(&p->in_fd);
	proc_close(&p->log_fd);
	proc_close(&p->pidfd);
	if (p->on_line_ref != LUA_NOREF) {
		luaL_unref(L, LUA_REGISTRYINDEX, p->on_line_ref);
		p->on_line_ref = LUA_NOREF;
	}
	if (p->on_tick_ref != LUA_NOREF) {
		luaL_unref(L, LUA_REGISTRYINDEX, p->on_tick_ref);
		p->on_tick_ref = LUA_NOREF;
	}
}

static struct process *proc_check(lua_State *L, int idx)
{
	return luaL_checkudata(L, idx, PROC_MT);
}

/***
 * Kill the process's group with SIGKILL and reap it, if it still runs, and free
 * its pipes and log; also at collection and `__close`.
 * @function process:close
 */
static int proc_gc(lua_State *L)
{
	proc_release(L, proc_check(L, 1));
	return 0;
}

/* Create the handle first (closed), so nothing leaks if a later step raises. */
static struct process *proc_new(lua_State *L)
{
	struct process *p = lua_newuserdatauv(L, sizeof(*p), 1);

	memset(p, 0, sizeof(*p));
	p->out.fd = p->err.fd = p->in_fd = p->log_fd = p->pidfd = p->interrupt_fd = -1;
	p->on_line_ref = p->on_tick_ref = LUA_NOREF;
	luaL_setmetatable(L, PROC_MT);
	return p;
}

/* Parse opts (index 2) into p and spawn. Returns 1 with p running, or pushes a failure. */
static int proc_setup(lua_State *L, struct process *p, int default_inherit, int pidx)
{
	const char **argv = proc_argv(L);
	int opts = drv_opttable(L, 2);
	const char *cwd = drv_optfield_string(L, opts, "cwd", NULL);
	const char *log = drv_optfield_string(L, opts, "log", NULL);
	lua_Integer max = drv_optfield_integer(L, opts, "max_capture", PROC_DEFAULT_CAPTURE);
	enum stream_mode def = default_inherit ? S_INHERIT : S_CAPTURE;
	char path[4096];
	const char **envp;
	int rc, e;

	p->interrupt_fd = (int)drv_optfield_integer(L, opts, "interrupt_fd", -1);
	p->out_mode = proc_mode(L, opts, "stdout", def, 0);
	p->err_mode = proc_mode(L, opts, "stderr", def, 1);
	luaL_argcheck(L, max > 0, 2, "field 'max_capture': must be positive");
	p->out.max = p->err.max = (size_t)max;
	if (proc_field(L, opts, "stdin")) {
		luaL_argcheck(L, lua_type(L, -1) == LUA_TSTRING, 2, "field 'stdin': string expected");
		p->in_data = lua_tolstring(L, -1, &p->in_len);
		lua_setiuservalue(L, pidx, 1); /* keep the data alive while the process runs */
	}
	if (proc_field(L, opts, "on_line")) {
		luaL_argcheck(L, lua_isfunction(L, -1), 2, "field 'on_line': function expected");
		p->on_line_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	}
	p->nice = (int)drv_optfield_integer(L, opts, "nice", 0);
	luaL_argcheck(L, p->nice >= 0 && p->nice <= 19, 2, "field 'nice': 0 to 19 expected (a lower priority only)");
	p->io_idle = drv_optfield_boolean(L, opts, "io_idle", 0);
	p->tick = drv_optfield_number(L, opts, "tick", 10);
	luaL_argcheck(L, p->tick > 0, 2, "field 'tick': positive number expected");
	if (proc_field(L, opts, "on_tick")) {
		luaL_argcheck(L, lua_isfunction(L, -1), 2, "field 'on_tick': function expected");
		p->on_tick_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	}
	envp = proc_envp(L, opts);
	if (log) {
		p->log_fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
		if (p->log_fd < 0) {
			proc_envp_release(L, envp);
			return drv_errno_fail(L, log);
		}
	}
	p->started = drv_clock(CLOCK_MONOTONIC);
	p->next_tick = p->started + p->tick;
	rc = proc_search(argv[0], path, sizeof(path));
	if (rc == 0)
		rc = proc_start(p, path, argv, envp, cwd);
	e = errno;
	proc_envp_release(L, envp);
	if (rc < 0) {
		if (cwd && (e == ENOENT || e == ENOTDIR || e == EACCES) && access(cwd, X_OK) < 0)
			return drv_fail(L, e, "%s: cannot change directory to %s: %s", argv[0], cwd, strerror(e));
		if (e == ENOENT && !strchr(argv[0], '/'))
			return drv_fail(L, e, "%s: not found in PATH", argv[0]);
		return drv_fail(L, e, "%s: %s", argv[0], strerror(e));
	}
	return 0;
}

/***
 * Run a program to completion.
 * A non-zero exit is not a failure here: look at result.status.
 * @function run
 * @tparam table argv `{ "make", "-C", dir, ... }` (PATH is searched for argv[1])
 * @tparam[opt] table opts `{ env = { K = "v", UNSET = false }, clear_env = false, cwd = dir, timeout = seconds,
 *   kill_after = 5, interrupt_fd = fd (readable => stop the program, result.interrupted), stdin = "data", stdout = "capture"|"inherit"|"null",
 *   stderr = "capture"|"inherit"|"null"|"stdout", log = path, max_capture = 1 MiB,
 *   on_line = function(stream, line), on_tick = function(seconds since start), tick = 10 (seconds between
 *   on_tick calls, while the program runs, whether it writes or not: for progress lines), nice = 0-19 (added
 *   to the program's nice value: a lower CPU priority), io_idle = false (true: the idle I/O class, its disk
 *   reads and writes served when no one else waits for the disk) }`
 * @treturn[1] table `{ status = n | nil, signal = "SIGKILL" | nil, timed_out, stdout, stderr, seconds, pid }`
 * @treturn[2] nil, string message, string errno (the program could not be started)
 * @see execvpe(3), poll(2), nice(2), ioprio_set(2)
 */
static int proc_run(lua_State *L)
{
	struct process *p;
	int opts, pidx;
	double timeout, kill_after, deadline;
	pid_t pid;

	lua_settop(L, 2);
	opts = drv_opttable(L, 2);
	timeout = drv_optfield_number(L, opts, "timeout", -1);
	kill_after = drv_optfield_number(L, opts, "kill_after", 5);
	p = proc_new(L);
	pidx = lua_gettop(L);
	if (proc_setup(L, p, 0, pidx))
		return 3;
	pid = p->pid;
	deadline = timeout >= 0 ? p->started + timeout : -1;
	switch (proc_pump(L, p, deadline)) {
	case PUMP_DONE:
		break;
	case PUMP_INTERRUPTED:
		p->interrupted = 1;
		/* fall through */
	default:
		p->timed_out = !p->interrupted;
		p->interrupt_fd = -1;
		proc_kill_group(p, SIGTERM);
		if (proc_pump(L, p, drv_clock(CLOCK_MONOTONIC) + kill_after) != PUMP_DONE) {
			proc_kill_group(p, SIGKILL);
			proc_pump(L, p, -1);
		}
	}
	proc_kill_group(p, SIGKILL); /* stragglers left in the group by the leader */
	proc_push_result(L, p, pid);
	proc_release(L, p);
	return 1;
}

/***
 * Start a program and return at once. stdout and stderr default to "inherit".
 * @function spawn
 * @tparam table argv
 * @tparam[opt] table opts as for run (timeout applies to wait)
 * @treturn[1] process userdata: `:pid()`, `:wait([timeout])`, `:kill([signal])`, `:running()`, `:close()`
 * @treturn[2] nil, string message, string errno
 */
static int proc_spawn(lua_State *L)
{
	struct process *p;
	int pidx;

	lua_settop(L, 2);
	drv_opttable(L, 2);
	p = proc_new(L);
	pidx = lua_gettop(L);
	if (proc_setup(L, p, 1, pidx))
		return 3;
	lua_pushvalue(L, pidx);
	return 1;
}

/***
 * The process's id.
 * @function process:pid
 * @treturn integer
 */
static int proc_m_pid(lua_State *L)
{
	struct process *p = proc_check(L, 1);

	lua_pushinteger(L, p->pid);
	return 1;
}

/***
 * Wait for a spawned process.
 * @function process:wait
 * @tparam[opt] number timeout seconds (none: wait as long as it takes)
 * @treturn[1] table the result, as for run
 * @treturn[2] nil, "timeout", ETIMEDOUT (it is still running)
 */
static int proc_m_wait(lua_State *L)
{
	struct process *p = proc_check(L, 1);
	double timeout = luaL_optnumber(L, 2, -1);
	pid_t pid = p->pid;

	luaL_argcheck(L, pid > 0 || p->status || p->started > 0, 1, "process was never started");
	if (p->pid > 0) {
		int r = proc_pump(L, p, timeout >= 0 ? drv_clock(CLOCK_MONOTONIC) + timeout : -1);

		if (r == PUMP_INTERRUPTED)
			return drv_fail(L, EINTR, "%s", "interrupted");
		if (r != PUMP_DONE)
			return drv_fail(L, ETIMEDOUT, "%s", "timeout");
	}
	proc_push_result(L, p, pid);
	return 1;
}

static int proc_signum(lua_State *L, int idx)
{
	return lua_isnoneornil(L, idx) ? SIGTERM : drv_checksignal(L, idx);
}

/***
 * Send a signal to the process's group.
 * @function process:kill
 * @tparam[opt] string|integer signal "TERM" (default), "SIGKILL", 9 ...
 * @treturn[1] true
 * @treturn[2] nil, string message, string errno
 * @see kill(2)
 */
static int proc_m_kill(lua_State *L)
{
	struct process *p = proc_check(L, 1);
	int sig = proc_signum(L, 2);

	if (p->pid <= 0)
		return drv_fail(L, ESRCH, "process has exited");
	if (kill(-p->pid, sig) < 0)
		return drv_errno_fail(L, "kill");
	return drv_ok(L);
}

/***
 * Whether the process still runs (one that ended is reaped here; `wait` still gives its result).
 * @function process:running
 * @treturn boolean
 */
static int proc_m_running(lua_State *L)
{
	struct process *p = proc_check(L, 1);

	lua_pushboolean(L, p->pid > 0 && !proc_try_reap(p, WNOHANG));
	return 1;
}

static int proc_m_tostring(lua_State *L)
{
	struct process *p = proc_check(L, 1);

	if (p->pid > 0)
		lua_pushfstring(L, "drv.proc.process (pid %d)", (int)p->pid);
	else
		lua_pushliteral(L, "drv.proc.process (exited)");
	return 1;
}

/***
 * Find a program in PATH.
 * @function which
 * @tparam string name
 * @treturn[1] string absolute path
 * @treturn[2] nil, string message, ENOENT
 */
static int proc_which(lua_State *L)
{
	const char *name = luaL_checkstring(L, 1);
	char buf[4096];

	if (proc_search(name, buf, sizeof(buf)) < 0 || access(buf, X_OK) < 0) {
		if (errno == ENOENT && !strchr(name, '/'))
			return drv_fail(L, ENOENT, "%s: not found in PATH", name);
		return drv_errno_fail(L, name);
	}
	lua_pushstring(L, buf);
	return 1;
}

static const luaL_Reg proc_methods[] = {
	{ "pid", proc_m_pid },
	{ "wait", proc_m_wait },
	{ "kill", proc_m_kill },
	{ "running", proc_m_running },
	{ "close", proc_gc },
	{ NULL, NULL }
};

static const luaL_Reg proc_meta[] = {
	{ "__gc", proc_gc },
	{ "__close", proc_gc },
	{ "__tostring", proc_m_tostring },
	{ NULL, NULL }
};

static const luaL_Reg proc_funcs[] = {
	{ "run", proc_run },
	{ "spawn", proc_spawn },
	{ "which", proc_which },
	{ NULL, NULL }
};

int luaopen_drv_proc(lua_State *L)
{
	drv_newclass(L, PROC_MT, proc_methods, proc_meta);
	luaL_newlib(L, proc_funcs);
	return 1;
}
