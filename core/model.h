/* core/model — opening a Stable Diffusion model: a diffusers folder or a
 * single-file CompVis/LDM (SD 1.x) or SGM (SDXL) checkpoint, presented the
 * same way.
 *
 * sd_model_open finds every component's weight files and config, maps the
 * weights (core/safetensors, validated) and prepares one sd_binder per
 * component; the component modules (unet/, vae/, text_encoder/) then bind
 * their tensors by diffusers name through it and read their sizes from the
 * component's diffusers-style config.
 *
 * Diffusers folder (has model_index.json):
 *   <dir>/<component>/config.json and diffusion_pytorch_model.safetensors or
 *   model.safetensors; with opt->variant "fp16" the *.fp16.safetensors file
 *   where the component has one (diffusers falls back per component to the
 *   default file; a variant no component has is an error); sharded weights
 *   through <name>.safetensors.index.json ("weight_map": tensor -> shard).
 *   scheduler/scheduler_config.json; tokenizer/ (and tokenizer_2/).
 *   PyTorch pickle weights (.bin/.ckpt/.pt) are refused: convert them.
 *
 * Single file (.safetensors with LDM keys):
 *   UNet under "model.diffusion_model.", VAE under "first_stage_model.", CLIP
 *   (HF names) under "cond_stage_model.transformer.", translated by the exact
 *   tables of core/ldm_keymap.  The architecture comes from opt->model_config
 *   (an LDM yaml, or a diffusers folder whose config.json files are used as
 *   they are), else <dir>/<stem>.yaml beside the checkpoint (A1111), else SD
 *   1.5 defaults; what the weights tell (channels, levels, layers, attention,
 *   context width) is read from the tensor shapes and must agree with a
 *   given config (else with the defaults it replaces them).  The configs are
 *   synthesised as diffusers config objects.  Scheduler: SD 1.5's PNDM
 *   config (betas from the yaml); tokenizer: <assets>/tokenizer (the
 *   --model-config folder's own scheduler and tokenizer when it has them).
 *
 * SDXL single file (Stability SGM layout, keys conditioner.embedders.*):
 *   UNet and VAE as above (add_embedding = label_emb.0.0/.0.2), text_encoder
 *   (HF names) under "conditioner.embedders.0.transformer.", text_encoder_2
 *   (OpenCLIP names: fused in_proj bound as row slices, text_projection as a
 *   one-time transposed copy) under "conditioner.embedders.1.model.", by the
 *   tables of core/sgm_keymap.  Architecture from opt->model_config (an SGM
 *   yaml such as sd_xl_base.yaml, or a diffusers SDXL folder with unet, vae,
 *   text_encoder and text_encoder_2 configs), else <stem>.yaml beside the
 *   file, else SDXL base 1.0 defaults, checked against / completed from the
 *   tensor shapes as above (text encoder sizes from the weights unless the
 *   yaml names a known encoder; addition_time_embed_dim from label_emb's
 *   width minus the pooled width when no config states it).  Scheduler: SDXL
 *   base 1.0's EulerDiscreteScheduler (betas and prediction type from the
 *   yaml's denoiser_config); tokenizers <assets>/tokenizer and
 *   <assets>/tokenizer_2 (pad "!"); model_index: StableDiffusionXLPipeline.
 *   SD 2.x (cond_stage_model.model.*) and SDXL refiner (only
 *   conditioner.embedders.0.model.*) checkpoints are refused as not
 *   supported.
 *
 *     sd_model m;
 *     sd_model_options opt = {0};
 *     if (sd_model_open(&m, path, &opt, &err)) ...;
 *     m.unet.binder.lazy = 0;
 *     unet_load(&unet, m.unet.config, m.unet.config_path, &m.unet.binder, &err);
 *     ...
 *     sd_model_close(&m);
 */
#ifndef SDMOE_CORE_MODEL_H
#define SDMOE_CORE_MODEL_H

#include <cjson/cJSON.h>
#include <stdint.h>

#include "core/error.h"
#include "core/safetensors.h"
#include "core/weights.h"

typedef enum sd_model_kind {
    SD_MODEL_DIFFUSERS = 0, /* a diffusers pipeline folder */
    SD_MODEL_SINGLE_FILE,   /* one CompVis/LDM (SD 1.x) or SGM (SDXL) .safetensors checkpoint */
} sd_model_kind;

typedef struct sd_model_options {
    const char *variant;      /* NULL or "" = default weights; e.g. "fp16" = *.fp16.safetensors */
    const char *model_config; /* single files: LDM / SGM yaml or diffusers folder giving the architecture */
    const char *assets_dir;   /* folder with tokenizer/; NULL = $SDMOE_ASSETS, then <exe dir>/../assets */
    const char *cache_dir;    /* core/weight_cache folder, where sd_model_hash keeps file hashes;
                                 NULL = its default, "off" = hash every time */
} sd_model_options;

typedef struct sd_component {
    const char *name;   /* "unet", "vae", "text_encoder", "text_encoder_2" */
    int present;
    cJSON *config;      /* diffusers config.json object (owned) */
    char *config_path;  /* where it came from, for messages (a file, or "<yaml> (...)" when synthesised) */
    char **files;       /* weight files, n_files of them (owned); single files: the checkpoint */
    int n_files;
    int variant_used;   /* 1 when the files are the requested variant */
    sd_weights *weights;/* mapped files (owned by the component, or the model's shared mapping) */
    sd_binder binder;   /* ready: prefix, name map, component; set .lazy before binding */
} sd_component;

typedef struct sd_model {
    sd_model_kind kind;
    char *path;               /* as given */
    char *name;               /* display name: the file stem or the folder name */
    sd_component unet, vae, text_encoder, text_encoder_2;
    cJSON *model_index;       /* model_index.json (synthesised for single files) */
    char *model_index_path;
    cJSON *scheduler_config;  /* scheduler/scheduler_config.json (single files: SD 1.5 PNDM / SDXL Euler) */
    char *scheduler_config_path;
    char *tokenizer_dir;      /* folder with vocab.json and merges.txt */
    char *tokenizer_2_dir;    /* NULL unless the pipeline has a second tokenizer */
    char *arch_source;        /* single files: where the architecture came from (for messages) */
    int is_segmoe;            /* the UNet config has "segmoe_config" */
    sd_weights *shared;       /* single file: the one mapping the components share (owned) */
    char hash[11];            /* cache of sd_model_hash ("" until computed) */
    char *cache_dir;          /* sd_model_options.cache_dir (NULL = default) */
} sd_model;

/* Opens `path` (a folder or a .safetensors file).  opt may be NULL.  On
 * failure *m is left closed (nothing to free) and err names the file, the
 * key and what was expected. */
int sd_model_open(sd_model *m, const char *path, const sd_model_options *opt, sd_error *err);
void sd_model_close(sd_model *m);

#define SD_MODEL_N_COMPONENTS 4
/* Components by index, in the order unet, vae, text_encoder, text_encoder_2. */
sd_component *sd_model_component(sd_model *m, int i);

/* A1111's "Model hash": the first 10 hex digits of the SHA-256 of the
 * checkpoint file (single file) or of the UNet weights file (folder; the
 * first shard when sharded).  Kept in m->hash, and across runs in the
 * weight cache folder (core/weight_cache.h sd_weight_cache_file_sha256). */
int sd_model_hash(sd_model *m, char out[11], sd_error *err);

/* Tensor counts of one component's weights (the files of a folder
 * component, or the keys under the binder prefix of a single file). */
typedef struct sd_component_stats {
    int64_t n_tensors;
    int64_t n_params;                        /* elements of floating tensors (integer buffers such
                                                as position_ids are not parameters) */
    int64_t params_by_dtype[ST_DTYPE_COUNT]; /* elements per stored dtype, integer ones included */
    uint64_t data_bytes;                     /* tensor data bytes */
    uint64_t file_bytes;                     /* sizes of the component's files */
} sd_component_stats;
void sd_component_stats_get(const sd_component *c, sd_component_stats *s);

/* Resolves the assets folder (opt->assets_dir, $SDMOE_ASSETS, then
 * <dir of /proc/self/exe>/../assets); malloc'd path or NULL with err set. */
char *sd_model_assets_dir(const sd_model_options *opt, sd_error *err);

#endif
