/* cli/batch_jobs — the jobs file of `sdmoe batch` (docs/batch.md).
 *
 * Two formats, told apart by the first non-blank line: JSON Lines when its
 * first non-space character is '{', plain text otherwise.
 *   JSON Lines: one object per line; keys prompt (required string),
 *     negative_prompt (string, or null = none even if -n is given), seed
 *     (integer, -1 = not given), steps, cfg_scale, width, height, sampler,
 *     scheduler (default|karras|discrete), clip_skip, count, name.  Keys
 *     starting with '_' are ignored (annotations); any other key is an error
 *     (a typo such as "negative" would otherwise render the wrong image).
 *   Plain text: the line, trimmed, is the prompt; everything else comes from
 *     the flags.
 * Blank (whitespace-only) lines are skipped in both.
 *
 * Numbering: `line` is the 1-based line number in the file (messages and
 * default output names); `index` is the 0-based position of the line among
 * the non-blank lines, bad ones included (the --shard key: fixing a bad line
 * does not move later jobs to another shard).
 *
 * A bad line (too long, not UTF-8, invalid JSON, wrong type, out of range,
 * unknown sampler or key, duplicate output name) becomes an issue carrying
 * its line number and is left out of `jobs`; the other lines still load.
 * Hostile input is bounded: lines longer than BATCH_JOBS_MAX_LINE bytes,
 * more than BATCH_JOBS_MAX_JOBS jobs or more than BATCH_JOBS_MAX_BYTES of
 * stored text are refused with an issue (the rest of the file is ignored in
 * the last two cases); JSON nesting is limited by cJSON.
 *
 * Output stem of a job: its sanitised `name` (batch_jobs_sanitize_name), or
 * its line number as %04d; images are "<stem>-<image %02d>.png".
 */
#ifndef SDMOE_CLI_BATCH_JOBS_H
#define SDMOE_CLI_BATCH_JOBS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "core/error.h"

#define BATCH_JOBS_MAX_LINE (1 << 20)          /* bytes per line, newline excluded */
#define BATCH_JOBS_MAX_JOBS 100000             /* non-blank lines */
#define BATCH_JOBS_MAX_BYTES ((size_t)256 << 20) /* prompt/name text kept in memory */
#define BATCH_JOBS_MAX_COUNT 10000             /* "count" of one job */
#define BATCH_JOBS_MAX_NAME 100                /* bytes of a sanitised name */
#define BATCH_JOBS_MAX_SEED 9007199254740991LL /* 2^53 - 1: exact in JSON numbers */

typedef struct batch_job {
    int line;            /* 1-based line number */
    int index;           /* 0-based among non-blank lines (shard key) */
    char *prompt;        /* owned, never NULL */
    int has_negative;    /* 1 = negative_prompt given (string or null) */
    char *negative;      /* owned; NULL = none */
    int64_t seed;        /* -1 = not given */
    int steps;           /* 0 = not given */
    int has_cfg;
    double cfg_scale;
    int width, height;   /* 0 = not given */
    char *sampler;       /* owned; NULL = not given (validated name) */
    char *scheduler;     /* owned; NULL = not given */
    int clip_skip;       /* 0 = not given */
    int count;           /* 0 = not given */
    int named;           /* 1 if stem comes from "name" */
    char stem[BATCH_JOBS_MAX_NAME + 1];
} batch_job;

typedef struct batch_issue {
    int line;            /* 1-based; 0 = about the whole file */
    int index;           /* the line's job index; -1 = not one job's (limits) */
    char msg[320];
} batch_issue;

typedef struct batch_jobs {
    batch_job *jobs;     /* the good lines, in file order */
    int n_jobs;
    batch_issue *issues; /* the bad lines, in file order */
    int n_issues;
    int jsonl;           /* 1 = JSON Lines, 0 = plain text */
    int n_indexes;       /* non-blank lines seen (good + bad) */
    int truncated;       /* 1 if a limit stopped reading */
} batch_jobs;

/* Reads every job from `in`.  Returns -1 only when the stream itself fails
 * (read error, out of memory); bad lines are issues, not failures. */
int batch_jobs_read(FILE *in, batch_jobs *out, sd_error *err);
/* Opens `path` ("-" = standard input) and reads it; errors name the file. */
int batch_jobs_load(const char *path, batch_jobs *out, sd_error *err);
void batch_jobs_free(batch_jobs *j);

/* A file-name-safe stem: bytes outside [A-Za-z0-9._+=,@-] become '_', a
 * leading '.' and the second '.' of ".." become '_' (so no '/', no "..", no
 * hidden file), cut to BATCH_JOBS_MAX_NAME bytes.  Returns -1 if the result
 * would be empty. */
int batch_jobs_sanitize_name(const char *name, char *out, size_t cap);

#endif
