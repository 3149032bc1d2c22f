#include "core/ldm_yaml.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "core/fileio.h"

#define YAML_MAX_DEPTH 64
#define YAML_MAX_NODES 200000 /* bounds alias expansion ("billion laughs") */
#define YAML_MAX_BYTES (64L << 20) /* scalar text after alias expansion */

typedef struct conv {
    yaml_document_t *doc;
    const char *name;
    long nodes;
    long bytes;
    sd_error *err;
} conv;

/* Tags a config may carry: the YAML core schema.  Anything else (e.g.
 * !!python/object) is refused rather than read as a string. */
static int standard_tag(const yaml_char_t *tag) {
    static const char *const ok[] = {YAML_STR_TAG, YAML_INT_TAG, YAML_FLOAT_TAG, YAML_BOOL_TAG, YAML_NULL_TAG,
                                     YAML_SEQ_TAG, YAML_MAP_TAG, NULL};
    if (!tag) return 1;
    for (int i = 0; ok[i]; i++)
        if (!strcmp((const char *)tag, ok[i])) return 1;
    return 0;
}

/* libyaml's document loader recurses without a limit on flow nesting
 * ([[[[...), so a hostile file could hang or exhaust the stack before any
 * depth check: measure bracket depth on the raw text first. */
static int flow_depth_ok(const char *t, size_t len, int max_depth) {
    int depth = 0;
    char quote = 0;
    for (size_t i = 0; i < len; i++) {
        char ch = t[i];
        if (quote) {
            if (ch == '\\' && quote == '"') i++;
            else if (ch == quote) quote = 0;
        } else if (ch == '"' || ch == '\'') {
            quote = ch;
        } else if (ch == '#') {
            while (i < len && t[i] != '\n') i++;
        } else if (ch == '[' || ch == '{') {
            if (++depth > max_depth) return 0;
        } else if ((ch == ']' || ch == '}') && depth > 0) {
            depth--;
        }
    }
    return 1;
}

static int matches_int(const char *s) {
    if (*s == '+' || *s == '-') s++;
    if (!isdigit((unsigned char)*s)) return 0;
    while (isdigit((unsigned char)*s)) s++;
    return *s == '\0';
}

/* [-+]? (digits [. digits?] | . digits) ([eE][-+]?digits)? -- LDM yamls write
 * 1.0e-04; a dotless 1e-4 is accepted too. */
static int matches_float(const char *s) {
    int digits = 0;
    if (*s == '+' || *s == '-') s++;
    while (isdigit((unsigned char)*s)) s++, digits++;
    if (*s == '.') {
        s++;
        while (isdigit((unsigned char)*s)) s++, digits++;
    }
    if (!digits) return 0;
    if (*s == 'e' || *s == 'E') {
        s++;
        if (*s == '+' || *s == '-') s++;
        if (!isdigit((unsigned char)*s)) return 0;
        while (isdigit((unsigned char)*s)) s++;
    }
    return *s == '\0';
}

static int one_of(const char *s, const char *const *words) {
    for (; *words; words++)
        if (!strcmp(s, *words)) return 1;
    return 0;
}

static cJSON *scalar_to_json(const yaml_node_t *n) {
    const char *s = (const char *)n->data.scalar.value;
    if (n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) return cJSON_CreateString(s);
    static const char *const nulls[] = {"", "~", "null", "Null", "NULL", NULL};
    static const char *const trues[] = {"true", "True", "TRUE", NULL};
    static const char *const falses[] = {"false", "False", "FALSE", NULL};
    if (one_of(s, nulls)) return cJSON_CreateNull();
    if (one_of(s, trues)) return cJSON_CreateTrue();
    if (one_of(s, falses)) return cJSON_CreateFalse();
    if (matches_int(s) || matches_float(s)) return cJSON_CreateNumber(strtod(s, NULL));
    return cJSON_CreateString(s);
}

static cJSON *node_to_json(conv *c, int index, int depth);

static cJSON *mapping_to_json(conv *c, yaml_node_t *n, int depth) {
    cJSON *obj = cJSON_CreateObject();
    for (yaml_node_pair_t *p = n->data.mapping.pairs.start; obj && p < n->data.mapping.pairs.top; p++) {
        yaml_node_t *k = yaml_document_get_node(c->doc, p->key);
        if (!k || k->type != YAML_SCALAR_NODE) {
            sd_fail(c->err, "%s: line %lu: mapping keys must be plain scalars", c->name,
                    (unsigned long)(k ? k->start_mark.line + 1 : 0));
            cJSON_Delete(obj);
            return NULL;
        }
        cJSON *v = node_to_json(c, p->value, depth + 1);
        if (!v) {
            cJSON_Delete(obj);
            return NULL;
        }
        const char *key = (const char *)k->data.scalar.value;
        /* a repeated key replaces the earlier value, as PyYAML does */
        if (cJSON_GetObjectItemCaseSensitive(obj, key)) cJSON_ReplaceItemInObjectCaseSensitive(obj, key, v);
        else cJSON_AddItemToObject(obj, key, v);
    }
    return obj;
}

static cJSON *node_to_json(conv *c, int index, int depth) {
    yaml_node_t *n = yaml_document_get_node(c->doc, index);
    if (!n) {
        sd_fail(c->err, "%s: malformed YAML document (dangling node)", c->name);
        return NULL;
    }
    if (depth > YAML_MAX_DEPTH || ++c->nodes > YAML_MAX_NODES) {
        sd_fail(c->err, "%s: line %lu: YAML nested deeper than %d or expanding to more than %d nodes", c->name,
                (unsigned long)n->start_mark.line + 1, YAML_MAX_DEPTH, YAML_MAX_NODES);
        return NULL;
    }
    if (!standard_tag(n->tag)) {
        sd_fail(c->err, "%s: line %lu: YAML tag '%.64s' is not allowed in a config", c->name,
                (unsigned long)n->start_mark.line + 1, (const char *)n->tag);
        return NULL;
    }
    switch (n->type) {
    case YAML_SCALAR_NODE:
        c->bytes += (long)n->data.scalar.length;
        if (c->bytes > YAML_MAX_BYTES) {
            sd_fail(c->err, "%s: line %lu: YAML expands to more than %ld MB of text (an alias bomb?)", c->name,
                    (unsigned long)n->start_mark.line + 1, YAML_MAX_BYTES >> 20);
            return NULL;
        }
        return scalar_to_json(n);
    case YAML_SEQUENCE_NODE: {
        cJSON *arr = cJSON_CreateArray();
        for (yaml_node_item_t *it = n->data.sequence.items.start; arr && it < n->data.sequence.items.top; it++) {
            cJSON *v = node_to_json(c, *it, depth + 1);
            if (!v) {
                cJSON_Delete(arr);
                return NULL;
            }
            cJSON_AddItemToArray(arr, v);
        }
        return arr;
    }
    case YAML_MAPPING_NODE:
        return mapping_to_json(c, n, depth);
    default:
        sd_fail(c->err, "%s: empty YAML node", c->name);
        return NULL;
    }
}

int ldm_yaml_parse(const char *text, size_t len, const char *name, cJSON **out, sd_error *err) {
    *out = NULL;
    yaml_parser_t parser;
    yaml_document_t doc;
    if (!flow_depth_ok(text, len, YAML_MAX_DEPTH))
        return sd_fail(err, "%s: YAML nested deeper than %d levels", name, YAML_MAX_DEPTH);
    if (!yaml_parser_initialize(&parser)) return sd_fail(err, "%s: cannot initialise the YAML parser", name);
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    if (!yaml_parser_load(&parser, &doc)) {
        sd_fail(err, "%s: line %lu, column %lu: invalid YAML: %s%s%s", name,
                (unsigned long)parser.problem_mark.line + 1, (unsigned long)parser.problem_mark.column + 1,
                parser.problem ? parser.problem : "parse error", parser.context ? " " : "",
                parser.context ? parser.context : "");
        yaml_parser_delete(&parser);
        return -1;
    }
    yaml_parser_delete(&parser);
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    int rc = -1;
    if (!root || root->type != YAML_MAPPING_NODE) {
        sd_fail(err, "%s: expected a YAML mapping at the top level", name);
    } else {
        conv c = {&doc, name, 0, 0, err};
        *out = node_to_json(&c, 1, 0);
        if (*out) rc = 0;
        else if (!err || !err->code) sd_fail(err, "%s: out of memory converting YAML", name);
    }
    yaml_document_delete(&doc);
    return rc;
}

int ldm_yaml_load(const char *path, cJSON **out, sd_error *err) {
    char *text;
    size_t len;
    *out = NULL;
    if (sd_read_file(path, 16u << 20, &text, &len, err)) return -1;
    int rc = ldm_yaml_parse(text, len, path, out, err);
    free(text);
    return rc;
}
