#include "core/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int sd_fail(sd_error *err, const char *fmt, ...) {
    if (!err) return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
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
    if (!err->code) err->code = -1;
    return -1;
}

void sd_error_clear(sd_error *err) {
    if (!err) return;
    err->code = 0;
    err->msg[0] = '\0';
}
