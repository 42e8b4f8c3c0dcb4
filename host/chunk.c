/* chunk.c - Lua files loaded from their compiled chunks when those are current.
 *
 * Parsing costs ten times as much as loading bytecode: the library and a
 * recipe take ~2 ms to parse here and ~35 ms in a software-emulated guest, at
 * every start of a driver container and every run of its probes. `make
 * install` writes FILE.luac beside each FILE.lua it installs (drvrun
 * --compile). Its first line is a comment naming the size and modification
 * time of the source it was compiled from (luaL_loadfilex skips such a line);
 * the chunk is used only while the source still has both, so an edited or
 * replaced source is read instead, as Python's .pyc files work. A chunk that
 * does not load (another Lua release) is ignored.
 *
 * As drv.chunk, the same for data files that are Lua chunks (a build cache's
 * manifest): load one, compile one. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lauxlib.h>

#include "drv.h"

#define STAMP_MAX 128

/* The first line of the compiled chunk of a source with stat st. */
static void chunk_stamp_of(const struct stat *st, char *stamp, size_t size)
{
	snprintf(stamp, size, "#drvrun compiled chunk: size %lld, mtime %lld.%09ld\n",
		 (long long)st->st_size, (long long)st->st_mtim.tv_sec, st->st_mtim.tv_nsec);
}

/* The first line of path's compiled chunk, from path's stat. */
static int chunk_stamp(const char *path, char *stamp, size_t size)
{
	struct stat st;

	if (stat(path, &st) < 0)
		return -1;
	chunk_stamp_of(&st, stamp, size);
	return 0;
}

/* Read all of the file at path into a new buffer (free it); NULL with errno. */
static char *chunk_read(const char *path, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	char *buf = NULL;
	ssize_t n = -1;

	if (fd < 0)
		return NULL;
	if (fstat(fd, &st) == 0 && st.st_size > 0 && (buf = malloc((size_t)st.st_size)) != NULL)
		n = read(fd, buf, (size_t)st.st_size);
	close(fd);
	if (n != (ssize_t)st.st_size) {
		free(buf);
		return NULL;
	}
	*len = (size_t)n;
	return buf;
}

/* Load compiled's chunk when its first line is path's stamp (from st, path's
 * stat, when the caller has it): read in one go (a start loads some twenty of
 * them: each system call counts in an emulated guest). LUA_OK with the chunk
 * pushed, else nothing pushed. */
static int chunk_load_current(lua_State *L, const char *path, const struct stat *st,
			      const char *compiled)
{
	char want[STAMP_MAX];
	size_t len, skip;
	char *buf;
	int rc;

	if (st)
		chunk_stamp_of(st, want, sizeof(want));
	else if (chunk_stamp(path, want, sizeof(want)) < 0)
		return LUA_ERRFILE;
	if (!(buf = chunk_read(compiled, &len)))
		return LUA_ERRFILE;
	skip = strlen(want);
	rc = LUA_ERRFILE;
	if (len > skip && memcmp(buf, want, skip) == 0) {
		lua_pushfstring(L, "@%s", compiled);
		rc = luaL_loadbufferx(L, buf + skip, len - skip, lua_tostring(L, -1), "b");
		lua_remove(L, -2);	/* the name */
		if (rc != LUA_OK)
			lua_pop(L, 1);	/* the message */
	}
	free(buf);
	return rc;
}

/* path's compiled chunk when current, else path itself in mode (NULL: text
 * or binary); *compiled says which (may be NULL); st: path's stat, or NULL. */
static int chunk_loadfile(lua_State *L, const char *path, const struct stat *st, const char *mode,
			  int *compiled)
{
	char name[PATH_MAX];
	int current = path && snprintf(name, sizeof(name), "%sc", path) < (int)sizeof(name) &&
		      chunk_load_current(L, path, st, name) == LUA_OK;

	if (compiled)
		*compiled = current;
	return current ? LUA_OK : luaL_loadfilex(L, path, mode);
}

int drv_loadfile(lua_State *L, const char *path)
{
	return chunk_loadfile(L, path, NULL, NULL, NULL);
}

static int chunk_writer(lua_State *L, const void *p, size_t size, void *f)
{
	(void)L;
	return fwrite(p, 1, size, f) != size;
}

/* Parse path's text as the chunk named "@name" (a leading '#' line is skipped,
 * its newline kept so that line numbers stay). */
static int chunk_parse(lua_State *L, const char *path, const char *name)
{
	FILE *f = fopen(path, "re");
	luaL_Buffer b;
	char buf[4096];
	const char *text;
	size_t n, len;
	int err;

	if (!f) {
		lua_pushfstring(L, "%s: %s", path, strerror(errno));
		return LUA_ERRFILE;
	}
	luaL_buffinit(L, &b);
	while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
		luaL_addlstring(&b, buf, n);
	err = ferror(f);
	fclose(f);
	luaL_pushresult(&b);
	if (err) {
		lua_pushfstring(L, "cannot read %s", path);
		return LUA_ERRFILE;
	}
	text = lua_tolstring(L, -1, &len);
	if (len > 0 && text[0] == '#') {
		const char *nl = memchr(text, '\n', len);

		len = nl ? len - (size_t)(nl - text) : 0;
		text = nl ? nl : text + len;
	}
	lua_pushfstring(L, "@%s", name);
	err = luaL_loadbufferx(L, text, len, lua_tostring(L, -1), "t");
	lua_remove(L, -2);	/* the name */
	lua_remove(L, -2);	/* the text */
	return err;
}

int drv_compile_file(lua_State *L, const char *path, const char *name)
{
	char compiled[PATH_MAX], tmp[PATH_MAX + 8], stamp[STAMP_MAX];
	FILE *out;
	int fd, failed;

	if (snprintf(compiled, sizeof(compiled), "%sc", path) >= (int)sizeof(compiled) ||
	    snprintf(tmp, sizeof(tmp), "%s.XXXXXX", compiled) >= (int)sizeof(tmp)) {
		lua_pushfstring(L, "%s: file name too long", path);
		return LUA_ERRFILE;
	}
	if (chunk_stamp(path, stamp, sizeof(stamp)) < 0) {
		lua_pushfstring(L, "%s: %s", path, strerror(errno));
		return LUA_ERRFILE;
	}
	failed = chunk_parse(L, path, name);
	if (failed)
		return failed;
	if ((fd = mkostemp(tmp, O_CLOEXEC)) < 0 || !(out = fdopen(fd, "w"))) {
		if (fd >= 0) {
			close(fd);
			unlink(tmp);
		}
		lua_pop(L, 1);
		lua_pushfstring(L, "%s: %s", compiled, strerror(errno));
		return LUA_ERRFILE;
	}
	failed = fputs(stamp, out) < 0 || lua_dump(L, chunk_writer, out, 0) != 0;
	failed |= fchmod(fd, 0644) < 0;
	failed |= fclose(out) != 0;
	lua_pop(L, 1);
	if (failed || rename(tmp, compiled) < 0) {
		lua_pushfstring(L, "%s: %s", compiled, strerror(errno ? errno : EIO));
		unlink(tmp);
		return LUA_ERRFILE;
	}
	return LUA_OK;
}

/***
 * Load the Lua file at path as a function, from its compiled chunk (path .. "c",
 * written by `compile`) while that is current, else from its text (text only:
 * a binary chunk is taken only from a compiled file whose stamp matches).
 * @function load
 * @tparam string path
 * @tparam[opt] table env the chunk's environment (its _ENV)
 * @treturn[1] function
 * @treturn[1] boolean true when it came from the compiled chunk
 * @treturn[2] nil, string message
 */
static int chunk_l_load(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	int has_env = !lua_isnoneornil(L, 2), compiled;

	if (has_env)
		luaL_checktype(L, 2, LUA_TTABLE);
	if (chunk_loadfile(L, path, NULL, "t", &compiled) != LUA_OK) {
		luaL_pushfail(L);
		lua_insert(L, -2);
		return 2;
	}
	if (has_env) {
		lua_pushvalue(L, 2);
		if (!lua_setupvalue(L, -2, 1))
			lua_pop(L, 1);	/* a chunk without upvalues uses no globals */
	}
	lua_pushboolean(L, compiled);
	return 2;
}

/***
 * Compile the Lua file at path into path .. "c", which `load` (and require)
 * then use while path keeps its size and modification time.
 * @function compile
 * @tparam string path
 * @tparam[opt] string name the chunk's name in messages (default: path)
 * @treturn[1] true
 * @treturn[2] nil, string message
 */
static int chunk_l_compile(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	const char *name = luaL_optstring(L, 2, path);

	if (drv_compile_file(L, path, name) != LUA_OK) {
		luaL_pushfail(L);
		lua_insert(L, -2);
		return 2;
	}
	lua_pushboolean(L, 1);
	return 1;
}

/* A script's require: the script's own, noting each module asked for and the
 * line asking (upvalue 1, a list of { name, line }), so that a script that turns
 * out to be a recipe can be checked for raw C modules (drv.recipe). */
static int script_require(lua_State *L)
{
	lua_Debug ar;
	int n;

	luaL_checkstring(L, 1);
	lua_createtable(L, 0, 2);
	lua_pushvalue(L, 1);
	lua_setfield(L, -2, "name");
	if (lua_getstack(L, 1, &ar) && lua_getinfo(L, "l", &ar) && ar.currentline > 0) {
		lua_pushinteger(L, ar.currentline);
		lua_setfield(L, -2, "line");
	}
	n = (int)luaL_len(L, lua_upvalueindex(1));
	lua_rawseti(L, lua_upvalueindex(1), n + 1);
	lua_getglobal(L, "require");
	lua_pushvalue(L, 1);
	lua_call(L, 1, 2);
	return 2;
}

/* The environment a script runs in, as nmap's scripts do: its globals land in a
 * table of its own, reads fall through to the standard ones; its require notes
 * what it asks for (the metatable's `required`). Pushed onto the stack. */
void drv_push_script_env(lua_State *L)
{
	lua_newtable(L);			/* env */
	lua_createtable(L, 0, 2);		/* its metatable */
	lua_pushglobaltable(L);
	lua_setfield(L, -2, "__index");
	lua_newtable(L);
	lua_pushvalue(L, -1);
	lua_setfield(L, -3, "required");
	lua_pushcclosure(L, script_require, 1);
	lua_setfield(L, -3, "require");
	lua_setmetatable(L, -2);
}

/***
 * A fresh environment for a script, as drvrun runs scripts (a recipe is one):
 * its globals land in it, reads fall through to the standard ones; its
 * `require` is the global one, noting each module asked for and the line
 * asking in the metatable's `required` (a list of `{ name, line }`).
 * @function environment
 * @treturn table
 */
static int chunk_l_environment(lua_State *L)
{
	drv_push_script_env(L);
	return 1;
}

static const luaL_Reg chunk_funcs[] = {
	{ "load", chunk_l_load },
	{ "compile", chunk_l_compile },
	{ "environment", chunk_l_environment },
	{ NULL, NULL }
};

int luaopen_drv_chunk(lua_State *L)
{
	luaL_newlib(L, chunk_funcs);
	return 1;
}

/* Template tpl (its first len bytes) with each '?' replaced by mod, in buf; 0 when it does not fit. */
static int chunk_fill(char *buf, size_t size, const char *tpl, size_t len, const char *mod)
{
	size_t n = 0, m = strlen(mod);

	for (size_t i = 0; i < len; i++) {
		size_t add = tpl[i] == '?' ? m : 1;

		if (n + add >= size)
			return 0;
		if (tpl[i] == '?')
			memcpy(buf + n, mod, m);
		else
			buf[n] = tpl[i];
		n += add;
	}
	buf[n] = '\0';
	return 1;
}

/* The first file of package.path for module name that exists, in buf, its
 * stat in *st; NULL with the files tried pushed, worded as package.searchpath
 * words them. A stat, not the fopen(3) and fclose(3) of package.searchpath:
 * the loader opens the file (or its compiled chunk) next. */
static const char *chunk_find(lua_State *L, const char *name, char *buf, size_t size, struct stat *st)
{
	char mod[PATH_MAX];
	const char *tpl;
	luaL_Buffer tried;

	lua_getglobal(L, "package");
	lua_getfield(L, -1, "path");
	tpl = luaL_checkstring(L, -1);
	snprintf(mod, sizeof(mod), "%s", name);
	for (char *c = mod; *c; c++)
		if (*c == '.')
			*c = '/';
	luaL_buffinit(L, &tried);
	while (*tpl) {
		size_t len = strcspn(tpl, ";");

		if (len > 0 && chunk_fill(buf, size, tpl, len, mod)) {
			if (stat(buf, st) == 0) {
				luaL_pushresult(&tried);
				lua_pop(L, 3); /* the message, path, package */
				return buf;
			}
			luaL_addstring(&tried, luaL_bufflen(&tried) ? "\n\tno file '" : "no file '");
			luaL_addstring(&tried, buf);
			luaL_addchar(&tried, '\'');
		}
		tpl += len + (tpl[len] == ';');
	}
	luaL_pushresult(&tried);
	return NULL;
}

/* package.searchers[2], the Lua file searcher, through drv_loadfile. */
static int chunk_searcher(lua_State *L)
{
	const char *name = luaL_checkstring(L, 1);
	char buf[PATH_MAX];
	struct stat st;
	const char *path = chunk_find(L, name, buf, sizeof(buf), &st);

	if (!path)
		return 1;	/* the message: where it looked */
	if (chunk_loadfile(L, path, &st, NULL, NULL) != LUA_OK)
		return luaL_error(L, "error loading module '%s' from file '%s':\n\t%s",
				  name, path, lua_tostring(L, -1));
	lua_pushstring(L, path);
	return 2;
}

void drv_use_compiled_chunks(lua_State *L)
{
	lua_getglobal(L, "package");
	lua_getfield(L, -1, "searchers");
	lua_pushcfunction(L, chunk_searcher);
	lua_rawseti(L, -2, 2);
	lua_pop(L, 2);
}
