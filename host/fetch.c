/* fetch.c - drv.fetch: downloads through libcurl.
 *
 * Bytes go to "<dest>.part" and into a SHA-256 as they arrive; the file is
 * renamed onto dest only once the digest matches, so dest never holds a wrong,
 * short or failed download. Transient failures are retried with backoff and,
 * with resume, continue from what the .part already holds. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <openssl/evp.h>

#include "drv.h"

#define FETCH_MT "drv.fetch.transfer"
#define FETCH_BUFFER (512 * 1024)

struct transfer {
	CURL *curl;		/* NULL once released */
	EVP_MD_CTX *md;
	int fd;			/* the .part file, -1 when closed */
	lua_State *L;
	const char *url;
	int progress_ref;	/* Lua progress function, LUA_NOREF if none */
	int quiet, tty;
	int callback_failed;	/* the Lua progress function raised: its error is on the stack */
	int io_errno;		/* a write to the .part failed */
	curl_off_t have;	/* bytes in the .part before this attempt */
	curl_off_t got;		/* bytes written in this attempt */
	double started, last_report, last_line;
	int last_quarter;
	char errbuf[CURL_ERROR_SIZE];
};

static double fetch_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void fetch_close_fd(struct transfer *t)
{
	if (t->fd >= 0)
		close(t->fd);
	t->fd = -1;
}

/* The one release of a transfer: idempotent, used by __gc/__close too. */
static void fetch_release(lua_State *L, struct transfer *t)
{
	if (t->curl)
		curl_easy_cleanup(t->curl);
	t->curl = NULL;
	if (t->md)
		EVP_MD_CTX_free(t->md);
	t->md = NULL;
	fetch_close_fd(t);
	if (t->progress_ref != LUA_NOREF)
		luaL_unref(L, LUA_REGISTRYINDEX, t->progress_ref);
	t->progress_ref = LUA_NOREF;
}

static int fetch_gc(lua_State *L)
{
	fetch_release(L, luaL_checkudata(L, 1, FETCH_MT));
	return 0;
}

/* ---- progress --------------------------------------------------------- */

static void fetch_human(double bytes, char *buf, size_t size)
{
	static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB" };
	int u = 0;

	while (bytes >= 1024 && u < 4) {
		bytes /= 1024;
		u++;
	}
	snprintf(buf, size, u ? "%.1f %s" : "%.0f %s", bytes, units[u]);
}

static void fetch_report(struct transfer *t, curl_off_t done, curl_off_t total, int final)
{
	double now = fetch_now(), secs = now - t->started;
	double rate = secs > 0 ? (double)(done - t->have) / secs : 0;
	char d[32], tot[32], r[32];
	int quarter = total > 0 ? (int)(4 * done / total) : 0;

	fetch_human((double)done, d, sizeof(d));
	fetch_human((double)total, tot, sizeof(tot));
	fetch_human(rate, r, sizeof(r));
	if (t->tty) {
		int pct = total > 0 ? (int)(100 * done / total) : 0;
		int fill = pct * 30 / 100;

		if (total > 0)
			fprintf(stderr, "\rfetch [%-30.*s] %3d%% %s of %s, %s/s ", fill,
				"##############################", pct, d, tot, r);
		else
			fprintf(stderr, "\rfetch %s, %s/s ", d, r);
		if (final)
			fputc('\n', stderr);
		return;
	}
	if (!final && now - t->last_line < 5 && quarter == t->last_quarter)
		return;
	if (final && t->last_quarter == 4)
		return; /* the 100% line is out already */
	t->last_line = now;
	t->last_quarter = quarter;
	if (total > 0)
		fprintf(stderr, "fetch %s: %s of %s (%d%%), %s/s\n", t->url, d, tot,
			(int)(100 * done / total), r);
	else
		fprintf(stderr, "fetch %s: %s, %s/s\n", t->url, d, r);
}

/* Call the Lua progress function; a raised error aborts the transfer. */
static int fetch_call_progress(struct transfer *t, curl_off_t done, curl_off_t total)
{
	lua_State *L = t->L;

	lua_rawgeti(L, LUA_REGISTRYINDEX, t->progress_ref);
	lua_pushinteger(L, done);
	if (total > 0)
		lua_pushinteger(L, total);
	else
		lua_pushnil(L);
	if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
		t->callback_failed = 1;
		return 1;
	}
	return 0;
}

static int fetch_xferinfo(void *data, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
			  curl_off_t ulnow)
{
	struct transfer *t = data;
	double now = fetch_now();
	curl_off_t done = t->have + dlnow, total = dltotal > 0 ? t->have + dltotal : 0;

	(void)ultotal;
	(void)ulnow;
	if (now - t->last_report < 0.1 || dlnow == 0)
		return 0;
	t->last_report = now;
	if (t->progress_ref != LUA_NOREF)
		return fetch_call_progress(t, done, total);
	if (!t->quiet)
		fetch_report(t, done, total, 0);
	return 0;
}

/* ---- writing ------------------------------------------------------------ */

static size_t fetch_write(char *ptr, size_t size, size_t nmemb, void *data)
{
	struct transfer *t = data;
	size_t len = size * nmemb, off = 0;

	while (off < len) {
		ssize_t n = write(t->fd, ptr + off, len - off);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			t->io_errno = errno;
			return 0;
		}
		off += (size_t)n;
	}
	EVP_DigestUpdate(t->md, ptr, len);
	t->got += (curl_off_t)len;
	return len;
}

/* ---- one attempt ---------------------------------------------------------- */

/* Open the .part: continue it (hashing what it holds) or start it empty. */
static int fetch_open_part(struct transfer *t, const char *part, int resume)
{
	struct stat st;
	char *buf;
	ssize_t n;

	fetch_close_fd(t);
	if (!EVP_DigestInit_ex(t->md, EVP_sha256(), NULL))
		return errno = ENOMEM, -1;
	t->have = 0;
	t->got = 0;
	if (!resume || stat(part, &st) < 0 || st.st_size == 0) {
		t->fd = open(part, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		return t->fd < 0 ? -1 : 0;
	}
	t->fd = open(part, O_RDWR | O_CLOEXEC);
	if (t->fd < 0)
		return -1;
	buf = malloc(FETCH_BUFFER);
	if (!buf)
		return errno = ENOMEM, -1;
	while ((n = read(t->fd, buf, FETCH_BUFFER)) > 0) {
		EVP_DigestUpdate(t->md, buf, (size_t)n);
		t->have += n;
	}
	free(buf);
	return n < 0 ? -1 : 0;
}

static int fetch_transient(CURLcode rc, long code)
{
	switch (rc) {
	case CURLE_HTTP_RETURNED_ERROR:
		return code >= 500 || code == 408 || code == 429;
	case CURLE_COULDNT_CONNECT:
	case CURLE_OPERATION_TIMEDOUT:
	case CURLE_PARTIAL_FILE:
	case CURLE_RECV_ERROR:
	case CURLE_SEND_ERROR:
	case CURLE_GOT_NOTHING:
	case CURLE_COULDNT_RESOLVE_HOST:
	case CURLE_HTTP2:
	case CURLE_HTTP2_STREAM:
		return 1;
	default:
		return 0;
	}
}

static int fetch_errno(CURLcode rc, long code)
{
	switch (rc) {
	case CURLE_HTTP_RETURNED_ERROR:
		return code == 404 || code == 410 ? ENOENT : code == 401 || code == 403 ? EACCES : EIO;
	case CURLE_OPERATION_TIMEDOUT:
		return ETIMEDOUT;
	case CURLE_COULDNT_CONNECT:
		return ECONNREFUSED;
	case CURLE_UNSUPPORTED_PROTOCOL:
		return EPROTONOSUPPORT;
	case CURLE_FILE_COULDNT_READ_FILE:
		return ENOENT;
	case CURLE_PEER_FAILED_VERIFICATION:
	case CURLE_SSL_CONNECT_ERROR:
	case CURLE_SSL_CERTPROBLEM:
	case CURLE_SSL_CACERT_BADFILE:
		return EPROTO;
	default:
		return EIO;
	}
}

/* Push the message for a failed attempt. */
static void fetch_push_error(lua_State *L, struct transfer *t, CURLcode rc, long code)
{
	if (rc == CURLE_HTTP_RETURNED_ERROR)
		lua_pushfstring(L, "%s: HTTP %d", t->url, (int)code);
	else if (rc == CURLE_PARTIAL_FILE)
		lua_pushfstring(L, "%s: truncated: the server closed the connection early (%s)", t->url,
				t->errbuf[0] ? t->errbuf : curl_easy_strerror(rc));
	else if (rc == CURLE_WRITE_ERROR && t->io_errno)
		lua_pushfstring(L, "%s: writing %s.part: %s", t->url, "download", strerror(t->io_errno));
	else
		lua_pushfstring(L, "%s: %s", t->url, t->errbuf[0] ? t->errbuf : curl_easy_strerror(rc));
}

static const char *fetch_hex(struct transfer *t, char *hex)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int len = 0;

	EVP_DigestFinal_ex(t->md, md, &len);
	for (unsigned int i = 0; i < len; i++)
		snprintf(hex + 2 * i, 3, "%02x", md[i]);
	return hex;
}

struct fetch_opts {
	const char *sha256;
	int resume, retries, insecure;
	double backoff, connect_timeout, timeout, low_speed_time;
};

static void fetch_setopts(struct transfer *t, const struct fetch_opts *o)
{
	CURL *c = t->curl;

	curl_easy_setopt(c, CURLOPT_URL, t->url);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https,file");
	curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
	curl_easy_setopt(c, CURLOPT_MAXREDIRS, 10L);
	curl_easy_setopt(c, CURLOPT_FAILONERROR, 1L);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_BUFFERSIZE, (long)FETCH_BUFFER);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, t->errbuf);
	curl_easy_setopt(c, CURLOPT_USERAGENT, "drvrun/" DRV_VERSION);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, fetch_write);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, t);
	curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
	curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, fetch_xferinfo);
	curl_easy_setopt(c, CURLOPT_XFERINFODATA, t);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)(o->connect_timeout * 1000));
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)(o->timeout * 1000));
	curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1024L);
	curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, (long)o->low_speed_time);
	curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, o->insecure ? 0L : 1L);
	curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, o->insecure ? 0L : 2L);
}

static void fetch_sleep(double s)
{
	struct timespec ts = { .tv_sec = (time_t)s, .tv_nsec = (long)((s - (time_t)s) * 1e9) };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static int fetch_is_hex64(const char *s)
{
	if (strlen(s) != 64)
		return 0;
	for (; *s; s++)
		if (!strchr("0123456789abcdefABCDEF", *s))
			return 0;
	return 1;
}

static void fetch_read_opts(lua_State *L, int opts, struct fetch_opts *o, struct transfer *t)
{
	o->sha256 = drv_optfield_string(L, opts, "sha256", NULL);
	if (o->sha256)
		luaL_argcheck(L, fetch_is_hex64(o->sha256), 3, "field 'sha256': 64 hex digits expected");
	o->resume = drv_optfield_boolean(L, opts, "resume", 1);
	o->retries = (int)drv_optfield_integer(L, opts, "retries", 3);
	luaL_argcheck(L, o->retries >= 0, 3, "field 'retries': must not be negative");
	o->backoff = drv_optfield_number(L, opts, "backoff", 1.0);
	o->connect_timeout = drv_optfield_number(L, opts, "connect_timeout", 30);
	o->timeout = drv_optfield_number(L, opts, "timeout", 0);
	o->low_speed_time = drv_optfield_number(L, opts, "low_speed_time", 60);
	o->insecure = drv_optfield_boolean(L, opts, "insecure", 0);
	t->quiet = drv_optfield_boolean(L, opts, "quiet", 0);
	if (opts && lua_getfield(L, opts, "progress") != LUA_TNIL) {
		if (lua_isfunction(L, -1)) {
			t->progress_ref = luaL_ref(L, LUA_REGISTRYINDEX);
			return;
		}
		luaL_argcheck(L, lua_isboolean(L, -1) && !lua_toboolean(L, -1), 3,
			      "field 'progress': function or false expected");
		t->quiet = 1;
	}
	if (opts)
		lua_pop(L, 1);
}

static int fetch_done(lua_State *L, struct transfer *t, const char *dest, const char *part,
		      const struct fetch_opts *o, int attempts, int resumed)
{
	char hex[2 * EVP_MAX_MD_SIZE + 1];
	curl_off_t bytes = t->have + t->got;

	fetch_hex(t, hex);
	if (o->sha256 && strcasecmp(hex, o->sha256) != 0) {
		unlink(part);
		return drv_fail(L, EBADMSG, "%s: sha256 mismatch: expected %s, got %s", t->url, o->sha256, hex);
	}
	if (fsync(t->fd) < 0 || rename(part, dest) < 0) {
		int err = errno;

		unlink(part);
		return drv_fail(L, err, "%s: %s", dest, strerror(err));
	}
	fetch_close_fd(t);
	if (!t->quiet && t->progress_ref == LUA_NOREF)
		fetch_report(t, bytes, bytes, 1);
	else if (t->progress_ref != LUA_NOREF && fetch_call_progress(t, bytes, bytes))
		lua_error(L);
	lua_createtable(L, 0, 6);
	lua_pushstring(L, dest);
	lua_setfield(L, -2, "path");
	lua_pushstring(L, hex);
	lua_setfield(L, -2, "sha256");
	lua_pushinteger(L, bytes);
	lua_setfield(L, -2, "bytes");
	lua_pushboolean(L, resumed);
	lua_setfield(L, -2, "resumed");
	lua_pushinteger(L, attempts);
	lua_setfield(L, -2, "attempts");
	lua_pushnumber(L, fetch_now() - t->started);
	lua_setfield(L, -2, "seconds");
	return 1;
}

/* Attempt the transfer until it succeeds, fails for good, or runs out of retries. */
static int fetch_attempts(lua_State *L, struct transfer *t, const char *dest, const char *part,
			  const struct fetch_opts *o)
{
	double backoff = o->backoff;
	int resumed = 0;

	for (int attempt = 1;; attempt++) {
		CURLcode rc;
		long code = 0;

		if (fetch_open_part(t, part, o->resume) < 0)
			return drv_fail(L, errno, "%s: %s", part, strerror(errno));
		resumed |= t->have > 0;
		curl_easy_setopt(t->curl, CURLOPT_RESUME_FROM_LARGE, t->have);
		t->errbuf[0] = '\0';
		rc = curl_easy_perform(t->curl);
		if (t->callback_failed) {
			fetch_close_fd(t);
			unlink(part);
			return lua_error(L); /* the progress function's error, as raised */
		}
		curl_easy_getinfo(t->curl, CURLINFO_RESPONSE_CODE, &code);
		if (t->have > 0 && (rc == CURLE_RANGE_ERROR ||
				    (rc == CURLE_HTTP_RETURNED_ERROR && code == 416))) {
			/* the server cannot resume, or the .part is not a prefix of this file */
			unlink(part);
			attempt--;
			continue;
		}
		if (rc == CURLE_OK)
			return fetch_done(L, t, dest, part, o, attempt, resumed && t->have > 0);
		if (!fetch_transient(rc, code) || attempt > o->retries) {
			fetch_close_fd(t);
			/* keep a .part only when a later run can resume from it */
			if (!(o->resume && fetch_transient(rc, code) && t->have + t->got > 0))
				unlink(part);
			lua_pushnil(L);
			fetch_push_error(L, t, rc, code);
			if (attempt > 1) {
				lua_pushfstring(L, "%s (after %d attempts)", lua_tostring(L, -1), attempt);
				lua_remove(L, -2);
			}
			lua_pushinteger(L, fetch_errno(rc, code));
			return 3;
		}
		if (!t->quiet)
			fprintf(stderr, "fetch %s: %s; retrying in %.1f s\n", t->url,
				t->errbuf[0] ? t->errbuf : curl_easy_strerror(rc), backoff);
		if (!o->resume)
			unlink(part);
		fetch_sleep(backoff);
		backoff *= 2;
	}
}

/***
 * Download url to dest, checking its SHA-256 while it streams.
 * @function get
 * @tparam string url https, http or file
 * @tparam string dest
 * @tparam[opt] table opts `{ sha256 = "<64 hex>", resume = true, retries = 3, backoff = 1.0,
 *   connect_timeout = 30, timeout = 0 (none), low_speed_time = 60, insecure = false,
 *   progress = function(done, total) | false, quiet = false }`
 * @treturn[1] table `{ path, sha256, bytes, resumed, attempts, seconds }`
 * @treturn[2] nil, "<url>: <cause>", errno (EBADMSG: checksum; ENOENT: 404; ETIMEDOUT; EIO…)
 * @see curl_easy_perform(3)
 */
static int fetch_get(lua_State *L)
{
	const char *url = luaL_checkstring(L, 1);
	const char *dest = luaL_checkstring(L, 2);
	int opts = drv_opttable(L, 3);
	struct fetch_opts o;
	struct transfer *t;
	const char *part;
	int n;

	t = lua_newuserdatauv(L, sizeof(*t), 0);
	memset(t, 0, sizeof(*t));
	t->fd = -1;
	t->progress_ref = LUA_NOREF;
	luaL_setmetatable(L, FETCH_MT);
	fetch_read_opts(L, opts, &o, t);
	part = lua_pushfstring(L, "%s.part", dest);
	t->L = L;
	t->url = url;
	t->tty = !t->quiet && isatty(2);
	t->md = EVP_MD_CTX_new();
	t->curl = curl_easy_init();
	if (!t->md || !t->curl) {
		fetch_release(L, t);
		return drv_fail(L, ENOMEM, "%s: cannot start a transfer", url);
	}
	fetch_setopts(t, &o);
	t->started = t->last_line = fetch_now();
	n = fetch_attempts(L, t, dest, part, &o);
	fetch_release(L, t);
	return n;
}

static const luaL_Reg fetch_meta[] = {
	{ "__gc", fetch_gc },
	{ "__close", fetch_gc },
	{ NULL, NULL }
};

static const luaL_Reg fetch_funcs[] = {
	{ "get", fetch_get },
	{ NULL, NULL }
};

int luaopen_drv_fetch(lua_State *L)
{
	curl_global_init(CURL_GLOBAL_DEFAULT);
	drv_newclass(L, FETCH_MT, NULL, fetch_meta);
	luaL_newlib(L, fetch_funcs);
	return 1;
}
