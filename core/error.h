/* core/error — the error value every fallible sdmoe function fills.
 *
 * Library code never prints, exits or aborts on bad input: it returns a
 * non-zero status and leaves a message in an sd_error that names the file,
 * the key and what was expected.  Only cli/ prints it.
 *
 *     sd_error err = {0};
 *     if (st_open(&f, path, &err)) { fprintf(stderr, "sdmoe: %s\n", err.msg); ... }
 */
#ifndef SDMOE_CORE_ERROR_H
#define SDMOE_CORE_ERROR_H

#include <stddef.h>

#define SD_ERROR_MSG_MAX 1024

typedef struct sd_error {
    int code;                   /* 0 = no error */
    char msg[SD_ERROR_MSG_MAX]; /* "<file>: <key>: <what was expected>" */
} sd_error;

/* Sets err (if not NULL) from a printf-style message and returns -1, so a
 * failing path can be written `return sd_fail(err, "...", ...);`. */
int sd_fail(sd_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Prepends "prefix: " to an existing message (adds context on the way up). */
int sd_error_prefix(sd_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Clears err back to "no error". */
void sd_error_clear(sd_error *err);

#endif
