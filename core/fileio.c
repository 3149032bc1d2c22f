#define _POSIX_C_SOURCE 200809L
#include "core/fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char *dup_str(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

char *sd_path_join(const char *a, const char *b) {
    size_t na = strlen(a), nb = strlen(b);
    char *p = malloc(na + nb + 2);
    if (!p) return NULL;
    memcpy(p, a, na);
    size_t k = na;
    if (na && a[na - 1] != '/') p[k++] = '/';
    memcpy(p + k, b, nb + 1);
    return p;
}

void sd_fsync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

int sd_atomic_open(sd_atomic_file *af, const char *path, sd_error *err) {
    memset(af, 0, sizeof *af);
    af->path = dup_str(path);
    size_t n = strlen(path) + 32;
    af->tmp_path = malloc(n);
    if (!af->path || !af->tmp_path) {
        free(af->path);
        free(af->tmp_path);
        memset(af, 0, sizeof *af);
        return sd_fail(err, "%s: out of memory", path);
    }
    snprintf(af->tmp_path, n, "%s.tmp-%ld", path, (long)getpid());
    af->fp = fopen(af->tmp_path, "wb");
    if (!af->fp) {
        int e = errno;
        free(af->path);
        free(af->tmp_path);
        memset(af, 0, sizeof *af);
        return sd_fail(err, "%s: cannot write: %s", path, strerror(e));
    }
    return 0;
}

int sd_atomic_commit(sd_atomic_file *af, sd_error *err) {
    int failed = 0, e = 0;
    if (fflush(af->fp) != 0 || ferror(af->fp)) { failed = 1; e = errno; }
    if (!failed && fsync(fileno(af->fp)) != 0 && errno != EINVAL) { failed = 1; e = errno; }
    if (fclose(af->fp) != 0 && !failed) { failed = 1; e = errno; }
    af->fp = NULL;
    if (!failed && rename(af->tmp_path, af->path) != 0) { failed = 1; e = errno; }
    if (failed) {
        sd_fail(err, "%s: write failed: %s", af->path, strerror(e));
        sd_atomic_abort(af);
        return -1;
    }
    char *d = dup_str(af->path);
    if (d) {
        sd_fsync_dir(dirname(d));
        free(d);
    }
    free(af->path);
    free(af->tmp_path);
    af->path = af->tmp_path = NULL;
    return 0;
}

void sd_atomic_abort(sd_atomic_file *af) {
    if (af->fp) fclose(af->fp);
    if (af->tmp_path) unlink(af->tmp_path);
    free(af->path);
    free(af->tmp_path);
    memset(af, 0, sizeof *af);
}

int sd_read_file(const char *path, size_t max_bytes, char **out, size_t *len, sd_error *err) {
    *out = NULL;
    struct stat pre;
    if (stat(path, &pre) == 0 && !S_ISREG(pre.st_mode))
        return sd_fail(err, "%s: not a regular file", path); /* a FIFO would block fopen */
    FILE *fp = fopen(path, "rb");
    if (!fp) return sd_fail(err, "%s: cannot open: %s", path, strerror(errno));
    struct stat st = {0};
    if (fstat(fileno(fp), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(fp);
        return sd_fail(err, "%s: not a regular file", path);
    }
    if ((size_t)st.st_size > max_bytes) {
        fclose(fp);
        return sd_fail(err, "%s: file is %lld bytes, expected at most %zu",
                       path, (long long)st.st_size, max_bytes);
    }
    size_t n = (size_t)st.st_size;
    char *buf = malloc(n + 1);
    if (!buf) {
        fclose(fp);
        return sd_fail(err, "%s: out of memory", path);
    }
    if (n && fread(buf, 1, n, fp) != n) {
        free(buf);
        fclose(fp);
        return sd_fail(err, "%s: read error", path);
    }
    fclose(fp);
    buf[n] = '\0';
    *out = buf;
    if (len) *len = n;
    return 0;
}

int sd_is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int sd_is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}
