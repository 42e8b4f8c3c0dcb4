/* transfer.c - drv.transfer: one attempt at a time of a download over libcurl
 * (https, http, file) into a locked "<dest>.part", hashed with SHA-256 while it
 * streams, and the verified file's atomic install; retries, backoff, the deadline,
 * progress and stall lines are drv.fetch's (Lua), decided on each attempt's
 * report. A job (userdata) owns the curl handles, the URL, the digest and the
 * .part. curl never sees a longjmp: the progress function runs under lua_pcall.
 * The 16 KiB curl hands the write callback are hashed at once and gathered into
 * TRANSFER_WBUFSIZE writes (a hashing thread: no gain on 2 cores measured). */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
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
#include <unistd.h>

#include <curl/curl.h>
#include <openssl/evp.h>

#include "drv.h"
#include "lazy.h"

#define JOB_MT				"drv.transfer.job"
#define TRANSFER_BUFSIZE		(512L * 1024)	/* curl's receive buffer */
#define TRANSFER_WBUFSIZE		(1L << 20)	/* writes to the .part */
#define TRANSFER_PROGRESS_INTERVAL	0.1	/* the progress function: at most 10 calls a second */
#define TRANSFER_WAIT_MS		1000	/* longest wait in curl_multi_poll */
#define MSEC(s)				((long)fmin(ceil((s) * 1000), (double)LONG_MAX / 2))
#define ERRSLOT				4	/* job:attempt's stack slot for a progress function's error */

/* What an attempt came to: the report's outcome (OUTCOMES), or LUA_ERROR. */
enum outcome { DONE, TRANSIENT, PERMANENT, HTTP, TIMEOUT, STALLED, DEADLINE, INTERRUPTED, RESTART, MISMATCH,
	       LUA_ERROR };
static const char *const OUTCOMES[] = { "done", "failed", "failed", "http", "timeout", "stalled", "deadline",
					"interrupted", "restart", "mismatch" };

struct job {
	CURLM *multi;
	CURL *curl;
	CURLU *cu;
	EVP_MD_CTX *md;
	int fd;			/* the locked .part, -1 when closed */
	char *wbuf;		/* bytes hashed but not yet written to fd */
	size_t wlen;
	int own_part;		/* we locked the .part: closing may unlink it */
	int is_http, resume;	/* resume: continue the .part (http only) */
	char sha256[65];	/* expected digest, lowercase; "" when not given */
	lua_Integer low_speed_time;
	int interrupt_fd;	/* readable => stop; -1 if none */
	curl_off_t bytes;	/* in the .part, all of them in the digest */
	int resumed;		/* the .part continues bytes of an earlier response */
	int digested;		/* the digest is final (hex): the next attempt starts over */
	int verified;		/* ... and it matched: the .part may be installed */
	char hex[65];

	/* the attempt in progress, or the last one */
	lua_State *L;		/* set while in an attempt */
	int progress;		/* a progress function was given (stack slot 2) */
	enum outcome ended;	/* why the transfer was cut short, DONE if it was not */
	double deadline;	/* monotonic end of the attempt, 0 for none */
	long status;		/* HTTP status, 0 for file:// */
	int begun, rejected;	/* status accepted (the .part ready for the body); body refused */
	curl_off_t offset;	/* bytes of the .part this attempt continues */
	curl_off_t total;	/* size of the file, -1 if unknown */
	curl_off_t received;	/* body bytes of this attempt */
	double t_data, last_cb;	/* last body byte (or the start of the attempt); progress call */
	int err;		/* errno of the failure */
	char errbuf[CURL_ERROR_SIZE];
	char msg[PATH_MAX + 512];
	char part[];		/* "<dest>.part" */
};

/* ---- the job: one idempotent release for close, __gc and __close ---- */

static void job_release(struct job *j, int keep_part)
{
	if (j->own_part && !keep_part)
		unlink(j->part);	/* under the lock, before close() drops it */
	j->own_part = 0;
	if (j->fd >= 0)
		close(j->fd);
	j->fd = -1;
	curl_easy_cleanup(j->curl);	/* each accepts NULL */
	j->curl = NULL;
	curl_multi_cleanup(j->multi);
	j->multi = NULL;
	curl_url_cleanup(j->cu);
	j->cu = NULL;
	EVP_MD_CTX_free(j->md);
	j->md = NULL;
	free(j->wbuf);
	j->wbuf = NULL;
}

/* The job at 1, not in an attempt; open (not closed) if open is set. */
static struct job *job_check(lua_State *L, int open)
{
	struct job *j = luaL_checkudata(L, 1, JOB_MT);

	luaL_argcheck(L, !j->L, 1, "the job is in an attempt (called from its progress function)");
	luaL_argcheck(L, !open || j->fd >= 0, 1, "the job is closed");
	return j;
}

static int job_gc(lua_State *L)
{
	struct job *j = luaL_checkudata(L, 1, JOB_MT);

	if (!j->L)	/* never under curl */
		job_release(j, 0);
	return 0;
}

/***
 * Close the job: the .part is removed, unless keep is set and it holds bytes (to
 * be resumed later). `__gc` and `__close` close it too, removing the .part.
 * @function job:close
 * @tparam[opt] boolean keep
 */
static int job_close(lua_State *L)
{
	struct job *j = job_check(L, 0);

	job_release(j, lua_toboolean(L, 2) && j->bytes > 0);
	return 0;
}

static int job_tostring(lua_State *L)
{
	struct job *j = luaL_checkudata(L, 1, JOB_MT);

	lua_pushfstring(L, JOB_MT " (%s%s)", j->part, j->fd >= 0 ? "" : ", closed");
	return 1;
}

/* Record a failure: errno and message. */
static __attribute__((format(printf, 4, 5)))
enum outcome job_fail(struct job *j, enum outcome how, int err, const char *fmt, ...)
{
	va_list ap;

	j->err = err;
	va_start(ap, fmt);
	vsnprintf(j->msg, sizeof(j->msg), fmt, ap);
	va_end(ap);
	return how;
}

static enum outcome job_errno(struct job *j)
{
	int err = errno;

	return job_fail(j, PERMANENT, err, "%s: %s", j->part, strerror(err));
}

/* interrupt_fd is readable (or hung up): stop. A signalfd's signal is left to the caller. */
static int interrupt_pending(const struct job *j)
{
	struct pollfd pfd = { .fd = j->interrupt_fd, .events = POLLIN };

	return pfd.fd >= 0 && poll(&pfd, 1, 0) > 0;
}

/* ---- the .part file ---- */

/* Write out the buffered bytes: the .part then holds all j->bytes. */
static int part_flush(struct job *j)
{
	size_t len = j->wlen;

	j->wlen = 0;
	return drv_write_all(j->fd, j->wbuf, len);
}

static int digest_init(struct job *j)
{
	if (EVP_DigestInit_ex(j->md, EVP_sha256(), NULL) == 1)
		return 0;
	errno = ENOMEM;
	return -1;
}

/* Empty the .part and the digest: the next bytes start the file. */
static int part_reset(struct job *j)
{
	j->wlen = 0;
	if (ftruncate(j->fd, 0) < 0 || lseek(j->fd, 0, SEEK_SET) < 0 || digest_init(j) < 0)
		return -1;
	j->bytes = j->offset = 0;
	j->resumed = j->digested = j->verified = 0;
	return 0;
}

/* Open and lock "<dest>.part". A .part some other process holds is refused
 * (EBUSY); one renamed or removed between open and lock is opened again. */
static enum outcome part_open(struct job *j)
{
	struct stat fst, pst;

	for (int tries = 0; tries < 10; tries++) {
		j->fd = open(j->part, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0666);
		if (j->fd < 0)
			return job_errno(j);
		if (flock(j->fd, LOCK_EX | LOCK_NB) < 0)	/* (not own_part: closing leaves the file) */
			return errno == EWOULDBLOCK ?
				job_fail(j, PERMANENT, EBUSY, "%s: in use by another download", j->part) : job_errno(j);
		if (fstat(j->fd, &fst) < 0)
			return job_errno(j);
		if (stat(j->part, &pst) == 0 && pst.st_ino == fst.st_ino && pst.st_dev == fst.st_dev) {
			if (!S_ISREG(fst.st_mode))
				return job_fail(j, PERMANENT, EINVAL, "%s: not a regular file", j->part);
			j->own_part = 1;
			return DONE;
		}
		close(j->fd);
		j->fd = -1;
	}
	return job_fail(j, PERMANENT, EBUSY, "%s: keeps changing", j->part);
}

/* Prepare the .part: hash what a resumable one holds (through wbuf), else empty it. */
static enum outcome part_prepare(struct job *j)
{
	enum outcome r = part_open(j);
	ssize_t n;

	if (r != DONE)
		return r;
	if (!j->resume)
		return part_reset(j) < 0 ? job_errno(j) : DONE;
	if (digest_init(j) < 0)
		return job_errno(j);
	while ((n = read(j->fd, j->wbuf, TRANSFER_WBUFSIZE)) != 0) {
		if (interrupt_pending(j))	/* hashing a GiB .part takes seconds */
			return job_fail(j, INTERRUPTED, EINTR, "interrupted");
		if (n < 0 && errno != EINTR)
			return job_errno(j);
		if (n > 0) {
			EVP_DigestUpdate(j->md, j->wbuf, (size_t)n);
			j->bytes += n;
		}
	}
	return DONE;
}

/* ---- curl callbacks ---- */

/* "bytes A-B/T" or "bytes * /T" (no space) of this response; -1 for what is absent. */
static void content_range(struct job *j, curl_off_t *start, curl_off_t *total)
{
	struct curl_header *h;
	long long a = -1, t = -1;

	if (curl_easy_header(j->curl, "Content-Range", 0, CURLH_HEADER, -1, &h) == CURLHE_OK &&
	    sscanf(h->value, "bytes %lld-%*[0-9]/%lld", &a, &t) < 1)
		sscanf(h->value, "bytes */%lld", &t);
	*start = a;
	*total = t;
}

/* First body bytes (or the end of a bodiless response): check the status and
 * make the .part ready for them. Returns 0 to refuse the body. */
static int transfer_begin(struct job *j)
{
	curl_off_t cl = -1, start, total;

	j->begun = 1;
	curl_easy_getinfo(j->curl, CURLINFO_RESPONSE_CODE, &j->status);
	curl_easy_getinfo(j->curl, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
	j->total = cl;	/* (an error status's body is no file: its size is not reported) */
	if (!j->is_http)
		return 1;
	if (j->status == 206 && j->offset > 0) {
		content_range(j, &start, &total);
		if (start != j->offset) {	/* (the .part is emptied once curl is done with it) */
			j->ended = job_fail(j, RESTART, EIO, "asked for bytes from %lld, got a range from %lld",
					    (long long)j->offset, (long long)start);
			return 0;
		}
		j->total = total >= 0 ? total : cl >= 0 ? j->offset + cl : -1;
		j->resumed = 1;
		return 1;
	}
	j->rejected = j->status < 200 || j->status >= 300 || j->status == 206;
	if (j->rejected)
		return 0;
	/* A full body: when we asked for a range, the server ignored it. */
	if (j->offset > 0 && part_reset(j) < 0) {
		j->ended = job_errno(j);
		return 0;
	}
	return 1;
}

/* Body bytes: into the digest, and to the .part through wbuf. */
static size_t transfer_write(char *p, size_t size, size_t n, void *ud)
{
	struct job *j = ud;
	size_t len = size * n;

	if (!j->begun && !transfer_begin(j))
		return CURL_WRITEFUNC_ERROR;
	if ((j->wlen + len > TRANSFER_WBUFSIZE && part_flush(j) < 0) ||
	    (len > TRANSFER_WBUFSIZE && drv_write_all(j->fd, p, len) < 0)) {
		j->ended = job_errno(j);
		return CURL_WRITEFUNC_ERROR;
	}
	if (len <= TRANSFER_WBUFSIZE) {
		memcpy(j->wbuf + j->wlen, p, len);
		j->wlen += len;
	}
	EVP_DigestUpdate(j->md, p, len);
	j->bytes += (curl_off_t)len;
	j->received += (curl_off_t)len;
	j->t_data = drv_clock(CLOCK_MONOTONIC);
	return len;
}

/* The progress function (see job:attempt), under lua_pcall: an error it raises
 * is kept in ERRSLOT and aborts the transfer. */
static int transfer_progress(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
			     curl_off_t ulnow)
{
	struct job *j = ud;
	lua_State *L = j->L;
	double t = drv_clock(CLOCK_MONOTONIC);

	(void)dltotal, (void)dlnow, (void)ultotal, (void)ulnow;
	if (t - j->last_cb < TRANSFER_PROGRESS_INTERVAL)
		return 0;
	j->last_cb = t;
	lua_pushvalue(L, 2);	/* none of these allocates: job:attempt made room on the stack */
	lua_pushinteger(L, (lua_Integer)j->bytes);
	if (j->total >= 0)
		lua_pushinteger(L, (lua_Integer)j->total);
	else
		lua_pushnil(L);
	lua_pushnumber(L, t - j->t_data);
	lua_pushinteger(L, (lua_Integer)j->received);
	if (lua_pcall(L, 4, 0, 0) == LUA_OK)
		return 0;
	lua_replace(L, ERRSLOT);
	j->ended = LUA_ERROR;
	return 1;	/* aborts the transfer */
}

/* What curl's failures mean: an errno (or the OS's, when curl has one and os
 * is set), and whether another attempt may do better. */
static const struct {
	CURLcode code;
	int err, os, transient;
} curl_failures[] = {
	{ CURLE_COULDNT_CONNECT, ECONNREFUSED, 1, 1 }, { CURLE_COULDNT_RESOLVE_HOST, EHOSTUNREACH, 0, 1 },
	{ CURLE_COULDNT_RESOLVE_PROXY, EHOSTUNREACH, 0, 1 }, { CURLE_SSL_CONNECT_ERROR, EPROTO, 0, 1 },
	{ CURLE_GOT_NOTHING, EIO, 1, 1 }, { CURLE_SEND_ERROR, EIO, 1, 1 }, { CURLE_RECV_ERROR, EIO, 1, 1 },
	{ CURLE_HTTP2, EIO, 1, 1 }, { CURLE_HTTP2_STREAM, EIO, 1, 1 },
	{ CURLE_PEER_FAILED_VERIFICATION, EPROTO, 0, 0 }, { CURLE_SSL_CERTPROBLEM, EPROTO, 0, 0 },
	{ CURLE_SSL_CIPHER, EPROTO, 0, 0 }, { CURLE_SSL_CACERT_BADFILE, EPROTO, 0, 0 },
	{ CURLE_SSL_ISSUER_ERROR, EPROTO, 0, 0 }, { CURLE_SSL_PINNEDPUBKEYNOTMATCH, EPROTO, 0, 0 },
	{ CURLE_SSL_INVALIDCERTSTATUS, EPROTO, 0, 0 }, { CURLE_SSL_CRL_BADFILE, EPROTO, 0, 0 },
	{ CURLE_UNSUPPORTED_PROTOCOL, EPROTONOSUPPORT, 0, 0 }, { CURLE_URL_MALFORMAT, EINVAL, 0, 0 },
	{ CURLE_TOO_MANY_REDIRECTS, ELOOP, 0, 0 }, { CURLE_OUT_OF_MEMORY, ENOMEM, 0, 0 },
	{ CURLE_FILE_COULDNT_READ_FILE, EIO, 0, 0 },	/* (transfer_url checks the file first) */
};

/* The body ended short of its size. detail: what curl said, or NULL. */
static enum outcome truncated(struct job *j, const char *detail)
{
	if (j->total >= 0)
		return job_fail(j, TRANSIENT, EIO, "truncated: got %lld of %lld bytes",
				(long long)j->bytes, (long long)j->total);
	return job_fail(j, TRANSIENT, EIO, "truncated: got %lld bytes (%s)", (long long)j->bytes, detail);
}

static enum outcome curl_error(struct job *j, CURLcode rc)
{
	const char *detail = j->errbuf[0] ? j->errbuf : curl_easy_strerror(rc);
	long oserr = 0;

	curl_easy_getinfo(j->curl, CURLINFO_OS_ERRNO, &oserr);
	if (rc == CURLE_OPERATION_TIMEDOUT)	/* the timeout or the low-speed limit: drv.fetch words it */
		return job_fail(j, TIMEOUT, ETIMEDOUT, "%s", detail);
	if (rc == CURLE_PARTIAL_FILE)
		return truncated(j, detail);
	if (rc == CURLE_COULDNT_CONNECT && oserr && !strstr(detail, strerror((int)oserr)))
		return job_fail(j, TRANSIENT, (int)oserr, "%s (%s)", detail, strerror((int)oserr));
	for (size_t i = 0; i < sizeof(curl_failures) / sizeof(curl_failures[0]); i++)
		if (curl_failures[i].code == rc)
			return job_fail(j, curl_failures[i].transient ? TRANSIENT : PERMANENT,
					curl_failures[i].os && oserr ? (int)oserr : curl_failures[i].err, "%s", detail);
	return job_fail(j, PERMANENT, EIO, "%s", detail);
}

/* ---- one attempt ---- */

/* The transfer is complete: check the size and the digest. */
static enum outcome transfer_verify(struct job *j)
{
	unsigned char d[EVP_MAX_MD_SIZE];
	unsigned int n = 0;

	if (j->total >= 0 && j->bytes != j->total)
		return truncated(j, NULL);
	EVP_DigestFinal_ex(j->md, d, &n);
	for (unsigned int i = 0; i < n && i < 32; i++)
		snprintf(j->hex + 2 * i, 3, "%02x", d[i]);
	j->digested = 1;
	j->verified = !j->sha256[0] || strcmp(j->hex, j->sha256) == 0;
	return j->verified ? DONE : MISMATCH;
}

/* When the transfer must end (monotonic): the deadline, or a begun body stalled for
 * good; else INFINITY. curl's low-speed limit ends a stall up to 5 s late (it averages
 * over 5 s), and its timeout fires up to hundreds of ms late. */
static double transfer_end(const struct job *j)
{
	double end = j->deadline > 0 ? j->deadline : INFINITY;

	if (j->begun && j->low_speed_time > 0)
		end = fmin(end, j->t_data + (double)j->low_speed_time);
	return end;
}

/* Cut the transfer short: ended by a callback, interrupted, at the deadline, or stalled. */
static int transfer_ended(struct job *j)
{
	double t = drv_clock(CLOCK_MONOTONIC);

	if (!j->ended && interrupt_pending(j))
		j->ended = INTERRUPTED;
	else if (!j->ended && t >= transfer_end(j))
		j->ended = j->deadline > 0 && t >= j->deadline ? DEADLINE : STALLED;
	return j->ended != DONE;
}

/* One transfer. Through the multi interface rather than curl_easy_perform,
 * which waits up to a second between looks at a stalled transfer: here
 * interrupt_fd wakes the wait at once, and a stall ends it. */
static CURLcode transfer_perform(struct job *j)
{
	struct curl_waitfd wfd = { .fd = j->interrupt_fd, .events = CURL_WAIT_POLLIN };
	CURLcode rc = CURLE_OK;
	CURLMcode mc;
	CURLMsg *m;
	int running = 1, queued;
	double wait;

	mc = curl_multi_add_handle(j->multi, j->curl);
	while (mc == CURLM_OK) {
		mc = curl_multi_perform(j->multi, &running);
		if (mc != CURLM_OK || !running || transfer_ended(j))
			break;
		/* until the transfer must end (curl shortens the wait for its own timers) */
		wait = fmax(0, fmin(ceil((transfer_end(j) - drv_clock(CLOCK_MONOTONIC)) * 1000), TRANSFER_WAIT_MS));
		mc = curl_multi_poll(j->multi, &wfd, wfd.fd >= 0 ? 1 : 0, (int)wait, NULL);
		if (mc == CURLM_OK && transfer_ended(j))
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

/* Start the attempt: its state, the .part (emptied unless it is continued), the Range. */
static int attempt_start(struct job *j)
{
	char range[32];

	j->status = j->begun = j->rejected = 0;
	j->ended = DONE;
	j->errbuf[0] = '\0';
	j->total = -1;
	j->received = 0;
	j->t_data = drv_clock(CLOCK_MONOTONIC);
	j->last_cb = j->t_data - TRANSFER_PROGRESS_INTERVAL;
	if ((!j->resume || j->digested) && j->bytes > 0 && part_reset(j) < 0)
		return -1;
	j->offset = j->bytes;
	snprintf(range, sizeof(range), "%lld-", (long long)j->offset);
	curl_easy_setopt(j->curl, CURLOPT_RANGE, j->offset > 0 ? range : NULL);
	curl_easy_setopt(j->curl, CURLOPT_NOPROGRESS, j->progress ? 0L : 1L);
	return 0;
}

static enum outcome transfer_attempt(struct job *j)
{
	curl_off_t start, total;
	CURLcode rc;

	if (interrupt_pending(j))
		return INTERRUPTED;
	if (attempt_start(j) < 0)
		return job_errno(j);
	rc = transfer_perform(j);
	if (part_flush(j) < 0 && !j->ended)
		j->ended = job_errno(j);
	curl_easy_getinfo(j->curl, CURLINFO_RESPONSE_CODE, &j->status);
	if (!j->ended && j->is_http && j->status == 416 && j->offset > 0) {
		content_range(j, &start, &total);
		if (total == j->offset) {	/* the .part was complete already */
			j->total = total;
			j->resumed = 1;
			return transfer_verify(j);
		}
		j->ended = job_fail(j, RESTART, EIO, "HTTP 416: the kept .part (%lld bytes) does not fit the file "
				    "(%lld bytes)", (long long)j->offset, (long long)total);
	}
	if (j->ended == RESTART)	/* the kept .part does not fit the file: emptied for the next attempt */
		return part_reset(j) < 0 ? job_errno(j) : RESTART;
	if (j->ended)
		return j->ended;
	/* An error status wins over curl's error, unless curl failed to follow
	 * a redirect (a forbidden scheme, too many). */
	if (j->is_http && j->status && (j->status < 200 || j->status >= 400 || j->rejected))
		return HTTP;
	if (rc != CURLE_OK)
		return curl_error(j, rc);
	if (j->is_http && (j->status >= 300 || (j->status == 206 && j->offset == 0)))
		return HTTP;
	if (!j->begun && !transfer_begin(j))
		return j->ended ? j->ended : HTTP;
	return transfer_verify(j);
}

static void set_integer(lua_State *L, const char *k, lua_Integer v)
{
	lua_pushinteger(L, v);
	lua_setfield(L, -2, k);
}

static void set_string(lua_State *L, const char *k, const char *v)
{
	lua_pushstring(L, v);
	lua_setfield(L, -2, k);
}

/* The attempt's report (see job:attempt). */
static int push_report(lua_State *L, struct job *j, enum outcome r)
{
	struct curl_header *h;

	lua_createtable(L, 0, 12);
	set_string(L, "outcome", OUTCOMES[r]);
	set_integer(L, "bytes", (lua_Integer)j->bytes);
	set_integer(L, "received", (lua_Integer)j->received);
	if (j->total >= 0 && r != HTTP)
		set_integer(L, "total", (lua_Integer)j->total);
	lua_pushnumber(L, (r == DEADLINE ? j->deadline : drv_clock(CLOCK_MONOTONIC)) - j->t_data);
	lua_setfield(L, -2, "idle");	/* (at the deadline: a late wake-up is not a longer stall) */
	lua_pushboolean(L, j->resumed);
	lua_setfield(L, -2, "resumed");
	if (r == TRANSIENT || r == PERMANENT || r == TIMEOUT || r == RESTART) {
		set_string(L, "message", j->msg);
		drv_push_errname(L, j->err);
		lua_setfield(L, -2, "errno");
		lua_pushboolean(L, r == TRANSIENT);
		lua_setfield(L, -2, "transient");
	}
	if (r == HTTP)
		set_integer(L, "status", (lua_Integer)j->status);
	if (r == HTTP && curl_easy_header(j->curl, "Retry-After", 0, CURLH_HEADER, -1, &h) == CURLHE_OK)
		set_string(L, "retry_after", h->value);
	if (j->digested)
		set_string(L, "sha256", j->hex);
	return 1;
}

/***
 * Run one attempt: a request (a Range continues the .part when resuming; else,
 * or after a complete attempt, the .part is emptied first), the body into the
 * .part and the digest, the size and digest checks. It ends early once
 * `interrupt_fd` is readable, at `deadline`, or when a begun body gets no byte for
 * `low_speed_time` s.
 * @function job:attempt
 * @tparam[opt] function progress `function(bytes, total|nil, idle, received)` (the .part's bytes,
 *   the file's size, seconds since the last body byte, this attempt's), at most 10 times a second
 * @tparam[opt] number deadline a time of drv.sys.monotonic() it ends at
 * @treturn table `{ outcome, bytes, total, received, idle, resumed }`: "done", "mismatch" (with
 *   `sha256`), "failed" (`message`, `errno`, `transient`), "http" (`status`, `retry_after`),
 *   "timeout" (`message`), "stalled", "deadline", "interrupted", "restart" (`message`: emptied)
 * @raise what the progress function raised, once curl is done
 * @see curl_multi_poll(3), EVP_DigestUpdate(3)
 */
static int job_attempt(lua_State *L)
{
	struct job *j = job_check(L, 1);
	enum outcome r;

	if (!lua_isnoneornil(L, 2))
		luaL_checktype(L, 2, LUA_TFUNCTION);
	j->deadline = luaL_optnumber(L, 3, 0);
	j->progress = !lua_isnoneornil(L, 2);
	lua_settop(L, 3);
	lua_pushnil(L);		/* ERRSLOT */
	luaL_checkstack(L, 10, "job:attempt");
	j->L = L;
	r = transfer_attempt(j);
	j->L = NULL;
	if (r == LUA_ERROR) {
		lua_pushvalue(L, ERRSLOT);
		return lua_error(L);
	}
	return push_report(L, j, r);
}

/***
 * Make the verified .part the destination: fsync, rename, fsync the directory.
 * @function job:install
 * @tparam string dest
 * @treturn[1] true
 * @treturn[2] nil, "cannot rename <part> to <dest>: <cause>", string errno
 */
static int job_install(lua_State *L)
{
	struct job *j = job_check(L, 1);
	const char *dest = luaL_checkstring(L, 2);
	char dir[PATH_MAX];
	int dfd;

	luaL_argcheck(L, j->verified, 1, "the transfer is not complete and verified");
	if (fsync(j->fd) < 0)
		return drv_errno_fail(L, j->part);
	if (rename(j->part, dest) < 0)
		return drv_fail(L, errno, "cannot rename %s to %s: %s", j->part, dest, strerror(errno));
	j->own_part = 0;
	snprintf(dir, sizeof(dir), "%s", dest);
	dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd >= 0) {
		fsync(dfd);	/* best effort: some file systems refuse it */
		close(dfd);
	}
	return drv_ok(L);
}

/* ---- transfer.open ---- */

/* Parse the URL into j->cu; DONE and j->is_http, or a failure. A file:// URL's
 * file must be there and readable (curl "reads" a directory as an empty file). */
static enum outcome transfer_url(struct job *j, const char *url)
{
	CURLUcode uc;
	char *scheme = NULL, *path = NULL;
	struct stat st;
	enum outcome r = DONE;

	j->cu = curl_url();
	if (!j->cu)
		return job_fail(j, PERMANENT, ENOMEM, "%s", strerror(ENOMEM));
	uc = curl_url_set(j->cu, CURLUPART_URL, url, CURLU_NON_SUPPORT_SCHEME);
	if (uc == CURLUE_OK)
		uc = curl_url_get(j->cu, CURLUPART_SCHEME, &scheme, 0);
	if (uc != CURLUE_OK)
		return job_fail(j, PERMANENT, EINVAL, "malformed URL (%s)", curl_url_strerror(uc));
	if (strcasecmp(scheme, "http") == 0 || strcasecmp(scheme, "https") == 0)
		j->is_http = 1;
	else if (strcasecmp(scheme, "file") != 0)
		r = job_fail(j, PERMANENT, EPROTONOSUPPORT, "unsupported scheme '%s' (https, http or file)", scheme);
	else if (curl_url_get(j->cu, CURLUPART_PATH, &path, CURLU_URLDECODE) == CURLUE_OK) {
		if (stat(path, &st) < 0 || (!S_ISDIR(st.st_mode) && access(path, R_OK) < 0))
			r = job_fail(j, PERMANENT, errno, "Couldn't open file %s (%s)", path, strerror(errno));
		else if (S_ISDIR(st.st_mode))
			r = job_fail(j, PERMANENT, EISDIR, "%s: %s", path, strerror(EISDIR));
		curl_free(path);
	}
	curl_free(scheme);
	return r;
}

static enum outcome transfer_setup(struct job *j, double connect_timeout, double timeout, int insecure)
{
	CURLcode rc = CURLE_OK;

	j->md = EVP_MD_CTX_new();
	j->curl = curl_easy_init();
	j->multi = curl_multi_init();
	j->wbuf = malloc(TRANSFER_WBUFSIZE);
	if (!j->md || !j->multi || !j->curl || !j->wbuf)
		return job_fail(j, PERMANENT, ENOMEM, "%s", strerror(ENOMEM));
#define SET(opt, val) do { if (rc == CURLE_OK) rc = curl_easy_setopt(j->curl, opt, val); } while (0)
	SET(CURLOPT_CURLU, j->cu);
	SET(CURLOPT_PROTOCOLS_STR, "http,https,file");
	SET(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
	SET(CURLOPT_FOLLOWLOCATION, 1L);
	SET(CURLOPT_MAXREDIRS, 10L);
	SET(CURLOPT_NOSIGNAL, 1L);
	SET(CURLOPT_ERRORBUFFER, j->errbuf);
	SET(CURLOPT_BUFFERSIZE, TRANSFER_BUFSIZE);
	SET(CURLOPT_WRITEFUNCTION, transfer_write);
	SET(CURLOPT_WRITEDATA, j);
	SET(CURLOPT_XFERINFOFUNCTION, transfer_progress);
	SET(CURLOPT_XFERINFODATA, j);
	SET(CURLOPT_CONNECTTIMEOUT_MS, MSEC(connect_timeout));
	SET(CURLOPT_TIMEOUT_MS, MSEC(timeout));
	SET(CURLOPT_LOW_SPEED_LIMIT, 1024L);
	SET(CURLOPT_LOW_SPEED_TIME, (long)j->low_speed_time);
	SET(CURLOPT_TCP_KEEPALIVE, 1L);
	SET(CURLOPT_USERAGENT, "drvrun/" DRV_VERSION);
	SET(CURLOPT_SSL_VERIFYPEER, insecure ? 0L : 1L);
	SET(CURLOPT_SSL_VERIFYHOST, insecure ? 0L : 2L);
#undef SET
	if (rc != CURLE_OK)
		return job_fail(j, PERMANENT, EIO, "%s", curl_easy_strerror(rc));
	return DONE;
}

/***
 * Start a transfer of url into the file part: check the URL (before any file is
 * touched), open and lock part (another download holding it: EBUSY) and, when
 * resuming, hash what it holds (ended once `interrupt_fd` is readable: EINTR).
 * Messages do not name the URL: drv.fetch puts it first.
 * @function open
 * @tparam string url `https://`, `http://` or `file://` (redirects: http(s) only)
 * @tparam string part the .part file
 * @tparam[opt] table opts `{ sha256 = "<64 lowercase hex>", resume = false (http only),
 *   insecure = false, connect_timeout = 30, timeout = 0 (an attempt's, 0: none), low_speed_time = 60
 *   (0: none), interrupt_fd = fd }`
 * @treturn[1] job: `:attempt([progress [, deadline]])`, `:install(dest)`, `:close([keep])`
 * @treturn[2] nil, string message, string errno
 */
static int transfer_open(lua_State *L)
{
	size_t urllen, partlen;
	const char *url = luaL_checklstring(L, 1, &urllen);
	const char *part = luaL_checklstring(L, 2, &partlen);
	int t = drv_opttable(L, 3);
	const char *sha = drv_optfield_string(L, t, "sha256", "");
	double connect_timeout = drv_optfield_number(L, t, "connect_timeout", 30);
	double timeout = drv_optfield_number(L, t, "timeout", 0);
	lua_Integer low_speed_time = drv_optfield_integer(L, t, "low_speed_time", 60);
	lua_Integer interrupt_fd = drv_optfield_integer(L, t, "interrupt_fd", -1);
	int resume = drv_optfield_boolean(L, t, "resume", 0), insecure = drv_optfield_boolean(L, t, "insecure", 0);
	struct job *j;
	enum outcome r;

	luaL_argcheck(L, strlen(url) == urllen, 1, "string contains a zero byte");
	luaL_argcheck(L, partlen > 0 && strlen(part) == partlen, 2, "path expected, without a zero byte");
	luaL_argcheck(L, !*sha || (strlen(sha) == 64 && strspn(sha, "0123456789abcdef") == 64), 3,
		      "field 'sha256': 64 lowercase hex digits expected");
	luaL_argcheck(L, connect_timeout > 0 && timeout >= 0 && low_speed_time >= 0 && low_speed_time <= LONG_MAX &&
		      interrupt_fd >= -1 && interrupt_fd <= INT_MAX, 3, "a time or interrupt_fd out of range");
	DRV_LAZY_LOAD(L, CURL);	/* (curl_easy_init sets libcurl up, at the first transfer) */
	DRV_LAZY_LOAD(L, CRYPTO);
	j = lua_newuserdatauv(L, sizeof(*j) + partlen + 1, 0);
	memset(j, 0, sizeof(*j));
	j->fd = -1;
	luaL_setmetatable(L, JOB_MT);
	memcpy(j->part, part, partlen + 1);
	memcpy(j->sha256, sha, strlen(sha) + 1);
	j->low_speed_time = low_speed_time;
	j->interrupt_fd = (int)interrupt_fd;
	r = transfer_url(j, url);
	j->resume = resume && j->is_http;
	if (r == DONE)
		r = transfer_setup(j, connect_timeout, timeout, insecure);
	if (r == DONE)
		r = part_prepare(j);
	if (r == DONE)
		return 1;
	job_release(j, r == INTERRUPTED);	/* a kept .part hashed when interrupted stays */
	return drv_fail(L, j->err, "%s", j->msg);
}

static const luaL_Reg job_methods[] = {
	{ "attempt", job_attempt },
	{ "install", job_install },
	{ "close", job_close },
	{ NULL, NULL }
};

static const luaL_Reg job_meta[] = {
	{ "__gc", job_gc },
	{ "__close", job_gc },
	{ "__tostring", job_tostring },
	{ NULL, NULL }
};

static const luaL_Reg transfer_funcs[] = {
	{ "open", transfer_open },
	{ NULL, NULL }
};

int luaopen_drv_transfer(lua_State *L)
{
	drv_newclass(L, JOB_MT, job_methods, job_meta);
	luaL_newlib(L, transfer_funcs);
	return 1;
}
