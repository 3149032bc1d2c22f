#include "core/json.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/fileio.h"

/* Python's json module writes the non-standard tokens NaN, Infinity and
 * -Infinity (diffusers saves "lambda_min_clipped": -Infinity).  cJSON refuses
 * them, so outside strings Infinity/-Infinity become null in a copy of the
 * text (readers see the key as absent and apply the default) and NaN becomes
 * the string "NaN" (a typed read then refuses it: NaN is never a valid setting).  Returns a malloc'd
 * NUL-terminated copy (NULL when out of memory). */
static char *blank_python_nonfinite(const char *t, size_t len, size_t *out_len) {
    static const char *const toks[] = {"-Infinity", "Infinity", "NaN"};
    char *o = malloc(len + 2 * (len / 3) + 8); /* "NaN" -> "\"NaN\"" grows by 2 per 3 bytes */
    if (!o) return NULL;
    size_t k = 0;
    int in_str = 0;
    for (size_t i = 0; i < len; i++) {
        char c = t[i];
        if (in_str) {
            o[k++] = c;
            if (c == '\\' && i + 1 < len) o[k++] = t[++i];
            else if (c == '"') in_str = 0;
            continue;
        }
        if (c == '"') in_str = 1;
        size_t matched = 0;
        for (size_t m = 0; m < 3 && !matched; m++) {
            size_t n = strlen(toks[m]);
            if (i + n <= len && !memcmp(t + i, toks[m], n)) matched = n;
        }
        if (matched) {
            const char *rep = matched == 3 ? "\"NaN\"" : "null";
            memcpy(o + k, rep, strlen(rep));
            k += strlen(rep);
            i += matched - 1;
        } else {
            o[k++] = c;
        }
    }
    o[k] = 0;
    *out_len = k;
    return o;
}

int sd_json_load(const char *path, cJSON **out, sd_error *err) {
    *out = NULL;
    char *text;
    size_t len;
    if (sd_read_file(path, 64u << 20, &text, &len, err)) return -1;
    size_t clean_len;
    char *clean = blank_python_nonfinite(text, len, &clean_len);
    free(text);
    if (!clean) return sd_fail(err, "%s: out of memory", path);
    text = clean;
    len = clean_len;
    const char *endp = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &endp, 0);
    if (!root) {
        long at = endp ? (long)(endp - text) : -1;
        const char *ep = cJSON_GetErrorPtr();
        if (ep >= text && ep <= text + len) at = (long)(ep - text);
        free(text);
        return sd_fail(err, "%s: not valid JSON (near byte %ld)", path, at);
    }
    free(text);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return sd_fail(err, "%s: expected a JSON object at the top level", path);
    }
    *out = root;
    return 0;
}

static const cJSON *get(const cJSON *obj, const char *key) {
    const cJSON *v = obj ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
    return (v && !cJSON_IsNull(v)) ? v : NULL;
}

int sd_json_has(const cJSON *obj, const char *key) { return get(obj, key) != NULL; }

int sd_json_int(const cJSON *obj, const char *file, const char *key, int def, int *out, sd_error *err) {
    const cJSON *v = get(obj, key);
    if (!v) {
        *out = def;
        return 0;
    }
    double d = v->valuedouble;
    if (!cJSON_IsNumber(v) || floor(d) != d || d < -2147483648.0 || d > 2147483647.0)
        return sd_fail(err, "%s: key '%s': expected an integer", file, key);
    *out = (int)d;
    return 0;
}

int sd_json_float(const cJSON *obj, const char *file, const char *key, double def, double *out, sd_error *err) {
    const cJSON *v = get(obj, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
        return sd_fail(err, "%s: key '%s': expected a finite number", file, key);
    *out = v->valuedouble;
    return 0;
}

int sd_json_bool(const cJSON *obj, const char *file, const char *key, int def, int *out, sd_error *err) {
    const cJSON *v = get(obj, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsBool(v)) return sd_fail(err, "%s: key '%s': expected true or false", file, key);
    *out = cJSON_IsTrue(v) ? 1 : 0;
    return 0;
}

int sd_json_string(const cJSON *obj, const char *file, const char *key, const char *def, char *buf,
                   size_t cap, sd_error *err) {
    const cJSON *v = get(obj, key);
    const char *s = def ? def : "";
    if (v) {
        if (!cJSON_IsString(v)) return sd_fail(err, "%s: key '%s': expected a string", file, key);
        s = v->valuestring;
    }
    if (strlen(s) >= cap)
        return sd_fail(err, "%s: key '%s': string longer than %zu bytes", file, key, cap - 1);
    memcpy(buf, s, strlen(s) + 1);
    return 0;
}

int sd_json_int_list(const cJSON *obj, const char *file, const char *key, int *out, int max, int *n,
                     sd_error *err) {
    const cJSON *v = get(obj, key);
    *n = 0;
    if (!v) return 0;
    if (cJSON_IsNumber(v)) {
        if (max < 1) return sd_fail(err, "%s: key '%s': too many entries", file, key);
        if (sd_json_int(obj, file, key, 0, &out[0], err)) return -1;
        *n = 1;
        return 0;
    }
    if (!cJSON_IsArray(v)) return sd_fail(err, "%s: key '%s': expected a list of integers", file, key);
    int k = 0;
    for (const cJSON *e = v->child; e; e = e->next, k++) {
        if (k >= max) return sd_fail(err, "%s: key '%s': more than %d entries", file, key, max);
        double d = e->valuedouble;
        if (!cJSON_IsNumber(e) || floor(d) != d || fabs(d) > 2147483647.0)
            return sd_fail(err, "%s: key '%s'[%d]: expected an integer", file, key, k);
        out[k] = (int)d;
    }
    *n = k;
    return 0;
}

int sd_json_string_list(const cJSON *obj, const char *file, const char *key, char (*out)[64], int max,
                        int *n, sd_error *err) {
    const cJSON *v = get(obj, key);
    *n = 0;
    if (!v) return 0;
    if (!cJSON_IsArray(v)) return sd_fail(err, "%s: key '%s': expected a list of strings", file, key);
    int k = 0;
    for (const cJSON *e = v->child; e; e = e->next, k++) {
        if (k >= max) return sd_fail(err, "%s: key '%s': more than %d entries", file, key, max);
        if (!cJSON_IsString(e) || strlen(e->valuestring) >= 64)
            return sd_fail(err, "%s: key '%s'[%d]: expected a string shorter than 64 bytes", file, key, k);
        memcpy(out[k], e->valuestring, strlen(e->valuestring) + 1);
    }
    *n = k;
    return 0;
}
