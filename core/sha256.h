/* core/sha256 — SHA-256 of files and buffers (OpenSSL libcrypto EVP), as
 * lowercase hex.  Used for the A1111 "Model hash" (first 10 hex digits of the
 * checkpoint's SHA-256, the same as `sha256sum | cut -c1-10`). */
#ifndef SDMOE_CORE_SHA256_H
#define SDMOE_CORE_SHA256_H

#include <stddef.h>

#include "core/error.h"

/* SHA-256 of the whole file at `path`, streamed in 1 MB reads; hex gets 64
 * lowercase hex digits + NUL.  Errors name the file. */
int sd_sha256_file(const char *path, char hex[65], sd_error *err);

/* SHA-256 of n bytes at data (data may be NULL when n is 0). */
int sd_sha256_buffer(const void *data, size_t n, char hex[65], sd_error *err);

#endif
