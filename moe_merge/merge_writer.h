/* moe_merge/merge_writer — builds a SegMoE model folder from a parsed
 * config, the base and expert models and one gate matrix per MoE module
 * (../shared/docs/segmoe.md sections 2 and 5).
 *
 * Owns: the list of MoE modules of a UNet (sd_moe_plan), the output layout
 * and key names, and writing the folder.  Gate *computation* (running each
 * expert's pipeline, `init: hidden`) is not here: the caller supplies the
 * gates through sd_merge_gate_fn.  `init: random` gates are drawn here.
 *
 * Output folder (what SegMoE's save_pretrained writes, and what its loader
 * requires):
 *   model_index.json            type sd: StableDiffusionPipeline; safety_checker
 *                               and feature_extractor null.  type sdxl:
 *                               StableDiffusionXLPipeline with text_encoder_2 /
 *                               tokenizer_2, force_zeros_for_empty_prompt (the
 *                               base's, default true), image_encoder and
 *                               feature_extractor null
 *   scheduler/scheduler_config.json   DDPMScheduler: the base's scheduler
 *                               fields plus DDPM's defaults for absent keys
 *                               (as DDPMScheduler.from_config + save)
 *   text_encoder/ tokenizer/ vae/     byte copies of the base's files (the
 *   (sdxl: + text_encoder_2/    configs and other small files of each
 *    tokenizer_2/)              folder plus the weight files the model
 *                               loader chose; other weight files are skipped)
 *   unet/config.json            the base UNet config with _name_or_path
 *                               "<base_model>/unet" (as diffusers saves it)
 *                               + "segmoe_config": the
 *                               YAML mapping as parsed, with num_experts,
 *                               num_experts_per_tok, moe_layers, type and
 *                               {down,up}_idx_{start,end} set (sd: down
 *                               [0,3) up [1,4); sdxl: down [1,3) up [0,2)), plus
 *                               "sdmoe": {format, format_version, seed, init, dtype}
 *   unet/diffusion_pytorch_model.safetensors   one file, SegMoE's key names:
 *       every base tensor except the replaced FF / q,k,v weights, unchanged;
 *       P.<m>.gate.weight [E, D_in]; P.<m>.experts.<e>.<param> from expert
 *       e's UNet; __metadata__ {format: pt, sdmoe_format: segmoe,
 *       sdmoe_format_version: "1"}.
 * Tensors are copied without arithmetic: in the source dtype they are
 * bit-identical; otherwise they are converted through f32 (f16/bf16 -> f32
 * exact, f32 -> f16/bf16 round-to-nearest-even).
 *
 * Atomicity: everything is written into "<out_dir>.tmp-<pid>" beside the
 * target and renamed at the end; on any failure the temporary folder is
 * removed and nothing exists at out_dir.  out_dir must not exist (or be an
 * empty directory).
 *
 * Models are opened with core/model (sd_model_open): the base must be a
 * diffusers folder (its text_encoder/, tokenizer/ and vae/ are copied as
 * files; the weight files are the ones sd_model_open picks: the default,
 * non-variant safetensors unless options->model->variant says otherwise);
 * experts may be diffusers folders or single-file SD 1.x checkpoints (only
 * their UNet is read, through core/ldm_keymap's names).
 */
#ifndef SDMOE_MOE_MERGE_MERGE_WRITER_H
#define SDMOE_MOE_MERGE_MERGE_WRITER_H

#include <stdint.h>

#include "core/error.h"
#include "core/model.h"
#include "core/safetensors.h"
#include "moe_merge/segmoe_config.h"

#define SD_MERGE_FORMAT "segmoe"
#define SD_MERGE_FORMAT_VERSION 1

/* The seven module kinds SegMoE can turn into MoE layers, in forward order. */
typedef enum sd_moe_kind {
    SD_MOE_ATTN1_Q = 0, SD_MOE_ATTN1_K, SD_MOE_ATTN1_V,
    SD_MOE_ATTN2_Q, SD_MOE_ATTN2_K, SD_MOE_ATTN2_V,
    SD_MOE_FF,
    SD_MOE_KIND_COUNT
} sd_moe_kind;

/* Module suffix: "attn1.to_q", ..., "ff". */
const char *sd_moe_kind_suffix(sd_moe_kind k);

typedef struct sd_moe_module {
    char name[192];   /* "<block path>.transformer_blocks.<k>.<suffix>", e.g.
                         "down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_q" */
    sd_moe_kind kind;
    int64_t in_dim;   /* gate width D_in (FF: d; attn2 to_k/to_v: cross_attention_dim) */
    int64_t out_dim;  /* projection out; FF: d */
    int64_t inner_dim;/* FF only: GEGLU inner width (net.0.proj has 2*inner rows) */
} sd_moe_module;

typedef struct sd_moe_plan {
    int down_start, down_end; /* [start, end) block ranges; SD: 0..3 */
    int up_start, up_end;     /* SD: 1..4 */
    int n_modules;
    sd_moe_module *modules;   /* down blocks then up blocks; per transformer
                                 block the kinds in sd_moe_kind order */
} sd_moe_plan;

/* Lists the MoE modules of a model's UNet (an opened sd_model's `unet`
 * component, any layout) for `type` and `layers`: every
 * attentions.j.transformer_blocks.k inside the block ranges, the mid block
 * never; dims read from the tensors' shapes. */
int sd_moe_plan_build(sd_moe_plan *plan, const sd_component *unet, sd_segmoe_type type, sd_segmoe_layers layers,
                      sd_error *err);
void sd_moe_plan_free(sd_moe_plan *plan);

/* Fills gate[n_experts * mod->in_dim] (row e = expert e, YAML order) for one
 * module; returns 0 or -1 with err set. */
typedef int (*sd_merge_gate_fn)(void *ctx, const sd_moe_module *mod, int index, int n_experts, float *gate,
                                sd_error *err);
/* Progress while writing: bytes of the UNet file written so far / total. */
typedef void (*sd_merge_progress_fn)(void *ctx, const char *stage, uint64_t done, uint64_t total);

#define SD_MERGE_DTYPE_AUTO (-1)

typedef struct sd_merge_options {
    uint64_t seed;          /* stored in segmoe_config.sdmoe.seed; seeds init: random */
    int dtype;              /* ST_F32 / ST_F16 / ST_BF16, or SD_MERGE_DTYPE_AUTO = the
                               dominant float dtype of the base UNet file */
    sd_merge_gate_fn gates; /* required for init: hidden; ignored for init: random */
    void *gates_ctx;
    sd_merge_progress_fn progress; /* optional */
    void *progress_ctx;
    const sd_model_options *model;  /* for sd_model_open (assets dir for single-file
                                       experts' tokenizer, variant); may be NULL */
} sd_merge_options;

typedef struct sd_merge_summary {
    int n_experts;
    int top_k;
    int n_modules;          /* MoE layers */
    int n_tensors;          /* in the UNet file */
    int64_t n_params;       /* UNet parameters */
    uint64_t unet_bytes;    /* UNet file size */
    st_dtype dtype;         /* of the UNet file */
} sd_merge_summary;

/* Draws init: random gates for every module of the plan: one torch-style
 * CPU generator (core/rng) seeded with `seed`, modules in plan order, each
 * gate [E, D] = U(-1/sqrt(D), 1/sqrt(D)) like nn.Linear's default init
 * (u * (hi - lo) + lo per value).  gates[i] must hold E * in_dim floats. */
void sd_merge_random_gates(const sd_moe_plan *plan, int n_experts, uint64_t seed, float *const *gates);

/* 1 if the model's UNet is SDXL's (addition_embed_type "text_time"). */
int sd_merge_model_is_sdxl(const sd_model *m);
/* The YAML's `type` against a model (`role` names it: "base_model",
 * "experts[1]"): sdxl needs an SDXL UNet, sd a UNet without added
 * conditioning; the error names the YAML, the type and the model. */
int sd_merge_check_type(const sd_segmoe_config *cfg, const sd_model *m, const char *role, sd_error *err);

/* Checks the base and every expert (diffusers folders, same UNet
 * architecture: the first mismatched tensor and both shapes are named),
 * the YAML's type against the base (sd_merge_check_type), builds the plan,
 * fetches the gates and writes the folder.  `summary` may
 * be NULL.  On failure nothing is left at out_dir. */
int sd_merge_write(const sd_segmoe_config *cfg, const char *out_dir, const sd_merge_options *opt,
                   sd_merge_summary *summary, sd_error *err);

/* 0 if out_dir can receive a merged model (absent, or an empty directory);
 * the error otherwise.  sd_merge_write checks it first; a CLI can call it
 * before spending minutes on gate runs. */
int sd_merge_check_output(const char *out_dir, sd_error *err);

#endif
