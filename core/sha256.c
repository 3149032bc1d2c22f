#include "core/sha256.h"

#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void to_hex(const unsigned char *md, unsigned n, char hex[65]) {
    static const char digits[] = "0123456789abcdef";
    for (unsigned i = 0; i < n && i < 32; i++) {
        hex[2 * i] = digits[md[i] >> 4];
        hex[2 * i + 1] = digits[md[i] & 15];
    }
    hex[64] = '\0';
}

/* Finishes ctx into hex; frees ctx in every case. */
static int digest_finish(EVP_MD_CTX *ctx, char hex[65], const char *what, sd_error *err) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned n = 0;
    int ok = EVP_DigestFinal_ex(ctx, md, &n) == 1 && n == 32;
    EVP_MD_CTX_free(ctx);
    if (!ok) return sd_fail(err, "%s: SHA-256 failed in libcrypto", what);
    to_hex(md, n, hex);
    return 0;
}

static EVP_MD_CTX *digest_start(void) {
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

int sd_sha256_buffer(const void *data, size_t n, char hex[65], sd_error *err) {
    EVP_MD_CTX *ctx = digest_start();
    if (!ctx) return sd_fail(err, "SHA-256: cannot initialise libcrypto digest");
    if (n && EVP_DigestUpdate(ctx, data, n) != 1) {
        EVP_MD_CTX_free(ctx);
        return sd_fail(err, "SHA-256: digest update failed");
    }
    return digest_finish(ctx, hex, "buffer", err);
}

int sd_sha256_file(const char *path, char hex[65], sd_error *err) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return sd_fail(err, "%s: cannot open: %s", path, strerror(errno));
    EVP_MD_CTX *ctx = digest_start();
    enum { CHUNK = 1 << 20 };
    unsigned char *buf = malloc(CHUNK);
    if (!ctx || !buf) {
        fclose(fp);
        free(buf);
        EVP_MD_CTX_free(ctx);
        return sd_fail(err, "%s: cannot start SHA-256 (out of memory)", path);
    }
    size_t got;
    int ok = 1;
    while (ok && (got = fread(buf, 1, CHUNK, fp)) > 0) ok = EVP_DigestUpdate(ctx, buf, got) == 1;
    int read_error = ferror(fp);
    fclose(fp);
    free(buf);
    if (!ok || read_error) {
        EVP_MD_CTX_free(ctx);
        return sd_fail(err, "%s: %s while hashing", path, read_error ? "read error" : "digest update failed");
    }
    return digest_finish(ctx, hex, path, err);
}
