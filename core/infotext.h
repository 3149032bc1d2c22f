/* core/infotext — the A1111 "parameters" text stored in every PNG.
 *
 * Owns the exact text layout that AUTOMATIC1111's create_infotext()
 * (modules/processing.py) produces and that A1111's and ComfyUI's PNG-info
 * readers parse:
 *
 *     <prompt>
 *     Negative prompt: <negative>            (line present only if non-empty)
 *     Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7.5, Seed: 42, ...
 *
 * Pairs are "Key: value" joined by ", " in A1111's key order; a value that
 * contains ',', ':' or '\n' is written as a JSON string (Python
 * json.dumps(v, ensure_ascii=False): UTF-8 kept, '"' '\\' and control
 * characters escaped); the whole text is then .strip()'d as Python does.
 *
 *     sd_infotext kv;  sd_infotext_init(&kv);
 *     sd_infotext_add(&kv, "MoE experts", "4 (top 2)", &err);    // extra keys
 *     sd_infotext_params p = {.prompt = "a cat", .steps = 20, .sampler = "Euler a",
 *                             .cfg_scale = 7.5, .seed = 42, .width = 512, .height = 512,
 *                             .extra = &kv, .version = "sdmoe 0.1.0"};
 *     char *text;  if (sd_infotext_format(&p, &text, &err)) ...;  free(text);
 *     sd_infotext_free(&kv);
 *
 * All strings are UTF-8; returned strings are malloc'd and owned by the caller.
 */
#ifndef SDMOE_CORE_INFOTEXT_H
#define SDMOE_CORE_INFOTEXT_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

/* An ordered list of (key, value) pairs; values are stored unquoted and
 * quoted only when the text is built. The list owns copies of its strings. */
typedef struct sd_infotext {
    int n, cap;
    char **keys;
    char **values;
} sd_infotext;

void sd_infotext_init(sd_infotext *kv);
void sd_infotext_free(sd_infotext *kv);

/* Appends key: value (copies both). A NULL value is skipped, as A1111 drops
 * pairs whose value is None. An existing key keeps its place and gets the
 * new value (a Python dict update). */
int sd_infotext_add(sd_infotext *kv, const char *key, const char *value, sd_error *err);
/* Appends an integer value ("42", "-1"). */
int sd_infotext_add_int(sd_infotext *kv, const char *key, int64_t value, sd_error *err);
/* Appends a float written as Python's repr(float): shortest round-trip
 * digits, "7.0" for integral values, "1e-05" / "1e+16" outside [1e-4, 1e16). */
int sd_infotext_add_float(sd_infotext *kv, const char *key, double value, sd_error *err);

/* Python repr(float) of v into buf (cap >= 32 is always enough). */
void sd_infotext_float_repr(double v, char *buf, size_t cap);

/* Builds "<prompt>[\nNegative prompt: <negative>]\n<k: v, k: v, ...>" from an
 * ordered list, stripped of leading/trailing whitespace as Python's
 * str.strip() (Unicode whitespace). negative NULL or "" omits the line. */
int sd_infotext_build(const char *prompt, const char *negative, const sd_infotext *kv,
                      char **out, sd_error *err);

/* The fields sdmoe writes, in A1111's order. Optional strings may be NULL
 * (the key is then omitted). */
typedef struct sd_infotext_params {
    const char *prompt;          /* required ("" allowed) */
    const char *negative;        /* NULL or "" = no "Negative prompt:" line */
    int steps;                   /* Steps */
    const char *sampler;         /* Sampler: A1111 display name, e.g. "Euler a", "DPM++ 2M" */
    const char *schedule_type;   /* Schedule type: e.g. "Karras"; NULL = omitted */
    double cfg_scale;            /* CFG scale, as Python float repr ("7.0", "7.5") */
    int64_t seed;                /* Seed */
    int width, height;           /* Size: "<W>x<H>" */
    const char *model_hash;      /* Model hash: first 10 hex digits of the SHA-256 */
    const char *model;           /* Model: checkpoint file stem */
    int clip_skip;               /* Clip skip, A1111 numbering; written only if > 1 */
    const char *rng;             /* RNG: e.g. "CPU" (A1111 omits it for its "GPU" default) */
    const sd_infotext *extra;    /* extension keys (MoE info, SDXL conditioning...), may be NULL */
    const char *version;         /* Version; NULL = omitted */
} sd_infotext_params;

/* Formats the full parameters text for p (malloc'd into *out). */
int sd_infotext_format(const sd_infotext_params *p, char **out, sd_error *err);

#endif
