/* `sdmoe generate`: text-to-image from the command line. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "cli/gen_options.h"
#include "cli/progress.h"
#include "cli/render.h"
#include "core/kernels.h"
#include "sampler/pipeline.h"
#include "unet/moe_stats.h"
#include "unet/unet.h"
#include "vae/vae.h"

/* Progress of one run: a bar per stage, labelled with the image number. */
typedef struct gen_progress {
    cli_progress bar;
    cli_progress_mode mode;
    char stage[32];
    int image, images;
    sd_moe_stats *stats;    /* --moe-stats, NULL when off */
    sd_error stats_err;
    int stats_failed;
} gen_progress;

static void on_unet_call(void *ctx, int call, float timestep) {
    gen_progress *g = ctx;
    if (g->stats && !g->stats_failed && sd_moe_stats_record(g->stats, call, timestep, &g->stats_err))
        g->stats_failed = 1;
}

static void on_progress(void *ctx, const char *stage, int done, int total) {
    gen_progress *g = ctx;
    if (strcmp(stage, g->stage) || done == 0) {
        if (g->stage[0]) cli_progress_finish(&g->bar);
        snprintf(g->stage, sizeof g->stage, "%s", stage);
        char label[64];
        if (g->images > 1 && strcmp(stage, "load"))
            snprintf(label, sizeof label, "%s %d/%d", !strcmp(stage, "sample") ? "sampling" : stage, g->image + 1,
                     g->images);
        else
            snprintf(label, sizeof label, "%s", !strcmp(stage, "sample") ? "sampling" : !strcmp(stage, "load") ? "loading" : stage);
        cli_progress_init(&g->bar, stderr, g->mode);
        cli_progress_start(&g->bar, label, total);
    }
    cli_progress_update(&g->bar, done);
}

static void on_message(void *ctx, int is_warning, const char *msg) {
    gen_progress *g = ctx;
    if (!is_warning && g->mode == CLI_PROGRESS_QUIET) return;
    char line[SD_ERROR_MSG_MAX + 256];
    snprintf(line, sizeof line, "sdmoe: %s%s", is_warning ? "warning: " : "", msg);
    cli_progress_message(&g->bar, line);
}

static void progress_end(gen_progress *g) {
    if (g->stage[0]) cli_progress_finish(&g->bar);
    g->stage[0] = 0;
}

static int fail(const sd_error *err) {
    fprintf(stderr, "sdmoe: %s\n", err->msg);
    return 1;
}

static int render_all(sd_pipeline *p, const gen_options *o, gen_progress *prog) {
    sd_error err = {0};
    render_sampler rs;
    if (render_resolve_sampler(p, o->sampler, o->scheduler, &rs, &err)) return fail(&err);
    int width = o->width, height = o->height;
    int dw, dh;
    sd_pipeline_default_size(p, &dw, &dh);
    if (!width) width = dw;
    if (!height) height = dh;
    sd_prompt_syntax syntax;
    if (sd_prompt_syntax_parse(o->prompt_syntax, &syntax, &err)) return fail(&err);
    uint64_t seed = o->seed < 0 ? render_random_seed() : (uint64_t)o->seed;
    sd_model *m = sd_pipeline_model(p);
    char hash[11] = "";
    if (sd_model_hash(m, hash, &err)) return fail(&err);
    const sd_unet_config *uc = sd_unet_get_config(sd_pipeline_unet(p));
    if (o->micro_given && !sd_pipeline_is_sdxl(p)) {
        sd_fail(&err, "--original-size, --target-size and --crop-top-left apply to SDXL models only; %s is not one",
                m->path);
        return fail(&err);
    }
    if (o->verbose)
        fprintf(stderr, "sdmoe: model %s (%s), hash %s, threads %d%s\n", m->name,
                m->kind == SD_MODEL_SINGLE_FILE ? "single-file checkpoint" : "diffusers folder", hash,
                sd_default_threads(), uc->moe_enabled ? ", SegMoE mixture of experts" : "");
    if (!o->quiet)
        fprintf(stderr, "sdmoe: %dx%d, %d steps, sampler %s%s, cfg %.4g, seed %llu\n", width, height, o->steps,
                sd_sampler_get(rs.id)->name, rs.karras_in_use ? " (karras)" : "", o->cfg_scale,
                (unsigned long long)seed);
    if (o->moe_stats) {
        if (!uc->moe_enabled) {
            sd_fail(&err, "--moe-stats: %s is not a mixture-of-experts model", m->path);
            return fail(&err);
        }
        if (render_check_writable(o->moe_stats, &err) ||
            sd_moe_stats_create(&prog->stats, sd_pipeline_unet(p), &err))
            return fail(&err);
    }
    for (int i = 0; i < o->batch_count; i++) {
        char path[4096];
        if (render_output_name(o->output, i, o->batch_count, path, sizeof path, &err)) return fail(&err);
        if (render_check_writable(path, &err)) return fail(&err);
        uint64_t s = seed + (uint64_t)i; /* A1111 / sd.cpp batch convention */
        sd_txt2img_params q = {.prompt = o->prompt ? o->prompt : "", .negative_prompt = o->negative,
                               .width = width, .height = height, .steps = o->steps, .cfg_scale = o->cfg_scale,
                               .sampler = rs.id, .karras = rs.karras, .clip_skip = o->clip_skip,
                               .syntax = syntax, .n_images = 1, .seeds = &s,
                               .original_width = o->original_width, .original_height = o->original_height,
                               .target_width = o->target_width, .target_height = o->target_height,
                               .crop_top = o->crop_top, .crop_left = o->crop_left,
                               .vae_tile = o->vae_tiling ? VAE_DEFAULT_TILE : 0};
        prog->image = i;
        sd_txt2img_hooks h = {.on_progress = on_progress, .on_unet_call = on_unet_call, .ctx = prog};
        if (prog->stats) {
            char label[64];
            snprintf(label, sizeof label, "image %d seed %llu", i, (unsigned long long)s);
            if (sd_moe_stats_begin_run(prog->stats, label, &err)) return fail(&err);
        }
        sd_txt2img_result res;
        if (sd_pipeline_txt2img(p, &q, &h, &res, &err)) {
            progress_end(prog);
            return fail(&err);
        }
        progress_end(prog);
        if (i == 0 && res.dropped_tokens > 0)
            fprintf(stderr, "sdmoe: warning: the prompt is longer than 75 tokens; %d tokens were dropped "
                    "(use --prompt-syntax a1111 for long prompts)\n", res.dropped_tokens);
        if (i == 0 && res.invalid_utf8 > 0)
            fprintf(stderr, "sdmoe: warning: %zu invalid UTF-8 sequences in the prompt were replaced by U+FFFD\n",
                    res.invalid_utf8);
        render_meta meta = {.prompt = q.prompt, .negative = o->negative, .steps = o->steps, .sampler = rs,
                            .cfg_scale = o->cfg_scale, .seed = s, .width = width, .height = height,
                            .clip_skip = o->clip_skip, .model_hash = hash, .model_name = m->name,
                            .prompt_syntax = o->prompt_syntax,
                            .moe_experts = uc->moe_enabled ? uc->moe_num_experts : 0,
                            .moe_top_k = uc->moe_top_k, .moe_routing = o->moe_routing};
        render_meta_sdxl(&meta, p, width, height, o->original_width, o->original_height, o->target_width,
                         o->target_height, o->crop_top, o->crop_left, o->negative);
        char *text = NULL;
        int rc = render_infotext(&meta, &text, &err);
        if (!rc) rc = render_save_png(&res, 0, path, text, &err);
        free(text);
        sd_txt2img_result_free(&res);
        if (rc) return fail(&err);
        if (!o->quiet) fprintf(stderr, "sdmoe: wrote %s (seed %llu)\n", path, (unsigned long long)s);
        printf("%s\n", path);
    }
    if (prog->stats) {
        if (prog->stats_failed) return fail(&prog->stats_err);
        if (sd_moe_stats_write(prog->stats, o->moe_stats, &err)) return fail(&err);
        if (!o->quiet) fprintf(stderr, "sdmoe: wrote MoE routing statistics to %s\n", o->moe_stats);
    }
    return 0;
}

int cli_generate(int argc, char **argv) {
    gen_options o;
    gen_options_defaults(&o);
    char msg[512];
    int prc = gen_options_parse(&o, argc, argv, 0, msg, sizeof msg);
    if (prc == 1) return 0;
    if (prc < 0) {
        fprintf(stderr, "sdmoe: %s\n", msg);
        return 2;
    }
    sd_error err = {0};
    render_sampler probe;
    /* Validate flags that need no model before the (slow) load. */
    if (o.sampler) {
        sd_sampler_id id;
        int k;
        if (sd_sampler_lookup(o.sampler, &id, &k, &err)) return fail(&err);
    }
    (void)probe;
    char first[4096];
    if (render_output_name(o.output, 0, o.batch_count, first, sizeof first, &err) ||
        render_check_writable(first, &err))
        return fail(&err);
    sd_set_threads(o.threads > 0 ? o.threads : sd_default_threads());
    gen_progress prog = {.mode = cli_progress_auto_mode(stderr, o.quiet), .images = o.batch_count};
    sd_pipeline_options po = {.variant = o.variant, .model_config = o.model_config,
                              .moe_routing = !strcmp(o.moe_routing, "per-token") ? SD_MOE_ROUTING_PER_TOKEN
                                                                                 : SD_MOE_ROUTING_SEGMOE,
                              .weight_cache_dir = o.weight_cache, .on_progress = on_progress,
                              .on_message = on_message, .progress_ctx = &prog};
    sd_pipeline *p;
    int rc = sd_pipeline_load(&p, o.model, &po, &err);
    progress_end(&prog);
    if (rc) return fail(&err);
    rc = render_all(p, &o, &prog);
    sd_moe_stats_free(prog.stats);
    sd_pipeline_free(p);
    return rc;
}
