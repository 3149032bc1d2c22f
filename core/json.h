/* core/json — typed reads from cJSON config objects with diffusers-style
 * defaults.  A key that is absent or JSON null gives the default; a key of
 * the wrong type is an error naming the file and the key. */
#ifndef SDMOE_CORE_JSON_H
#define SDMOE_CORE_JSON_H

#include <cjson/cJSON.h>
#include <stddef.h>

#include "core/error.h"

/* Parses a JSON file (at most 64 MB) into *out. */
int sd_json_load(const char *path, cJSON **out, sd_error *err);

int sd_json_int(const cJSON *obj, const char *file, const char *key, int def, int *out, sd_error *err);
int sd_json_float(const cJSON *obj, const char *file, const char *key, double def, double *out, sd_error *err);
int sd_json_bool(const cJSON *obj, const char *file, const char *key, int def, int *out, sd_error *err);
/* Copies a string value (or def, which may be NULL -> "") into buf. */
int sd_json_string(const cJSON *obj, const char *file, const char *key, const char *def, char *buf,
                   size_t cap, sd_error *err);
/* Reads an integer list into out[max]; *n gets its length.  A single
 * integer is accepted as a list of one (diffusers allows int-or-tuple keys);
 * absent/null leaves *n = 0. */
int sd_json_int_list(const cJSON *obj, const char *file, const char *key, int *out, int max, int *n,
                     sd_error *err);
/* Reads a string list into out[max][cap]; *n gets its length. */
int sd_json_string_list(const cJSON *obj, const char *file, const char *key, char (*out)[64], int max,
                        int *n, sd_error *err);
/* 1 if key is present and not null. */
int sd_json_has(const cJSON *obj, const char *key);

#endif
