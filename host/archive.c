/* archive.c - drv.archive: tarballs and zips through libarchive, extracted safely.
 *
 * extract() reads the archive twice. The first pass checks every header and
 * refuses the whole archive, before anything is written, when an entry could
 * land outside the destination: an absolute path, a ".." component, a link
 * that points out, a path through a link, a hard link to something not in the
 * archive, a device or fifo. The second pass extracts with libarchive's own
 * SECURE_NODOTDOT and SECURE_SYMLINKS checks on as well.
 *
 * extract() runs in a forked child, which reports its result through a pipe:
 * the process that stays (a driver container waits for days) never maps
 * libarchive and what Debian's links with it (libxml2, ICU and libstdc++ for
 * the XAR format: ~2.8 MiB resident), and a fault while parsing a downloaded
 * archive cannot take that process down. */
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <archive.h>
#include <archive_entry.h>

#include "drv.h"
#include "lazy.h"

#define ARCHIVE_MT "drv.archive.reader"
#define ARCHIVE_BLOCK (64 * 1024)

/* The open handles of one call, owned by a userdata so a raised error frees them. */
struct handles {
	struct archive *in;
	struct archive *out;
};

static void arc_release(struct handles *h)
{
	if (h->in)
		archive_read_free(h->in);
	if (h->out)
		archive_write_free(h->out);
	h->in = h->out = NULL;
}

static int arc_gc(lua_State *L)
{
	arc_release(luaL_checkudata(L, 1, ARCHIVE_MT));
	return 0;
}

static struct handles *arc_new_handles(lua_State *L)
{
	struct handles *h;

	DRV_LAZY_LOAD(L, ARCHIVE);
	h = lua_newuserdatauv(L, sizeof(*h), 0);

	h->in = h->out = NULL;
	luaL_setmetatable(L, ARCHIVE_MT);
	return h;
}

/* Open path for reading into h->in; 0, or -1 with a failure pushed. */
static int arc_open(lua_State *L, struct handles *h, const char *path)
{
	if (h->in)
		archive_read_free(h->in);
	h->in = archive_read_new();
	if (!h->in)
		return drv_fail(L, ENOMEM, "%s: not enough memory", path), -1;
	archive_read_support_filter_all(h->in);
	archive_read_support_format_all(h->in);
	if (archive_read_open_filename(h->in, path, ARCHIVE_BLOCK) != ARCHIVE_OK) {
		int err = archive_errno(h->in);

		drv_fail(L, err > 0 ? err : EIO, "%s: %s", path, archive_error_string(h->in));
		return -1;
	}
	return 0;
}

static const char *arc_type(mode_t type)
{
	switch (type) {
	case AE_IFREG:
		return "file";
	case AE_IFDIR:
		return "directory";
	case AE_IFLNK:
		return "link";
	case AE_IFCHR:
		return "char";
	case AE_IFBLK:
		return "block";
	case AE_IFIFO:
		return "fifo";
	case AE_IFSOCK:
		return "socket";
	default:
		return "unknown";
	}
}

/* A header read failure: push it; returns 3. */
static int arc_read_fail(lua_State *L, struct archive *a, const char *path)
{
	int err = archive_errno(a);

	return drv_fail(L, err > 0 ? err : EIO, "%s: %s", path,
			archive_error_string(a) ? archive_error_string(a) : "unreadable archive");
}

/***
 * The entries of an archive.
 * @function list
 * @tparam string path
 * @treturn[1] table `{ { path, type = "file"|"directory"|"link"|"hardlink"|…, size, mode, link }… }`
 * @treturn[2] nil, string message, string errno
 * @see archive_read_next_header(3)
 */
static int arc_list_entries(lua_State *L, struct handles *h, const char *path)
{
	struct archive_entry *e;
	int n = 0, rc;

	if (arc_open(L, h, path) < 0)
		return 3;
	lua_newtable(L);
	while ((rc = archive_read_next_header(h->in, &e)) == ARCHIVE_OK) {
		const char *hard = archive_entry_hardlink(e);
		const char *sym = archive_entry_symlink(e);

		lua_createtable(L, 0, 5);
		lua_pushstring(L, archive_entry_pathname(e));
		lua_setfield(L, -2, "path");
		lua_pushstring(L, hard ? "hardlink" : arc_type(archive_entry_filetype(e)));
		lua_setfield(L, -2, "type");
		lua_pushinteger(L, archive_entry_size(e));
		lua_setfield(L, -2, "size");
		lua_pushinteger(L, archive_entry_perm(e));
		lua_setfield(L, -2, "mode");
		if (hard || sym) {
			lua_pushstring(L, hard ? hard : sym);
			lua_setfield(L, -2, "link");
		}
		lua_rawseti(L, -2, ++n);
	}
	if (rc != ARCHIVE_EOF)
		return arc_read_fail(L, h->in, path);
	return 1;
}

static int arc_list(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	struct handles *h = arc_new_handles(L);
	int n = arc_list_entries(L, h, path);

	arc_release(h);
	return n;
}

/* ---- path checks ------------------------------------------------------------ */

/* Strip n leading components of path into out; 0 if nothing is left. */
static int arc_strip(const char *path, int n, char *out, size_t size)
{
	while (n-- > 0) {
		const char *slash;

		while (*path == '/')
			path++;
		slash = strchr(path, '/');
		if (!slash)
			return 0;
		path = slash + 1;
	}
	while (path[0] == '.' && path[1] == '/')
		path += 2;
	if (!*path || strcmp(path, ".") == 0)
		return 0;
	snprintf(out, size, "%s", path);
	return 1;
}

/* Normalise a relative path lexically ("a/./b/../c" -> "a/c"); -1 if it climbs out. */
static int arc_normalize(const char *path, char *out, size_t size)
{
	char buf[PATH_MAX], *save = NULL, *tok;
	size_t len = 0;

	snprintf(buf, sizeof(buf), "%s", path);
	out[0] = '\0';
	for (tok = strtok_r(buf, "/", &save); tok; tok = strtok_r(NULL, "/", &save)) {
		if (strcmp(tok, ".") == 0)
			continue;
		if (strcmp(tok, "..") == 0) {
			char *slash;

			if (len == 0)
				return -1;
			slash = strrchr(out, '/');
			len = slash ? (size_t)(slash - out) : 0;
			out[len] = '\0';
			continue;
		}
		if (len + strlen(tok) + 2 > size)
			return -1;
		if (len)
			out[len++] = '/';
		strcpy(out + len, tok);
		len += strlen(tok);
	}
	return 0;
}

static int arc_has_dotdot(const char *path)
{
	for (const char *p = path; (p = strstr(p, "..")) != NULL; p += 2)
		if ((p == path || p[-1] == '/') && (p[2] == '\0' || p[2] == '/'))
			return 1;
	return 0;
}

/* The reason entry (already stripped, normalised) must be refused, or NULL. */
static const char *arc_refusal(struct archive_entry *e, const char *name, lua_State *L,
			       int links, int files, int strip)
{
	mode_t type = archive_entry_filetype(e);
	const char *hard = archive_entry_hardlink(e);
	const char *sym = archive_entry_symlink(e);
	char buf[PATH_MAX], norm[PATH_MAX];

	if (type == AE_IFCHR || type == AE_IFBLK || type == AE_IFIFO || type == AE_IFSOCK)
		return "device nodes, fifos and sockets are not extracted";
	/* through a link extracted before? */
	snprintf(buf, sizeof(buf), "%s", name);
	for (char *slash = strchr(buf, '/'); slash; slash = strchr(slash + 1, '/')) {
		*slash = '\0';
		lua_getfield(L, links, buf);
		if (!lua_isnil(L, -1)) {
			lua_pop(L, 1);
			return lua_pushfstring(L, "path goes through the symbolic link '%s'", buf);
		}
		lua_pop(L, 1);
		*slash = '/';
	}
	if (sym && !hard && type == AE_IFLNK) {
		const char *dir_end = strrchr(name, '/');

		if (sym[0] == '/')
			return "symbolic link to an absolute path";
		snprintf(buf, sizeof(buf), "%.*s%s%s", dir_end ? (int)(dir_end - name) : 0, name,
			 dir_end ? "/" : "", sym);
		if (arc_normalize(buf, norm, sizeof(norm)) < 0)
			return "symbolic link points outside the destination";
	}
	if (hard) {
		char stripped[PATH_MAX];

		if (hard[0] == '/' || arc_has_dotdot(hard) || !arc_strip(hard, strip, stripped, sizeof(stripped)) ||
		    arc_normalize(stripped, norm, sizeof(norm)) < 0)
			return "hard link to a path outside the destination";
		lua_getfield(L, files, norm);
		if (lua_isnil(L, -1)) {
			lua_pop(L, 1);
			return "hard link to a file that is not in the archive";
		}
		lua_pop(L, 1);
	}
	return NULL;
}

/* Pass 1: refuse the archive if any entry is unsafe. 0, or 3 with the failure pushed. */
static int arc_check(lua_State *L, struct handles *h, const char *path, int strip)
{
	struct archive_entry *e;
	int links, files, rc;

	lua_newtable(L);
	links = lua_gettop(L);
	lua_newtable(L);
	files = lua_gettop(L);
	while ((rc = archive_read_next_header(h->in, &e)) == ARCHIVE_OK) {
		const char *raw = archive_entry_pathname(e);
		char stripped[PATH_MAX], norm[PATH_MAX];
		const char *why = NULL;

		if (!raw || raw[0] == '/')
			why = "absolute path";
		else if (arc_has_dotdot(raw))
			why = "path escapes the destination ('..')";
		else if (!arc_strip(raw, strip, stripped, sizeof(stripped)))
			continue;
		else if (arc_normalize(stripped, norm, sizeof(norm)) < 0)
			why = "path escapes the destination";
		else
			why = arc_refusal(e, norm, L, links, files, strip);
		if (why)
			return drv_fail(L, EPERM, "%s: refusing entry '%s': %s", path, raw ? raw : "?", why);
		lua_pushboolean(L, 1);
		lua_setfield(L, archive_entry_filetype(e) == AE_IFLNK ? links : files, norm);
	}
	if (rc != ARCHIVE_EOF)
		return arc_read_fail(L, h->in, path);
	lua_pop(L, 2);
	return 0;
}

/* ---- extraction ---------------------------------------------------------------- */

static int arc_copy_data(struct archive *in, struct archive *out)
{
	const void *buf;
	size_t size;
	la_int64_t offset;
	int rc;

	while ((rc = archive_read_data_block(in, &buf, &size, &offset)) == ARCHIVE_OK)
		if (archive_write_data_block(out, buf, size, offset) != ARCHIVE_OK)
			return ARCHIVE_FATAL;
	return rc == ARCHIVE_EOF ? ARCHIVE_OK : rc;
}

static int arc_entry_fail(lua_State *L, struct archive *a, const char *path, const char *entry)
{
	int err = archive_errno(a);

	return drv_fail(L, err > 0 ? err : EIO, "%s: %s: %s", path, entry,
			archive_error_string(a) ? archive_error_string(a) : "extraction failed");
}

/* Pass 2: extract under dest. */
static int arc_extract_all(lua_State *L, struct handles *h, const char *path, const char *dest,
			   int strip, int owner, const char *only)
{
	/* Paths are rewritten to absolute ones under dest after pass 1 checked them,
	 * so SECURE_NOABSOLUTEPATHS cannot be used; the other two still apply. */
	int flags = ARCHIVE_EXTRACT_SECURE_NODOTDOT | ARCHIVE_EXTRACT_SECURE_SYMLINKS |
		    ARCHIVE_EXTRACT_TIME | ARCHIVE_EXTRACT_PERM |
		    (owner ? ARCHIVE_EXTRACT_OWNER : 0);
	struct archive_entry *e;
	lua_Integer entries = 0, bytes = 0;
	int rc;

	h->out = archive_write_disk_new();
	if (!h->out)
		return drv_fail(L, ENOMEM, "%s: not enough memory", path);
	archive_write_disk_set_options(h->out, flags);
	archive_write_disk_set_standard_lookup(h->out);
	while ((rc = archive_read_next_header(h->in, &e)) == ARCHIVE_OK) {
		const char *raw = archive_entry_pathname(e);
		const char *hard = archive_entry_hardlink(e);
		char stripped[PATH_MAX], full[PATH_MAX * 2];

		if (!arc_strip(raw, strip, stripped, sizeof(stripped)))
			continue;
		if (only && fnmatch(only, stripped, FNM_PATHNAME) != 0)
			continue;
		snprintf(full, sizeof(full), "%s/%s", dest, stripped);
		archive_entry_copy_pathname(e, full);
		if (hard && arc_strip(hard, strip, stripped, sizeof(stripped))) {
			snprintf(full, sizeof(full), "%s/%s", dest, stripped);
			archive_entry_copy_hardlink(e, full);
		}
		archive_entry_set_perm(e, archive_entry_perm(e) & 0777); /* no setuid/setgid/sticky */
		if (archive_write_header(h->out, e) != ARCHIVE_OK)
			return arc_entry_fail(L, h->out, path, raw);
		if (archive_entry_size(e) > 0 && arc_copy_data(h->in, h->out) != ARCHIVE_OK)
			return arc_entry_fail(L, h->out, path, raw);
		if (archive_write_finish_entry(h->out) != ARCHIVE_OK)
			return arc_entry_fail(L, h->out, path, raw);
		entries++;
		bytes += archive_entry_size(e);
	}
	if (rc != ARCHIVE_EOF)
		return arc_read_fail(L, h->in, path);
	if (archive_write_close(h->out) != ARCHIVE_OK)
		return arc_entry_fail(L, h->out, path, "(close)");
	if (only && entries == 0)
		return drv_fail(L, ENOENT, "%s: no entry matches '%s'", path, only);
	lua_createtable(L, 0, 2);
	lua_pushinteger(L, entries);
	lua_setfield(L, -2, "entries");
	lua_pushinteger(L, bytes);
	lua_setfield(L, -2, "bytes");
	return 1;
}

struct extract_args {
	const char *path, *dest, *only;
	int strip, mk, owner;
};

/* The extraction itself (in the child): 1 result (the table) or 3 (a failure). */
static int arc_extract_here(lua_State *L)
{
	const struct extract_args *a = lua_touserdata(L, 1);
	char real[PATH_MAX];
	struct handles *h;
	int n;

	h = arc_new_handles(L);
	if (arc_open(L, h, a->path) < 0) {
		arc_release(h);
		return 3;
	}
	n = arc_check(L, h, a->path, a->strip);
	if (n) {
		arc_release(h);
		return n;
	}
	if (a->mk)
		mkdir(a->dest, 0755); /* a missing parent fails below, with its own errno */
	if (!realpath(a->dest, real)) {
		arc_release(h);
		return drv_errno_fail(L, a->dest);
	}
	if (arc_open(L, h, a->path) < 0) {
		arc_release(h);
		return 3;
	}
	n = arc_extract_all(L, h, a->path, real, a->strip, a->owner, a->only);
	arc_release(h);
	return n;
}

/* In the child: extract, write "ok ENTRIES BYTES", "fail ERRNAME\nMESSAGE" or
 * "error\nMESSAGE" (raised, e.g. libarchive missing) to fd, and end
 * without returning to Lua (its state here is the child's copy). */
static void arc_child(lua_State *L, int fd, struct extract_args *a)
{
	char head[64];
	const char *msg = "";
	int rc, top = lua_gettop(L);

	lua_pushcfunction(L, arc_extract_here);
	lua_pushlightuserdata(L, a);
	rc = lua_pcall(L, 1, LUA_MULTRET, 0);
	if (rc == LUA_OK && lua_istable(L, top + 1)) {
		lua_getfield(L, top + 1, "entries");
		lua_getfield(L, top + 1, "bytes");
		snprintf(head, sizeof(head), "ok %lld %lld", (long long)lua_tointeger(L, -2),
			 (long long)lua_tointeger(L, -1));
	} else if (rc == LUA_OK) {
		const char *err = lua_tostring(L, top + 3);

		msg = lua_tostring(L, top + 2);
		snprintf(head, sizeof(head), "fail %.31s\n", err ? err : "EIO");
	} else {
		msg = lua_tostring(L, -1);	/* raised: the parent raises it again */
		snprintf(head, sizeof(head), "error\n");
	}
	if (!msg)
		msg = "extraction failed";
	_exit(drv_write_all(fd, head, strlen(head)) < 0 || drv_write_all(fd, msg, strlen(msg)) < 0);
}

/* In the parent: the child's report on fd, pushed as extract returns it. */
static int arc_child_result(lua_State *L, int fd, pid_t pid, const char *path)
{
	luaL_Buffer b;
	char buf[4096];
	const char *r;
	long long entries, bytes;
	int status = 0;
	char err[32];
	ssize_t n;

	luaL_buffinit(L, &b);
	while ((n = read(fd, buf, sizeof(buf))) != 0) {
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			break;
		luaL_addlstring(&b, buf, (size_t)n);
	}
	close(fd);
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	luaL_pushresult(&b);
	r = lua_tostring(L, -1);
	if (WIFSIGNALED(status))
		return drv_fail(L, EIO, "%s: the extraction process was killed by signal %d", path, WTERMSIG(status));
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) /* valgrind's error exit too, in check-memcheck */
		return drv_fail(L, EIO, "%s: the extraction process exited with status %d", path,
				WIFEXITED(status) ? WEXITSTATUS(status) : -1);
	if (sscanf(r, "ok %lld %lld", &entries, &bytes) == 2) {
		lua_createtable(L, 0, 2);
		lua_pushinteger(L, (lua_Integer)entries);
		lua_setfield(L, -2, "entries");
		lua_pushinteger(L, (lua_Integer)bytes);
		lua_setfield(L, -2, "bytes");
		return 1;
	}
	if (strncmp(r, "error\n", 6) == 0) {
		lua_pushstring(L, r + 6);
		return lua_error(L);
	}
	if (sscanf(r, "fail %31s\n", err) == 1 && strchr(r, '\n')) {
		lua_pushnil(L);
		lua_pushstring(L, strchr(r, '\n') + 1);
		lua_pushstring(L, err);	/* the errno's name */
		return 3;
	}
	return drv_fail(L, EIO, "%s: the extraction process ended without a result", path);
}

/***
 * Extract an archive (tar, tar.gz/xz/bz2/zst, zip) under destdir, safely, in a
 * child process (this one never loads libarchive). Nothing is written when any
 * entry is refused.
 * @function extract
 * @tparam string path
 * @tparam string destdir
 * @tparam[opt] table opts `{ strip = 0 (leading components to drop), mkdir = true, owner = false,
 *   only = "glob" (extract only the entries whose path, after strip, matches it: fnmatch(3) with
 *   FNM_PATHNAME; every entry is still checked) }`
 * @treturn[1] table `{ entries = n, bytes = n }`
 * @treturn[2] nil, "<archive>: refusing entry '<entry>': <why>", EPERM; nil, "<archive>: no entry matches
 *   '<glob>'", ENOENT; or nil, message, errno
 * @see archive_write_disk_set_options(3)
 */
static int arc_extract(lua_State *L)
{
	struct extract_args a;
	int opts, fds[2];
	pid_t pid;

	a.path = luaL_checkstring(L, 1);
	a.dest = luaL_checkstring(L, 2);
	opts = drv_opttable(L, 3);
	a.strip = (int)drv_optfield_integer(L, opts, "strip", 0);
	a.mk = drv_optfield_boolean(L, opts, "mkdir", 1);
	a.owner = drv_optfield_boolean(L, opts, "owner", 0);
	a.only = drv_optfield_string(L, opts, "only", NULL);
	luaL_argcheck(L, a.strip >= 0, 3, "field 'strip': must not be negative");
	if (pipe2(fds, O_CLOEXEC) < 0)
		return drv_errno_fail(L, "pipe");
	pid = fork();
	if (pid < 0) {
		close(fds[0]);
		close(fds[1]);
		return drv_errno_fail(L, "fork");
	}
	if (pid == 0) {
		close(fds[0]);
		arc_child(L, fds[1], &a);
	}
	close(fds[1]);
	return arc_child_result(L, fds[0], pid, a.path);
}

static const luaL_Reg arc_meta[] = {
	{ "__gc", arc_gc },
	{ "__close", arc_gc },
	{ NULL, NULL }
};

static const luaL_Reg arc_funcs[] = {
	{ "list", arc_list },
	{ "extract", arc_extract },
	{ NULL, NULL }
};

int luaopen_drv_archive(lua_State *L)
{
	drv_newclass(L, ARCHIVE_MT, NULL, arc_meta);
	luaL_newlib(L, arc_funcs);
	return 1;
}
