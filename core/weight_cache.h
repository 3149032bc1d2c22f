/* core/weight_cache — prepared weights kept on disk between runs.
 *
 * Loading a model prepares gigabytes of weights (core/conv2d reorders every
 * convolution's weights into oneDNN's blocked format: 2.3 GB for SD1.5) into
 * fresh memory, and on the VMs sdmoe runs on, faulting fresh memory in costs
 * far more than reading the weight files (issue 9: 3.1 s against 0.33 s from
 * a warm page cache).  The cache keeps those prepared bytes in one file per
 * model component, mapped read-only like the weights themselves, so the next
 * load maps them instead of recomputing them into new memory.
 *
 * A cache file is named by the SHA-256 of the component's identity: its name
 * and, for each weight file, the real path, size, modification time, inode
 * and device.  A changed weight file gives another name, never stale data.
 * Inside, entries are found by a key the caller builds (core/conv2d: tensor
 * name, oneDNN version, the exact weights format), and a key whose size
 * differs is a miss.  A cache file that fails validation (truncated, foreign,
 * hostile) is ignored and replaced by the next save, which keeps the
 * entries this load used plus the added ones (stale entries go).
 *
 * The folder also keeps weight files' SHA-256 (the A1111 model hash), by the
 * same identity: hashing a checkpoint costs seconds on every run otherwise.
 *
 * Location: opt->dir, else $SDMOE_CACHE_DIR, else $XDG_CACHE_HOME/sdmoe, else
 * $HOME/.cache/sdmoe; "off" (or "0", "") disables the cache.  The folder's
 * *.sdwc files are kept under a size limit (opt->max_bytes, else
 * $SDMOE_CACHE_MAX_MB, else 16 GiB) by removing the least recently used
 * ones (a load that hits refreshes its file's time); a file larger than the
 * limit, or than the free disk space, is not written.  Writing goes to a
 * temporary name renamed into place, so concurrent runs never see a partial
 * file.
 *
 *     sd_weight_cache *c;
 *     sd_weight_cache_open(&c, NULL, "unet", files, NULL, n_files, &err); // c NULL = disabled
 *     p = sd_weight_cache_find(c, key, bytes);      // mapped bytes, or NULL
 *     if (!p) { prepare(buf); sd_weight_cache_add(c, key, buf, bytes, &err); }
 *     sd_weight_cache_save(c, &err);                // after loading, buffers still alive
 *     ...                                           // found pointers stay valid until
 *     sd_weight_cache_free(c);                      // the cache is freed
 */
#ifndef SDMOE_CORE_WEIGHT_CACHE_H
#define SDMOE_CORE_WEIGHT_CACHE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

#include "core/error.h"

typedef struct sd_weight_cache sd_weight_cache;

typedef struct sd_weight_cache_options {
    const char *dir;   /* NULL = from the environment (see above); "off" = disabled */
    int64_t max_bytes; /* limit for the folder's cache files; 0 = from the environment */
} sd_weight_cache_options;

typedef struct sd_weight_cache_stats {
    int hits, misses;      /* finds that returned data / adds since opening */
    int64_t hit_bytes, added_bytes;
    int saved;             /* 1 once a save wrote a new file */
    char ignored[256];     /* why an existing cache file was ignored, or "" */
    char skipped[256];     /* why a save wrote nothing although entries were added, or "" */
} sd_weight_cache_stats;

/* Opens the cache of `component` whose weights are the n_files `files`;
 * `stats` (or NULL: stat() them now) are the fstat results of the files as
 * they were mapped, so a file replaced since cannot lend its identity.
 * *out is NULL when the cache is disabled.  Fails (naming the folder or the
 * file) only when the folder cannot be created or a weight file cannot be
 * examined; an unusable cache file is not a failure (see stats.ignored). */
int sd_weight_cache_open(sd_weight_cache **out, const sd_weight_cache_options *opt, const char *component,
                         const char *const *files, const struct stat *stats, int n_files, sd_error *err);
void sd_weight_cache_free(sd_weight_cache *c);

/* The cached bytes of `key` when present with exactly `bytes` bytes (aligned
 * to 4096 bytes, valid until sd_weight_cache_free), else NULL.  c may be NULL. */
const void *sd_weight_cache_find(sd_weight_cache *c, const char *key, size_t bytes);
/* Records prepared bytes for the next save; they are not copied and must stay
 * alive until sd_weight_cache_save returns.  c may be NULL (nothing happens). */
int sd_weight_cache_add(sd_weight_cache *c, const char *key, const void *data, size_t bytes, sd_error *err);
/* Writes the cache file (previous entries + added ones) when anything was
 * added, else refreshes the existing file's time for the LRU limit.  Fails
 * naming the file on write errors; a limit or disk space too small is not a
 * failure (stats.skipped says so).  c may be NULL. */
int sd_weight_cache_save(sd_weight_cache *c, sd_error *err);

/* The SHA-256 of the weight file at `path` as 64 lowercase hex digits (A1111's
 * model hash is its first 10): read from the cache folder when an earlier
 * run hashed the same file (same real path, size, mtime, inode, device),
 * else computed (seconds for a checkpoint) and stored there as a tiny
 * <identity>.sha256 file (A1111 keeps these in its cache.json).  With the
 * cache off, or its folder unusable, it is just computed.  Errors name the
 * weight file. */
int sd_weight_cache_file_sha256(const sd_weight_cache_options *opt, const char *path, char hex[65], sd_error *err);

void sd_weight_cache_get_stats(const sd_weight_cache *c, sd_weight_cache_stats *s);
/* The cache file's path (it may not exist yet). */
const char *sd_weight_cache_path(const sd_weight_cache *c);

#endif
