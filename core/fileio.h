/* core/fileio — durable output and small whole-file reads.
 *
 * Outputs are never left half-written: write to "<path>.tmp-<pid>", flush,
 * fsync, rename over <path>, fsync the directory; on any failure the temp
 * file is removed (redis rdbSave's recipe).
 */
#ifndef SDMOE_CORE_FILEIO_H
#define SDMOE_CORE_FILEIO_H

#include <stdio.h>
#include <stddef.h>

#include "core/error.h"

typedef struct sd_atomic_file {
    FILE *fp;               /* write here */
    char *path;             /* final name */
    char *tmp_path;         /* temporary name beside it */
} sd_atomic_file;

int sd_atomic_open(sd_atomic_file *af, const char *path, sd_error *err);
/* Flushes, fsyncs and renames into place; closes in every case. */
int sd_atomic_commit(sd_atomic_file *af, sd_error *err);
/* Closes and removes the temporary file (safe to call after a failed commit). */
void sd_atomic_abort(sd_atomic_file *af);

/* Reads a whole file into a NUL-terminated malloc'd buffer; refuses files
 * larger than max_bytes. *len (optional) gets the byte count. */
int sd_read_file(const char *path, size_t max_bytes, char **out, size_t *len, sd_error *err);

/* 1 if path exists and is a directory / a regular file. */
int sd_is_dir(const char *path);
int sd_is_file(const char *path);
/* Joins a and b with '/', into a malloc'd string. */
char *sd_path_join(const char *a, const char *b);
/* fsyncs a directory so a rename inside it is durable. */
void sd_fsync_dir(const char *dir);

#endif
