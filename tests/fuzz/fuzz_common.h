/* tests/fuzz/fuzz_common — helpers shared by the libFuzzer targets.
 *
 * Most sdmoe readers take a path (they mmap or stat the file), so a target
 * hands them the fuzz input through an anonymous in-memory file (memfd) and
 * its /proc/self/fd path: no disk traffic, nothing left behind, and the file
 * is a regular file as st_open requires.
 *
 * Every target links against the sdmoe module libraries listed on its
 * "sdmoe-fuzz-libs:" line (read by the SDMOE_FUZZ block of CMakeLists.txt).
 */
#ifndef SDMOE_TESTS_FUZZ_COMMON_H
#define SDMOE_TESTS_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

typedef struct fuzz_file {
    int fd;
    char path[64];
} fuzz_file;

/* Writes data into a fresh memfd; aborts (a harness bug, not a finding) if
 * the kernel refuses. */
static inline void fuzz_file_open(fuzz_file *f, const uint8_t *data, size_t size) {
    f->fd = memfd_create("sdmoe-fuzz", MFD_CLOEXEC);
    if (f->fd < 0) {
        perror("memfd_create");
        abort();
    }
    size_t off = 0;
    while (off < size) {
        ssize_t w = write(f->fd, data + off, size - off);
        if (w <= 0) {
            perror("write memfd");
            abort();
        }
        off += (size_t)w;
    }
    snprintf(f->path, sizeof f->path, "/proc/self/fd/%d", f->fd);
}

static inline void fuzz_file_close(fuzz_file *f) {
    if (f->fd >= 0) close(f->fd);
    f->fd = -1;
}

/* A NUL-terminated copy of the input (for text APIs); caller frees. */
static inline char *fuzz_strndup(const uint8_t *data, size_t size) {
    char *s = malloc(size + 1);
    if (!s) abort();
    memcpy(s, data, size);
    s[size] = '\0';
    return s;
}

/* A harness-level invariant failed: crash so libFuzzer records the input. */
#define FUZZ_ASSERT(cond)                                                                   \
    do {                                                                                    \
        if (!(cond)) {                                                                      \
            fprintf(stderr, "%s:%d: fuzz invariant failed: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                        \
        }                                                                                   \
    } while (0)

/* An error message must be non-empty, NUL-terminated inside the buffer and
 * one line (the CLI prints it as "sdmoe: <msg>"). */
#define FUZZ_CHECK_ERROR(e)                                                  \
    do {                                                                     \
        FUZZ_ASSERT((e).msg[0] != '\0');                                     \
        FUZZ_ASSERT(memchr((e).msg, '\0', sizeof (e).msg) != NULL);          \
    } while (0)

#endif
