/* moe_merge/segmoe_config — SegMoE YAML reader (see segmoe_config.h). */
#include "moe_merge/segmoe_config.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "core/fileio.h"

/* ================================================================ helpers */

static char *dup_str(const char *s) {
    if (!s) return NULL;
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

static int warn_add(char ***list, int *n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int warn_add(char ***list, int *n, const char *fmt, ...) {
    if (!list) return 0;
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    char **grown = realloc(*list, ((size_t)*n + 1) * sizeof *grown);
    if (!grown) return -1;
    *list = grown;
    if (!(grown[*n] = dup_str(buf))) return -1;
    (*n)++;
    return 0;
}

/* ============================================================ YAML -> JSON */

typedef struct anchor {
    char *name;
    cJSON *node;  /* owned copy of the anchored node */
    long nodes;   /* its node count, charged on every alias use */
} anchor;

typedef struct yaml_ctx {
    yaml_parser_t parser;
    const char *name;
    long nodes;           /* nodes built so far, aliases expanded */
    anchor *anchors;
    int n_anchors;
    char ***warnings;
    int *n_warnings;
    sd_error *err;
} yaml_ctx;

static int yfail(yaml_ctx *c, const yaml_mark_t *m, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int yfail(yaml_ctx *c, const yaml_mark_t *m, const char *fmt, ...) {
    char buf[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (m) return sd_fail(c->err, "%s: line %zu: %s", c->name, m->line + 1, buf);
    return sd_fail(c->err, "%s: %s", c->name, buf);
}

static int next_event(yaml_ctx *c, yaml_event_t *ev) {
    if (yaml_parser_parse(&c->parser, ev)) return 0;
    return sd_fail(c->err, "%s: line %zu: YAML syntax error: %s%s%s", c->name, c->parser.problem_mark.line + 1,
                   c->parser.problem ? c->parser.problem : "unknown problem", c->parser.context ? " " : "",
                   c->parser.context ? c->parser.context : "");
}

static int charge(yaml_ctx *c, long n, const yaml_mark_t *m) {
    c->nodes += n;
    if (c->nodes > SD_SEGMOE_MAX_NODES)
        return yfail(c, m, "document expands to more than %d nodes (an alias bomb?); refused", SD_SEGMOE_MAX_NODES);
    return 0;
}

/* Cost of a (sub)tree for the expansion budget: one per node plus one per
 * 256 bytes of string, so aliasing a long string is charged for its text. */
static long count_nodes(const cJSON *n) {
    long k = 1;
    if (cJSON_IsString(n) && n->valuestring) k += (long)(strlen(n->valuestring) / 256);
    for (const cJSON *ch = n->child; ch; ch = ch->next) k += count_nodes(ch);
    return k;
}

/* ---- scalar resolution: PyYAML's YAML 1.1 resolver (sexagesimal numbers excepted) ---- */

static int is_one_of(const char *s, const char *const *words) {
    for (; *words; words++)
        if (!strcmp(s, *words)) return 1;
    return 0;
}

/* Copies s without '_' into buf; 0 if it does not fit. */
static int strip_underscores(const char *s, char *buf, size_t cap) {
    size_t k = 0;
    for (; *s; s++) {
        if (*s == '_') continue;
        if (k + 1 >= cap) return 0;
        buf[k++] = *s;
    }
    buf[k] = 0;
    return 1;
}

static int all_chars(const char *s, const char *set) {
    if (!*s) return 0;
    for (; *s; s++)
        if (!strchr(set, *s)) return 0;
    return 1;
}

/* [-+]?(0b[01_]+ | 0x[0-9a-fA-F_]+ | 0[0-7_]+ | 0 | [1-9][0-9_]*) */
static int parse_int(const char *s, double *out) {
    char buf[128];
    int neg = 0;
    if (*s == '-' || *s == '+') neg = *s++ == '-';
    int base = 10;
    const char *digits = s;
    if (s[0] == '0' && s[1] == 'b') {
        base = 2;
        digits = s + 2;
        if (!all_chars(digits, "01_")) return 0;
    } else if (s[0] == '0' && s[1] == 'x') {
        base = 16;
        digits = s + 2;
        if (!all_chars(digits, "0123456789abcdefABCDEF_")) return 0;
    } else if (s[0] == '0' && s[1]) {
        base = 8;
        if (!all_chars(digits, "01234567_")) return 0;
    } else if (!all_chars(digits, "0123456789_") || digits[0] == '_') {
        return 0;
    }
    if (!strip_underscores(digits, buf, sizeof buf) || !buf[0]) return 0;
    errno = 0;
    double v = (double)strtoull(buf, NULL, base);
    if (errno) v = HUGE_VAL;
    *out = neg ? -v : v;
    return 1;
}

/* [-+]?([0-9][0-9_]*)?\.[0-9_]*([eE][-+][0-9]+)? (PyYAML needs the dot and
 * a signed exponent), or .inf / .nan */
static int parse_float(const char *s, double *out) {
    static const char *const inf[] = {".inf", ".Inf", ".INF", NULL};
    static const char *const nan_[] = {".nan", ".NaN", ".NAN", NULL};
    const char *p = s;
    int neg = 0;
    if (*p == '-' || *p == '+') neg = *p++ == '-';
    if (is_one_of(p, inf)) {
        *out = neg ? -HUGE_VAL : HUGE_VAL;
        return 1;
    }
    if (p == s && is_one_of(p, nan_)) {
        *out = NAN;
        return 1;
    }
    const char *q = p;
    int mant = 0;
    if (isdigit((unsigned char)*q)) {
        while (isdigit((unsigned char)*q) || *q == '_') q++;
        mant = 1;
    }
    if (*q != '.') return 0;
    q++;
    while (isdigit((unsigned char)*q) || *q == '_') mant = 1, q++;
    if (!mant) return 0;
    if (*q == 'e' || *q == 'E') {
        q++;
        if (*q != '-' && *q != '+') return 0;
        q++;
        if (!isdigit((unsigned char)*q)) return 0;
        while (isdigit((unsigned char)*q)) q++;
    }
    if (*q) return 0;
    char buf[128];
    if (!strip_underscores(s, buf, sizeof buf)) return 0;
    *out = strtod(buf, NULL);
    return 1;
}

static cJSON *resolve_plain(const char *s) {
    static const char *const nulls[] = {"", "~", "null", "Null", "NULL", NULL};
    static const char *const trues[] = {"yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON", NULL};
    static const char *const falses[] = {"no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF", NULL};
    double v;
    if (is_one_of(s, nulls)) return cJSON_CreateNull();
    if (is_one_of(s, trues)) return cJSON_CreateTrue();
    if (is_one_of(s, falses)) return cJSON_CreateFalse();
    if (parse_int(s, &v) || parse_float(s, &v)) return cJSON_CreateNumber(v);
    return cJSON_CreateString(s);
}

static int scalar_node(yaml_ctx *c, const yaml_event_t *ev, cJSON **out) {
    const char *val = (const char *)ev->data.scalar.value;
    const char *tag = (const char *)ev->data.scalar.tag;
    if (strlen(val) != ev->data.scalar.length) return yfail(c, &ev->start_mark, "NUL byte inside a scalar");
    if (tag && !strcmp(tag, YAML_STR_TAG))
        *out = cJSON_CreateString(val);
    else if (tag && strcmp(tag, "!") && strcmp(tag, YAML_NULL_TAG) && strcmp(tag, YAML_BOOL_TAG) &&
             strcmp(tag, YAML_INT_TAG) && strcmp(tag, YAML_FLOAT_TAG))
        return yfail(c, &ev->start_mark, "unsupported YAML tag '%s' (only plain data is accepted)", tag);
    else if (ev->data.scalar.style != YAML_PLAIN_SCALAR_STYLE || (tag && !strcmp(tag, "!")))
        *out = cJSON_CreateString(val);
    else
        *out = resolve_plain(val);
    return *out ? 0 : yfail(c, NULL, "out of memory");
}

static int parse_node(yaml_ctx *c, yaml_event_t *ev, int depth, cJSON **out);

/* Consumes events up to the matching end of a collection. */
static int parse_sequence(yaml_ctx *c, int depth, cJSON *arr) {
    for (;;) {
        yaml_event_t ev;
        if (next_event(c, &ev)) return -1;
        if (ev.type == YAML_SEQUENCE_END_EVENT) {
            yaml_event_delete(&ev);
            return 0;
        }
        cJSON *item = NULL;
        int rc = parse_node(c, &ev, depth + 1, &item);
        yaml_event_delete(&ev);
        if (rc) return -1;
        cJSON_AddItemToArray(arr, item);
    }
}

/* "<<: *base" / "<<: [*a, *b]": copies keys the mapping does not have yet. */
static int merge_into(yaml_ctx *c, cJSON *obj, cJSON *src, const yaml_mark_t *m) {
    if (cJSON_IsArray(src)) {
        for (cJSON *it = src->child; it; it = it->next)
            if (merge_into(c, obj, it, m)) return -1;
        return 0;
    }
    if (!cJSON_IsObject(src)) return yfail(c, m, "'<<' merge key expects a mapping or a list of mappings");
    for (cJSON *it = src->child; it; it = it->next) {
        if (cJSON_GetObjectItemCaseSensitive(obj, it->string)) continue;
        cJSON *copy = cJSON_Duplicate(it, 1);
        if (!copy) return yfail(c, NULL, "out of memory");
        if (charge(c, count_nodes(copy), m)) {
            cJSON_Delete(copy);
            return -1;
        }
        cJSON_AddItemToObject(obj, it->string, copy);
    }
    return 0;
}

static int parse_mapping_entries(yaml_ctx *c, int depth, cJSON *obj, cJSON *merges) {
    for (;;) {
        yaml_event_t kev;
        if (next_event(c, &kev)) return -1;
        if (kev.type == YAML_MAPPING_END_EVENT) {
            yaml_event_delete(&kev);
            return 0;
        }
        if (kev.type != YAML_SCALAR_EVENT) {
            int rc = yfail(c, &kev.start_mark, "mapping keys must be plain scalars");
            yaml_event_delete(&kev);
            return rc;
        }
        char *key = dup_str((const char *)kev.data.scalar.value);
        int is_merge = kev.data.scalar.style == YAML_PLAIN_SCALAR_STYLE && key && !strcmp(key, "<<");
        yaml_mark_t km = kev.start_mark;
        yaml_event_delete(&kev);
        yaml_event_t vev;
        cJSON *val = NULL;
        int rc = !key ? yfail(c, NULL, "out of memory") : next_event(c, &vev);
        if (!rc) {
            rc = parse_node(c, &vev, depth + 1, &val);
            yaml_event_delete(&vev);
        }
        if (!rc && is_merge) {
            cJSON_AddItemToArray(merges, val);
        } else if (!rc) {
            if (cJSON_GetObjectItemCaseSensitive(obj, key)) {
                if (warn_add(c->warnings, c->n_warnings, "%s: line %zu: duplicate key '%s': the last value wins (as in PyYAML)",
                             c->name, km.line + 1, key))
                    rc = yfail(c, NULL, "out of memory");
                cJSON_ReplaceItemInObjectCaseSensitive(obj, key, val);
            } else {
                cJSON_AddItemToObject(obj, key, val);
            }
        }
        free(key);
        if (rc) return -1;
    }
}

/* "<<" values are applied at the end so explicit keys win wherever they stand. */
static int parse_mapping(yaml_ctx *c, int depth, cJSON *obj) {
    cJSON *merges = cJSON_CreateArray();
    if (!merges) return yfail(c, NULL, "out of memory");
    int rc = parse_mapping_entries(c, depth, obj, merges);
    for (cJSON *m = merges->child; !rc && m; m = m->next) rc = merge_into(c, obj, m, NULL);
    cJSON_Delete(merges);
    return rc;
}

static int register_anchor(yaml_ctx *c, const char *name, const cJSON *node) {
    anchor *grown = realloc(c->anchors, ((size_t)c->n_anchors + 1) * sizeof *grown);
    if (!grown) return yfail(c, NULL, "out of memory");
    c->anchors = grown;
    anchor *a = &grown[c->n_anchors];
    a->name = dup_str(name);
    a->node = cJSON_Duplicate(node, 1);
    if (!a->name || !a->node) {
        free(a->name);
        cJSON_Delete(a->node);
        return yfail(c, NULL, "out of memory");
    }
    a->nodes = count_nodes(a->node);
    c->n_anchors++;
    return 0;
}

static int alias_node(yaml_ctx *c, const yaml_event_t *ev, cJSON **out) {
    const char *name = (const char *)ev->data.alias.anchor;
    for (int i = c->n_anchors - 1; i >= 0; i--) { /* a redefined anchor: the latest wins */
        if (strcmp(c->anchors[i].name, name)) continue;
        if (charge(c, c->anchors[i].nodes, &ev->start_mark)) return -1;
        *out = cJSON_Duplicate(c->anchors[i].node, 1);
        return *out ? 0 : yfail(c, NULL, "out of memory");
    }
    return yfail(c, &ev->start_mark, "alias '*%s' refers to no (finished) anchor", name);
}

/* Builds the node that starts with `ev` (which the caller deletes). */
static int parse_node(yaml_ctx *c, yaml_event_t *ev, int depth, cJSON **out) {
    *out = NULL;
    if (depth > SD_SEGMOE_MAX_DEPTH)
        return yfail(c, &ev->start_mark, "nesting deeper than %d levels; refused", SD_SEGMOE_MAX_DEPTH);
    if (ev->type == YAML_ALIAS_EVENT) return alias_node(c, ev, out);
    if (charge(c, 1, &ev->start_mark)) return -1;
    const yaml_char_t *anchor_name = NULL;
    int rc;
    switch (ev->type) {
    case YAML_SCALAR_EVENT:
        anchor_name = ev->data.scalar.anchor;
        rc = scalar_node(c, ev, out);
        break;
    case YAML_SEQUENCE_START_EVENT:
        anchor_name = ev->data.sequence_start.anchor;
        *out = cJSON_CreateArray();
        rc = *out ? parse_sequence(c, depth, *out) : yfail(c, NULL, "out of memory");
        break;
    case YAML_MAPPING_START_EVENT:
        anchor_name = ev->data.mapping_start.anchor;
        *out = cJSON_CreateObject();
        rc = *out ? parse_mapping(c, depth, *out) : yfail(c, NULL, "out of memory");
        break;
    default:
        rc = yfail(c, &ev->start_mark, "unexpected YAML event");
    }
    if (!rc && anchor_name) rc = register_anchor(c, (const char *)anchor_name, *out);
    if (rc) {
        cJSON_Delete(*out);
        *out = NULL;
    }
    return rc;
}

/* Expects `type` next; 0 if so. */
static int expect_event(yaml_ctx *c, yaml_event_type_t type, const char *what) {
    yaml_event_t ev;
    if (next_event(c, &ev)) return -1;
    int ok = ev.type == type;
    yaml_mark_t m = ev.start_mark;
    yaml_event_delete(&ev);
    return ok ? 0 : yfail(c, &m, "%s", what);
}

int sd_yaml_to_json(const char *text, size_t len, const char *name, cJSON **out, char ***warnings,
                    int *n_warnings, sd_error *err) {
    *out = NULL;
    if (len > SD_SEGMOE_MAX_BYTES)
        return sd_fail(err, "%s: %zu bytes is larger than the %d-byte limit for a config", name, len,
                       SD_SEGMOE_MAX_BYTES);
    yaml_ctx c = {.name = name, .warnings = warnings, .n_warnings = n_warnings, .err = err};
    if (!yaml_parser_initialize(&c.parser)) return sd_fail(err, "%s: cannot initialise the YAML parser", name);
    yaml_parser_set_input_string(&c.parser, (const unsigned char *)text, len);
    cJSON *doc = NULL;
    int rc = expect_event(&c, YAML_STREAM_START_EVENT, "not a YAML stream");
    yaml_event_t ev;
    if (!rc) rc = next_event(&c, &ev);
    if (!rc) {
        if (ev.type == YAML_STREAM_END_EVENT)
            rc = yfail(&c, NULL, "empty document (expected a mapping with base_model and experts)");
        yaml_event_delete(&ev);
    }
    if (!rc) rc = next_event(&c, &ev);
    if (!rc) {
        rc = parse_node(&c, &ev, 0, &doc);
        yaml_event_delete(&ev);
    }
    if (!rc) rc = expect_event(&c, YAML_DOCUMENT_END_EVENT, "expected the end of the document");
    if (!rc) rc = expect_event(&c, YAML_STREAM_END_EVENT, "more than one YAML document; expected exactly one");
    for (int i = 0; i < c.n_anchors; i++) {
        free(c.anchors[i].name);
        cJSON_Delete(c.anchors[i].node);
    }
    free(c.anchors);
    yaml_parser_delete(&c.parser);
    if (rc) {
        cJSON_Delete(doc);
        return -1;
    }
    *out = doc;
    return 0;
}

/* ======================================================= schema validation */

const char *sd_segmoe_layers_name(sd_segmoe_layers l) {
    return l == SD_SEGMOE_LAYERS_FF ? "ff" : l == SD_SEGMOE_LAYERS_ALL ? "all" : "attn";
}
const char *sd_segmoe_type_name(sd_segmoe_type t) { return t == SD_SEGMOE_TYPE_SDXL ? "sdxl" : "sd"; }
const char *sd_segmoe_init_name(sd_segmoe_init i) { return i == SD_SEGMOE_INIT_RANDOM ? "random" : "hidden"; }
int sd_segmoe_layers_has_ff(sd_segmoe_layers l) { return l != SD_SEGMOE_LAYERS_ATTN; }
int sd_segmoe_layers_has_attn(sd_segmoe_layers l) { return l != SD_SEGMOE_LAYERS_FF; }

static const char *json_type_name(const cJSON *v) {
    if (cJSON_IsNull(v)) return "null";
    if (cJSON_IsBool(v)) return "a boolean";
    if (cJSON_IsNumber(v)) return "a number";
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsArray(v)) return "a list";
    return "a mapping";
}

/* String value of key (NULL if absent or null); error if another type. */
static int get_string(const sd_segmoe_config *cfg, const cJSON *obj, const char *where, const char *key,
                      const char **out, sd_error *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    *out = NULL;
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsString(v))
        return sd_fail(err, "%s: %s%s: expected a string, got %s", cfg->yaml_path, where, key, json_type_name(v));
    *out = v->valuestring;
    return 0;
}

/* Integer value (def if absent/null); error for non-integers. */
static int get_int(const sd_segmoe_config *cfg, const cJSON *obj, const char *key, int def, int *out,
                   sd_error *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    *out = def;
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || fabs(v->valuedouble) > INT_MAX)
        return sd_fail(err, "%s: %s: expected an integer, got %s", cfg->yaml_path, key,
                       cJSON_IsNumber(v) ? "a non-integer number" : json_type_name(v));
    *out = (int)v->valuedouble;
    return 0;
}

/* 1 for something shaped like a Hub repo id "owner/name" (maybe with stray spaces). */
static int looks_like_hub_id(const char *s) {
    while (*s == ' ') s++;
    if (!isalnum((unsigned char)*s)) return 0;
    int slashes = 0;
    for (; *s && *s != ' '; s++) {
        if (*s == '/')
            slashes++;
        else if (!isalnum((unsigned char)*s) && !strchr("-_.", *s))
            return 0;
    }
    while (*s == ' ') s++;
    return slashes == 1 && !*s;
}

/* Resolves a model reference to a local path that exists. */
static int resolve_model(const sd_segmoe_config *cfg, const char *key, const char *ref, char **out, sd_error *err) {
    *out = NULL;
    if (!ref || !*ref) return sd_fail(err, "%s: %s: missing (a local diffusers folder or .safetensors file)", cfg->yaml_path, key);
    if (!strncmp(ref, "http://", 7) || !strncmp(ref, "https://", 8))
        return sd_fail(err, "%s: %s: '%s' is a URL; download it first (sdmoe does not use the network) and give the local path",
                       cfg->yaml_path, key, ref);
    char *path = ref[0] == '/' ? dup_str(ref) : sd_path_join(cfg->yaml_dir, ref);
    if (!path) return sd_fail(err, "out of memory");
    if (sd_is_dir(path) || sd_is_file(path)) {
        *out = path;
        return 0;
    }
    int hub = ref[0] != '/' && ref[0] != '.' && looks_like_hub_id(ref);
    if (hub)
        sd_fail(err, "%s: %s: '%s' is not a local path (%s does not exist) and looks like a Hugging Face Hub id%s: "
                     "download it first (sdmoe does not use the network), e.g. `huggingface-cli download %.*s "
                     "--local-dir DIR`, and give the local path",
                cfg->yaml_path, key, ref, path, strchr(ref, ' ') ? " (note the stray space)" : "",
                (int)strcspn(ref + strspn(ref, " "), " "), ref + strspn(ref, " "));
    else
        sd_fail(err, "%s: %s: model '%s' not found (looked for %s; paths are relative to the YAML's folder)",
                cfg->yaml_path, key, ref, path);
    free(path);
    return -1;
}

static int parse_enum(const sd_segmoe_config *cfg, const cJSON *root, const char *key, const char *const *names,
                      int def, const char *def_note, int *out, sd_error *err) {
    const char *s;
    if (get_string(cfg, root, "", key, &s, err)) return -1;
    *out = def;
    if (!s) return 0;
    for (int i = 0; names[i]; i++)
        if (!strcmp(s, names[i])) {
            *out = i;
            return 0;
        }
    char allowed[256] = "";
    for (int i = 0; names[i]; i++) {
        strncat(allowed, i ? ", " : "", sizeof allowed - strlen(allowed) - 1);
        strncat(allowed, names[i], sizeof allowed - strlen(allowed) - 1);
    }
    return sd_fail(err, "%s: %s: unknown value '%s' (expected one of: %s%s)", cfg->yaml_path, key, s, allowed,
                   def_note ? def_note : "");
}

static int has_nonempty(const cJSON *obj, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v)) return 0;
    if ((cJSON_IsArray(v) || cJSON_IsObject(v)) && !v->child) return 0;
    return 1;
}

static int check_known_keys(sd_segmoe_config *cfg, const cJSON *obj, const char *where,
                            const char *const *known, sd_error *err) {
    for (const cJSON *it = obj->child; it; it = it->next) {
        int ok = 0;
        for (int i = 0; known[i] && !ok; i++) ok = !strcmp(it->string, known[i]);
        if (!ok && warn_add(&cfg->warnings, &cfg->n_warnings, "%s: %s'%s': unknown key, ignored (kept in segmoe_config)",
                            cfg->yaml_path, where, it->string))
            return sd_fail(err, "out of memory");
    }
    return 0;
}

static int parse_expert(sd_segmoe_config *cfg, const cJSON *item, int i, sd_segmoe_expert *x, sd_error *err) {
    static const char *const known[] = {"source_model", "positive_prompt", "negative_prompt", "loras", NULL};
    char where[64], key[96];
    snprintf(where, sizeof where, "experts[%d].", i);
    if (!cJSON_IsObject(item))
        return sd_fail(err, "%s: experts[%d]: expected a mapping with source_model, positive_prompt and "
                            "negative_prompt, got %s", cfg->yaml_path, i, json_type_name(item));
    if (has_nonempty(item, "loras"))
        return sd_fail(err, "%s: experts[%d].loras: LoRA experts are not supported yet", cfg->yaml_path, i);
    if (check_known_keys(cfg, item, where, known, err)) return -1;
    const char *src, *pos, *neg;
    if (get_string(cfg, item, where, "source_model", &src, err) ||
        get_string(cfg, item, where, "positive_prompt", &pos, err) ||
        get_string(cfg, item, where, "negative_prompt", &neg, err))
        return -1;
    if (!pos) return sd_fail(err, "%s: experts[%d].positive_prompt: missing (required, as in SegMoE)", cfg->yaml_path, i);
    if (!neg)
        return sd_fail(err, "%s: experts[%d].negative_prompt: missing (required, as in SegMoE; may be \"\")",
                       cfg->yaml_path, i);
    snprintf(key, sizeof key, "experts[%d].source_model", i);
    if (resolve_model(cfg, key, src, &x->path, err)) return -1;
    x->source_model = dup_str(src);
    x->positive_prompt = dup_str(pos);
    x->negative_prompt = dup_str(neg);
    if (!x->source_model || !x->positive_prompt || !x->negative_prompt) return sd_fail(err, "out of memory");
    return 0;
}

static int warn_duplicates(sd_segmoe_config *cfg, sd_error *err) {
    for (int i = 0; i < cfg->n_experts; i++)
        for (int j = i + 1; j < cfg->n_experts; j++) {
            const sd_segmoe_expert *a = &cfg->experts[i], *b = &cfg->experts[j];
            if (strcmp(a->positive_prompt, b->positive_prompt) || strcmp(a->negative_prompt, b->negative_prompt))
                continue;
            int same_model = !strcmp(a->path, b->path);
            if (warn_add(&cfg->warnings, &cfg->n_warnings,
                         same_model ? "%s: experts[%d] and experts[%d]: the same model with the same prompts; "
                                      "their gate rows will be (nearly) identical, so routing cannot tell them apart"
                                    : "%s: experts[%d] and experts[%d] have the same prompts; their gate rows will "
                                      "differ only through the models' own activations",
                         cfg->yaml_path, i, j))
                return sd_fail(err, "out of memory");
        }
    return 0;
}

static int parse_experts(sd_segmoe_config *cfg, const cJSON *root, sd_error *err) {
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(root, "experts");
    if (!list || cJSON_IsNull(list))
        return sd_fail(err, "%s: experts: missing (a list of {source_model, positive_prompt, negative_prompt})",
                       cfg->yaml_path);
    if (!cJSON_IsArray(list)) return sd_fail(err, "%s: experts: expected a list, got %s", cfg->yaml_path, json_type_name(list));
    int n = cJSON_GetArraySize(list);
    if (n < 1) return sd_fail(err, "%s: experts: the list is empty", cfg->yaml_path);
    cfg->experts = calloc((size_t)n, sizeof *cfg->experts);
    if (!cfg->experts) return sd_fail(err, "out of memory");
    cfg->n_experts = n;
    int i = 0;
    for (const cJSON *it = list->child; it; it = it->next, i++)
        if (parse_expert(cfg, it, i, &cfg->experts[i], err)) return -1;
    return warn_duplicates(cfg, err);
}

static int parse_counts(sd_segmoe_config *cfg, const cJSON *root, sd_error *err) {
    int yaml_n;
    if (get_int(cfg, root, "num_experts", 0, &yaml_n, err)) return -1;
    if (yaml_n && yaml_n != cfg->n_experts &&
        warn_add(&cfg->warnings, &cfg->n_warnings, "%s: num_experts: %d, but %d experts are listed; using %d (as SegMoE does)",
                 cfg->yaml_path, yaml_n, cfg->n_experts, cfg->n_experts))
        return sd_fail(err, "out of memory");
    cfg->num_experts = cfg->n_experts;
    if (get_int(cfg, root, "num_experts_per_tok", 1, &cfg->num_experts_per_tok, err)) return -1;
    if (cfg->num_experts_per_tok < 1 || cfg->num_experts_per_tok > cfg->n_experts)
        return sd_fail(err, "%s: num_experts_per_tok: %d must be between 1 and the number of experts (%d)",
                       cfg->yaml_path, cfg->num_experts_per_tok, cfg->n_experts);
    return 0;
}

static int parse_root(sd_segmoe_config *cfg, sd_error *err) {
    static const char *const known[] = {"base_model", "num_experts", "num_experts_per_tok", "moe_layers", "type",
                                        "experts", "init", "loras", NULL};
    static const char *const layers[] = {"attn", "ff", "all", NULL};
    static const char *const types[] = {"sd", "sdxl", NULL};
    static const char *const inits[] = {"hidden", "random", NULL};
    const cJSON *root = cfg->yaml;
    if (!cJSON_IsObject(root))
        return sd_fail(err, "%s: expected a mapping at the top level, got %s", cfg->yaml_path, json_type_name(root));
    if (check_known_keys(cfg, root, "", known, err)) return -1;
    int v;
    if (parse_enum(cfg, root, "type", types, SD_SEGMOE_TYPE_SDXL, NULL, &v, err)) return -1;
    cfg->type = (sd_segmoe_type)v;
    cfg->type_given = cJSON_GetObjectItemCaseSensitive(root, "type") != NULL;
    if (has_nonempty(root, "loras")) return sd_fail(err, "%s: loras: LoRAs are not supported yet", cfg->yaml_path);
    if (parse_enum(cfg, root, "moe_layers", layers, SD_SEGMOE_LAYERS_ATTN,
                   "; SegMoE would silently treat it as 'all'", &v, err))
        return -1;
    cfg->moe_layers = (sd_segmoe_layers)v;
    if (parse_enum(cfg, root, "init", inits, SD_SEGMOE_INIT_HIDDEN, NULL, &v, err)) return -1;
    cfg->init = (sd_segmoe_init)v;
    const char *base;
    if (get_string(cfg, root, "", "base_model", &base, err)) return -1;
    if (!base) return sd_fail(err, "%s: base_model: missing (required)", cfg->yaml_path);
    if (resolve_model(cfg, "base_model", base, &cfg->base_path, err)) return -1;
    if (!(cfg->base_model = dup_str(base))) return sd_fail(err, "out of memory");
    if (parse_experts(cfg, root, err)) return -1;
    return parse_counts(cfg, root, err);
}

int sd_segmoe_config_parse(sd_segmoe_config *cfg, const char *text, size_t len, const char *name,
                           const char *base_dir, sd_error *err) {
    memset(cfg, 0, sizeof *cfg);
    cfg->yaml_path = dup_str(name);
    cfg->yaml_dir = dup_str(base_dir && *base_dir ? base_dir : ".");
    if (!cfg->yaml_path || !cfg->yaml_dir) {
        sd_segmoe_config_free(cfg);
        return sd_fail(err, "out of memory");
    }
    if (sd_yaml_to_json(text, len, name, &cfg->yaml, &cfg->warnings, &cfg->n_warnings, err) || parse_root(cfg, err)) {
        sd_segmoe_config_free(cfg);
        return -1;
    }
    return 0;
}

int sd_segmoe_config_load(sd_segmoe_config *cfg, const char *path, sd_error *err) {
    memset(cfg, 0, sizeof *cfg);
    char *text;
    size_t len;
    if (sd_read_file(path, SD_SEGMOE_MAX_BYTES, &text, &len, err)) return -1;
    const char *slash = strrchr(path, '/');
    char *dir = !slash ? dup_str(".") : slash == path ? dup_str("/") : strndup(path, (size_t)(slash - path));
    if (!dir) {
        free(text);
        return sd_fail(err, "out of memory");
    }
    int rc = sd_segmoe_config_parse(cfg, text, len, path, dir, err);
    free(dir);
    free(text);
    return rc;
}

void sd_segmoe_config_free(sd_segmoe_config *cfg) {
    if (!cfg) return;
    for (int i = 0; i < cfg->n_experts; i++) {
        free(cfg->experts[i].source_model);
        free(cfg->experts[i].path);
        free(cfg->experts[i].positive_prompt);
        free(cfg->experts[i].negative_prompt);
    }
    free(cfg->experts);
    for (int i = 0; i < cfg->n_warnings; i++) free(cfg->warnings[i]);
    free(cfg->warnings);
    cJSON_Delete(cfg->yaml);
    free(cfg->yaml_path);
    free(cfg->yaml_dir);
    free(cfg->base_model);
    free(cfg->base_path);
    memset(cfg, 0, sizeof *cfg);
}
