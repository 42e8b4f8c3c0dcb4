/* main.c - the drvrun host: a Lua 5.4 interpreter with the drv.* modules.
 *
 * Shaped like lua.c: everything runs under lua_pcall with a message handler
 * that adds a traceback, and one report() prints failures. */
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <lualib.h>

#include "drv.h"

#ifndef DRV_LIBDIR
#define DRV_LIBDIR "/usr/local/share/drvrun/lua"
#endif
#ifndef DRV_RECIPEDIR
#define DRV_RECIPEDIR "/usr/local/share/drvrun/recipes"
#endif

enum { EXIT_OK = 0, EXIT_SCRIPT = 1, EXIT_USAGE = 2 };

static const char *progname = "drvrun";

static const char usage_text[] =
	"usage: drvrun [options] [SCRIPT [ARGS...]]\n"
	"\n"
	"Run a Lua 5.4 script or a driver recipe with the drv.* modules.\n"
	"A script that returns a recipe table is run through the recipe lifecycle;\n"
	"ARGS of the form KEY=VALUE set recipe options.\n"
	"\n"
	"options:\n"
	"  -e CODE              run CODE (may be repeated)\n"
	"  -l MODULE            require MODULE into the global MODULE (may be repeated)\n"
	"  --plan               print what a recipe would do; change nothing\n"
	"  --preflight          say whether a recipe's build for its kernel (KVER) is in\n"
	"                       the build cache (exit 0), not yet (4: being built, or not\n"
	"                       built) or failing (5: the last build failed, or no kernel\n"
	"                       headers); change nothing\n"
	"  --compile FILE...    write FILE.luac beside each Lua FILE, loaded instead of\n"
	"                       FILE while FILE is unchanged (make install does this;\n"
	"                       chunks are named after FILE without a leading $DESTDIR)\n"
	"  --log-level LEVEL    error, warn, info (default) or debug\n"
	"  --log-format FORMAT  text (default) or json (one object a line)\n"
	"  --init COMMAND...    be a container's init: run COMMAND as a child, forward\n"
	"                       every signal to it, reap orphans, exit with its status\n"
	"                       (drvrun started as PID 1 does this by itself)\n"
	"  -v, --version        print the version and exit\n"
	"  -h, --help           print this help and exit\n"
	"  --                   stop handling options\n"
	"  -                    read the script from standard input\n"
	"\n"
	"environment:\n"
	"  DRVRUN_PATH          extra Lua module directories, separated by ':'\n"
	"  DRVRUN_LOG_LEVEL, DRVRUN_LOG_FORMAT   defaults for the options above\n"
	"\n"
	"exit status: 0 success, 1 the script or recipe failed, 2 usage error or\n"
	"a script that does not load, 3 another instance of the recipe runs on\n"
	"this host (it is named; nothing was changed); a recipe interrupted by a\n"
	"signal exits 0 after a clean stop; --preflight: 0, 4 or 5 as above.\n"
	"\n"
	"examples:\n"
	"  drvrun recipes/ubuntu-ofed.lua                  install the OFED stack\n"
	"  drvrun recipes/ubuntu-ofed.lua --help           its options, as set here\n"
	"  drvrun --plan recipes/ubuntu-ofed.lua KVER=6.1.0-56-amd64\n"
	"  drvrun --preflight recipes/ubuntu-ofed.lua KVER=6.1.0-57-amd64   before a reboot\n"
	"  drvrun -e 'print(require(\"drv.sys\").uname().release)'\n"
	"  drvrun $(command -v busted) spec/             run specs on the real bindings\n";

struct options {
	int plan;
	int preflight;
	int script;	   /* argv index of the script, 0 if none */
	int inline_code;   /* -e or -l given */
	int compile;	   /* argv index of the first file of --compile, 0 if none */
	const char *log_level;
	const char *log_format;
};

static void print_message(const char *msg)
{
	fprintf(stderr, "%s: %s\n", progname, msg);
	fflush(stderr);
}

/* Print the error on the stack: its first line, then the rest (the traceback). */
static int report(lua_State *L, int status)
{
	const char *msg;

	if (status == LUA_OK)
		return status;
	msg = lua_tostring(L, -1);
	if (!msg)
		msg = lua_pushfstring(L, "(error object is a %s value)",
				      luaL_typename(L, -1));
	print_message(msg);
	lua_pop(L, 1);
	return status;
}

/* Message handler: keep the message, append a traceback. */
static int msghandler(lua_State *L)
{
	const char *msg = lua_tostring(L, 1);

	if (msg == NULL) {
		if (luaL_callmeta(L, 1, "__tostring") &&
		    lua_type(L, -1) == LUA_TSTRING)
			return 1;
		msg = lua_pushfstring(L, "(error object is a %s value)",
				      luaL_typename(L, 1));
	}
	luaL_traceback(L, L, msg, 1);
	return 1;
}

static int docall(lua_State *L, int narg, int nres)
{
	int status;
	int base = lua_gettop(L) - narg;

	lua_pushcfunction(L, msghandler);
	lua_insert(L, base);
	status = lua_pcall(L, narg, nres, base);
	lua_remove(L, base);
	return status;
}

static int file_exists(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0;
}

/* Directory of the running executable, without a trailing slash. */
static const char *exe_dir(char *buf, size_t size)
{
	ssize_t n = readlink("/proc/self/exe", buf, size - 1);

	if (n < 0)
		return NULL;
	buf[n] = '\0';
	return dirname(buf);
}

/* dir (canonical: no symlinks, no . or ..) joined with rel, its .. resolved
 * lexically, which is where they lead when dir has no symlinks: no realpath(3)
 * walk, a readlink per component, at every start. */
static void join_canonical(char *out, size_t size, const char *dir, const char *rel)
{
	char buf[PATH_MAX + 64];
	size_t n;

	snprintf(out, size, "%s", dir);
	snprintf(buf, sizeof(buf), "%s", rel);
	for (char *save = NULL, *c = strtok_r(buf, "/", &save); c; c = strtok_r(NULL, "/", &save)) {
		n = strlen(out);
		if (strcmp(c, ".") == 0)
			continue;
		if (strcmp(c, "..") == 0) {
			char *slash = strrchr(out, '/');

			if (slash)
				*(slash == out ? slash + 1 : slash) = '\0';
			continue;
		}
		snprintf(out + n, size - n, "%s%s", n > 0 && out[n - 1] == '/' ? "" : "/", c);
	}
}

/* First of DIR/../REL (source tree or installed prefix) that holds probe,
 * DIR being the running executable's directory, else the compiled-in fallback. */
static const char *find_dir(char *out, size_t size, const char *exe_dir, const char *const rels[],
			    const char *probe, const char *fallback)
{
	char cand[PATH_MAX + 64];

	for (int i = 0; exe_dir && rels[i]; i++) {
		join_canonical(out, size, exe_dir, rels[i]);
		snprintf(cand, sizeof(cand), "%s/%s", out, probe);
		if (file_exists(cand))
			return out;
	}
	snprintf(out, size, "%s", fallback);
	return out;
}

static void add_path(luaL_Buffer *b, const char *dir)
{
	luaL_addstring(b, dir);
	luaL_addstring(b, "/?.lua;");
	luaL_addstring(b, dir);
	luaL_addstring(b, "/?/init.lua;");
}

/* package.path = DRVRUN_PATH dirs, then the drvrun library, then Lua's default. */
static void set_path(lua_State *L, const char *libdir)
{
	const char *extra = getenv("DRVRUN_PATH");
	luaL_Buffer b;

	lua_getglobal(L, "package");
	luaL_buffinit(L, &b);
	if (extra && *extra) {
		char *copy = strdup(extra), *save = NULL;

		for (char *d = strtok_r(copy, ":", &save); d; d = strtok_r(NULL, ":", &save))
			add_path(&b, d);
		free(copy);
	}
	add_path(&b, libdir);
	lua_getfield(L, -2, "path");
	luaL_addvalue(&b);
	luaL_pushresult(&b);
	lua_setfield(L, -2, "path");
	lua_pop(L, 1);
}

static void preload(lua_State *L)
{
	static const luaL_Reg modules[] = {
		{ "drv.chunk", luaopen_drv_chunk },
		{ "drv.kmod", luaopen_drv_kmod },
		{ "drv.mount", luaopen_drv_mount },
		{ "drv.transfer", luaopen_drv_transfer },
		{ "drv.proc", luaopen_drv_proc },
		{ "drv.fs", luaopen_drv_fs },
		{ "drv.sys", luaopen_drv_sys },
		{ "drv.lock", luaopen_drv_lock },
		{ "drv.signal", luaopen_drv_signal },
		{ "drv.archive", luaopen_drv_archive },
		{ "drv.net", luaopen_drv_net },
		{ "drv.keyctl", luaopen_drv_keyctl },
		{ "drv.cert", luaopen_drv_cert },
		{ NULL, NULL }
	};

	luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
	luaL_setfuncs(L, modules, 0);
	lua_pop(L, 1);
}

static void setfield_string(lua_State *L, const char *key, const char *value)
{
	lua_pushstring(L, value);
	lua_setfield(L, -2, key);
}

/* package.loaded["drv.config"]: what the command line and build decided. */
static void set_config(lua_State *L, const struct options *o, const char *libdir,
		       const char *recipedir)
{
	luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
	lua_newtable(L);
	setfield_string(L, "version", DRV_VERSION);
	setfield_string(L, "libdir", libdir);
	setfield_string(L, "recipedir", recipedir);
	setfield_string(L, "log_level", o->log_level);
	setfield_string(L, "log_format", o->log_format);
	lua_pushboolean(L, o->plan);
	lua_setfield(L, -2, "plan");
	lua_pushboolean(L, o->preflight);
	lua_setfield(L, -2, "preflight");
	lua_setfield(L, -2, "drv.config");
	lua_pop(L, 1);
}

/* Global 'arg' like lua.c: script at 0, its arguments at 1.., the rest below 0. */
static void create_arg(lua_State *L, char **argv, int argc, int script)
{
	lua_createtable(L, argc - script, script + 1);
	for (int i = 0; i < argc; i++) {
		lua_pushstring(L, argv[i]);
		lua_rawseti(L, -2, i - script);
	}
	lua_setglobal(L, "arg");
}

static int usage_error(const char *fmt, const char *what)
{
	fprintf(stderr, "%s: ", progname);
	fprintf(stderr, fmt, what);
	fprintf(stderr, "\nTry '%s --help' for the options.\n", progname);
	return -1;
}

static int valid_choice(const char *v, const char *const choices[])
{
	for (int i = 0; choices[i]; i++)
		if (strcmp(v, choices[i]) == 0)
			return 1;
	return 0;
}

/* Parse options; return 0 to go on, 1 when done (help/version), -1 on error. */
static int parse_args(int argc, char **argv, struct options *o)
{
	static const char *const levels[] = { "error", "warn", "info", "debug", NULL };
	static const char *const formats[] = { "text", "json", NULL };
	int i;

	for (i = 1; i < argc; i++) {
		const char *a = argv[i];

		if (a[0] != '-' || strcmp(a, "-") == 0)
			break;
		if (strcmp(a, "--") == 0) {
			i++;
			break;
		}
		if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			fputs(usage_text, stdout);
			return 1;
		}
		if (strcmp(a, "-v") == 0 || strcmp(a, "--version") == 0) {
			printf("drvrun %s (%s)\n", DRV_VERSION, LUA_RELEASE);
			return 1;
		}
		if (strcmp(a, "--plan") == 0) {
			o->plan = 1;
			continue;
		}
		if (strcmp(a, "--preflight") == 0) {
			o->preflight = 1;
			continue;
		}
		if (strcmp(a, "--compile") == 0) {
			if (i + 1 >= argc)
				return usage_error("option '%s' needs a file", a);
			o->compile = i + 1;
			return 0;
		}
		if (strcmp(a, "-e") == 0 || strcmp(a, "-l") == 0 ||
		    strcmp(a, "--log-level") == 0 || strcmp(a, "--log-format") == 0) {
			if (++i >= argc)
				return usage_error("option '%s' needs an argument", a);
			if (strcmp(a, "--log-level") == 0) {
				if (!valid_choice(argv[i], levels))
					return usage_error("unknown log level '%s' (error, warn, info or debug)", argv[i]);
				o->log_level = argv[i];
			} else if (strcmp(a, "--log-format") == 0) {
				if (!valid_choice(argv[i], formats))
					return usage_error("unknown log format '%s' (text or json)", argv[i]);
				o->log_format = argv[i];
			}
			else
				o->inline_code = 1; /* -e and -l run later, in order */
			continue;
		}
		return usage_error("unknown option '%s'", a);
	}
	o->script = i < argc ? i : 0;
	return 0;
}

static int run_chunk(lua_State *L, int status)
{
	if (status == LUA_OK)
		status = docall(L, 0, 0);
	return report(L, status);
}

static int require_global(lua_State *L, const char *name)
{
	int status;

	lua_getglobal(L, "require");
	lua_pushstring(L, name);
	status = docall(L, 1, 1);
	if (status == LUA_OK)
		lua_setglobal(L, name);
	return report(L, status);
}

/* Run -e and -l in command-line order; exit code or 0. */
static int run_inline(lua_State *L, char **argv, int last)
{
	for (int i = 1; i < last; i++) {
		int status;

		if (strcmp(argv[i], "-e") == 0) {
			status = luaL_loadbuffer(L, argv[i + 1], strlen(argv[i + 1]), "=(command line)");
			if (status != LUA_OK)
				return report(L, status), EXIT_USAGE;
			if (run_chunk(L, status) != LUA_OK)
				return EXIT_SCRIPT;
			i++;
		} else if (strcmp(argv[i], "-l") == 0) {
			if (require_global(L, argv[++i]) != LUA_OK)
				return EXIT_SCRIPT;
		} else if (strcmp(argv[i], "--log-level") == 0 ||
			   strcmp(argv[i], "--log-format") == 0) {
			i++;
		}
	}
	return EXIT_OK;
}

/* A script that returns a table is a recipe: hand it to drv.recipe.main with the
 * environment it ran in (at index env). */
static int run_recipe(lua_State *L, const char *script, int env)
{
	int status;

	lua_getglobal(L, "require");
	lua_pushliteral(L, "drv.recipe");
	status = docall(L, 1, 1);
	if (status != LUA_OK)
		return report(L, status), EXIT_SCRIPT;
	lua_getfield(L, -1, "main");
	lua_remove(L, -2);
	lua_insert(L, -2);	/* main, recipe */
	lua_pushstring(L, script);
	lua_getglobal(L, "arg");
	lua_pushvalue(L, env);
	status = docall(L, 4, 1);
	if (status != LUA_OK)
		return report(L, status), EXIT_SCRIPT;
	return (int)luaL_optinteger(L, -1, EXIT_OK);
}

static int run_script(lua_State *L, int argc, char **argv, int script)
{
	const char *fname = argv[script];
	int status, env;

	if (strcmp(fname, "-") == 0)
		fname = NULL;
	drv_push_script_env(L);
	env = lua_gettop(L);
	status = drv_loadfile(L, fname);
	if (status != LUA_OK) {
		report(L, status);
		return EXIT_USAGE;
	}
	lua_pushvalue(L, env);
	lua_setupvalue(L, -2, 1);	/* the chunk's _ENV */
	for (int i = script + 1; i < argc; i++)
		lua_pushstring(L, argv[i]);
	status = docall(L, argc - script - 1, 1);
	if (status != LUA_OK) {
		report(L, status);
		return EXIT_SCRIPT;
	}
	if (lua_istable(L, -1))
		return run_recipe(L, fname ? fname : "stdin", env);
	lua_pop(L, 1);
	return EXIT_OK;
}

/* --compile: each file's chunk, named as installed (without $DESTDIR). */
static int compile_files(lua_State *L, int argc, char **argv, int first)
{
	const char *destdir = getenv("DESTDIR");
	size_t skip = destdir ? strlen(destdir) : 0;

	while (skip > 0 && destdir[skip - 1] == '/')
		skip--;
	for (int i = first; i < argc; i++) {
		const char *name = argv[i];

		if (skip > 0 && strncmp(name, destdir, skip) == 0 && name[skip] == '/')
			name += skip;
		if (drv_compile_file(L, argv[i], name) != LUA_OK)
			return report(L, LUA_ERRFILE), EXIT_USAGE;
	}
	return EXIT_OK;
}

static int pmain(lua_State *L)
{
	int argc = (int)lua_tointeger(L, 1);
	char **argv = (char **)lua_touserdata(L, 2);
	struct options *o = (struct options *)lua_touserdata(L, 3);
	/* build/drvrun, build/san/drvrun, or PREFIX/bin/drvrun */
	static const char *const librels[] = { "../lib/lua", "../../lib/lua", "../share/drvrun/lua", NULL };
	static const char *const reciperels[] = { "../recipes", "../../recipes", "../share/drvrun/recipes", NULL };
	char libdir[PATH_MAX], recipedir[PATH_MAX], exe[PATH_MAX];
	const char *dir = exe_dir(exe, sizeof(exe));
	int code;

	luaL_checkversion(L);
	luaL_openlibs(L);
	preload(L);
	find_dir(libdir, sizeof(libdir), dir, librels, "drv", DRV_LIBDIR);
	find_dir(recipedir, sizeof(recipedir), dir, reciperels, ".", DRV_RECIPEDIR);
	set_path(L, libdir);
	drv_use_compiled_chunks(L);
	if (o->compile)
		return lua_pushinteger(L, compile_files(L, argc, argv, o->compile)), 1;
	set_config(L, o, libdir, recipedir);
	create_arg(L, argv, argc, o->script ? o->script : argc - 1);
	code = run_inline(L, argv, o->script ? o->script : argc);
	if (code == EXIT_OK && o->script)
		code = run_script(L, argc, argv, o->script);
	else if (code == EXIT_OK && !o->script && !o->inline_code) {
		fputs(usage_text, stderr);
		code = EXIT_USAGE;
	}
	lua_pushinteger(L, code);
	return 1;
}

static const char *env_or(const char *name, const char *def)
{
	const char *v = getenv(name);

	return v && *v ? v : def;
}

/* ---- PID 1 -----------------------------------------------------------------
 * The init of a container's PID namespace gets no signal it has no handler
 * for (the engine's SIGTERM would be dropped) and inherits every orphan. So
 * drvrun started as PID 1 (or with --init) splits, as tini does: this process
 * blocks every signal before anything else (one arriving meanwhile waits,
 * queued), forks, and stays a minimal init: it forwards each signal to the
 * child, reaps every process that ends, and exits with the child's status
 * once the child has ended. The child, no longer PID 1, gets its signals as
 * outside a container, and runs drvrun or, with --init, execs COMMAND. */
static void init_exit(int status)
{
	if (WIFSIGNALED(status))
		_exit(128 + WTERMSIG(status));
	_exit(WEXITSTATUS(status));
}

static void init_loop(pid_t child)
{
	sigset_t all;
	siginfo_t si;
	int status;
	pid_t pid;

	sigfillset(&all);
	for (;;) {
		if (sigwaitinfo(&all, &si) < 0)
			continue;
		if (si.si_signo != SIGCHLD) {
			kill(child, si.si_signo);
			continue;
		}
		while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
			if (pid == child)
				init_exit(status);
	}
}

/* Returns in the child, with the signal mask it was started with. */
static void init_split(void)
{
	sigset_t all, old;
	pid_t child;

	sigfillset(&all);
	sigprocmask(SIG_BLOCK, &all, &old);
	prctl(PR_SET_CHILD_SUBREAPER, 1); /* orphans come here when this is not PID 1 (--init) */
	child = fork();
	if (child < 0) {
		perror("drvrun: init: fork");
		_exit(EXIT_SCRIPT);
	}
	if (child > 0)
		init_loop(child);
	prctl(PR_SET_CHILD_SUBREAPER, 0);
	sigprocmask(SIG_SETMASK, &old, NULL);
}

/* --init COMMAND...: COMMAND as the init's child. */
static int run_init(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "%s: option '--init' needs a command\nTry '%s --help' for the options.\n", progname,
			progname);
		return EXIT_USAGE;
	}
	init_split();
	execvp(argv[2], argv + 2);
	fprintf(stderr, "%s: --init: cannot run %s: %s\n", progname, argv[2], strerror(errno));
	return errno == ENOENT ? 127 : 126;
}

int main(int argc, char **argv)
{
	struct options o = { 0 };
	lua_State *L;
	int code, status;

	if (argc > 1 && strcmp(argv[1], "--init") == 0)
		return run_init(argc, argv);
	if (getpid() == 1)
		init_split();
	o.log_level = env_or("DRVRUN_LOG_LEVEL", "info");
	o.log_format = env_or("DRVRUN_LOG_FORMAT", "text");
	status = parse_args(argc, argv, &o);
	if (status != 0)
		return status > 0 ? EXIT_OK : EXIT_USAGE;
	L = luaL_newstate();
	if (L == NULL) {
		print_message("cannot create Lua state: not enough memory");
		return EXIT_SCRIPT;
	}
	lua_pushcfunction(L, pmain);
	lua_pushinteger(L, argc);
	lua_pushlightuserdata(L, argv);
	lua_pushlightuserdata(L, &o);
	status = lua_pcall(L, 3, 1, 0);
	code = status == LUA_OK ? (int)lua_tointeger(L, -1) : EXIT_SCRIPT;
	if (status != LUA_OK)
		report(L, status);
	lua_close(L);
	return code;
}
