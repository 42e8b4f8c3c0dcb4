/* fs.c - drv.fs: files for recipes: atomic writes, mkdir -p, careful removal,
 * links, stat, sha256. Every failure returns nil, "<path>: <cause>", errno. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "drv.h"
#include "lazy.h"

#define FS_CHUNK (1 << 20)

static int fs_fail_path(lua_State *L, const char *path)
{
	return drv_errno_fail(L, path);
}

/* Directory part of path ("." when none), in buf. */
static const char *fs_dirname(const char *path, char *buf, size_t size)
{
	const char *slash = strrchr(path, '/');

	if (!slash)
		return strcpy(buf, ".");
	if (slash == path)
		return strcpy(buf, "/");
	snprintf(buf, size, "%.*s", (int)(slash - path), path);
	return buf;
}

static int fs_fsync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int rc;

	if (fd < 0)
		return -1;
	rc = fsync(fd);
	close(fd);
	return rc;
}

/* Open a fresh temporary file "<dir>/.<name>.XXXXXX" next to path. */
static int fs_mktemp_beside(const char *path, char *tmp, size_t size)
{
	char dir[PATH_MAX];
	const char *base = strrchr(path, '/');

	base = base ? base + 1 : path;
	fs_dirname(path, dir, sizeof(dir));
	if (snprintf(tmp, size, "%s/.%s.XXXXXX", dir, base) >= (int)size) {
		errno = ENAMETOOLONG;
		return -1;
	}
	return mkostemp(tmp, O_CLOEXEC);
}

/* Write data to a temporary file beside path, then rename it over path. */
static int fs_atomic_write(const char *path, const char *data, size_t len, mode_t mode, int sync)
{
	char tmp[PATH_MAX], dir[PATH_MAX];
	int fd = fs_mktemp_beside(path, tmp, sizeof(tmp));
	int err;

	if (fd < 0)
		return -1;
	if (fchmod(fd, mode) < 0 || drv_write_all(fd, data, len) < 0 ||
	    (sync && fsync(fd) < 0))
		goto fail;
	if (close(fd) < 0) {
		fd = -1;
		goto fail;
	}
	fd = -1;
	if (rename(tmp, path) < 0)
		goto fail;
	if (sync)
		fs_fsync_dir(fs_dirname(path, dir, sizeof(dir)));
	return 0;
fail:
	err = errno;
	if (fd >= 0)
		close(fd);
	unlink(tmp);
	errno = err;
	return -1;
}

/***
 * Read a whole file.
 * @function read
 * @tparam string path
 * @treturn[1] string the content
 * @treturn[2] nil, string message, string errno
 * @see read(2)
 */
static int fs_read(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	luaL_Buffer b;
	ssize_t n;

	if (fd < 0)
		return fs_fail_path(L, path);
	luaL_buffinit(L, &b);
	for (;;) {
		char *p = luaL_prepbuffsize(&b, 65536);

		n = read(fd, p, 65536);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		luaL_addsize(&b, (size_t)n);
	}
	if (n < 0) {
		int err = errno;

		close(fd);
		errno = err;
		return fs_fail_path(L, path);
	}
	close(fd);
	luaL_pushresult(&b);
	return 1;
}

/***
 * Write a file atomically: readers see the old or the new content, never a part.
 * @function write
 * @tparam string path
 * @tparam string data
 * @tparam[opt] table opts `{ mode = 0x1a4 (0644), sync = true }`
 * @treturn[1] true
 * @treturn[2] nil, string message, string errno
 * @see rename(2)
 */
static int fs_write(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	size_t len;
	const char *data = luaL_checklstring(L, 2, &len);
	int opts = drv_opttable(L, 3);
	mode_t mode = (mode_t)drv_optfield_integer(L, opts, "mode", 0644);
	int sync = drv_optfield_boolean(L, opts, "sync", 1);

	if (fs_atomic_write(path, data, len, mode, sync) < 0)
		return fs_fail_path(L, path);
	return drv_ok(L);
}

static int fs_mkdir_p(char *path, mode_t mode)
{
	struct stat st;
	size_t len = strlen(path);

	while (len > 1 && path[len - 1] == '/')
		path[--len] = '\0';
	if (stat(path, &st) == 0) {
		if (S_ISDIR(st.st_mode))
			return 0;
		errno = ENOTDIR;
		return -1;
	}
	for (char *p = path + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(path, mode) < 0 && errno != EEXIST) {
			*p = '/';
			return -1;
		}
		*p = '/';
	}
	if (mkdir(path, mode) < 0 && errno != EEXIST)
		return -1;
	if (stat(path, &st) < 0)
		return -1;
	if (!S_ISDIR(st.st_mode)) {
		errno = ENOTDIR;
		return -1;
	}
	return 0;
}

/***
 * Create a directory and its missing parents (mkdir -p).
 * @function mkdir
 * @tparam string path
 * @tparam[opt] table opts `{ mode = 0x1ed (0755) }`
 * @treturn[1] true
 * @treturn[2] nil, string message, string errno
 * @see mkdir(2)
 */
static int fs_mkdir(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	int opts = drv_opttable(L, 2);
	mode_t mode = (mode_t)drv_optfield_integer(L, opts, "mode", 0755);
	char buf[PATH_MAX];

	if (snprintf(buf, sizeof(buf), "%s", path) >= (int)sizeof(buf)) {
		errno = ENAMETOOLONG;
		return fs_fail_path(L, path);
	}
	if (fs_mkdir_p(buf, mode) < 0)
		return fs_fail_path(L, path);
	return drv_ok(L);
}

/* Remove the contents of directory fd (which lives on device dev), then nothing
 * else: the caller removes the directory itself. Never follows symlinks, never
 * descends into another mount. On failure, *where names the entry at fault. */
static int fs_clear_dir(int fd, dev_t dev, char *where, size_t wsize)
{
	DIR *d = fdopendir(fd);
	struct dirent *e;
	int rc = 0;

	if (!d) {
		close(fd);
		return -1;
	}
	while (rc == 0 && (errno = 0, e = readdir(d)) != NULL) {
		struct stat st;

		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
			rc = -1;
		} else if (S_ISDIR(st.st_mode)) {
			int sub;

			if (st.st_dev != dev) {
				snprintf(where, wsize, "%s", e->d_name);
				errno = EXDEV;
				rc = -1;
				break;
			}
			sub = openat(dirfd(d), e->d_name,
				     O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (sub < 0 || fs_clear_dir(sub, dev, where, wsize) < 0 ||
			    unlinkat(dirfd(d), e->d_name, AT_REMOVEDIR) < 0)
				rc = -1;
		} else if (unlinkat(dirfd(d), e->d_name, 0) < 0) {
			rc = -1;
		}
		if (rc < 0 && where[0] == '\0')
			snprintf(where, wsize, "%s", e->d_name);
	}
	if (rc == 0 && errno != 0)
		rc = -1;
	{
		int err = errno;

		closedir(d);
		errno = err;
	}
	return rc;
}

/* Is the directory at path the root directory? */
static int fs_is_root(const char *path)
{
	char real[PATH_MAX];

	return realpath(path, real) && strcmp(real, "/") == 0;
}

static int fs_refuse_root(lua_State *L, const char *path)
{
	return drv_fail(L, EINVAL, "refusing to remove '%s': the root directory or an empty path", path);
}

/***
 * Remove a file, a link or (with recursive) a directory tree.
 * Refuses "/" and "" before touching anything, never follows symlinks (a link
 * is removed, not its target) and never descends into another mount (EXDEV,
 * naming the mount point).
 * @function remove
 * @tparam string path
 * @tparam[opt] table opts `{ recursive = false, missing_ok = false }`
 * @treturn[1] true
 * @treturn[2] nil, string message, string errno
 * @see unlinkat(2)
 */
static int fs_remove(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	int opts = drv_opttable(L, 2);
	int recursive = drv_optfield_boolean(L, opts, "recursive", 0);
	int missing_ok = drv_optfield_boolean(L, opts, "missing_ok", 0);
	char where[NAME_MAX + 1] = "";
	struct stat st;
	int fd;

	if (path[0] == '\0')
		return fs_refuse_root(L, path);
	if (lstat(path, &st) < 0) {
		if (errno == ENOENT && missing_ok)
			return drv_ok(L);
		return fs_fail_path(L, path);
	}
	if (S_ISDIR(st.st_mode) && fs_is_root(path))
		return fs_refuse_root(L, path);
	if (!S_ISDIR(st.st_mode)) {
		/* gone since the lstat (another process, an unmount): missing_ok still holds */
		if (unlink(path) < 0 && !(errno == ENOENT && missing_ok))
			return fs_fail_path(L, path);
		return drv_ok(L);
	}
	if (recursive) {
		fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (fd < 0)
			return fs_fail_path(L, path);
		if (fs_clear_dir(fd, st.st_dev, where, sizeof(where)) < 0) {
			if (errno == EXDEV)
				return drv_fail(L, EXDEV, "%s/%s: is a mount point; not removing across mounts",
						path, where);
			return drv_fail(L, errno, "%s/%s: %s", path, where, strerror(errno));
		}
	}
	if (rmdir(path) < 0)
		return fs_fail_path(L, path);
	return drv_ok(L);
}

/***
 * Create a symbolic link; with replace, atomically replace what is at linkpath.
 * @function symlink
 * @tparam string target
 * @tparam string linkpath
 * @tparam[opt] table opts `{ replace = false }`
 * @treturn[1] true
 * @treturn[2] nil, string message, string errno
 * @see symlink(2)
 */
static int fs_symlink(lua_State *L)
{
	const char *target = luaL_checkstring(L, 1);
	const char *link = luaL_checkstring(L, 2);
	int opts = drv_opttable(L, 3);
	int replace = drv_optfield_boolean(L, opts, "replace", 0);
	char tmp[PATH_MAX];

	if (!replace) {
		if (symlink(target, link) < 0)
			return fs_fail_path(L, link);
		return drv_ok(L);
	}
	for (int i = 0; i < 100; i++) {
		if (snprintf(tmp, sizeof(tmp), "%s.tmp%d.%ld", link, i, (long)getpid()) >= (int)sizeof(tmp)) {
			errno = ENAMETOOLONG;
			return fs_fail_path(L, link);
		}
		if (symlink(target, tmp) == 0)
			break;
		if (errno != EEXIST)
			return fs_fail_path(L, link);
	}
	if (rename(tmp, link) < 0) {
		int err = errno;

		unlink(tmp);
		errno = err;
		return fs_fail_path(L, link);
	}
	return drv_ok(L);
}

/***
 * The target of a symbolic link.
 * @function readlink
 * @tparam string path
 * @treturn[1] string
 * @treturn[2] nil, string message, string errno
 * @see readlink(2)
 */
static int fs_readlink(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	char buf[PATH_MAX];
	ssize_t n = readlink(path, buf, sizeof(buf) - 1);

	if (n < 0)
		return fs_fail_path(L, path);
	lua_pushlstring(L, buf, (size_t)n);
	return 1;
}

/***
 * The canonical absolute path.
 * @function realpath
 * @tparam string path
 * @treturn[1] string
 * @treturn[2] nil, string message, string errno
 * @see realpath(3)
 */
static int fs_realpath(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	char buf[PATH_MAX];

	if (!realpath(path, buf))
		return fs_fail_path(L, path);
	lua_pushstring(L, buf);
	return 1;
}

/***
 * Rename a file or directory.
 * @function rename
 * @tparam string from
 * @tparam string to
 * @treturn[1] true
 * @treturn[2] nil, string message, string errno
 * @see rename(2)
 */
static int fs_rename(lua_State *L)
{
	const char *from = luaL_checkstring(L, 1);
	const char *to = luaL_checkstring(L, 2);

	if (rename(from, to) < 0)
		return drv_fail(L, errno, "rename %s to %s: %s", from, to, strerror(errno));
	return drv_ok(L);
}

/* Copy fd to fd; -1 with errno on failure. */
static int fs_copy_fd(int in, int out)
{
	char *buf = malloc(FS_CHUNK);
	ssize_t n;

	if (!buf)
		return -1;
	while ((n = read(in, buf, FS_CHUNK)) != 0) {
		if (n < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (drv_write_all(out, buf, (size_t)n) < 0) {
			n = -1;
			break;
		}
	}
	free(buf);
	return n < 0 ? -1 : 0;
}

/***
 * Copy a regular file atomically (temporary file beside dst, then rename).
 * Keeps src's permission bits unless opts.mode is given; `sync = false` skips
 * the fsync (a tree of many small files, whose caller syncs once or not at all).
 * @function copy
 * @tparam string src
 * @tparam string dst
 * @tparam[opt] table opts `{ mode = n, sync = true }`
 * @treturn[1] true
 * @treturn[2] nil, string message, string errno
 * @see copy_file_range(2)
 */
static int fs_copy(lua_State *L)
{
	const char *src = luaL_checkstring(L, 1);
	const char *dst = luaL_checkstring(L, 2);
	int opts = drv_opttable(L, 3);
	int sync = drv_optfield_boolean(L, opts, "sync", 1);
	lua_Integer mode = drv_optfield_integer(L, opts, "mode", -1);
	char tmp[PATH_MAX];
	struct stat st;
	int in, out, err;

	in = open(src, O_RDONLY | O_CLOEXEC);
	if (in < 0)
		return fs_fail_path(L, src);
	if (fstat(in, &st) < 0 || !S_ISREG(st.st_mode)) {
		err = fstat(in, &st) < 0 ? errno : EINVAL;
		close(in);
		return drv_fail(L, err, "%s: %s", src, err == EINVAL ? "not a regular file" : strerror(err));
	}
	out = fs_mktemp_beside(dst, tmp, sizeof(tmp));
	if (out < 0) {
		err = errno;
		close(in);
		errno = err;
		return fs_fail_path(L, dst);
	}
	if (fs_copy_fd(in, out) < 0 ||
	    fchmod(out, mode < 0 ? st.st_mode & 07777 : (mode_t)mode) < 0 ||
	    (sync && fsync(out) < 0) || close(out) < 0 || rename(tmp, dst) < 0) {
		err = errno;
		close(in);
		close(out);
		unlink(tmp);
		return drv_fail(L, err, "copy %s to %s: %s", src, dst, strerror(err));
	}
	close(in);
	return drv_ok(L);
}

static const char *fs_type_name(mode_t m)
{
	if (S_ISREG(m))
		return "file";
	if (S_ISDIR(m))
		return "directory";
	if (S_ISLNK(m))
		return "link";
	if (S_ISSOCK(m))
		return "socket";
	if (S_ISFIFO(m))
		return "fifo";
	if (S_ISCHR(m))
		return "char";
	return "block";
}

/* A file time in nanoseconds (an integer; drv_seconds gives it in seconds). */
static long long fs_nanoseconds(const struct timespec *t)
{
	return (long long)t->tv_sec * 1000000000 + t->tv_nsec;
}

static void fs_push_stat(lua_State *L, const struct stat *st)
{
	lua_createtable(L, 0, 13);
	lua_pushstring(L, fs_type_name(st->st_mode));
	lua_setfield(L, -2, "type");
	lua_pushinteger(L, (lua_Integer)st->st_size);
	lua_setfield(L, -2, "size");
	lua_pushinteger(L, st->st_mode & 07777);
	lua_setfield(L, -2, "mode");
	lua_pushinteger(L, st->st_uid);
	lua_setfield(L, -2, "uid");
	lua_pushinteger(L, st->st_gid);
	lua_setfield(L, -2, "gid");
	lua_pushnumber(L, drv_seconds(&st->st_mtim));
	lua_setfield(L, -2, "mtime");
	lua_pushnumber(L, drv_seconds(&st->st_ctim));
	lua_setfield(L, -2, "ctime");
	lua_pushinteger(L, (lua_Integer)fs_nanoseconds(&st->st_mtim));
	lua_setfield(L, -2, "mtime_ns");
	lua_pushinteger(L, (lua_Integer)fs_nanoseconds(&st->st_ctim));
	lua_setfield(L, -2, "ctime_ns");
	lua_pushinteger(L, (lua_Integer)st->st_dev);
	lua_setfield(L, -2, "dev");
	lua_pushinteger(L, (lua_Integer)st->st_ino);
	lua_setfield(L, -2, "ino");
	lua_pushinteger(L, (lua_Integer)st->st_nlink);
	lua_setfield(L, -2, "nlink");
	if (S_ISCHR(st->st_mode) || S_ISBLK(st->st_mode)) {
		lua_pushinteger(L, (lua_Integer)st->st_rdev);
		lua_setfield(L, -2, "rdev");
	}
}

static int fs_do_stat(lua_State *L, int follow)
{
	const char *path = luaL_checkstring(L, 1);
	struct stat st;

	if ((follow ? stat(path, &st) : lstat(path, &st)) < 0)
		return fs_fail_path(L, path);
	fs_push_stat(L, &st);
	return 1;
}

/***
 * File status, following links.
 * @function stat
 * @tparam string path
 * @treturn[1] table `{ type = "file"|"directory"|"link"|"socket"|"fifo"|"char"|"block",
 *   size, mode, uid, gid, mtime, ctime, mtime_ns, ctime_ns, dev, ino, nlink, rdev (devices only) }`:
 *   mtime and ctime in seconds (a float), mtime_ns and ctime_ns the same in nanoseconds (an integer)
 * @treturn[2] nil, string message, string errno
 * @see stat(2)
 */
static int fs_stat(lua_State *L)
{
	return fs_do_stat(L, 1);
}

/***
 * File status of the link itself. Same shape as stat.
 * @function lstat
 * @see lstat(2)
 */
static int fs_lstat(lua_State *L)
{
	return fs_do_stat(L, 0);
}

/***
 * What tells that a regular file changed without reading it, as git's index
 * keeps it: `"dev:ino:size:mtime_ns:ctime_ns"` (a writer cannot set ctime
 * back), with its mtime and ctime in seconds. One string, not stat's table: a
 * restart asks it of every file of its build.
 * @function identity
 * @tparam string path (links followed)
 * @treturn[1] string stamp, number mtime, number ctime
 * @treturn[2] false, string type: not a regular file ("directory"...)
 * @treturn[3] nil, string message, string errno
 * @see stat(2)
 */
static int fs_identity(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	char stamp[128];
	struct stat st;

	if (stat(path, &st) < 0)
		return fs_fail_path(L, path);
	if (!S_ISREG(st.st_mode)) {
		lua_pushboolean(L, 0);
		lua_pushstring(L, fs_type_name(st.st_mode));
		return 2;
	}
	snprintf(stamp, sizeof(stamp), "%lld:%lld:%lld:%lld:%lld", (long long)(lua_Integer)st.st_dev,
		 (long long)(lua_Integer)st.st_ino, (long long)st.st_size, fs_nanoseconds(&st.st_mtim),
		 fs_nanoseconds(&st.st_ctim));
	lua_pushstring(L, stamp);
	lua_pushnumber(L, drv_seconds(&st.st_mtim));
	lua_pushnumber(L, drv_seconds(&st.st_ctim));
	return 3;
}

/***
 * Whether something (a dangling link too) exists at path.
 * @function exists
 * @tparam string path
 * @treturn boolean
 */
static int fs_exists(lua_State *L)
{
	struct stat st;

	lua_pushboolean(L, lstat(luaL_checkstring(L, 1), &st) == 0);
	return 1;
}

static int fs_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/***
 * The names in a directory, sorted, without "." and "..".
 * @function dir
 * @tparam string path
 * @treturn[1] table
 * @treturn[2] nil, string message, string errno
 * @see readdir(3)
 */
static int fs_dir(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	DIR *d = opendir(path);
	struct dirent *e;
	int n = 0;

	if (!d)
		return fs_fail_path(L, path);
	lua_newtable(L);
	while ((e = readdir(d)) != NULL) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		lua_pushstring(L, e->d_name);
		lua_rawseti(L, -2, ++n);
	}
	closedir(d);
	/* sort through a C array of the (Lua-owned) strings */
	{
		const char **names = lua_newuserdatauv(L, sizeof(char *) * (size_t)(n ? n : 1), 0);

		for (int i = 0; i < n; i++) {
			lua_rawgeti(L, -2, i + 1);
			names[i] = lua_tostring(L, -1);
			lua_pop(L, 1);
		}
		qsort(names, (size_t)n, sizeof(char *), fs_cmp);
		lua_createtable(L, n, 0);
		for (int i = 0; i < n; i++) {
			lua_pushstring(L, names[i]);
			lua_rawseti(L, -2, i + 1);
		}
	}
	return 1;
}

/***
 * Paths matching a shell pattern, sorted; an empty table when none match.
 * @function glob
 * @tparam string pattern
 * @treturn table
 * @see glob(3)
 */
static int fs_glob(lua_State *L)
{
	const char *pattern = luaL_checkstring(L, 1);
	glob_t g;
	int rc = glob(pattern, 0, NULL, &g);

	lua_newtable(L);
	if (rc == GLOB_NOMATCH)
		return 1;
	if (rc != 0) {
		globfree(&g);
		return drv_fail(L, rc == GLOB_NOSPACE ? ENOMEM : EIO, "%s: glob failed", pattern);
	}
	for (size_t i = 0; i < g.gl_pathc; i++) {
		lua_pushstring(L, g.gl_pathv[i]);
		lua_rawseti(L, -2, (lua_Integer)i + 1);
	}
	globfree(&g);
	return 1;
}

/***
 * SHA-256 of a file, as 64 lowercase hex digits.
 * @function sha256
 * @tparam string path
 * @treturn[1] string
 * @treturn[2] nil, string message, string errno
 * @see EVP_DigestUpdate(3)
 */
static int fs_sha256(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	unsigned char md[EVP_MAX_MD_SIZE];
	char hex[2 * EVP_MAX_MD_SIZE + 1];
	unsigned int mdlen = 0;
	EVP_MD_CTX *ctx;
	char *buf;
	ssize_t n;
	int fd, err = 0;

	DRV_LAZY_LOAD(L, CRYPTO);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return fs_fail_path(L, path);
	buf = malloc(FS_CHUNK);
	ctx = EVP_MD_CTX_new();
	if (!buf || !ctx || !EVP_DigestInit_ex(ctx, EVP_sha256(), NULL)) {
		err = ENOMEM;
		goto out;
	}
	while ((n = read(fd, buf, FS_CHUNK)) != 0) {
		if (n < 0) {
			if (errno == EINTR)
				continue;
			err = errno;
			goto out;
		}
		EVP_DigestUpdate(ctx, buf, (size_t)n);
	}
	EVP_DigestFinal_ex(ctx, md, &mdlen);
out:
	EVP_MD_CTX_free(ctx);
	free(buf);
	close(fd);
	if (err)
		return drv_fail(L, err, "%s: %s", path, strerror(err));
	for (unsigned int i = 0; i < mdlen; i++)
		snprintf(hex + 2 * i, 3, "%02x", md[i]);
	lua_pushlstring(L, hex, 2 * mdlen);
	return 1;
}

/***
 * Change permission bits.
 * @function chmod
 * @tparam string path
 * @tparam integer mode
 * @treturn[1] true
 * @treturn[2] nil, string message, string errno
 * @see chmod(2)
 */
static int fs_chmod(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	lua_Integer mode = luaL_checkinteger(L, 2);

	luaL_argcheck(L, mode >= 0 && mode <= 07777, 2, "mode out of range");
	if (chmod(path, (mode_t)mode) < 0)
		return fs_fail_path(L, path);
	return drv_ok(L);
}

/***
 * Create a fresh private directory under $TMPDIR (or /tmp).
 * @function tmpdir
 * @tparam[opt] string prefix default "drvrun"
 * @treturn[1] string its path
 * @treturn[2] nil, string message, string errno
 * @see mkdtemp(3)
 */
static int fs_tmpdir(lua_State *L)
{
	const char *prefix = luaL_optstring(L, 1, "drvrun");
	const char *base = getenv("TMPDIR");
	char buf[PATH_MAX];

	luaL_argcheck(L, strchr(prefix, '/') == NULL, 1, "prefix must not contain '/'");
	snprintf(buf, sizeof(buf), "%s/%s.XXXXXX", base && *base ? base : "/tmp", prefix);
	if (!mkdtemp(buf))
		return fs_fail_path(L, buf);
	lua_pushstring(L, buf);
	return 1;
}

static const luaL_Reg fs_funcs[] = {
	{ "read", fs_read },
	{ "write", fs_write },
	{ "mkdir", fs_mkdir },
	{ "remove", fs_remove },
	{ "symlink", fs_symlink },
	{ "readlink", fs_readlink },
	{ "realpath", fs_realpath },
	{ "rename", fs_rename },
	{ "copy", fs_copy },
	{ "stat", fs_stat },
	{ "identity", fs_identity },
	{ "lstat", fs_lstat },
	{ "exists", fs_exists },
	{ "dir", fs_dir },
	{ "glob", fs_glob },
	{ "sha256", fs_sha256 },
	{ "chmod", fs_chmod },
	{ "tmpdir", fs_tmpdir },
	{ NULL, NULL }
};

int luaopen_drv_fs(lua_State *L)
{
	luaL_newlib(L, fs_funcs);
	return 1;
}
