/* fetch.c - drv.fetch: downloads over libcurl (https, http, file), hashed with
 * SHA-256 while they stream, renamed into place only once verified.
 *
 * One call is one job: a userdata ("drv.fetch.job") owns the curl multi and easy
 * handles, the parsed URL, the digest context and the locked "<dest>.part" descriptor,
 * so no path out of fetch.get - a memory error, a Lua error from a progress
 * function - leaks them. curl never sees a longjmp: every Lua call made from a
 * curl callback runs under lua_pcall; an error it returns aborts the transfer
 * and is raised again once the transfer has returned and the job is
 * released.
 *
 * Throughput: curl's receive buffer is FETCH_BUFSIZE, but it hands the write
 * callback 16 KiB at a time; those are hashed at once and gathered into a
 * FETCH_WBUFSIZE buffer so the .part sees few large write(2)s. (A separate
 * hashing thread was measured: no gain on 2 cores sharing the CPU with a local
 * server, so none.) */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <openssl/evp.h>

#include "drv.h"
#include "lazy.h"

#define FETCH_JOB		"drv.fetch.job"
#define FETCH_BUFSIZE		(512L * 1024)	/* curl's receive buffer */
#define FETCH_WBUFSIZE		(1L << 20)	/* writes to the .part: curl hands out 16 KiB */
#define FETCH_PROTOCOLS		"http,https,file"
#define FETCH_REDIR_PROTOCOLS	"http,https"
#define FETCH_MAX_REDIRS	10L
#define FETCH_MAX_RESTARTS	2		/* clean restarts (416, stale .part) per call */
#define FETCH_RETRY_AFTER_MAX	300.0		/* cap on a server's Retry-After, seconds */
#define FETCH_CB_INTERVAL	0.1		/* progress function: at most 10 calls a second */
#define FETCH_BAR_INTERVAL	0.2		/* terminal bar redraws */
#define FETCH_LINE_INTERVAL	5.0		/* plain progress lines */
#define FETCH_LINE_QUIET	1.0		/* no quartile lines in a transfer's first second */
#define FETCH_STALL_MAX		20.0		/* "stalled" lines: at most this long apart */
#define FETCH_STALL_MIN		1.0		/* a progress function's stalled_for: 0 below this */
#define FETCH_WAIT_MS		1000		/* longest wait in curl_multi_poll */

enum outcome { DONE, TRANSIENT, PERMANENT, RESTART, LUA_ERROR, INTERRUPTED, DEADLINE };
enum display { SHOW_NONE, SHOW_LINES, SHOW_BAR };

struct fetch_opts {
	char sha256[65];	/* expected digest, lowercase; "" when not given */
	int resume, insecure, quiet;
	lua_Integer retries, low_speed_time;
	double backoff, connect_timeout, timeout;
	double deadline;	/* seconds for the whole call, 0 for none */
	double stall_after;	/* seconds without a body byte that make a stall */
	int interrupt_fd;	/* readable => stop; -1 if none */
	int progress;		/* stack index of the progress function, 0 if none */
	enum display show;
};

struct fetch_job {
	CURLM *multi;
	CURL *curl;
	CURLU *cu;
	EVP_MD_CTX *md;
	int fd;			/* the locked .part, -1 when closed */
	char *wbuf;		/* bytes hashed but not yet written to fd */
	size_t wlen;
	int own_part;		/* we locked the .part: release() may unlink it */
	int keep_part;		/* release() leaves the .part for a later resume */

	lua_State *L;
	const char *url;
	const struct fetch_opts *o;
	int errslot;		/* stack slot for an error raised by a Lua callback */
	int is_http;
	char name[48];		/* last segment of the URL, for the progress bar */

	/* per attempt */
	long status;		/* HTTP status, 0 for file:// */
	int begun;		/* status accepted and .part prepared for the body */
	int rejected;		/* body refused: the status is not a success */
	int bad_range;		/* 206 for another range than the one asked for */
	int werr;		/* errno of a failed write or truncate, 0 if none */
	int lua_failed;
	curl_off_t offset;	/* bytes of the .part this attempt continues */
	curl_off_t total;	/* size of the file, -1 if unknown */
	double t_attempt;
	double t_data;		/* last body byte, or the start of the attempt */
	double stall_next;	/* stall length of the next "stalled" line */
	double retry_after;	/* seconds a 429/503 asked us to wait, 0 if none */
	char reason[64];	/* reason phrase of the last status line */
	char errbuf[CURL_ERROR_SIZE];

	/* whole call */
	curl_off_t bytes;	/* bytes in the .part, all of them in the digest */
	curl_off_t transferred;	/* body bytes received, all attempts */
	curl_off_t size;	/* size of the file as last announced, -1 if never */
	int resumed;		/* the .part continues bytes of an earlier response */
	int attempts, restarts;
	int interrupted;	/* interrupt_fd became readable */
	int deadline_hit;	/* the deadline passed during an attempt */
	int stalled;		/* no body byte for low_speed_time seconds */
	double t0, last_cb, last_show;
	double deadline_at;	/* monotonic end of the call, 0 for none */
	double retry_due;	/* DEADLINE before a retry: the backoff it would have slept */
	int quarter;		/* last quartile reported by SHOW_LINES */
	int bar_drawn;		/* SHOW_BAR: the cursor is on a bar line */
	int err;		/* errno of the failure */
	char hex[65];		/* digest of the finished file */
	char msg[PATH_MAX + 512];
	char history[2048];	/* "attempt 1: …; attempts 2-3: …", for a deadline failure */
	char run_msg[256];	/* the failure of attempts run_first..attempts, not yet in history */
	int run_first;
	char part[];		/* "<dest>.part" */
};

/* ---- the job: one idempotent release for __gc, __close and every exit ---- */

static void job_release(struct fetch_job *j)
{
	if (j->own_part && !j->keep_part)
		unlink(j->part);	/* under the lock, before close() drops it */
	j->own_part = 0;
	if (j->fd >= 0)
		close(j->fd);
	j->fd = -1;
	if (j->curl)
		curl_easy_cleanup(j->curl);
	j->curl = NULL;
	if (j->multi)
		curl_multi_cleanup(j->multi);
	j->multi = NULL;
	if (j->cu)
		curl_url_cleanup(j->cu);
	j->cu = NULL;
	if (j->md)
		EVP_MD_CTX_free(j->md);
	j->md = NULL;
	free(j->wbuf);
	j->wbuf = NULL;
}

static int job_gc(lua_State *L)
{
	job_release(luaL_checkudata(L, 1, FETCH_JOB));
	return 0;
}

static int job_tostring(lua_State *L)
{
	struct fetch_job *j = luaL_checkudata(L, 1, FETCH_JOB);

	if (j->curl)
		lua_pushfstring(L, "drv.fetch.job (%s)", j->part);
	else
		lua_pushliteral(L, "drv.fetch.job (closed)");
	return 1;
}

/* Record a failure: errno and message (the URL is prefixed later). */
static enum outcome job_fail(struct fetch_job *j, enum outcome how, int err,
			     const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static enum outcome job_fail(struct fetch_job *j, enum outcome how, int err,
			     const char *fmt, ...)
{
	va_list ap;

	j->err = err;
	va_start(ap, fmt);
	vsnprintf(j->msg, sizeof(j->msg), fmt, ap);
	va_end(ap);
	return how;
}

static enum outcome job_errno(struct fetch_job *j, const char *what)
{
	int err = errno;

	return job_fail(j, PERMANENT, err, "%s: %s", what, strerror(err));
}

/* interrupt_fd is readable (or hung up): the caller wants us to stop. The
 * signal, if it is a signalfd, is left for the caller to read. */
static int interrupt_pending(const struct fetch_job *j)
{
	struct pollfd pfd = { .fd = j->o->interrupt_fd, .events = POLLIN };

	return pfd.fd >= 0 && poll(&pfd, 1, 0) > 0;
}

/* ---- messages and progress display ---- */

/* drv.log's event(level, line) when a script has loaded drv.log; run under
 * lua_pcall, so a failure here cannot unwind through curl. */
static int say_lua(lua_State *L)
{
	const char *level = lua_touserdata(L, 1), *line = lua_touserdata(L, 2);

	luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
	if (lua_getfield(L, -1, "drv.log") != LUA_TTABLE ||
	    lua_getfield(L, -1, "event") != LUA_TFUNCTION)
		return 0;
	lua_pushstring(L, level);
	lua_pushstring(L, line);
	lua_call(L, 2, 0);
	lua_pushboolean(L, 1);
	return 1;
}

/* One line for the operator: through drv.log if loaded, else to stderr. */
static void say(struct fetch_job *j, const char *level, const char *line)
{
	lua_State *L = j->L;
	int logged;

	if (j->bar_drawn) {
		fputc('\n', stderr);
		j->bar_drawn = 0;
	}
	lua_pushcfunction(L, say_lua);
	lua_pushlightuserdata(L, (void *)level);
	lua_pushlightuserdata(L, (void *)line);
	logged = lua_pcall(L, 2, 1, 0) == LUA_OK && lua_toboolean(L, -1);
	lua_pop(L, 1);
	if (!logged)
		fprintf(stderr, "%s\n", line);
}

/* "512 B", "1.5 KiB", "512.0 MiB", "1.0 GiB"; a rate ("110 MiB/s") drops the
 * decimal from 100 on. */
static const char *human(char *buf, size_t size, double n, int rate)
{
	static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB" };
	int u = 0;

	while (n >= 1024 && u < 5) {
		n /= 1024;
		u++;
	}
	snprintf(buf, size, u == 0 || (rate && n >= 100) ? "%.0f %s%s" : "%.1f %s%s",
		 n, units[u], rate ? "/s" : "");
	return buf;
}

/* When a body that has begun is stalled for good (monotonic), or INFINITY.
 * curl's low-speed limit also ends a stall, but up to 5 s late: it averages
 * the speed over the last 5 s, so the bytes before the stall count. */
static double stall_end(const struct fetch_job *j)
{
	if (!j->begun || j->o->low_speed_time == 0)
		return INFINITY;
	return j->t_data + (double)j->o->low_speed_time;
}

/* "1.2 GiB of 3.4 GiB received", or "1.2 GiB received" when the size is unknown. */
static const char *received(char *buf, size_t size, curl_off_t got, curl_off_t total)
{
	char g[32], t[32];

	human(g, sizeof(g), got, 0);
	if (total < 0)
		snprintf(buf, size, "%s received", g);
	else
		snprintf(buf, size, "%s of %s received", g, human(t, sizeof(t), total, 0));
	return buf;
}

/* What ends a stalled attempt first: "; giving up this attempt at 60 s", or "". */
static const char *stall_outlook(struct fetch_job *j, double t, char *buf, size_t size)
{
	const struct fetch_opts *o = j->o;
	double slow = o->low_speed_time > 0 ? (double)o->low_speed_time - (t - j->t_data) : INFINITY;
	double timeout = o->timeout > 0 ? j->t_attempt + o->timeout - t : INFINITY;
	double deadline = j->deadline_at > 0 ? j->deadline_at - t : INFINITY;

	if (deadline <= slow && deadline <= timeout)
		snprintf(buf, size, "; the deadline ends the call in %.0f s", fmax(deadline, 0));
	else if (timeout <= slow)
		snprintf(buf, size, "; this attempt times out in %.0f s", fmax(timeout, 0));
	else if (slow < INFINITY)
		snprintf(buf, size, "; giving up this attempt at %lld s", (long long)o->low_speed_time);
	else
		buf[0] = '\0';
	return buf;
}

/* No body byte for stall_after seconds or more: say so, every stall_after seconds
 * as plain lines, in place of the rate on the bar. */
static void show_stall(struct fetch_job *j, double t, double idle)
{
	char line[PATH_MAX + 256], got[80], outlook[64], done[32], total[32];
	double whole = floor(idle);	/* "no data for 2 s" means 2 s or more */

	if (j->o->show == SHOW_BAR) {
		if (t - j->last_show < FETCH_BAR_INTERVAL)
			return;
		human(done, sizeof(done), j->bytes, 0);
		if (j->total > 0)
			fprintf(stderr, "\r%-24.24s %3d%%  %s of %s  stalled %.0f s\033[K", j->name,
				(int)(100.0 * j->bytes / j->total), done,
				human(total, sizeof(total), j->total, 0), whole);
		else
			fprintf(stderr, "\r%-24.24s %s  stalled %.0f s\033[K", j->name, done, whole);
		j->bar_drawn = 1;
		j->last_show = t;
		return;
	}
	if (idle < j->stall_next || (j->o->low_speed_time > 0 && idle >= j->o->low_speed_time))
		return;		/* (the failure will say it) */
	snprintf(line, sizeof(line), "fetch %s: stalled: no data for %.0f s (%s)%s", j->url, whole,
		 received(got, sizeof(got), j->bytes, j->total),
		 stall_outlook(j, t, outlook, sizeof(outlook)));
	say(j, "warn", line);
	while (j->stall_next <= idle)
		j->stall_next += j->o->stall_after;
	j->last_show = t;
}

static void show_progress(struct fetch_job *j, double t, int final)
{
	char line[PATH_MAX + 256], done[32], total[32], rate[32];
	double elapsed = t - j->t_attempt;
	double r = elapsed > 0 ? (j->bytes - j->offset) / elapsed : 0;
	int pct = j->total > 0 ? (int)(100.0 * j->bytes / j->total) : -1;

	if (!final && t - j->t_data >= j->o->stall_after) {
		show_stall(j, t, t - j->t_data);
		return;
	}
	j->stall_next = j->o->stall_after;
	human(done, sizeof(done), j->bytes, 0);
	human(total, sizeof(total), j->total, 0);
	human(rate, sizeof(rate), r, 1);
	if (j->o->show == SHOW_BAR) {
		char eta[32] = "";

		if (!final && t - j->last_show < FETCH_BAR_INTERVAL)
			return;
		if (pct >= 0 && r > 0 && !final) {
			long s = (long)((j->total - j->bytes) / r);

			snprintf(eta, sizeof(eta), "  ETA %ld:%02ld", s / 60, s % 60);
		}
		if (pct >= 0)
			fprintf(stderr, "\r%-24.24s %3d%%  %s of %s  %s%s\033[K",
				j->name, pct, done, total, rate, eta);
		else
			fprintf(stderr, "\r%-24.24s %s  %s\033[K", j->name, done, rate);
		j->bar_drawn = 1;
		if (final) {
			fputc('\n', stderr);
			j->bar_drawn = 0;
		}
		j->last_show = t;
		return;
	}
	/* SHOW_LINES: every FETCH_LINE_INTERVAL, at each quartile, at the end. */
	if (!final) {
		int q = pct >= 0 ? pct / 25 : 0, crossed = q > j->quarter && q < 4;

		if (q > j->quarter)
			j->quarter = q;
		if (!(crossed && elapsed >= FETCH_LINE_QUIET) &&
		    t - j->last_show < FETCH_LINE_INTERVAL)
			return;
	}
	if (pct >= 0)
		snprintf(line, sizeof(line), "fetch %s: %s of %s (%d%%), %s",
			 j->url, done, total, pct, rate);
	else
		snprintf(line, sizeof(line), "fetch %s: %s, %s", j->url, done, rate);
	say(j, "info", line);
	j->last_show = t;
}

/* Call the progress function with (done, total|nil, stalled_for); on error keep
 * the error object in errslot and return 0. */
static int call_progress(struct fetch_job *j, double stalled_for)
{
	lua_State *L = j->L;

	lua_pushvalue(L, j->o->progress);
	lua_pushinteger(L, (lua_Integer)j->bytes);
	if (j->total >= 0)
		lua_pushinteger(L, (lua_Integer)j->total);
	else
		lua_pushnil(L);
	lua_pushnumber(L, stalled_for >= FETCH_STALL_MIN ? stalled_for : 0);
	if (lua_pcall(L, 3, 0, 0) != LUA_OK) {
		lua_replace(L, j->errslot);
		j->lua_failed = 1;
		return 0;
	}
	return 1;
}

static int fetch_xferinfo(void *ud, curl_off_t dltotal, curl_off_t dlnow,
			  curl_off_t ultotal, curl_off_t ulnow)
{
	struct fetch_job *j = ud;
	double t;

	(void)dltotal, (void)dlnow, (void)ultotal, (void)ulnow;
	t = drv_clock(CLOCK_MONOTONIC);
	if (!j->begun && t - j->t_data < j->o->stall_after)
		return 0;	/* status line and headers: wait for a body or a stall */
	if (j->o->progress) {
		if (t - j->last_cb < FETCH_CB_INTERVAL)
			return 0;
		j->last_cb = t;
		return !call_progress(j, t - j->t_data);	/* nonzero aborts the transfer */
	}
	show_progress(j, t, 0);
	return 0;
}

/* ---- the .part file ---- */

/* Write out the buffered bytes: the .part then holds all j->bytes. */
static int part_flush(struct fetch_job *j)
{
	size_t len = j->wlen;

	j->wlen = 0;
	return drv_write_all(j->fd, j->wbuf, len);
}

/* Empty the .part and the digest: the next bytes start the file. */
static int part_reset(struct fetch_job *j)
{
	j->wlen = 0;
	if (ftruncate(j->fd, 0) < 0 || lseek(j->fd, 0, SEEK_SET) < 0)
		return -1;
	if (EVP_DigestInit_ex(j->md, EVP_sha256(), NULL) != 1) {
		errno = ENOMEM;
		return -1;
	}
	j->bytes = j->offset = 0;
	j->resumed = 0;
	return 0;
}

/* Open and lock "<dest>.part". A .part some other process holds is refused
 * (EBUSY); one renamed or removed between open and lock is opened again. */
static enum outcome part_open(struct fetch_job *j)
{
	struct stat fst, pst;

	for (int tries = 0; tries < 10; tries++) {
		j->fd = open(j->part, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0666);
		if (j->fd < 0)
			return job_errno(j, j->part);
		if (flock(j->fd, LOCK_EX | LOCK_NB) < 0) {
			int err = errno;

			close(j->fd);
			j->fd = -1;
			if (err == EWOULDBLOCK)
				return job_fail(j, PERMANENT, EBUSY,
						"%s: in use by another download", j->part);
			errno = err;
			return job_errno(j, j->part);
		}
		if (fstat(j->fd, &fst) < 0)
			return job_errno(j, j->part);
		if (stat(j->part, &pst) == 0 && pst.st_ino == fst.st_ino &&
		    pst.st_dev == fst.st_dev) {
			if (!S_ISREG(fst.st_mode))
				return job_fail(j, PERMANENT, EINVAL,
						"%s: not a regular file", j->part);
			j->own_part = 1;
			return DONE;
		}
		close(j->fd);
		j->fd = -1;
	}
	return job_fail(j, PERMANENT, EBUSY, "%s: keeps changing", j->part);
}

/* Prepare the .part: hash what a resumable one holds, else empty it. */
static enum outcome part_prepare(struct fetch_job *j)
{
	enum outcome r = part_open(j);
	unsigned char *buf;
	ssize_t n;

	if (r != DONE)
		return r;
	if (!j->o->resume || !j->is_http) {
		if (part_reset(j) < 0)
			return job_errno(j, j->part);
		return DONE;
	}
	if (EVP_DigestInit_ex(j->md, EVP_sha256(), NULL) != 1)
		return job_fail(j, PERMANENT, ENOMEM, "sha256: cannot initialise");
	buf = malloc(FETCH_BUFSIZE);
	if (!buf)
		return job_fail(j, PERMANENT, ENOMEM, "%s: %s", j->part, strerror(ENOMEM));
	j->bytes = 0;
	while ((n = read(j->fd, buf, FETCH_BUFSIZE)) != 0) {
		if (interrupt_pending(j)) {	/* hashing a GiB .part takes seconds */
			free(buf);
			return INTERRUPTED;
		}
		if (n < 0) {
			if (errno == EINTR)
				continue;
			free(buf);
			return job_errno(j, j->part);
		}
		EVP_DigestUpdate(j->md, buf, (size_t)n);
		j->bytes += n;
	}
	free(buf);
	return DONE;
}

/* ---- curl callbacks ---- */

/* "bytes A-B/T" or "bytes * /T" (no space) of this response; -1 for what is absent. */
static int content_range(struct fetch_job *j, curl_off_t *start, curl_off_t *total)
{
	struct curl_header *h;
	const char *s;
	char *end;

	*start = *total = -1;
	if (curl_easy_header(j->curl, "Content-Range", 0, CURLH_HEADER, -1, &h) != CURLHE_OK)
		return -1;
	s = h->value;
	if (strncasecmp(s, "bytes ", 6) != 0)
		return -1;
	s += 6;
	if (*s == '*') {
		s++;
	} else {
		*start = strtoll(s, &end, 10);
		if (end == s || *end != '-')
			return -1;
		s = strchr(end, '/');
		if (!s)
			return -1;
	}
	if (*s++ != '/')
		return -1;
	if (*s != '*') {
		*total = strtoll(s, &end, 10);
		if (end == s)
			*total = -1;
	}
	return 0;
}

/* First body bytes (or the end of a bodiless response): check the status and
 * make the .part ready for them. Returns 0 to refuse the body. */
static int fetch_begin(struct fetch_job *j)
{
	curl_off_t cl = -1, start, total;

	j->begun = 1;
	curl_easy_getinfo(j->curl, CURLINFO_RESPONSE_CODE, &j->status);
	curl_easy_getinfo(j->curl, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
	if (!j->is_http) {
		j->total = cl;
		return 1;
	}
	if (j->status == 206 && j->offset > 0) {
		content_range(j, &start, &total);
		if (start != j->offset) {
			j->bad_range = 1;
			return 0;
		}
		j->total = total >= 0 ? total : cl >= 0 ? j->offset + cl : -1;
		j->resumed = 1;
		return 1;
	}
	if (j->status < 200 || j->status >= 300 || j->status == 206) {
		j->rejected = 1;
		return 0;
	}
	/* A full body: when we asked for a range, the server ignored it. */
	if (j->offset > 0 && part_reset(j) < 0) {
		j->werr = errno;
		return 0;
	}
	j->total = cl;
	return 1;
}

/* Body bytes: into the digest, and to the .part through wbuf. */
static size_t fetch_write(char *p, size_t size, size_t n, void *ud)
{
	struct fetch_job *j = ud;
	size_t len = size * n;

	if (!j->begun && !fetch_begin(j))
		return CURL_WRITEFUNC_ERROR;
	if (j->wlen + len > FETCH_WBUFSIZE && part_flush(j) < 0) {
		j->werr = errno;
		return CURL_WRITEFUNC_ERROR;
	}
	if (len > FETCH_WBUFSIZE) {
		if (drv_write_all(j->fd, p, len) < 0) {
			j->werr = errno;
			return CURL_WRITEFUNC_ERROR;
		}
	} else {
		memcpy(j->wbuf + j->wlen, p, len);
		j->wlen += len;
	}
	EVP_DigestUpdate(j->md, p, len);
	j->bytes += (curl_off_t)len;
	j->transferred += (curl_off_t)len;
	j->t_data = drv_clock(CLOCK_MONOTONIC);
	return len;
}

/* Keep the reason phrase of the last status line ("HTTP/1.1 404 Not Found"). */
static size_t fetch_header(char *p, size_t size, size_t n, void *ud)
{
	struct fetch_job *j = ud;
	size_t len = size * n, i = 0, k = 0;

	if (len < 5 || memcmp(p, "HTTP/", 5) != 0)
		return len;
	while (i < len && p[i] != ' ')		/* version */
		i++;
	while (i < len && p[i] == ' ')
		i++;
	while (i < len && p[i] != ' ' && p[i] != '\r' && p[i] != '\n')	/* code */
		i++;
	while (i < len && p[i] == ' ')
		i++;
	while (i < len && p[i] != '\r' && p[i] != '\n' && k < sizeof(j->reason) - 1)
		j->reason[k++] = p[i++];
	j->reason[k] = '\0';
	return len;
}

/* ---- classifying failures ---- */

static const char *http_reason(long code)
{
	switch (code) {
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 408: return "Request Timeout";
	case 410: return "Gone";
	case 416: return "Range Not Satisfiable";
	case 429: return "Too Many Requests";
	case 500: return "Internal Server Error";
	case 501: return "Not Implemented";
	case 502: return "Bad Gateway";
	case 503: return "Service Unavailable";
	case 504: return "Gateway Timeout";
	}
	return "";
}

/* Seconds of a "Retry-After: N" header, 0 if absent or a date. */
static double retry_after(struct fetch_job *j)
{
	struct curl_header *h;
	char *end;
	double s;

	if (curl_easy_header(j->curl, "Retry-After", 0, CURLH_HEADER, -1, &h) != CURLHE_OK)
		return 0;
	s = strtod(h->value, &end);
	if (end == h->value || *end || !(s > 0))
		return 0;
	return fmin(s, FETCH_RETRY_AFTER_MAX);
}

static enum outcome http_error(struct fetch_job *j)
{
	long code = j->status;
	const char *reason = j->reason[0] ? j->reason : http_reason(code);
	int err = EIO;
	enum outcome how = PERMANENT;

	if (code == 206)
		return job_fail(j, PERMANENT, EPROTO,
				"HTTP 206 %s to a request without a range", reason);
	if (code == 404 || code == 410)
		err = ENOENT;
	else if (code == 401 || code == 403)
		err = EACCES;
	if (code == 408 || code == 429 || code >= 500) {
		how = TRANSIENT;
		j->retry_after = retry_after(j);
	}
	return job_fail(j, how, err, "HTTP %ld%s%s", code, *reason ? " " : "", reason);
}

/* errno of a file:// URL curl could not read. */
static int file_errno(struct fetch_job *j)
{
	char *path = NULL;
	struct stat st;
	int err = ENOENT;

	if (curl_url_get(j->cu, CURLUPART_PATH, &path, CURLU_URLDECODE) == CURLUE_OK) {
		if (stat(path, &st) < 0)
			err = errno;
		else if (S_ISDIR(st.st_mode))
			err = EISDIR;
		else if (access(path, R_OK) < 0)
			err = errno;
		else
			err = EIO;
		curl_free(path);
	}
	return err;
}

/* curl "reads" a directory as an empty file: refuse it. */
static enum outcome file_check(struct fetch_job *j)
{
	char *path = NULL;
	struct stat st;
	enum outcome r = DONE;

	if (curl_url_get(j->cu, CURLUPART_PATH, &path, CURLU_URLDECODE) != CURLUE_OK)
		return DONE;	/* curl will say what is wrong */
	if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
		r = job_fail(j, PERMANENT, EISDIR, "%s: %s", path, strerror(EISDIR));
	curl_free(path);
	return r;
}

/* No body byte for a while ended the attempt. detail: what curl said, or NULL. */
static enum outcome stall_error(struct fetch_job *j, const char *detail)
{
	char got[80];

	received(got, sizeof(got), j->bytes, j->total);
	return job_fail(j, TRANSIENT, ETIMEDOUT, "stalled: no data for %.0f s (%s)%s%s",
			floor(drv_clock(CLOCK_MONOTONIC) - j->t_data), got, detail ? "; " : "", detail ? detail : "");
}

/* curl's timeout or low-speed limit: in words when the transfer had stalled. */
static enum outcome timeout_error(struct fetch_job *j, const char *detail)
{
	int too_slow = strncmp(detail, "Operation too slow", 18) == 0;
	char got[80];

	if (drv_clock(CLOCK_MONOTONIC) - j->t_data >= j->o->stall_after)
		return stall_error(j, too_slow ? NULL : detail);
	if (!too_slow)
		return job_fail(j, TRANSIENT, ETIMEDOUT, "%s", detail);
	received(got, sizeof(got), j->bytes, j->total);
	return job_fail(j, TRANSIENT, ETIMEDOUT, "%s (%s)", detail, got);
}

static enum outcome curl_error(struct fetch_job *j, CURLcode rc)
{
	const char *detail = j->errbuf[0] ? j->errbuf : curl_easy_strerror(rc);
	long oserr = 0;

	curl_easy_getinfo(j->curl, CURLINFO_OS_ERRNO, &oserr);
	switch (rc) {
	case CURLE_COULDNT_CONNECT:
		if (oserr && !strstr(detail, strerror((int)oserr)))
			return job_fail(j, TRANSIENT, (int)oserr, "%s (%s)", detail,
					strerror((int)oserr));
		return job_fail(j, TRANSIENT, oserr ? (int)oserr : ECONNREFUSED, "%s", detail);
	case CURLE_COULDNT_RESOLVE_HOST:
	case CURLE_COULDNT_RESOLVE_PROXY:
		return job_fail(j, TRANSIENT, EHOSTUNREACH, "%s", detail);
	case CURLE_OPERATION_TIMEDOUT:
		return timeout_error(j, detail);
	case CURLE_PARTIAL_FILE:
		if (j->total >= 0)
			return job_fail(j, TRANSIENT, EIO, "truncated: got %lld of %lld bytes",
					(long long)j->bytes, (long long)j->total);
		return job_fail(j, TRANSIENT, EIO, "truncated: got %lld bytes (%s)",
				(long long)j->bytes, detail);
	case CURLE_GOT_NOTHING:
	case CURLE_SEND_ERROR:
	case CURLE_RECV_ERROR:
	case CURLE_HTTP2:
	case CURLE_HTTP2_STREAM:
		return job_fail(j, TRANSIENT, oserr ? (int)oserr : EIO, "%s", detail);
	case CURLE_SSL_CONNECT_ERROR:
		return job_fail(j, TRANSIENT, EPROTO, "%s", detail);
	case CURLE_PEER_FAILED_VERIFICATION:
	case CURLE_SSL_CERTPROBLEM:
	case CURLE_SSL_CIPHER:
	case CURLE_SSL_CACERT_BADFILE:
	case CURLE_SSL_ISSUER_ERROR:
	case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
	case CURLE_SSL_INVALIDCERTSTATUS:
	case CURLE_SSL_CRL_BADFILE:
		return job_fail(j, PERMANENT, EPROTO, "%s", detail);
	case CURLE_UNSUPPORTED_PROTOCOL:
		return job_fail(j, PERMANENT, EPROTONOSUPPORT, "%s", detail);
	case CURLE_URL_MALFORMAT:
		return job_fail(j, PERMANENT, EINVAL, "%s", detail);
	case CURLE_TOO_MANY_REDIRECTS:
		return job_fail(j, PERMANENT, ELOOP, "%s", detail);
	case CURLE_FILE_COULDNT_READ_FILE: {
		int err = file_errno(j);

		return job_fail(j, PERMANENT, err, "%s (%s)", detail, strerror(err));
	}
	case CURLE_OUT_OF_MEMORY:
		return job_fail(j, PERMANENT, ENOMEM, "%s", detail);
	default:
		return job_fail(j, PERMANENT, EIO, "%s", detail);
	}
}

/* ---- one attempt ---- */

static void fetch_digest(struct fetch_job *j)
{
	static const char digits[] = "0123456789abcdef";
	unsigned char d[EVP_MAX_MD_SIZE];
	unsigned int n = 0;

	EVP_DigestFinal_ex(j->md, d, &n);
	for (unsigned int i = 0; i < n && i < 32; i++) {
		j->hex[2 * i] = digits[d[i] >> 4];
		j->hex[2 * i + 1] = digits[d[i] & 15];
	}
	j->hex[64] = '\0';
}

/* The transfer is complete: check the size and the digest. */
static enum outcome fetch_verify(struct fetch_job *j)
{
	if (j->total >= 0 && j->bytes != j->total)
		return job_fail(j, TRANSIENT, EIO, "truncated: got %lld of %lld bytes",
				(long long)j->bytes, (long long)j->total);
	fetch_digest(j);
	if (!j->o->sha256[0] || strcmp(j->hex, j->o->sha256) == 0)
		return DONE;
	if (j->resumed && j->restarts < FETCH_MAX_RESTARTS) {
		/* The kept .part may belong to another version of the file. */
		if (part_reset(j) < 0)
			return job_errno(j, j->part);
		snprintf(j->msg, sizeof(j->msg), "sha256 mismatch after resuming: "
			 "expected %s, got %s", j->o->sha256, j->hex);
		return RESTART;
	}
	return job_fail(j, PERMANENT, EBADMSG, "sha256 mismatch: expected %s, got %s",
			j->o->sha256, j->hex);
}

/* Stop the transfer: interrupted, past the deadline, or stalled. */
static int fetch_stopped(struct fetch_job *j)
{
	double t = drv_clock(CLOCK_MONOTONIC);

	if (interrupt_pending(j))
		j->interrupted = 1;
	else if (j->deadline_at > 0 && t >= j->deadline_at)
		j->deadline_hit = 1;
	else if (t >= stall_end(j))
		j->stalled = 1;
	return j->interrupted || j->deadline_hit || j->stalled;
}

/* How long curl_multi_poll may wait for us (curl shortens it for its own timers). */
static int wait_ms(const struct fetch_job *j)
{
	double end = stall_end(j), left;

	if (j->deadline_at > 0 && j->deadline_at < end)
		end = j->deadline_at;
	left = ceil((end - drv_clock(CLOCK_MONOTONIC)) * 1000);
	return left < 0 ? 0 : left > FETCH_WAIT_MS ? FETCH_WAIT_MS : (int)left;
}

/* One transfer. Through the multi interface rather than curl_easy_perform,
 * which waits up to a second between looks at a stalled transfer: here
 * interrupt_fd wakes the wait at once, and the deadline shortens it. */
static CURLcode fetch_perform(struct fetch_job *j)
{
	struct curl_waitfd wfd = { .fd = j->o->interrupt_fd, .events = CURL_WAIT_POLLIN };
	CURLcode rc = CURLE_OK;
	CURLMcode mc;
	CURLMsg *m;
	int running = 1, queued;

	mc = curl_multi_add_handle(j->multi, j->curl);
	while (mc == CURLM_OK) {
		mc = curl_multi_perform(j->multi, &running);
		if (mc != CURLM_OK || !running || fetch_stopped(j))
			break;
		mc = curl_multi_poll(j->multi, &wfd, wfd.fd >= 0 ? 1 : 0, wait_ms(j), NULL);
		if (mc == CURLM_OK && fetch_stopped(j))
			break;
	}
	while ((m = curl_multi_info_read(j->multi, &queued)))
		if (m->msg == CURLMSG_DONE && m->easy_handle == j->curl)
			rc = m->data.result;
	curl_multi_remove_handle(j->multi, j->curl);
	if (mc != CURLM_OK) {
		snprintf(j->errbuf, sizeof(j->errbuf), "%s", curl_multi_strerror(mc));
		return mc == CURLM_OUT_OF_MEMORY ? CURLE_OUT_OF_MEMORY : CURLE_FAILED_INIT;
	}
	return rc;
}

/* The attempt the deadline cut short: why, in words, for the history. */
static enum outcome deadline_cut(struct fetch_job *j)
{
	double idle = drv_clock(CLOCK_MONOTONIC) - j->t_data;
	char got[80];

	received(got, sizeof(got), j->bytes, j->total);
	if (idle >= j->o->stall_after)
		return job_fail(j, DEADLINE, ETIMEDOUT, "stalled: no data for %.0f s (%s), "
				"stopped by the deadline", floor(idle), got);
	return job_fail(j, DEADLINE, ETIMEDOUT, "stopped by the deadline (%s)", got);
}

static enum outcome fetch_attempt(struct fetch_job *j)
{
	char range[32];
	curl_off_t start, total;
	CURLcode rc;

	j->status = 0;
	j->begun = j->rejected = j->bad_range = j->werr = j->stalled = 0;
	j->reason[0] = j->errbuf[0] = '\0';
	j->total = -1;
	j->retry_after = 0;
	j->quarter = 0;
	j->t_attempt = j->last_show = j->t_data = drv_clock(CLOCK_MONOTONIC);
	j->stall_next = j->o->stall_after;
	j->offset = j->bytes;
	if (j->offset > 0) {
		snprintf(range, sizeof(range), "%lld-", (long long)j->offset);
		curl_easy_setopt(j->curl, CURLOPT_RANGE, range);
	} else {
		curl_easy_setopt(j->curl, CURLOPT_RANGE, NULL);
	}
	rc = fetch_perform(j);
	if (part_flush(j) < 0 && !j->werr)
		j->werr = errno;
	if (j->total >= 0)
		j->size = j->total;
	if (j->lua_failed)
		return LUA_ERROR;
	if (j->werr) {
		errno = j->werr;
		return job_errno(j, j->part);
	}
	if (j->interrupted)
		return INTERRUPTED;
	if (j->deadline_hit)
		return deadline_cut(j);
	if (j->stalled)
		return stall_error(j, NULL);
	if (j->bad_range) {
		content_range(j, &start, &total);
		snprintf(j->msg, sizeof(j->msg), "asked for bytes from %lld, got a range "
			 "from %lld", (long long)j->offset, (long long)start);
		return part_reset(j) < 0 ? job_errno(j, j->part) : RESTART;
	}
	curl_easy_getinfo(j->curl, CURLINFO_RESPONSE_CODE, &j->status);
	if (j->is_http && j->status == 416 && j->offset > 0) {
		content_range(j, &start, &total);
		if (total == j->offset) {	/* the .part was complete already */
			j->total = total;
			j->resumed = 1;
			return fetch_verify(j);
		}
		snprintf(j->msg, sizeof(j->msg), "HTTP 416: the kept .part (%lld bytes) "
			 "does not fit the file (%lld bytes)", (long long)j->offset,
			 (long long)total);
		return part_reset(j) < 0 ? job_errno(j, j->part) : RESTART;
	}
	/* An error status wins over curl's error, unless curl failed to follow
	 * a redirect (a forbidden scheme, too many). */
	if (j->is_http && j->status && (j->status < 200 || j->status >= 400 || j->rejected))
		return http_error(j);
	if (rc != CURLE_OK)
		return curl_error(j, rc);
	if (j->is_http && (j->status >= 300 || (j->status == 206 && j->offset == 0)))
		return http_error(j);
	if (!j->begun && !fetch_begin(j))
		return j->werr ? (errno = j->werr, job_errno(j, j->part)) : http_error(j);
	return fetch_verify(j);
}

/* ---- fetch.get ---- */

/* Sleep s seconds, or until interrupt_fd becomes readable: 1 if it did. */
static int fetch_sleep(const struct fetch_job *j, double s)
{
	struct pollfd pfd = { .fd = j->o->interrupt_fd, .events = POLLIN };
	double end = drv_clock(CLOCK_MONOTONIC) + s, left;

	while ((left = end - drv_clock(CLOCK_MONOTONIC)) > 0)
		if (poll(&pfd, 1, (int)ceil(left * 1000)) > 0)
			return 1;
	return 0;
}

/* Add the attempts run_first..last, which failed alike, to the history. */
static void history_flush(struct fetch_job *j, int last)
{
	size_t len = strlen(j->history), room = sizeof(j->history) - len;
	int n;

	if (!j->run_first)
		return;
	if (j->run_first == last)
		n = snprintf(j->history + len, room, "%sattempt %d: %s", len ? "; " : "",
			     last, j->run_msg);
	else
		n = snprintf(j->history + len, room, "%sattempts %d-%d: %s", len ? "; " : "",
			     j->run_first, last, j->run_msg);
	if (n < 0 || (size_t)n >= room)
		memcpy(j->history + sizeof(j->history) - 4, "...", 4);
	j->run_first = 0;
}

/* Remember why the last attempt failed. */
static void history_add(struct fetch_job *j)
{
	if (j->run_first && strncmp(j->run_msg, j->msg, sizeof(j->run_msg) - 1) == 0)
		return;
	history_flush(j, j->attempts - 1);
	j->run_first = j->attempts;
	snprintf(j->run_msg, sizeof(j->run_msg), "%.*s", (int)sizeof(j->run_msg) - 1, j->msg);
}

static const char *const fetch_optnames[] = {
	"sha256", "resume", "retries", "backoff", "connect_timeout", "timeout",
	"low_speed_time", "deadline", "interrupt_fd", "insecure", "progress", "quiet", NULL
};

static void check_optnames(lua_State *L, int t)
{
	lua_pushnil(L);
	while (lua_next(L, t)) {
		int known = 0;

		lua_pop(L, 1);
		if (lua_type(L, -1) == LUA_TSTRING)
			for (int i = 0; fetch_optnames[i] && !known; i++)
				known = strcmp(lua_tostring(L, -1), fetch_optnames[i]) == 0;
		if (!known)
			luaL_argerror(L, t, lua_pushfstring(L, "unknown option '%s'",
							    luaL_tolstring(L, -1, NULL)));
	}
}

static double check_seconds(lua_State *L, int t, const char *key, double def, double min)
{
	double v = drv_optfield_number(L, t, key, def);

	if (!(v >= min) || !isfinite(v))
		luaL_argerror(L, t, lua_pushfstring(L, "field '%s': %s expected", key,
						    min > 0 ? "positive number" : "number >= 0"));
	return v;
}

/* An open descriptor, or -1 when the field is absent. */
static int check_fd(lua_State *L, int t, const char *key)
{
	lua_Integer fd = drv_optfield_integer(L, t, key, LUA_MININTEGER);

	if (fd == LUA_MININTEGER)
		return -1;
	if (fd < 0 || fd > INT_MAX || fcntl((int)fd, F_GETFD) < 0)
		luaL_argerror(L, t, lua_pushfstring(L, "field '%s': open file descriptor expected, "
						    "got %I", key, fd));
	return (int)fd;
}

static void parse_opts(lua_State *L, int t, struct fetch_opts *o)
{
	const char *sha;
	size_t i;

	memset(o, 0, sizeof(*o));
	if (t)
		check_optnames(L, t);
	sha = drv_optfield_string(L, t, "sha256", NULL);
	if (sha) {
		for (i = 0; i < 64 && sha[i] && strchr("0123456789abcdefABCDEF", sha[i]); i++)
			o->sha256[i] = (char)(sha[i] | 0x20);	/* lowercase */
		if (i != 64 || sha[i])
			luaL_argerror(L, t, lua_pushfstring(L, "field 'sha256': 64 hex digits "
							    "expected, got '%s'", sha));
		o->sha256[64] = '\0';
	}
	o->resume = drv_optfield_boolean(L, t, "resume", 0);
	o->retries = drv_optfield_integer(L, t, "retries", 3);
	if (o->retries < 0 || o->retries > 1000)
		luaL_argerror(L, t, "field 'retries': integer in 0..1000 expected");
	o->backoff = check_seconds(L, t, "backoff", 1.0, 0);
	o->connect_timeout = check_seconds(L, t, "connect_timeout", 30, 1e-3);
	o->timeout = check_seconds(L, t, "timeout", 0, 0);
	o->low_speed_time = drv_optfield_integer(L, t, "low_speed_time", 60);
	if (o->low_speed_time < 0 || o->low_speed_time > LONG_MAX)
		luaL_argerror(L, t, "field 'low_speed_time': integer >= 0 expected");
	o->stall_after = o->low_speed_time > 0 ?
		fmin(fmax(o->low_speed_time / 3.0, 1), FETCH_STALL_MAX) : FETCH_STALL_MAX;
	o->deadline = check_seconds(L, t, "deadline", 0, 0);
	o->interrupt_fd = check_fd(L, t, "interrupt_fd");
	o->insecure = drv_optfield_boolean(L, t, "insecure", 0);
	o->quiet = drv_optfield_boolean(L, t, "quiet", 0);
	o->show = o->quiet ? SHOW_NONE : isatty(STDERR_FILENO) ? SHOW_BAR : SHOW_LINES;
	if (!t || lua_getfield(L, t, "progress") == LUA_TNIL)
		return;			/* (the nil is the caller's slot 4) */
	if (lua_isfunction(L, -1)) {
		o->progress = lua_gettop(L);	/* stays on the stack */
		o->show = SHOW_NONE;
		return;
	}
	if (!lua_isboolean(L, -1) || lua_toboolean(L, -1))
		luaL_argerror(L, t, lua_pushfstring(L, "field 'progress': function or false "
						    "expected, got %s", luaL_typename(L, -1)));
	o->show = SHOW_NONE;
}

static long msec(double s)
{
	return (long)fmin(ceil(s * 1000), (double)LONG_MAX / 2);
}

/* Parse the URL into j->cu; 0 and the scheme kind, or a failure. */
static enum outcome fetch_url(struct fetch_job *j)
{
	CURLUcode uc;
	char *scheme = NULL;
	enum outcome r = DONE;

	j->cu = curl_url();
	if (!j->cu)
		return job_fail(j, PERMANENT, ENOMEM, "%s", strerror(ENOMEM));
	uc = curl_url_set(j->cu, CURLUPART_URL, j->url, CURLU_NON_SUPPORT_SCHEME);
	if (uc != CURLUE_OK)
		return job_fail(j, PERMANENT, EINVAL, "malformed URL (%s)", curl_url_strerror(uc));
	uc = curl_url_get(j->cu, CURLUPART_SCHEME, &scheme, 0);
	if (uc != CURLUE_OK)
		return job_fail(j, PERMANENT, EINVAL, "malformed URL (%s)", curl_url_strerror(uc));
	if (strcasecmp(scheme, "http") == 0 || strcasecmp(scheme, "https") == 0)
		j->is_http = 1;
	else if (strcasecmp(scheme, "file") != 0)
		r = job_fail(j, PERMANENT, EPROTONOSUPPORT,
			     "unsupported scheme '%s' (https, http or file)", scheme);
	curl_free(scheme);
	if (r == DONE && !j->is_http)
		r = file_check(j);
	return r;
}

static enum outcome fetch_setup(struct fetch_job *j)
{
	const struct fetch_opts *o = j->o;
	CURL *c;
	CURLcode rc = CURLE_OK;

	j->md = EVP_MD_CTX_new();
	j->multi = curl_multi_init();
	j->curl = c = curl_easy_init();
	j->wbuf = malloc(FETCH_WBUFSIZE);
	if (!j->md || !j->multi || !c || !j->wbuf)
		return job_fail(j, PERMANENT, ENOMEM, "%s", strerror(ENOMEM));
#define SET(opt, val) do { if (rc == CURLE_OK) rc = curl_easy_setopt(c, opt, val); } while (0)
	SET(CURLOPT_CURLU, j->cu);
	SET(CURLOPT_PROTOCOLS_STR, FETCH_PROTOCOLS);
	SET(CURLOPT_REDIR_PROTOCOLS_STR, FETCH_REDIR_PROTOCOLS);
	SET(CURLOPT_FOLLOWLOCATION, 1L);
	SET(CURLOPT_MAXREDIRS, FETCH_MAX_REDIRS);
	SET(CURLOPT_NOSIGNAL, 1L);
	SET(CURLOPT_ERRORBUFFER, j->errbuf);
	SET(CURLOPT_BUFFERSIZE, FETCH_BUFSIZE);
	SET(CURLOPT_WRITEFUNCTION, fetch_write);
	SET(CURLOPT_WRITEDATA, j);
	SET(CURLOPT_HEADERFUNCTION, fetch_header);
	SET(CURLOPT_HEADERDATA, j);
	SET(CURLOPT_CONNECTTIMEOUT_MS, msec(o->connect_timeout));
	SET(CURLOPT_TIMEOUT_MS, msec(o->timeout));
	SET(CURLOPT_LOW_SPEED_LIMIT, 1024L);
	SET(CURLOPT_LOW_SPEED_TIME, (long)o->low_speed_time);
	SET(CURLOPT_TCP_KEEPALIVE, 1L);
	SET(CURLOPT_USERAGENT, "drvrun/" DRV_VERSION);
	SET(CURLOPT_SSL_VERIFYPEER, o->insecure ? 0L : 1L);
	SET(CURLOPT_SSL_VERIFYHOST, o->insecure ? 0L : 2L);
	if (o->progress || o->show != SHOW_NONE) {
		SET(CURLOPT_XFERINFOFUNCTION, fetch_xferinfo);
		SET(CURLOPT_XFERINFODATA, j);
		SET(CURLOPT_NOPROGRESS, 0L);
	}
#undef SET
	if (rc != CURLE_OK)
		return job_fail(j, PERMANENT, EIO, "%s", curl_easy_strerror(rc));
	return DONE;
}

/* Retry loop; DONE leaves the verified file in the .part. */
static enum outcome fetch_run(struct fetch_job *j)
{
	const struct fetch_opts *o = j->o;
	double delay = o->backoff;
	enum outcome r;

	for (;;) {
		char line[sizeof(j->msg) + PATH_MAX + 64];

		if (interrupt_pending(j))
			return INTERRUPTED;
		j->attempts++;
		r = fetch_attempt(j);
		if (r == RESTART && j->restarts < FETCH_MAX_RESTARTS) {
			j->restarts++;
			j->attempts--;	/* a restart is not a retry */
			if (!o->quiet) {
				snprintf(line, sizeof(line), "fetch %s: %s; downloading again "
					 "from the start", j->url, j->msg);
				say(j, "warn", line);
			}
			continue;
		}
		if (r == RESTART)
			return job_fail(j, PERMANENT, EIO, "%s", j->msg);
		if (r == TRANSIENT || r == DEADLINE)
			history_add(j);
		if (r != TRANSIENT || j->attempts > o->retries)
			return r;
		delay = fmax(delay, j->retry_after);
		if (j->deadline_at > 0 && drv_clock(CLOCK_MONOTONIC) + delay >= j->deadline_at) {
			j->retry_due = delay;
			return DEADLINE;
		}
		if (!o->quiet) {
			snprintf(line, sizeof(line), "fetch %s: %s; retry %d of %d in %.1f s",
				 j->url, j->msg, j->attempts, (int)o->retries, delay);
			say(j, "warn", line);
		}
		if (fetch_sleep(j, delay))
			return INTERRUPTED;
		delay = fmin(delay * 2, 3600);
		if ((!o->resume || !j->is_http) && part_reset(j) < 0)
			return job_errno(j, j->part);
	}
}

/* Make the verified .part the destination: fsync, rename, fsync the directory. */
static enum outcome fetch_install(struct fetch_job *j, const char *dest)
{
	char dir[PATH_MAX];
	const char *slash = strrchr(dest, '/');
	int dfd;

	if (fsync(j->fd) < 0)
		return job_errno(j, j->part);
	if (rename(j->part, dest) < 0) {
		int err = errno;

		return job_fail(j, PERMANENT, err, "cannot rename %s to %s: %s",
				j->part, dest, strerror(err));
	}
	j->own_part = 0;
	if (!slash)
		snprintf(dir, sizeof(dir), ".");
	else if (slash == dest)
		snprintf(dir, sizeof(dir), "/");
	else
		snprintf(dir, sizeof(dir), "%.*s", (int)(slash - dest), dest);
	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd >= 0) {
		fsync(dfd);	/* best effort: some file systems refuse it */
		close(dfd);
	}
	return DONE;
}

static const char *seconds(char *buf, size_t size, double s)
{
	snprintf(buf, size, s < 10 ? "%.1f" : "%.0f", s);
	return buf;
}

/* The deadline ended the call: how long, how many attempts, what arrived, why each stopped. */
static int deadline_fail(lua_State *L, struct fetch_job *j)
{
	char got[32], size[48] = "", retry[96] = "", took[32], dl[32];

	history_flush(j, j->attempts);
	snprintf(dl, sizeof(dl), "%g", j->o->deadline);
	human(got, sizeof(got), j->transferred, 0);
	if (j->size >= 0) {
		char n[32];

		snprintf(size, sizeof(size), " (file size %s)", human(n, sizeof(n), j->size, 0));
	}
	if (j->retry_due >= 0)
		snprintf(retry, sizeof(retry), "; retry %d would start after the deadline (in %.1f s)",
			 j->attempts, j->retry_due);
	return drv_fail(L, ETIMEDOUT, "%s: deadline of %s s reached: %d attempt%s in %s s, "
			"%s received in all%s; %s%s", j->url, dl,
			j->attempts, j->attempts == 1 ? "" : "s",
			seconds(took, sizeof(took), drv_clock(CLOCK_MONOTONIC) - j->t0), got, size,
			j->history, retry);
}

static void set_field_integer(lua_State *L, const char *k, lua_Integer v)
{
	lua_pushinteger(L, v);
	lua_setfield(L, -2, k);
}

/* libcurl's global set-up, at the first download rather than at require
 * (which would load libcurl and its libraries into every run; see lazy.h). */
static void fetch_global_init(lua_State *L)
{
	static int curl_ready;
	CURLcode rc;

	if (curl_ready)
		return;
	DRV_LAZY_LOAD(L, CURL);
	DRV_LAZY_LOAD(L, CRYPTO);
	rc = curl_global_init(CURL_GLOBAL_DEFAULT);
	if (rc != CURLE_OK)
		luaL_error(L, "drv.fetch: curl_global_init: %s", curl_easy_strerror(rc));
	curl_ready = 1;
}

/***
 * Download a URL to a file, verified by SHA-256.
 *
 * The body goes to "<dest>.part" (locked while in use), hashed as it arrives;
 * once complete and matching `opts.sha256` it is fsync'ed and renamed onto
 * `dest`. A failure never leaves anything at `dest` (an existing file stays
 * as it was). Transient failures (connect errors, timeouts, truncated bodies,
 * HTTP 408, 429, 5xx) are retried with exponential backoff; with `resume` the
 * .part survives them and later attempts or calls continue it with a Range
 * request (a server that answers 200 restarts the file cleanly). A body that
 * stalls (no byte for `low_speed_time` s) ends its attempt, and is said so in the
 * progress output while it lasts. `deadline` bounds the whole call; once
 * `interrupt_fd` is readable the call stops at once (the fd is not read).
 * @function get
 * @tparam string url `https://`, `http://` or `file://` URL (redirects: http(s) only)
 * @tparam string dest destination path
 * @tparam[opt] table opts `{ sha256 = "<64 hex>", resume = false, retries = 3,
 *   backoff = 1.0, connect_timeout = 30, timeout = 0, low_speed_time = 60,
 *   deadline = 0 (seconds for the whole call, 0: none), interrupt_fd = fd,
 *   insecure = false, progress = function(done, total|nil, stalled_for) | false,
 *   quiet = false }`
 * @treturn[1] table `{ path = dest, sha256 = "<hex>", bytes = n, transferred = n,
 *   resumed = bool, attempts = n, seconds = s }`
 * @treturn[2] nil
 * @treturn[2] string message "URL: cause", e.g. "…: HTTP 404 Not Found"
 * @treturn[2] string errno: ENOENT (404, 410, missing file), EACCES (401, 403),
 *   EBADMSG (sha256 mismatch), ETIMEDOUT (stall, timeout, deadline), EINTR
 *   ("…: interrupted", by interrupt_fd), ECONNREFUSED, EHOSTUNREACH (DNS),
 *   EPROTO (TLS), EPROTONOSUPPORT (scheme), EINVAL (malformed URL), ELOOP
 *   (redirects), EBUSY (.part in use), a file errno (ENOSPC…), else EIO
 * @raise on bad arguments and options, or when `progress` raises (after cleanup)
 * @see curl_multi_poll(3), EVP_DigestUpdate(3), rename(2)
 */
static int fetch_get(lua_State *L)
{
	size_t urllen, destlen;
	const char *url = luaL_checklstring(L, 1, &urllen);
	const char *dest = luaL_checklstring(L, 2, &destlen);
	int t = drv_opttable(L, 3);
	struct fetch_opts o;
	struct fetch_job *j;
	enum outcome r;

	luaL_argcheck(L, strlen(url) == urllen, 1, "string contains a zero byte");
	luaL_argcheck(L, destlen > 0, 2, "empty path");
	luaL_argcheck(L, strlen(dest) == destlen, 2, "string contains a zero byte");
	lua_settop(L, 3);
	parse_opts(L, t, &o);
	fetch_global_init(L);
	lua_settop(L, 4);			/* 4: progress function, nil or false */
	lua_pushnil(L);				/* 5: error from a callback */
	luaL_checkstack(L, 10, "fetch.get");
	j = lua_newuserdatauv(L, sizeof(*j) + destlen + sizeof(".part"), 0);	/* 6 */
	memset(j, 0, sizeof(*j));
	j->fd = -1;
	luaL_setmetatable(L, FETCH_JOB);
	j->L = L;
	j->url = url;
	j->o = &o;
	j->errslot = 5;
	j->keep_part = o.resume;
	j->t0 = drv_clock(CLOCK_MONOTONIC);
	j->deadline_at = o.deadline > 0 ? j->t0 + o.deadline : 0;
	j->retry_due = -1;
	j->size = -1;
	snprintf(j->part, destlen + sizeof(".part"), "%s.part", dest);
	{
		const char *q = strpbrk(url, "?#"), *e = q ? q : url + strlen(url), *s = e;

		while (s > url && s[-1] != '/')
			s--;
		snprintf(j->name, sizeof(j->name), "%.*s", (int)(e - s), s);
	}

	r = fetch_url(j);
	if (r == DONE)
		r = fetch_setup(j);
	if (r == DONE)
		r = part_prepare(j);
	if (r == DONE)
		r = fetch_run(j);
	if (r == DONE && o.progress) {
		j->total = j->bytes;
		if (!call_progress(j, 0))
			r = LUA_ERROR;
	}
	if (r == DONE)
		r = fetch_install(j, dest);
	if (r != DONE) {
		/* Keep a .part worth resuming: resume asked, a transient failure
		 * (or an aborting callback, an interrupt, the deadline), bytes in it. */
		j->keep_part = o.resume && j->bytes > 0 && (r == TRANSIENT || r == LUA_ERROR ||
							    r == INTERRUPTED || r == DEADLINE);
		if (j->bar_drawn)
			fputc('\n', stderr);
		job_release(j);
		if (r == LUA_ERROR) {
			lua_pushvalue(L, j->errslot);
			return lua_error(L);
		}
		if (r == INTERRUPTED)
			return drv_fail(L, EINTR, "%s: interrupted", url);
		if (r == DEADLINE)
			return deadline_fail(L, j);
		if (j->attempts > 1)
			return drv_fail(L, j->err, "%s: %s (after %d attempts)", url, j->msg,
					j->attempts);
		return drv_fail(L, j->err, "%s: %s", url, j->msg);
	}
	if (o.show != SHOW_NONE) {
		j->total = j->bytes;
		show_progress(j, drv_clock(CLOCK_MONOTONIC), 1);
	}
	job_release(j);

	lua_createtable(L, 0, 7);
	lua_pushstring(L, dest);
	lua_setfield(L, -2, "path");
	lua_pushstring(L, j->hex);
	lua_setfield(L, -2, "sha256");
	set_field_integer(L, "bytes", (lua_Integer)j->bytes);
	set_field_integer(L, "transferred", (lua_Integer)j->transferred);
	lua_pushboolean(L, j->resumed);
	lua_setfield(L, -2, "resumed");
	set_field_integer(L, "attempts", j->attempts);
	lua_pushnumber(L, drv_clock(CLOCK_MONOTONIC) - j->t0);
	lua_setfield(L, -2, "seconds");
	return 1;
}

static const luaL_Reg fetch_funcs[] = {
	{ "get", fetch_get },
	{ NULL, NULL }
};

static const luaL_Reg job_meta[] = {
	{ "__gc", job_gc },
	{ "__close", job_gc },
	{ "__tostring", job_tostring },
	{ NULL, NULL }
};

int luaopen_drv_fetch(lua_State *L)
{
	drv_newclass(L, FETCH_JOB, NULL, job_meta);
	luaL_newlib(L, fetch_funcs);
	return 1;
}
