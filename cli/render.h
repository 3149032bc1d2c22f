/* cli/render — what `generate` and `batch` share: resolving sampler and
 * schedule flags, output names, the A1111 parameters text, and saving a
 * rendered image as a PNG. */
#ifndef SDMOE_CLI_RENDER_H
#define SDMOE_CLI_RENDER_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "sampler/pipeline.h"

/* The sampler settings of one render, resolved against the model. */
typedef struct render_sampler {
    sd_sampler_id id;
    int karras;          /* SD_KARRAS_* as passed to the scheduler */
    int karras_in_use;   /* 1 if the Karras schedule is effectively used */
} render_sampler;

/* --sampler NAME (NULL = the model's own scheduler) and --scheduler
 * default|discrete|karras. */
int render_resolve_sampler(sd_pipeline *p, const char *sampler, const char *schedule, render_sampler *out,
                           sd_error *err);

/* Output file name for image `index` of `count`: a printf-style %d / %0Nd in
 * the pattern takes the index (only one, nothing else is interpreted; %% is a
 * literal %); without one and count > 1, "-<index>" goes before the
 * extension.  Errors on a malformed pattern. */
int render_output_name(const char *pattern, int index, int count, char *out, size_t cap, sd_error *err);

/* Fails early (before any rendering) if the folder of `path` is missing or
 * not writable. */
int render_check_writable(const char *path, sd_error *err);

/* Everything the parameters text records about one image. */
typedef struct render_meta {
    const char *prompt, *negative;
    int steps;
    render_sampler sampler;
    double cfg_scale;
    uint64_t seed;
    int width, height;
    int clip_skip;
    const char *model_hash, *model_name;
    const char *prompt_syntax;  /* recorded when not a1111 */
    int moe_experts, moe_top_k; /* 0 = dense model */
    const char *moe_routing;    /* recorded when not segmoe */
    /* SDXL: the micro-conditioning actually used (defaults resolved), recorded
     * as "Original size: WxH, Target size: WxH, Crop top: T, Crop left: L";
     * empty_negative_encoded: -n "" on a model where an absent negative
     * gives zeros, recorded as "Empty negative: encoded" (A1111 zeroes an
     * empty negative prompt on SDXL, so the text alone would not tell). */
    int sdxl;
    int original_width, original_height, target_width, target_height, crop_top, crop_left;
    int empty_negative_encoded;
} render_meta;

/* Fills the SDXL fields of m for a render of width x height from the flags
 * (0 = default) and whether the pipeline zeroes an absent negative. */
void render_meta_sdxl(render_meta *m, sd_pipeline *p, int width, int height, int original_width,
                      int original_height, int target_width, int target_height, int crop_top, int crop_left,
                      const char *negative);

/* A1111 parameters text (malloc'd). */
int render_infotext(const render_meta *m, char **out, sd_error *err);

/* Converts image i of a result to RGB8 and writes it (atomically) with the
 * parameters text. */
int render_save_png(const sd_txt2img_result *r, int i, const char *path, const char *parameters,
                    sd_error *err);

/* A random seed from /dev/urandom (falls back to time and pid). */
uint64_t render_random_seed(void);

#endif
