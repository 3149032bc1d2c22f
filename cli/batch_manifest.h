/* cli/batch_manifest — the record of finished images of `sdmoe batch`.
 *
 * DIR/manifest.jsonl (DIR/manifest.shard-I-of-N.jsonl for --shard I/N with
 * N > 1, so processes on different machines never append to one file: NFS
 * does not make O_APPEND atomic across clients) holds one JSON object per
 * finished image, written after its PNG is in place:
 *   {"file": "0007-00.png", ..., "params_sha256": "<64 hex>",
 *    "sha256": "<64 hex of the PNG>", "seconds": 1.23}
 * The record is whatever the caller built; this module needs "file",
 * "sha256" and "params_sha256" (the SHA-256 of the compact JSON of the
 * parameters that decide the pixels: batch_manifest_params_key).
 *
 * Appending: the whole line (with its '\n') in one write() on an O_APPEND
 * descriptor, then fsync — a SIGKILL leaves either the whole line or a torn
 * last line without '\n'.  Opening for append first ends such a torn line
 * with '\n', so the next record starts on a line of its own.
 * Loading reads every manifest*.jsonl in DIR; lines that are not complete
 * JSON records (a torn tail, damage) are counted and ignored.
 *
 * An image is done when some record for its file has the same params key
 * AND DIR/file exists AND the file's SHA-256 equals the record's.
 */
#ifndef SDMOE_CLI_BATCH_MANIFEST_H
#define SDMOE_CLI_BATCH_MANIFEST_H

#include <cjson/cJSON.h>
#include <stddef.h>

#include "core/error.h"

typedef struct batch_manifest_entry {
    char *file;            /* owned */
    char sha256[65];       /* of the PNG */
    char params[65];       /* params_sha256 */
} batch_manifest_entry;

typedef struct batch_manifest {
    batch_manifest_entry *entries; /* sorted by file (stable: file order kept) */
    int n;
    int n_files;           /* manifest files read */
    int n_bad_lines;       /* ignored lines (torn or damaged) */
} batch_manifest;

/* "manifest.jsonl", or "manifest.shard-I-of-N.jsonl" when count > 1. */
void batch_manifest_file_name(int shard_index, int shard_count, char *out, size_t cap);

/* Reads every DIR/manifest*.jsonl (none = an empty manifest). */
int batch_manifest_load(const char *dir, batch_manifest *m, sd_error *err);
void batch_manifest_free(batch_manifest *m);

/* SHA-256 (hex) of cJSON_PrintUnformatted(params): the same parameters
 * built in the same key order give the same key. */
int batch_manifest_params_key(const cJSON *params, char key[65], sd_error *err);

/* 1 if `file` is done (see above), 0 if not. */
int batch_manifest_is_done(const batch_manifest *m, const char *dir, const char *file, const char *params_key);

typedef struct batch_manifest_writer {
    int fd;
    char *path;            /* owned */
} batch_manifest_writer;

/* Opens (creating) DIR/name for appending; ends a torn last line. */
int batch_manifest_open(batch_manifest_writer *w, const char *dir, const char *name, sd_error *err);
/* Appends record as one line (one write + fsync). */
int batch_manifest_append(batch_manifest_writer *w, const cJSON *record, sd_error *err);
void batch_manifest_close(batch_manifest_writer *w);

#endif
