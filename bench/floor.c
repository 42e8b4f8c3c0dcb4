/* floor.c - the sequential floor of a module-stack reload, for `make bench`.
 *
 *   floor [-r NAME | -i PATH]...
 *
 * Does nothing but the system calls, one at a time, in the order given:
 * delete_module(2) for each -r NAME, finit_module(2) for each -i PATH (no
 * parameters; a compressed .ko is handed to the kernel to decompress). No
 * dependency resolution, no state reading, no retries: the caller computed the
 * order. Exits 0 when every call succeeded, else 1 at the first failure. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef MODULE_INIT_COMPRESSED_FILE
#define MODULE_INIT_COMPRESSED_FILE 4
#endif

static int ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), k = strlen(suffix);

	return n >= k && strcmp(s + n - k, suffix) == 0;
}

static int insert(const char *path)
{
	int flags = ends_with(path, ".xz") || ends_with(path, ".zst") || ends_with(path, ".gz") ?
		    MODULE_INIT_COMPRESSED_FILE : 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	long rc;

	if (fd < 0)
		return -1;
	rc = syscall(SYS_finit_module, fd, "", flags);
	close(fd);
	return rc < 0 ? -1 : 0;
}

int main(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		const char *op = argv[i], *arg = i + 1 < argc ? argv[i + 1] : NULL;
		long rc;

		if (!arg || (strcmp(op, "-r") != 0 && strcmp(op, "-i") != 0)) {
			fprintf(stderr, "usage: floor [-r NAME | -i PATH]...\n");
			return 2;
		}
		i++;
		rc = op[1] == 'r' ? syscall(SYS_delete_module, arg, O_NONBLOCK) : insert(arg);
		if (rc < 0) {
			fprintf(stderr, "floor: %s %s: %s\n", op[1] == 'r' ? "delete_module" : "finit_module",
				arg, strerror(errno));
			return 1;
		}
	}
	return 0;
}
