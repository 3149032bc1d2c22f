/* moe_merge/segmoe_config — SegMoE's merge YAML, read with libyaml.
 *
 * Owns: parsing the YAML (PyYAML SafeLoader semantics for the values SegMoE
 * reads: plain scalars resolve to null / bool / int / float / string as YAML
 * 1.1 does; anchors and aliases; "<<" merge keys), the guards against hostile
 * input, and the validation of the SegMoE schema
 * (../shared/docs/segmoe.md section 1):
 *
 *   base_model           required; local diffusers folder or single-file checkpoint
 *   num_experts          optional; as SegMoE, replaced by the number of experts
 *                        (a different value gives a warning)
 *   num_experts_per_tok  optional, default 1; must be 1..#experts
 *   moe_layers           ff | attn | all, default attn (SegMoE's default); any
 *                        other value is an error naming it (SegMoE silently
 *                        treats it as "all")
 *   type                 sd | sdxl, default sdxl (SegMoE's default); the
 *                        merge checks it against the base model's UNet
 *                        (sdxl <=> addition_embed_type "text_time")
 *   experts[]            required, non-empty: source_model, positive_prompt,
 *                        negative_prompt (both required, strings); loras ->
 *                        "not supported yet"
 *   init                 hidden (default) | random; anything else is an error
 *   loras (top level)    "not supported yet"
 *
 * Model paths are resolved against the YAML's folder (SegMoE resolves them
 * against its working directory; its docs run it from the YAML's folder).
 * Hub ids ("owner/name") and URLs are refused with a "download it first"
 * error: sdmoe never touches the network.  Only existence is checked here;
 * the merge checks the contents.
 *
 * Hostile input: files over SD_SEGMOE_MAX_BYTES, nesting deeper than
 * SD_SEGMOE_MAX_DEPTH and documents (aliases expanded) of more than
 * SD_SEGMOE_MAX_NODES nodes are refused, so alias bombs stay bounded.
 *
 * The library never prints: non-fatal findings (an expert listed twice with
 * the same prompts, unknown keys, duplicate keys, num_experts disagreeing)
 * are returned in cfg->warnings.
 */
#ifndef SDMOE_MOE_MERGE_SEGMOE_CONFIG_H
#define SDMOE_MOE_MERGE_SEGMOE_CONFIG_H

#include <cjson/cJSON.h>
#include <stddef.h>

#include "core/error.h"

#define SD_SEGMOE_MAX_BYTES (1024 * 1024)
#define SD_SEGMOE_MAX_DEPTH 32
#define SD_SEGMOE_MAX_NODES 100000

typedef enum sd_segmoe_layers {
    SD_SEGMOE_LAYERS_ATTN = 0, /* attn1/attn2 to_q, to_k, to_v */
    SD_SEGMOE_LAYERS_FF,       /* the transformer feed-forward */
    SD_SEGMOE_LAYERS_ALL,      /* both */
} sd_segmoe_layers;

typedef enum sd_segmoe_type { SD_SEGMOE_TYPE_SD = 0, SD_SEGMOE_TYPE_SDXL } sd_segmoe_type;
typedef enum sd_segmoe_init { SD_SEGMOE_INIT_HIDDEN = 0, SD_SEGMOE_INIT_RANDOM } sd_segmoe_init;

typedef struct sd_segmoe_expert {
    char *source_model;    /* as written in the YAML */
    char *path;            /* resolved local path (folder or file) */
    char *positive_prompt;
    char *negative_prompt;
} sd_segmoe_expert;

typedef struct sd_segmoe_config {
    char *yaml_path;       /* the file read (or the name given to _parse) */
    char *yaml_dir;        /* folder relative paths are resolved against */
    char *base_model;      /* as written */
    char *base_path;       /* resolved local path */
    int num_experts;       /* = n_experts (SegMoE overwrites the YAML value) */
    int num_experts_per_tok;
    sd_segmoe_layers moe_layers;
    sd_segmoe_type type;
    int type_given;        /* 1 if the YAML has `type` (else SegMoE's default, sdxl) */
    sd_segmoe_init init;
    int n_experts;
    sd_segmoe_expert *experts;
    cJSON *yaml;           /* the whole YAML mapping as parsed (saved into
                              unet/config.json -> segmoe_config) */
    int n_warnings;
    char **warnings;       /* "<file>: <key>: ..." */
} sd_segmoe_config;

/* Reads and validates `path`.  On failure cfg is left zeroed and err names
 * the file and the key. */
int sd_segmoe_config_load(sd_segmoe_config *cfg, const char *path, sd_error *err);
/* Same from memory: `name` is used in messages, relative model paths are
 * resolved against `base_dir`. */
int sd_segmoe_config_parse(sd_segmoe_config *cfg, const char *text, size_t len, const char *name,
                           const char *base_dir, sd_error *err);
void sd_segmoe_config_free(sd_segmoe_config *cfg);

/* Parses YAML text into a cJSON tree (the generic reader behind the above;
 * same limits).  Warnings (duplicate keys) are appended to *warnings /
 * *n_warnings (malloc'd strings; may be NULL to drop them). */
int sd_yaml_to_json(const char *text, size_t len, const char *name, cJSON **out, char ***warnings,
                    int *n_warnings, sd_error *err);

const char *sd_segmoe_layers_name(sd_segmoe_layers l);
const char *sd_segmoe_type_name(sd_segmoe_type t);
const char *sd_segmoe_init_name(sd_segmoe_init i);
/* 1 if the layer kinds include the feed-forward / the attention projections. */
int sd_segmoe_layers_has_ff(sd_segmoe_layers l);
int sd_segmoe_layers_has_attn(sd_segmoe_layers l);

#endif
