#include "core/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* Names from files (tensor keys, YAML values) end up in messages: control
 * bytes would break the CLI's one-line errors or inject terminal escapes. */
static void sanitize(char *s) {
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f) *s = '?';
}

int sd_fail(sd_error *err, const char *fmt, ...) {
    if (!err) return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    sanitize(err->msg);
    err->code = -1;
    return -1;
}

int sd_error_prefix(sd_error *err, const char *fmt, ...) {
    if (!err) return -1;
    char prefix[SD_ERROR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    char joined[2 * SD_ERROR_MSG_MAX + 4];
    snprintf(joined, sizeof joined, "%s: %s", prefix, err->msg);
    size_t n = strlen(joined);
    if (n >= sizeof err->msg) n = sizeof err->msg - 1;
    memcpy(err->msg, joined, n);
    err->msg[n] = '\0';
    sanitize(err->msg);
    if (!err->code) err->code = -1;
    return -1;
}

void sd_error_clear(sd_error *err) {
    if (!err) return;
    err->code = 0;
    err->msg[0] = '\0';
}
