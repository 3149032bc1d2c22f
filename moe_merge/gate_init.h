/* moe_merge/gate_init — SegMoE's `init: hidden` gate initialisation
 * (../shared/docs/segmoe.md section 3; segmoe/main.py get_gate_params,
 * get_hidden_states, cast_hook, lines 1205-1345).
 *
 * Owns: running every expert's own text-to-image pipeline once and turning
 * what each covered module saw at the last UNet call into gate rows.
 *
 * For expert e (YAML order):
 *   - load expert e's own pipeline (tokenizer, text encoder, UNet, VAE; SDXL:
 *     both tokenizers and text encoders) with sampler/pipeline; scheduler =
 *     DDPM from ITS scheduler config; its UNet must match cfg->type
 *     (sd_merge_check_type);
 *   - observe, on every transformer block SegMoE covers (the block ranges of
 *     sd_moe_plan_build, ALL seven module kinds whatever moe_layers says),
 *     the input of ff, attn1.to_q/k/v, attn2.to_q/k/v;
 *   - txt2img: positive prompt with the negative prompt, tokenised literally
 *     (plain syntax, as SegMoE's diffusers pipeline), 25 steps, the
 *     pipeline's default guidance (sd: 7.5, sdxl: 5.0), size = unet
 *     sample_size x VAE factor, generator seed S + e; SDXL: the negative
 *     prompt is encoded (given, so not zeroed), the pooled embedding of
 *     text_encoder_2 and the default time ids (original = target = the
 *     image size, crop 0, 0);
 *   - each module keeps only the input of its LAST call (t = 1 for DDPM;
 *     attn2.to_k/to_v see the 77 context tokens once per request: SDXL's
 *     context is both encoders' states concatenated), the
 *     conditional half (batch item 1 of [uncond, cond]), h = (sum over the
 *     S tokens) / S -> hidden_mean row e;
 *   - gate row e = h / max(||h||_2, 1e-8); stacked rows = gate.weight [E, D_in].
 * SegMoE's run is unseeded; with the seeds above the result equals the
 * fixtures' gates (fixtures/moe/README.md and fixtures/sdxl/moe/README.md,
 * "Gate initialisation").
 *
 * Memory: one running mean of D_in floats per module and expert (the
 * observer reduces each call's rows immediately); one expert pipeline is
 * loaded at a time.
 *
 *     sd_gate_init gi;
 *     sd_gate_init_begin(&gi, &cfg, &gopt);
 *     sd_merge_options mo = {.gates = sd_gate_init_merge_fn, .gates_ctx = &gi, ...};
 *     sd_merge_write(&cfg, out, &mo, &sum, &err);   // runs the experts on the first gate request
 *     sd_gate_init_end(&gi);
 */
#ifndef SDMOE_MOE_MERGE_GATE_INIT_H
#define SDMOE_MOE_MERGE_GATE_INIT_H

#include <stdint.h>

#include "core/error.h"
#include "moe_merge/merge_writer.h"
#include "moe_merge/segmoe_config.h"
#include "sampler/pipeline.h"

/* SegMoE's fixed recipe (segmoe/main.py line 1297: pipe(prompt, negative_prompt,
 * num_inference_steps=25) with the pipeline's default guidance:
 * StableDiffusionPipeline 7.5, StableDiffusionXLPipeline 5.0). */
#define SD_GATE_INIT_STEPS 25
#define SD_GATE_INIT_GUIDANCE 7.5
#define SD_GATE_INIT_GUIDANCE_SDXL 5.0

/* The gate runs' guidance for a config type. */
double sd_gate_init_guidance(sd_segmoe_type type);

typedef struct sd_gate_init_options {
    uint64_t seed;                        /* expert e's generator is seeded seed + e */
    const sd_pipeline_options *pipeline;  /* variant / model_config / assets (may be NULL) */
    /* Optional progress, per expert run: stage "load" (model loading),
     * "encode", "sample" (UNet calls: done of total), "decode". */
    void (*on_progress)(void *ctx, int expert, int n_experts, const char *stage, int done, int total);
    void *progress_ctx;
} sd_gate_init_options;

/* The result: every covered module (all seven kinds per block, plan order). */
typedef struct sd_gate_set {
    int n_experts;
    sd_moe_plan plan;         /* built with SD_SEGMOE_LAYERS_ALL from expert 0's UNet */
    float **hidden_mean;      /* [plan.n_modules], each [E, in_dim]: un-normalised means */
    float **gates;            /* [plan.n_modules], each [E, in_dim]: L2-normalised rows */
} sd_gate_set;

/* Runs every expert of cfg (cfg->experts[e].path) and fills *set.  On
 * failure *set is empty and err names the expert, its path and the problem. */
int sd_gate_set_compute(sd_gate_set *set, const sd_segmoe_config *cfg, const sd_gate_init_options *opt,
                        sd_error *err);
void sd_gate_set_free(sd_gate_set *set);
/* Index of a module in set->plan by name ("...transformer_blocks.0.attn2.to_k"),
 * or -1. */
int sd_gate_set_find(const sd_gate_set *set, const char *module);

/* Lazy adapter for sd_merge_options.gates: the expert runs happen on the
 * first gate request (after sd_merge_write has opened and checked every
 * model), then each request copies that module's gate. */
typedef struct sd_gate_init {
    const sd_segmoe_config *cfg;
    sd_gate_init_options opt;
    int computed;
    sd_gate_set set;
} sd_gate_init;

void sd_gate_init_begin(sd_gate_init *gi, const sd_segmoe_config *cfg, const sd_gate_init_options *opt);
/* sd_merge_gate_fn: ctx is an sd_gate_init*. */
int sd_gate_init_merge_fn(void *ctx, const sd_moe_module *mod, int index, int n_experts, float *gate,
                          sd_error *err);
void sd_gate_init_end(sd_gate_init *gi);

#endif
