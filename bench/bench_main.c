/* bench/bench_main — build/sdmoe-bench: SD1.5-sized speed and memory
 * figures with random weights (issue 9; how to run: bench/README.md).
 *
 * Run plan (full): GEMM/FMA probes; random weights written once per
 * component (reused by later runs); then, as a 512^2 generation holds them,
 * CLIP + UNet + VAE loaded together through the real loaders: text
 * encoding of 2 prompts, the UNet CFG step (batch 2) at 64x64 and at 32x32
 * latents, the VAE decode 64x64 -> 512x512, with the peak RSS of that
 * phase; then the VAE alone (decode-only, as the pipeline loads it): the
 * whole-image and the tiled decode, each on a fresh model, with the peak RSS
 * each adds; then the SegMoE 4x2 UNet alone; then the per-operation
 * breakdown.  Every timing is the median of --reps calls after --warmup
 * calls. */
#include <cblas.h>
#include <math.h>
#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl_debug.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench/bench.h"
#include "core/kernels.h"
#include "core/weights.h"
#include "text_encoder/clip_text.h"
#include "text_encoder/conditioning.h"
#include "text_encoder/tokenizer.h"
#include "unet/moe_layer.h"
#include "unet/unet.h"
#include "vae/vae.h"

/* anchors.md §5a: UNet 401.6 GMAC per eval (64x64, batch 1), VAE decode 1257, CLIP 6.65 per prompt */
#define ANCHOR_UNET_GMAC 401.6
#define ANCHOR_VAE_GMAC 1257.0
#define ANCHOR_CLIP_GMAC 6.65
#define SEED 20240609ull

typedef struct opts {
    int threads, json, quick, gemm_study, inventory, breakdown_only, reps, warmup, fresh, delete_weights;
    int breakdown, moe, vae, text, sdxl, vae_only, vae_tile, startup, startup_only, cold;
    double wait_idle_s;
    char dir[900];
    char tokenizer[900];
} opts;

static void usage(FILE *f) {
    fprintf(f,
            "usage: sdmoe-bench [options]\n"
            "SD1.5-sized benchmark with random weights (bench/README.md).\n"
            "  -t, --threads N     threads for every kernel (default: physical cores, %d here)\n"
            "  --json              print one JSON object instead of the table\n"
            "  --quick             only the SGEMM probe and the 256^2 UNet CFG step (< 1 min once the\n"
            "                      weights exist)\n"
            "  --gemm-study        only the OpenBLAS vs oneDNN study on SD's GEMM shapes (+ the FMA peak)\n"
            "  --sdxl              only an SDXL-shaped UNet CFG step at 1024^2 (+ the FMA peak); writes\n"
            "                      a 9.6 GB f32 weight file once, ~10 GB of memory, minutes per step\n"
            "  --inventory         print parameter and MAC counts of the SD1.5 shapes, run nothing\n"
            "  --breakdown-only    only the per-operation replay of the 512^2 step (no weights needed)\n"
            "  --vae-only          only the VAE: 512^2 decode whole and tiled, time and peak RSS of each\n"
            "  --startup-only      only start -> first sampling step of a 512^2 request through\n"
            "                      sd_pipeline_load (a diffusers folder of links to the weight files)\n"
            "  --cold              the startup figure from an empty page cache (root: drops it before\n"
            "                      reading the files and again before starting)\n"
            "  --vae-tile N        latent tile of the tiled decode (default %d, as --vae-tiling)\n"
            "  --reps N            timed calls per figure, median reported (default 3, min 3 for\n"
            "                      figures; 1-2 allowed for smoke runs)\n"
            "  --warmup N          untimed calls first (default 1)\n"
            "  --weights-dir DIR   where the random safetensors live (default $TMPDIR/sdmoe-bench-weights)\n"
            "  --fresh-weights     rewrite them even if present\n"
            "  --delete-weights    remove them at exit (about 7.3 GB)\n"
            "  --tokenizer DIR     CLIP tokenizer files (default assets/tokenizer next to the build)\n"
            "  --wait-idle S       first wait up to S seconds for a quiet machine (>= 85%% idle over 2 s;\n"
            "                      the machine is shared, see the cpu column)\n"
            "  --no-breakdown --no-moe --no-vae --no-text --no-startup   skip parts of the full run\n"
            "  -h, --help          this text\n",
            VAE_DEFAULT_TILE, sd_default_threads());
}

static int parse_args(opts *o, int argc, char **argv) {
    memset(o, 0, sizeof *o);
    o->threads = sd_default_threads();
    o->reps = 3, o->warmup = 1, o->breakdown = o->moe = o->vae = o->text = o->startup = 1, o->vae_tile = VAE_DEFAULT_TILE;
    const char *tmp = getenv("TMPDIR");
    snprintf(o->dir, sizeof o->dir, "%s/sdmoe-bench-weights", tmp && *tmp ? tmp : "/tmp");
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            exit(0);
        } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            if (!val || atoi(val) < 1) return fprintf(stderr, "sdmoe-bench: %s needs a count >= 1\n", a), -1;
            o->threads = atoi(val), i++;
        } else if (!strcmp(a, "--reps") || !strcmp(a, "--warmup")) {
            if (!val || atoi(val) < (a[2] == 'r' ? 1 : 0))
                return fprintf(stderr, "sdmoe-bench: %s needs a number\n", a), -1;
            *(a[2] == 'r' ? &o->reps : &o->warmup) = atoi(val), i++;
        } else if (!strcmp(a, "--weights-dir") || !strcmp(a, "--tokenizer")) {
            if (!val) return fprintf(stderr, "sdmoe-bench: %s needs a directory\n", a), -1;
            snprintf(a[2] == 'w' ? o->dir : o->tokenizer, sizeof o->dir, "%s", val), i++;
        } else if (!strcmp(a, "--vae-tile")) {
            if (!val || atoi(val) < 4 || atoi(val) % 4)
                return fprintf(stderr, "sdmoe-bench: %s needs a multiple of 4\n", a), -1;
            o->vae_tile = atoi(val), i++;
        } else if (!strcmp(a, "--wait-idle")) {
            if (!val || atof(val) < 0) return fprintf(stderr, "sdmoe-bench: %s needs seconds\n", a), -1;
            o->wait_idle_s = atof(val), i++;
        } else if (!strcmp(a, "--json")) o->json = 1;
        else if (!strcmp(a, "--quick")) o->quick = 1;
        else if (!strcmp(a, "--gemm-study")) o->gemm_study = 1;
        else if (!strcmp(a, "--inventory")) o->inventory = 1;
        else if (!strcmp(a, "--sdxl")) o->sdxl = 1;
        else if (!strcmp(a, "--breakdown-only")) o->breakdown_only = 1;
        else if (!strcmp(a, "--vae-only")) o->vae_only = 1;
        else if (!strcmp(a, "--fresh-weights")) o->fresh = 1;
        else if (!strcmp(a, "--delete-weights")) o->delete_weights = 1;
        else if (!strcmp(a, "--no-breakdown")) o->breakdown = 0;
        else if (!strcmp(a, "--no-moe")) o->moe = 0;
        else if (!strcmp(a, "--no-vae")) o->vae = 0;
        else if (!strcmp(a, "--no-text")) o->text = 0;
        else if (!strcmp(a, "--no-startup")) o->startup = 0;
        else if (!strcmp(a, "--startup-only")) o->startup_only = 1;
        else if (!strcmp(a, "--cold")) o->cold = 1;
        else {
            fprintf(stderr, "sdmoe-bench: unknown option '%s'\n", a);
            usage(stderr);
            return -1;
        }
    }
    return 0;
}

/* assets/tokenizer from the working directory, else next to the executable's build folder. */
static void find_tokenizer(opts *o) {
    if (o->tokenizer[0]) return;
    if (access("assets/tokenizer/vocab.json", R_OK) == 0) {
        snprintf(o->tokenizer, sizeof o->tokenizer, "assets/tokenizer");
        return;
    }
    char exe[700];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = 0;
        char *slash = strrchr(exe, '/');
        if (slash) *slash = 0;
        snprintf(o->tokenizer, sizeof o->tokenizer, "%s/../assets/tokenizer", exe);
    }
}

/* --------------------------------------------------------------- state */

typedef struct component {
    const char *file;
    bench_dtype dtype;
    bench_inventory inv;
    int64_t bytes;
    int written;
    double write_ms;
    char path[1024];
} component;

enum { C_UNET, C_VAE, C_CLIP, C_MOE, C_COUNT };

typedef struct measure {
    const char *key;   /* JSON stem */
    const char *label;
    bench_timing t;
    double gmac;       /* MACs per call, G */
    int done;
} measure;

enum { M_SGEMM, M_TEXT, M_UNET512, M_UNET256, M_VAE, M_VAE_TILED, M_MOE, M_COUNT };

/* One replayed breakdown (bench_breakdown.c) and what it is compared with. */
typedef struct breakdown {
    int done, layout;
    const bench_oplist *ops;
    const measure *step;  /* the measured call it explains (may be not done) */
    double replay_ms, cpu_share;
    double conv_ms_alt;   /* VAE: its convolutions replayed in the other layout (NHWC / nChw16c; -1: not run) */
    int alt_layout;
} breakdown;

typedef struct bench {
    opts o;
    sd_error err;
    double load_start[3], load_end[3], idle_at_start;
    double peak, peak_median, sgemm_gflops;
    component comp[C_COUNT];
    measure m[M_COUNT];
    sd_unet_config ucfg, mcfg;
    vae_config vcfg;
    sd_clip_text_config ccfg;
    double unet_gmac512, unet_gmac256, moe_gmac512, vae_gmac, clip_gmac;
    bench_startup_out su;          /* start -> first step through the pipeline */
    int su_done;
    double scratch_mb, unet_ws_mb; /* shared UNet/VAE scratch; what the 512^2 UNet step needs of it */
    double peak_rss_mb_512, moe_peak_rss_mb, load_ms, read_ms, set_ctx_ms, moe_load_ms;
    double rss_load[3], rss_end[3]; /* after loading / after the 512^2 phase: VmRSS, RssAnon, RssFile (MB) */
    /* the VAE alone, [0] whole-image decode, [1] tiled: RSS after loading, peak RSS
     * during the decodes, vae_workspace_bytes (MB); vae_layout = its activation layout */
    double vae_rss_load[2], vae_peak[2], vae_ws[2];
    int vae_done[2], vae_layout;
    int hwm_reset_ok, moe_layers, moe_ready, moe_total;
    bench_oplist ops512, opsvae;
    breakdown bd_unet, bd_vae;
    cJSON *gemm_json;
} bench;

static double mb(int64_t bytes) { return (double)bytes / (1024.0 * 1024.0); }

/* VmRSS, RssAnon (heap: converted and reordered weights, workspaces) and
 * RssFile (mapped weight files) in MB. */
static void rss_split(double out[3]) {
    out[0] = (double)bench_status_kb("VmRSS") / 1024.0;
    out[1] = (double)bench_status_kb("RssAnon") / 1024.0;
    out[2] = (double)bench_status_kb("RssFile") / 1024.0;
}

/* ------------------------------------------------------------- configs */

static int configs_make(bench *B) {
    sd_error *err = &B->err;
    cJSON *u = bench_unet_config_json(0, 0), *m = bench_unet_config_json(4, 2);
    cJSON *v = bench_vae_config_json(), *c = bench_clip_config_json();
    int rc = !u || !m || !v || !c ? sd_fail(err, "bench: out of memory") : 0;
    if (!rc) rc = sd_unet_config_parse(&B->ucfg, u, "bench unet config", err);
    if (!rc) rc = sd_unet_config_parse(&B->mcfg, m, "bench segmoe unet config", err);
    if (!rc) rc = vae_config_from_json(&B->vcfg, v, "bench vae config", err);
    if (!rc) rc = sd_clip_text_config_read(c, "bench text_encoder config", &B->ccfg, err);
    bench_oplist o256 = {0}, oclip = {0}, omoe = {0};
    if (!rc) rc = bench_unet_arch(&B->ucfg, &B->comp[C_UNET].inv, &B->ops512, 2, 64, 64, 77, NULL, err);
    if (!rc) rc = bench_unet_arch(&B->ucfg, NULL, &o256, 2, 32, 32, 77, NULL, err);
    if (!rc) rc = bench_unet_arch(&B->mcfg, &B->comp[C_MOE].inv, &omoe, 2, 64, 64, 77, &B->moe_gmac512, err);
    if (!rc) rc = bench_vae_arch(v, &B->comp[C_VAE].inv, &B->opsvae, 1, 64, 64, err);
    if (!rc) rc = bench_clip_arch(c, &B->comp[C_CLIP].inv, &oclip, 1, 77, err);
    if (!rc) {
        /* per-step MACs: the attn2 K/V of the context are computed once per
         * request (cached), but anchors.md counts them in every eval; we
         * count as anchors does so that 64x64 reproduces 401.6 GMAC. */
        B->unet_gmac512 = bench_oplist_macs(&B->ops512, 1) * 1e-9;
        B->unet_gmac256 = bench_oplist_macs(&o256, 1) * 1e-9;
        B->moe_gmac512 *= 1e-9;
        B->vae_gmac = bench_oplist_macs(&B->opsvae, 1) * 1e-9;
        B->clip_gmac = 2 * bench_oplist_macs(&oclip, 1) * 1e-9;
    }
    bench_oplist_free(&o256), bench_oplist_free(&oclip), bench_oplist_free(&omoe);
    cJSON_Delete(u), cJSON_Delete(m), cJSON_Delete(v), cJSON_Delete(c);
    B->comp[C_UNET].file = "unet_sd15_f32.safetensors", B->comp[C_UNET].dtype = BENCH_F32;
    B->comp[C_VAE].file = "vae_sd15_f32.safetensors", B->comp[C_VAE].dtype = BENCH_F32;
    B->comp[C_CLIP].file = "clip_l_text_f32.safetensors", B->comp[C_CLIP].dtype = BENCH_F32;
    B->comp[C_MOE].file = "unet_segmoe_4x2_f16.safetensors", B->comp[C_MOE].dtype = BENCH_F16;
    return rc;
}

static void print_inventory(const bench *B) {
    printf("SD1.5 shapes (analytic; anchors.md §5 counts convs, linears and the two attention matmuls)\n");
    printf("  UNet params %lld (published 859,520,964), tensors %d\n", (long long)B->comp[C_UNET].inv.params,
           B->comp[C_UNET].inv.n);
    printf("  UNet MACs 64x64 batch 1: %.1f G = conv %.1f + linear %.1f + attention %.1f (anchor 401.6 = 222.0 + "
           "116.6 + 63.0)\n",
           B->unet_gmac512 / 2, bench_oplist_cat_macs(&B->ops512, BCAT_CONV, 1) * 0.5e-9,
           bench_oplist_cat_macs(&B->ops512, BCAT_LINEAR, 1) * 0.5e-9,
           bench_oplist_cat_macs(&B->ops512, BCAT_ATTN, 1) * 0.5e-9);
    printf("  UNet CFG step (batch 2): 512^2 %.1f GMAC, 256^2 %.1f GMAC; context K/V per request %.2f GMAC\n",
           B->unet_gmac512, B->unet_gmac256,
           (bench_oplist_macs(&B->ops512, 1) - bench_oplist_macs(&B->ops512, 0)) * 1e-9);
    printf("  SegMoE 4x2 UNet params %lld, tensors %d; CFG step 512^2 %.1f GMAC (%.1f per eval; anchor ~504)\n",
           (long long)B->comp[C_MOE].inv.params, B->comp[C_MOE].inv.n, B->moe_gmac512, B->moe_gmac512 / 2);
    printf("  VAE params %lld (published 83,653,863), decode 64x64 -> 512^2: %.1f GMAC (anchor 1257)\n",
           (long long)B->comp[C_VAE].inv.params, B->vae_gmac);
    printf("  CLIP-L text params %lld (published 123,060,480), 2 prompts: %.2f GMAC (anchor 2 x 6.65)\n",
           (long long)B->comp[C_CLIP].inv.params, B->clip_gmac);
}

static int weights_make(bench *B, int which_mask) {
    for (int c = 0; c < C_COUNT; c++) {
        if (!(which_mask & (1 << c))) continue;
        component *k = &B->comp[c];
        snprintf(k->path, sizeof k->path, "%s/%s", B->o.dir, k->file);
        if (!B->o.json) {
            printf("weights: %s (%.0f M params, %s) ... ", k->path, (double)k->inv.params * 1e-6,
                   k->dtype == BENCH_F16 ? "f16" : "f32");
            fflush(stdout);
        }
        if (bench_weights_ensure(B->o.dir, k->file, &k->inv, k->dtype, SEED, B->o.fresh, &k->written, &k->bytes,
                                 &k->write_ms, &B->err))
            return -1;
        if (!B->o.json) {
            if (k->written) printf("written, %.0f MB in %.1f s\n", mb(k->bytes), k->write_ms * 1e-3);
            else printf("reused (%.0f MB)\n", mb(k->bytes));
        }
    }
    return 0;
}

/* ------------------------------------------------------------- loading */

typedef struct loaded {
    sd_weights *w;
    sd_binder b;
} loaded;

static int open_binder(loaded *l, const char *path, const char *component, int lazy, sd_error *err) {
    const char *paths[1] = {path};
    if (sd_weights_open(&l->w, paths, 1, err)) return -1;
    l->b = (sd_binder){.w = l->w, .component = component, .prefix = "", .lazy = lazy};
    return 0;
}

static int load_unet(sd_unet **u, const sd_unet_config *cfg, loaded *l, const char *path, sd_error *err) {
    /* as sampler/pipeline.c: MoE experts bound lazily (stay mapped until chosen) */
    if (open_binder(l, path, "unet", cfg->moe_enabled, err)) return -1;
    if (sd_unet_load(u, cfg, &l->b, err)) return -1;
    return sd_binder_check_complete(&l->b, err);
}

/* ------------------------------------------------------------ measures */

typedef struct unet_run {
    sd_unet *u;
    float *lat, *out;
    int64_t n, h, w;
} unet_run;

static int unet_call(void *p, sd_error *err) {
    unet_run *r = p;
    return sd_unet_forward(r->u, r->lat, r->n, r->h, r->w, 999.0f, NULL, r->out, err);
}

static int check_finite(const float *x, int64_t n, const char *what, sd_error *err) {
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return sd_fail(err, "bench: %s produced a non-finite value at %lld", what, (long long)i);
    return 0;
}

static int unet_measure(bench *B, measure *m, sd_unet *u, int64_t h, int64_t w) {
    unet_run r = {u, malloc((size_t)(2 * 4 * h * w) * 4), malloc((size_t)(2 * 4 * h * w) * 4), 2, h, w};
    int rc = -1;
    if (!r.lat || !r.out) {
        sd_fail(&B->err, "bench: out of memory");
        goto out;
    }
    bench_fill_uniform(r.lat, 2 * 4 * h * w, 1.7f, SEED, 1000 + (uint64_t)h);
    if (!B->o.json) printf("measuring %s ...\n", m->label), fflush(stdout);
    if (bench_time(&m->t, B->o.warmup, B->o.reps, unet_call, &r, &B->err)) goto out;
    if (check_finite(r.out, 2 * 4 * h * w, m->label, &B->err)) goto out;
    m->done = 1;
    rc = 0;
out:
    free(r.lat);
    free(r.out);
    return rc;
}

typedef struct vae_run {
    vae_model *v;
    float *lat, *img;
    int tile; /* 0: whole image */
} vae_run;

static int vae_call(void *p, sd_error *err) {
    vae_run *r = p;
    if (r->tile) return vae_decode_tiled(r->v, r->lat, 1, 64, 64, r->tile, r->img, err);
    return vae_decode_latents(r->v, r->lat, 1, 64, 64, r->img, NULL, err);
}

typedef struct text_run {
    sd_tokenizer *tok;
    sd_clip_text *clip;
    sd_text_cond cond[2];
} text_run;

static const char *g_prompts[2] = {
    "a photograph of an astronaut riding a horse on the moon, highly detailed, 8k, dramatic lighting",
    "blurry, low quality, deformed hands, watermark, text"};

static int text_call(void *p, sd_error *err) {
    text_run *r = p;
    for (int i = 0; i < 2; i++) {
        sd_text_cond_free(&r->cond[i]);
        if (sd_conditioning_encode(r->tok, r->clip, g_prompts[i], SD_PROMPT_SYNTAX_A1111, 1, &r->cond[i], err))
            return -1;
    }
    return 0;
}

static void moe_count(bench *B, sd_unet *u) {
    B->moe_layers = sd_unet_moe_count(u), B->moe_ready = B->moe_total = 0;
    for (int i = 0; i < sd_unet_tblock_count(u); i++) {
        sd_unet_tblock *t = sd_unet_tblock_at(u, i);
        sd_moe_layer *l[7] = {t->attn1.to_q.moe, t->attn1.to_k.moe, t->attn1.to_v.moe, t->attn2.to_q.moe,
                              t->attn2.to_k.moe, t->attn2.to_v.moe, t->ff.moe};
        for (int k = 0; k < 7; k++)
            for (int e = 0; l[k] && e < sd_moe_num_experts(l[k]); e++) {
                B->moe_total++;
                B->moe_ready += sd_moe_expert_ready(l[k], e);
            }
    }
}

/* ------------------------------------------------------------ phases */

/* CLIP + UNet + VAE together, as a 512^2 generation holds them. */
static int phase_dense(bench *B) {
    sd_error *err = &B->err;
    int rc = -1;
    loaded lu = {0}, lv = {0}, lc = {0};
    sd_unet *u = NULL;
    vae_model *vae = NULL;
    sd_clip_text *clip = NULL;
    sd_tokenizer *tok = NULL;
    text_run tr = {0};
    float *ctx = NULL, *img = NULL, *lat = NULL;
    sd_scratch scratch = {0}; /* the UNet's and the VAE's workspace, shared as sampler/pipeline.c does */
    int with_text = B->o.text && !B->o.quick, with_vae = B->o.vae && !B->o.quick;
    B->hwm_reset_ok = bench_reset_hwm() == 0;
    double t0 = bench_now_ms();
    if (with_text) {
        if (sd_tokenizer_open(&tok, B->o.tokenizer, err) ||
            open_binder(&lc, B->comp[C_CLIP].path, "text_encoder", 0, err) ||
            sd_clip_text_load(&clip, &B->ccfg, &lc.b, err))
            goto out;
        sd_binder_ignore(&lc.b, "text_model.embeddings.position_ids");
        if (sd_binder_check_complete(&lc.b, err)) goto out;
    }
    if (load_unet(&u, &B->ucfg, &lu, B->comp[C_UNET].path, err)) goto out;
    if (with_vae) {
        /* as sampler/pipeline.c: decode-only */
        if (open_binder(&lv, B->comp[C_VAE].path, "vae", 0, err) ||
            vae_load(&vae, &B->vcfg, &lv.b, VAE_PART_DECODER, err) || sd_binder_check_complete(&lv.b, err))
            goto out;
    }
    B->load_ms = bench_now_ms() - t0;
    sd_unet_share_scratch(u, &scratch);
    if (vae) vae_share_scratch(vae, &scratch);
    rss_split(B->rss_load);
    {
        const char *paths[3];
        int np = 0;
        paths[np++] = B->comp[C_UNET].path;
        if (with_vae) paths[np++] = B->comp[C_VAE].path;
        if (with_text) paths[np++] = B->comp[C_CLIP].path;
        B->read_ms = bench_read_files_ms(paths, np);
    }
    ctx = malloc((size_t)(2 * 77 * 768) * 4);
    if (!ctx) {
        sd_fail(err, "bench: out of memory");
        goto out;
    }
    if (with_text) {
        measure *m = &B->m[M_TEXT];
        tr.tok = tok, tr.clip = clip;
        if (!B->o.json) printf("measuring %s ...\n", m->label), fflush(stdout);
        if (bench_time(&m->t, B->o.warmup, B->o.reps, text_call, &tr, err)) goto out;
        m->done = 1;
        /* context rows [uncond | cond] as the pipeline builds them */
        memcpy(ctx, tr.cond[1].emb, (size_t)(77 * 768) * 4);
        memcpy(ctx + 77 * 768, tr.cond[0].emb, (size_t)(77 * 768) * 4);
        if (check_finite(ctx, 2 * 77 * 768, "text encoder", err)) goto out;
    } else {
        bench_fill_uniform(ctx, 2 * 77 * 768, 1.0f, SEED, 77);
    }
    if (sd_unet_reserve(u, 2, 64, 64, 77, err)) goto out;
    double tc = bench_now_ms();
    if (sd_unet_set_context(u, ctx, 2, 77, err)) goto out;
    B->set_ctx_ms = bench_now_ms() - tc;
    if (!B->o.quick && unet_measure(B, &B->m[M_UNET512], u, 64, 64)) goto out;
    if (with_vae) {
        measure *m = &B->m[M_VAE];
        lat = malloc((size_t)(4 * 64 * 64) * 4), img = malloc((size_t)(3 * 512 * 512) * 4);
        if (!lat || !img) {
            sd_fail(err, "bench: out of memory");
            goto out;
        }
        bench_fill_uniform(lat, 4 * 64 * 64, 1.0f, SEED, 4242);
        vae_run vr = {vae, lat, img, 0};
        if (!B->o.json) printf("measuring %s ...\n", m->label), fflush(stdout);
        if (bench_time(&m->t, B->o.warmup, B->o.reps, vae_call, &vr, err)) goto out;
        if (check_finite(img, 3 * 512 * 512, "VAE decode", err)) goto out;
        m->done = 1;
    }
    if (!B->o.quick) B->peak_rss_mb_512 = (double)bench_status_kb("VmHWM") / 1024.0;
    B->scratch_mb = mb((int64_t)scratch.bytes);
    B->unet_ws_mb = mb((int64_t)sd_unet_workspace_bytes(u));
    rss_split(B->rss_end);
    if (unet_measure(B, &B->m[M_UNET256], u, 32, 32)) goto out;
    if (B->o.quick) B->peak_rss_mb_512 = -1;
    rc = 0;
out:
    sd_text_cond_free(&tr.cond[0]);
    sd_text_cond_free(&tr.cond[1]);
    free(ctx), free(img), free(lat);
    sd_unet_free(u);
    vae_free(vae);
    sd_scratch_release(&scratch);
    sd_clip_text_free(clip);
    sd_tokenizer_free(tok);
    sd_weights_free(lu.w), sd_weights_free(lv.w), sd_weights_free(lc.w);
    return rc;
}

/* The VAE alone, loaded decode-only as sampler/pipeline.c loads it: the
 * 64x64 -> 512^2 decode whole (timed here unless the dense phase timed it)
 * and tiled (--vae-tile), each on a freshly loaded model (the workspace only
 * grows), with VmHWM reset after loading, so vae_peak - vae_rss_load is what
 * the decode adds: its workspace, the image, oneDNN's scratch. */
static int phase_vae(bench *B) {
    sd_error *err = &B->err;
    int rc = 0;
    for (int v = 0; v < 2 && !rc; v++) {
        loaded l = {0};
        vae_model *vae = NULL;
        float *lat = malloc((size_t)(4 * 64 * 64) * 4), *img = malloc((size_t)(3 * 512 * 512) * 4);
        rc = !lat || !img ? sd_fail(err, "bench: out of memory") : 0;
        if (!rc) rc = open_binder(&l, B->comp[C_VAE].path, "vae", 0, err) ||
                      vae_load(&vae, &B->vcfg, &l.b, VAE_PART_DECODER, err) || sd_binder_check_complete(&l.b, err);
        if (!rc) {
            B->vae_layout = vae_get_layout(vae);
            bench_fill_uniform(lat, 4 * 64 * 64, 1.0f, SEED, 4242);
            memset(img, 0, (size_t)(3 * 512 * 512) * 4);
            B->vae_rss_load[v] = (double)bench_status_kb("VmRSS") / 1024.0;
            bench_reset_hwm();
            vae_run vr = {vae, lat, img, v ? B->o.vae_tile : 0};
            measure *m = &B->m[v ? M_VAE_TILED : M_VAE];
            if (m->done) { /* timed with the UNet loaded: one call for the peak */
                rc = vae_call(&vr, err);
            } else {
                if (!B->o.json) printf("measuring %s ...\n", m->label), fflush(stdout);
                rc = bench_time(&m->t, B->o.warmup, B->o.reps, vae_call, &vr, err);
                m->done = !rc;
            }
            if (!rc) rc = check_finite(img, 3 * 512 * 512, m->label, err);
            B->vae_peak[v] = (double)bench_status_kb("VmHWM") / 1024.0;
            B->vae_ws[v] = mb((int64_t)vae_workspace_bytes(vae));
            B->vae_done[v] = !rc;
        }
        vae_free(vae);
        sd_weights_free(l.w);
        free(lat), free(img);
    }
    return rc;
}

/* Start -> first sampling step, as `sdmoe generate` runs it (bench_startup.c). */
static int phase_startup(bench *B) {
    char folder[1024];
    snprintf(folder, sizeof folder, "%s/sd15-pipeline", B->o.dir);
    bench_startup_in in = {folder, B->comp[C_UNET].path, B->comp[C_VAE].path, B->comp[C_CLIP].path, B->o.tokenizer,
                          B->o.cold};
    if (!B->o.json) printf("measuring start -> first sampling step (sd_pipeline_load, 512^2) ...\n"), fflush(stdout);
    if (bench_startup(&in, &B->su, &B->err)) return -1;
    B->su_done = 1;
    return 0;
}

static int phase_moe(bench *B) {
    sd_error *err = &B->err;
    loaded l = {0};
    sd_unet *u = NULL;
    float *ctx = malloc((size_t)(2 * 77 * 768) * 4);
    int rc = -1;
    if (!ctx) return sd_fail(err, "bench: out of memory");
    bench_reset_hwm();
    double t0 = bench_now_ms();
    if (load_unet(&u, &B->mcfg, &l, B->comp[C_MOE].path, err)) goto out;
    B->moe_load_ms = bench_now_ms() - t0;
    bench_fill_uniform(ctx, 2 * 77 * 768, 1.0f, SEED, 78);
    if (sd_unet_reserve(u, 2, 64, 64, 77, err) || sd_unet_set_context(u, ctx, 2, 77, err)) goto out;
    if (unet_measure(B, &B->m[M_MOE], u, 64, 64)) goto out;
    moe_count(B, u);
    B->moe_peak_rss_mb = (double)bench_status_kb("VmHWM") / 1024.0;
    rc = 0;
out:
    free(ctx);
    sd_unet_free(u);
    sd_weights_free(l.w);
    return rc;
}

/* ------------------------------------------------------------- output */

static double gmacs(const measure *m) { return m->done && m->t.ms > 0 ? m->gmac / (m->t.ms * 1e-3) : 0; }
static double pct_peak(const bench *B, double gmac_per_s) {
    return B->peak > 0 ? 100.0 * 2.0 * gmac_per_s / B->peak : 0;
}

static void add_num_or_null(cJSON *o, const char *k, int ok, double v) {
    if (ok) cJSON_AddNumberToObject(o, k, v);
    else cJSON_AddNullToObject(o, k);
}

static const char *layout_name(int lay, char *buf, size_t cap) {
    snprintf(buf, cap, lay == 0 ? "nhwc" : "nChw%dc", lay);
    return buf;
}

/* Category totals of a replayed list: ms, calls, MACs. */
static void cat_totals(const bench_oplist *ops, bench_op_cat c, double *ms, int64_t *calls, double *macs) {
    *ms = 0, *calls = 0, *macs = bench_oplist_cat_macs(ops, c, 0);
    for (int i = 0; i < ops->n; i++) {
        const bench_op *op = &ops->ops[i];
        if (op->per_request || bench_op_category(op->kind) != c) continue;
        *ms += op->ms * (double)op->count, *calls += op->count;
    }
}

/* Indices of the ops by total replayed time, largest first (caller frees). */
static int *ops_by_time(const bench_oplist *ops) {
    int n = ops->n, *idx = malloc((size_t)(n ? n : 1) * sizeof *idx);
    if (!idx) return NULL;
    for (int i = 0; i < n; i++) idx[i] = i;
    for (int i = 0; i < n; i++) /* selection sort: n ~ 100 */
        for (int j = i + 1; j < n; j++) {
            const bench_op *a = &ops->ops[idx[i]], *c = &ops->ops[idx[j]];
            if (c->ms * (double)c->count > a->ms * (double)a->count) {
                int t = idx[i];
                idx[i] = idx[j], idx[j] = t;
            }
        }
    return idx;
}

static cJSON *breakdown_json(const bench *B, const breakdown *bd) {
    cJSON *b = cJSON_CreateObject();
    char lay[32];
    cJSON_AddStringToObject(b, "method",
                            "replay: each distinct kernel call of the step run alone through core/kernels.h at its "
                            "real shape and layout (fastest of >= 3 after a warm-up), times its count per call; "
                            "unaccounted = fastest measured call - replayed sum");
    cJSON_AddStringToObject(b, "activation_layout", layout_name(bd->layout, lay, sizeof lay));
    add_num_or_null(b, "measured_ms_median", bd->step->done, bd->step->t.ms);
    add_num_or_null(b, "measured_ms_min", bd->step->done, bd->step->t.min_ms);
    cJSON_AddNumberToObject(b, "replay_total_ms", bd->replay_ms);
    cJSON_AddNumberToObject(b, "replay_cpu_share", bd->cpu_share);
    add_num_or_null(b, "unaccounted_ms", bd->step->done, bd->step->t.min_ms - bd->replay_ms);
    for (int c = 0; c < BCAT_COUNT; c++) {
        double ms, macs;
        int64_t calls;
        cat_totals(bd->ops, (bench_op_cat)c, &ms, &calls, &macs);
        cJSON *o = cJSON_AddObjectToObject(b, bench_cat_name((bench_op_cat)c));
        cJSON_AddNumberToObject(o, "ms", ms);
        cJSON_AddNumberToObject(o, "share_of_replay", bd->replay_ms > 0 ? ms / bd->replay_ms : 0);
        cJSON_AddNumberToObject(o, "calls", (double)calls);
        cJSON_AddNumberToObject(o, "gmac", macs * 1e-9);
        add_num_or_null(o, "gflops", macs > 0 && ms > 0, 2 * macs / (ms * 1e6));
        add_num_or_null(o, "pct_peak", macs > 0 && ms > 0 && B->peak > 0, 100 * 2 * macs / (ms * 1e6) / B->peak);
    }
    if (bd->conv_ms_alt >= 0) {
        cJSON_AddNumberToObject(b, "conv_ms_in_other_layout", bd->conv_ms_alt);
        cJSON_AddStringToObject(b, "other_layout", layout_name(bd->alt_layout, lay, sizeof lay));
    }
    cJSON *top = cJSON_AddArrayToObject(b, "top_ops");
    int *idx = ops_by_time(bd->ops);
    for (int i = 0, k = 0; idx && i < bd->ops->n && k < 15; i++) {
        const bench_op *op = &bd->ops->ops[idx[i]];
        if (op->per_request || op->ms <= 0) continue;
        char label[160];
        bench_op_label(op, label, sizeof label);
        double macs = bench_op_macs(op);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "op", label);
        cJSON_AddStringToObject(o, "category", bench_cat_name(bench_op_category(op->kind)));
        cJSON_AddNumberToObject(o, "calls", (double)op->count);
        cJSON_AddNumberToObject(o, "ms_per_call", op->ms);
        cJSON_AddNumberToObject(o, "ms_total", op->ms * (double)op->count);
        add_num_or_null(o, "gflops", macs > 0, 2 * macs / (op->ms * 1e6));
        cJSON_AddItemToArray(top, o);
        k++;
    }
    /* every replayed call, largest total first: [label, calls, ms per call] */
    cJSON *all = cJSON_AddArrayToObject(b, "all_ops");
    for (int i = 0; idx && i < bd->ops->n; i++) {
        const bench_op *op = &bd->ops->ops[idx[i]];
        if (op->per_request || op->ms <= 0) continue;
        char label[160];
        bench_op_label(op, label, sizeof label);
        cJSON *row = cJSON_CreateArray();
        cJSON_AddItemToArray(row, cJSON_CreateString(label));
        cJSON_AddItemToArray(row, cJSON_CreateNumber((double)op->count));
        cJSON_AddItemToArray(row, cJSON_CreateNumber(op->ms));
        cJSON_AddItemToArray(all, row);
    }
    free(idx);
    return b;
}

static void print_breakdown(const bench *B, const char *title, const breakdown *bd) {
    char lay[32];
    printf("\n%s (activations %s; each distinct kernel call replayed alone at its shape, fastest of N, x its "
           "count):\n", title, layout_name(bd->layout, lay, sizeof lay));
    printf("%-12s %9s %7s %8s %9s %8s %7s\n", "category", "ms", "share", "calls", "GMAC", "GFLOP/s", "% peak");
    for (int c = 0; c < BCAT_COUNT; c++) {
        double ms, macs;
        int64_t calls;
        cat_totals(bd->ops, (bench_op_cat)c, &ms, &calls, &macs);
        double gf = ms > 0 ? 2 * macs / (ms * 1e6) : 0;
        printf("%-12s %9.1f %6.1f%% %8lld %9.1f %8.1f %6.1f%%\n", bench_cat_name((bench_op_cat)c), ms,
               bd->replay_ms > 0 ? 100 * ms / bd->replay_ms : 0, (long long)calls, macs * 1e-9, gf,
               B->peak > 0 ? 100 * gf / B->peak : 0);
    }
    if (bd->step->done)
        printf("%-12s %9.1f   (fastest measured %.1f - replayed %.1f)\n", "unaccounted",
               bd->step->t.min_ms - bd->replay_ms, bd->step->t.min_ms, bd->replay_ms);
    else
        printf("%-12s %9.1f\n", "total", bd->replay_ms);
    printf("replay cpu share %.2f%s\n", bd->cpu_share, bd->cpu_share < 0.9 ? " (the machine was busy: replayed times are inflated)" : "");
    if (bd->conv_ms_alt >= 0)
        printf("the same convolutions in the %s layout: %.1f ms\n", layout_name(bd->alt_layout, lay, sizeof lay),
               bd->conv_ms_alt);
    printf("hottest calls:\n%-44s %-11s %6s %10s %10s %8s\n", "op", "category", "calls", "ms/call", "ms total",
           "GFLOP/s");
    int *idx = ops_by_time(bd->ops);
    for (int i = 0, k = 0; idx && i < bd->ops->n && k < 12; i++) {
        const bench_op *op = &bd->ops->ops[idx[i]];
        if (op->per_request || op->ms <= 0) continue;
        char label[160], gfs[32] = "-";
        bench_op_label(op, label, sizeof label);
        double macs = bench_op_macs(op);
        if (macs > 0) snprintf(gfs, sizeof gfs, "%.1f", 2 * macs / (op->ms * 1e6));
        printf("%-44s %-11s %6lld %10.3f %10.1f %8s\n", label, bench_cat_name(bench_op_category(op->kind)),
               (long long)op->count, op->ms, op->ms * (double)op->count, gfs);
        k++;
    }
    free(idx);
}

/* UNet step and VAE decode, each in its own layout (both
 * sd_preferred_layout()); the VAE's convolutions again in the other layout
 * (NHWC when the preferred one is blocked, else nChw16c) for comparison. */
static int run_breakdowns(bench *B) {
    unsigned all = (1u << BCAT_COUNT) - 1;
    breakdown *u = &B->bd_unet, *v = &B->bd_vae;
    *u = (breakdown){.layout = bench_replay_layout(), .ops = &B->ops512, .step = &B->m[M_UNET512], .conv_ms_alt = -1};
    if (!B->o.json) printf("breakdown: replaying %d distinct kernel calls of the UNet step ...\n", B->ops512.n), fflush(stdout);
    if (bench_replay(&B->ops512, u->layout, all, B->o.reps, &u->replay_ms, &u->cpu_share, &B->err)) return -1;
    u->done = 1;
    if (!B->o.vae) return 0;
    *v = (breakdown){.layout = u->layout, .ops = &B->opsvae, .step = &B->m[M_VAE], .conv_ms_alt = -1};
    if (!B->o.json) printf("breakdown: replaying %d distinct kernel calls of the VAE decode ...\n", B->opsvae.n), fflush(stdout);
    if (bench_replay(&B->opsvae, v->layout, all, B->o.reps, &v->replay_ms, &v->cpu_share, &B->err)) return -1;
    v->done = 1;
    {
        bench_oplist alt = {.ops = malloc((size_t)B->opsvae.n * sizeof(bench_op)), .n = B->opsvae.n, .cap = B->opsvae.n};
        if (!alt.ops) return sd_fail(&B->err, "bench: out of memory");
        memcpy(alt.ops, B->opsvae.ops, (size_t)alt.n * sizeof(bench_op));
        v->alt_layout = v->layout != 0 ? 0 : 16;
        int rc = bench_replay(&alt, v->alt_layout, 1u << BCAT_CONV, B->o.reps, &v->conv_ms_alt, NULL, &B->err);
        bench_oplist_free(&alt);
        if (rc) return -1;
    }
    return 0;
}

static cJSON *timing_json(const measure *m) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "median_ms", m->t.ms);
    cJSON_AddNumberToObject(o, "min_ms", m->t.min_ms);
    cJSON_AddNumberToObject(o, "max_ms", m->t.max_ms);
    cJSON_AddNumberToObject(o, "reps", m->t.reps);
    cJSON_AddNumberToObject(o, "cpu_share", m->t.cpu_share);
    cJSON_AddNumberToObject(o, "cpu_ms_per_call", m->t.cpu_ms);
    cJSON_AddItemToObject(o, "samples_ms", cJSON_CreateDoubleArray(m->t.samples, m->t.reps));
    return o;
}

static void emit_json(bench *B) {
    cJSON *j = cJSON_CreateObject();
    char cpu[256];
    bench_cpu_model(cpu, sizeof cpu);
    int bits = bench_vector_bits();
    cJSON_AddNumberToObject(j, "threads", B->o.threads);
    cJSON_AddStringToObject(j, "mode", B->o.gemm_study ? "gemm-study" : B->o.breakdown_only ? "breakdown-only"
                                       : B->o.vae_only ? "vae-only" : B->o.startup_only ? "startup-only" : B->o.quick ? "quick" : "full");
    cJSON_AddStringToObject(j, "cpu_model", cpu);
    cJSON_AddStringToObject(j, "fma_vectors", bits == 512 ? "avx512f" : bits == 256 ? "avx2+fma" : "sse");
    cJSON_AddStringToObject(j, "dnnl_isa", dnnl_cpu_isa2str(dnnl_get_effective_cpu_isa()));
    cJSON_AddStringToObject(j, "openblas_core", openblas_get_corename());
    const char *ct = getenv("OPENBLAS_CORETYPE");
    if (ct) cJSON_AddStringToObject(j, "openblas_coretype_env", ct);
    else cJSON_AddNullToObject(j, "openblas_coretype_env");
    cJSON_AddItemToObject(j, "loadavg_start", cJSON_CreateDoubleArray(B->load_start, 3));
    if (B->o.wait_idle_s > 0) cJSON_AddNumberToObject(j, "idle_fraction_at_start", B->idle_at_start);
    cJSON_AddItemToObject(j, "loadavg_end", cJSON_CreateDoubleArray(B->load_end, 3));
    add_num_or_null(j, "peak_gflops", B->peak > 0, B->peak);
    add_num_or_null(j, "peak_gflops_median", B->peak > 0, B->peak_median);
    measure *m = B->m;
    add_num_or_null(j, "sgemm_gflops", m[M_SGEMM].done, B->sgemm_gflops);
    add_num_or_null(j, "sgemm_pct_peak", m[M_SGEMM].done && B->peak > 0, 100 * B->sgemm_gflops / B->peak);
    add_num_or_null(j, "unet_step_ms_512", m[M_UNET512].done, m[M_UNET512].t.ms);
    add_num_or_null(j, "unet_step_ms_256", m[M_UNET256].done, m[M_UNET256].t.ms);
    add_num_or_null(j, "unet_step_gmacs_512", m[M_UNET512].done, gmacs(&m[M_UNET512]));
    add_num_or_null(j, "unet_step_gmacs_256", m[M_UNET256].done, gmacs(&m[M_UNET256]));
    add_num_or_null(j, "unet_step_pct_peak_512", m[M_UNET512].done && B->peak > 0, pct_peak(B, gmacs(&m[M_UNET512])));
    add_num_or_null(j, "unet_step_pct_peak_256", m[M_UNET256].done && B->peak > 0, pct_peak(B, gmacs(&m[M_UNET256])));
    cJSON_AddNumberToObject(j, "unet_step_gmac_512", B->unet_gmac512);
    cJSON_AddNumberToObject(j, "unet_step_gmac_256", B->unet_gmac256);
    add_num_or_null(j, "vae_decode_ms_512", m[M_VAE].done, m[M_VAE].t.ms);
    add_num_or_null(j, "vae_decode_gmacs", m[M_VAE].done, gmacs(&m[M_VAE]));
    add_num_or_null(j, "vae_decode_pct_peak", m[M_VAE].done && B->peak > 0, pct_peak(B, gmacs(&m[M_VAE])));
    add_num_or_null(j, "vae_decode_tiled_ms_512", m[M_VAE_TILED].done, m[M_VAE_TILED].t.ms);
    if (B->vae_done[0] || B->vae_done[1]) {
        char lay[32];
        cJSON *o = cJSON_AddObjectToObject(j, "vae_alone");
        cJSON_AddStringToObject(o, "activation_layout", layout_name(B->vae_layout, lay, sizeof lay));
        cJSON_AddNumberToObject(o, "tile_latents", B->o.vae_tile);
        const char *kind[2] = {"whole", "tiled"};
        for (int v = 0; v < 2; v++) {
            if (!B->vae_done[v]) continue;
            cJSON *k = cJSON_AddObjectToObject(o, kind[v]);
            cJSON_AddNumberToObject(k, "rss_after_load_mb", B->vae_rss_load[v]);
            cJSON_AddNumberToObject(k, "peak_rss_mb", B->vae_peak[v]);
            cJSON_AddNumberToObject(k, "decode_adds_mb", B->vae_peak[v] - B->vae_rss_load[v]);
            cJSON_AddNumberToObject(k, "workspace_mb", B->vae_ws[v]);
        }
    }
    add_num_or_null(j, "text_encode_ms", m[M_TEXT].done, m[M_TEXT].t.ms);
    add_num_or_null(j, "text_encode_gmacs", m[M_TEXT].done, gmacs(&m[M_TEXT]));
    add_num_or_null(j, "moe_4x2_step_ms_512", m[M_MOE].done, m[M_MOE].t.ms);
    add_num_or_null(j, "moe_4x2_vs_dense", m[M_MOE].done && m[M_UNET512].done, m[M_MOE].t.ms / m[M_UNET512].t.ms);
    cJSON_AddNumberToObject(j, "moe_4x2_step_gmac_512", B->moe_gmac512);
    add_num_or_null(j, "moe_4x2_step_gmacs_512", m[M_MOE].done, gmacs(&m[M_MOE]));
    add_num_or_null(j, "moe_peak_rss_mb", m[M_MOE].done, B->moe_peak_rss_mb);
    add_num_or_null(j, "moe_load_ms", m[M_MOE].done, B->moe_load_ms);
    if (m[M_MOE].done) {
        cJSON_AddNumberToObject(j, "moe_layers", B->moe_layers);
        cJSON_AddNumberToObject(j, "moe_experts_converted", B->moe_ready);
        cJSON_AddNumberToObject(j, "moe_experts_total", B->moe_total);
    }
    int full = !B->o.quick && !B->o.gemm_study && !B->o.breakdown_only, loads = B->comp[C_UNET].bytes > 0;
    int64_t wbytes = B->comp[C_UNET].bytes + (full && B->o.vae ? B->comp[C_VAE].bytes : 0) +
                     (full && B->o.text ? B->comp[C_CLIP].bytes : 0);
    add_num_or_null(j, "weights_mb", loads, mb(wbytes));
    add_num_or_null(j, "unet_weights_mb", loads, mb(B->comp[C_UNET].bytes));
    add_num_or_null(j, "peak_rss_mb_512", B->peak_rss_mb_512 > 0, B->peak_rss_mb_512);
    add_num_or_null(j, "peak_rss_over_weights_mb", B->peak_rss_mb_512 > 0, B->peak_rss_mb_512 - mb(wbytes));
    if (B->su_done) {
        cJSON *o = cJSON_AddObjectToObject(j, "startup");
        cJSON_AddBoolToObject(o, "cold_page_cache", B->o.cold);
        cJSON_AddNumberToObject(o, "read_weights_ms", B->su.read_ms);
        cJSON_AddNumberToObject(o, "anon_first_touch_gbps", B->su.anon_first_touch_gbps);
        const char *names[3] = {"weight_cache_off", "weight_cache_first_run", "weight_cache_filled"};
        const bench_startup_run *runs[3] = {&B->su.uncached, &B->su.first, &B->su.cached};
        for (int i = 0; i < 3; i++) {
            cJSON *r = cJSON_AddObjectToObject(o, names[i]);
            cJSON_AddNumberToObject(r, "pipeline_load_ms", runs[i]->load_ms);
            cJSON_AddNumberToObject(r, "start_to_first_step_ms", runs[i]->first_step_ms);
            cJSON_AddNumberToObject(r, "vs_read", runs[i]->first_step_ms / B->su.read_ms);
            cJSON_AddNumberToObject(r, "first_step_ms", runs[i]->step_ms);
            cJSON_AddNumberToObject(r, "second_step_ms", runs[i]->second_step_ms);
            cJSON_AddNumberToObject(r, "startup_overhead_ms", runs[i]->overhead_ms);
            cJSON_AddNumberToObject(r, "startup_overhead_vs_read", runs[i]->overhead_ms / B->su.read_ms);
            cJSON_AddNumberToObject(r, "rss_at_first_step_mb", runs[i]->rss_first_step_mb);
            cJSON_AddNumberToObject(r, "peak_rss_mb", runs[i]->peak_rss_mb);
            cJSON_AddNumberToObject(r, "weight_cache_mapped_mb", runs[i]->cache_hit_mb);
            cJSON_AddNumberToObject(r, "weight_cache_written_mb", runs[i]->cache_written_mb);
        }
    }
    add_num_or_null(j, "start_to_first_step_ms", B->su_done, B->su.cached.first_step_ms); /* every run but the first */
    add_num_or_null(j, "shared_scratch_mb", B->scratch_mb > 0, B->scratch_mb);
    add_num_or_null(j, "unet_workspace_mb_512", B->unet_ws_mb > 0, B->unet_ws_mb);
    cJSON_AddBoolToObject(j, "peak_rss_reset_ok", B->hwm_reset_ok);
    if (loads) {
        cJSON *r = cJSON_AddObjectToObject(j, "rss_mb");
        cJSON_AddItemToObject(r, "after_load_rss_anon_file", cJSON_CreateDoubleArray(B->rss_load, 3));
        cJSON_AddItemToObject(r, "after_512_rss_anon_file", cJSON_CreateDoubleArray(B->rss_end, 3));
    }
    add_num_or_null(j, "load_ms", loads, B->load_ms);
    add_num_or_null(j, "read_weights_ms", loads, B->read_ms);
    add_num_or_null(j, "set_context_ms", loads, B->set_ctx_ms);
    cJSON *t = cJSON_AddObjectToObject(j, "timings");
    for (int i = 0; i < M_COUNT; i++)
        if (m[i].done) cJSON_AddItemToObject(t, m[i].key, timing_json(&m[i]));
    cJSON *w = cJSON_AddObjectToObject(j, "weights");
    cJSON_AddStringToObject(w, "dir", B->o.dir);
    for (int c = 0; c < C_COUNT; c++) {
        if (!B->comp[c].bytes) continue;
        cJSON *o = cJSON_AddObjectToObject(w, B->comp[c].file);
        cJSON_AddNumberToObject(o, "params", (double)B->comp[c].inv.params);
        cJSON_AddNumberToObject(o, "tensors", B->comp[c].inv.n);
        cJSON_AddNumberToObject(o, "mb", mb(B->comp[c].bytes));
        cJSON_AddStringToObject(o, "dtype", B->comp[c].dtype == BENCH_F16 ? "F16" : "F32");
        cJSON_AddBoolToObject(o, "written_this_run", B->comp[c].written);
    }
    if (B->bd_unet.done) cJSON_AddItemToObject(j, "breakdown", breakdown_json(B, &B->bd_unet));
    else cJSON_AddNullToObject(j, "breakdown");
    if (B->bd_vae.done) cJSON_AddItemToObject(j, "vae_breakdown", breakdown_json(B, &B->bd_vae));
    if (B->gemm_json) {
        cJSON *g = cJSON_DetachItemFromObject(B->gemm_json, "gemm_study");
        cJSON *gt = cJSON_DetachItemFromObject(B->gemm_json, "gemm_study_step_ms");
        if (g) cJSON_AddItemToObject(j, "gemm_study", g);
        if (gt) cJSON_AddItemToObject(j, "gemm_study_step_ms", gt);
    }
    char *s = cJSON_Print(j);
    if (s) puts(s);
    free(s);
    cJSON_Delete(j);
}

static void emit_table(bench *B) {
    char cpu[256];
    bench_cpu_model(cpu, sizeof cpu);
    int bits = bench_vector_bits();
    printf("\nsdmoe-bench: %s, %d threads, FMA vectors %s, oneDNN ISA %s, OpenBLAS core %s (OPENBLAS_CORETYPE=%s)\n",
           cpu, B->o.threads, bits == 512 ? "AVX-512F" : bits == 256 ? "AVX2+FMA" : "SSE",
           dnnl_cpu_isa2str(dnnl_get_effective_cpu_isa()), openblas_get_corename(),
           getenv("OPENBLAS_CORETYPE") ? getenv("OPENBLAS_CORETYPE") : "unset");
    printf("load average: start %.2f %.2f %.2f, end %.2f %.2f %.2f\n", B->load_start[0], B->load_start[1],
           B->load_start[2], B->load_end[0], B->load_end[1], B->load_end[2]);
    if (B->peak > 0)
        printf("fp32 FMA peak: %.1f GFLOP/s (best of 5; median %.1f)\n", B->peak, B->peak_median);
    printf("\n%-34s %10s %21s %9s %8s %7s %5s\n", "measure", "median ms", "[min .. max]", "GMAC", "GMAC/s",
           "% peak", "cpu");
    for (int i = 0; i < M_COUNT; i++) {
        const measure *m = &B->m[i];
        if (!m->done) continue;
        double g = i == M_SGEMM ? B->sgemm_gflops / 2 : gmacs(m);
        char pct[16] = "-";
        if (B->peak > 0) snprintf(pct, sizeof pct, "%.1f%%", pct_peak(B, g));
        printf("%-34s %10.1f [%8.1f .. %8.1f] %9.2f %8.1f %7s %5.2f\n", m->label, m->t.ms, m->t.min_ms,
               m->t.max_ms, m->gmac, g, pct, m->t.cpu_share);
    }
    printf("(GMAC = SD1.5 analytic count per call, anchors.md §5; %% peak = 2 x GMAC/s / FMA peak; cpu = CPU "
           "time / (wall x threads))\n");
    if (B->m[M_MOE].done && B->m[M_UNET512].done)
        printf("SegMoE 4x2 / dense step: %.2fx (target <= 1.3); experts converted from f16: %d of %d in %d MoE "
               "layers\n", B->m[M_MOE].t.ms / B->m[M_UNET512].t.ms, B->moe_ready, B->moe_total, B->moe_layers);
    int full = !B->o.quick && !B->o.gemm_study && !B->o.breakdown_only;
    int64_t wbytes = B->comp[C_UNET].bytes + (full && B->o.vae ? B->comp[C_VAE].bytes : 0) +
                     (full && B->o.text ? B->comp[C_CLIP].bytes : 0);
    if (B->peak_rss_mb_512 > 0)
        printf("peak RSS 512^2 phase: %.0f MB = weights %.0f MB + %.0f MB (target <= +600)%s\n", B->peak_rss_mb_512,
               mb(wbytes), B->peak_rss_mb_512 - mb(wbytes), B->hwm_reset_ok ? "" : " [VmHWM reset failed: lifetime peak]");
    if (B->su_done) {
        const bench_startup_run *r[3] = {&B->su.cached, &B->su.first, &B->su.uncached};
        printf("start -> first sampling step (sd_pipeline_load + encode, 512^2), reading the files once = %.0f ms "
               "(target <= 1.5 x); 'overhead' = end of step 1 - the time of step 2, i.e. also what step 1 faults in:\n",
               B->su.read_ms);
        const char *what[3] = {"weight cache filled (every run but the first)", "first run, writing the cache",
                               "weight cache off"};
        for (int i = 0; i < 3; i++)
            printf("  %-46s %5.0f ms = %.2f x read; overhead %5.0f ms = %.2f x read (load %.0f ms; cache %.0f MB "
                   "mapped, %.0f MB written; steps %.0f / %.0f ms)\n",
                   what[i], r[i]->first_step_ms, r[i]->first_step_ms / B->su.read_ms, r[i]->overhead_ms,
                   r[i]->overhead_ms / B->su.read_ms, r[i]->load_ms, r[i]->cache_hit_mb, r[i]->cache_written_mb,
                   r[i]->step_ms, r[i]->second_step_ms);
        printf("  peak RSS %.0f MB (cached) / %.0f MB (off); fresh anonymous memory faults in at %.2f GB/s here\n",
               r[0]->peak_rss_mb, r[2]->peak_rss_mb, B->su.anon_first_touch_gbps);
    }
    if (B->scratch_mb > 0)
        printf("UNet/VAE shared scratch %.0f MB (the 512^2 UNet step needs %.0f of it)\n", B->scratch_mb, B->unet_ws_mb);
    if (B->rss_load[0] > 0)
        printf("RSS after load %.0f MB (anon %.0f: converted/reordered weights, workspaces; file %.0f: mapped "
               "weights); after the steps %.0f (anon %.0f, file %.0f)\n", B->rss_load[0], B->rss_load[1],
               B->rss_load[2], B->rss_end[0], B->rss_end[1], B->rss_end[2]);
    if (B->vae_done[0] || B->vae_done[1]) {
        char lay[32];
        printf("VAE alone (decode-only load, %s activations): ", layout_name(B->vae_layout, lay, sizeof lay));
        const char *kind[2] = {"whole-image decode", "tiled decode"};
        for (int v = 0; v < 2; v++)
            if (B->vae_done[v])
                printf("%s%s: peak RSS %.0f MB = after load %.0f + %.0f (workspace %.0f MB)", v ? "; " : "", kind[v],
                       B->vae_peak[v], B->vae_rss_load[v], B->vae_peak[v] - B->vae_rss_load[v], B->vae_ws[v]);
        printf(" [tile %d latents]\n", B->o.vae_tile);
    }
    if (B->m[M_MOE].done) printf("peak RSS SegMoE phase: %.0f MB\n", B->moe_peak_rss_mb);
    if (B->load_ms > 0)
        printf("load %.0f ms (read of the same files, page cache as is: %.0f ms); attn2 context K/V %.0f ms\n",
               B->load_ms, B->read_ms, B->set_ctx_ms);
    if (B->bd_unet.done) print_breakdown(B, "UNet CFG step 512^2", &B->bd_unet);
    if (B->bd_vae.done) print_breakdown(B, "VAE decode 64x64 -> 512^2", &B->bd_vae);
}

/* ---------------------------------------------------------------- main */

int main(int argc, char **argv) {
    static bench B;
    if (parse_args(&B.o, argc, argv)) return 2;
    find_tokenizer(&B.o);
    sd_set_threads(B.o.threads);
    if (B.o.wait_idle_s > 0) {
        double t_end = bench_now_ms() + B.o.wait_idle_s * 1e3, idle = 0;
        while ((idle = bench_idle_fraction(2000)) >= 0 && idle < 0.85 && bench_now_ms() < t_end) {
        }
        B.idle_at_start = idle;
    }
    bench_loadavg(B.load_start);
    static const char *keys[M_COUNT] = {"sgemm_2048", "text_encode", "unet_step_512", "unet_step_256",
                                        "vae_decode_512", "vae_decode_tiled_512", "moe_4x2_step_512"};
    static char tiled_label[64];
    snprintf(tiled_label, sizeof tiled_label, "VAE decode 512^2, %d-latent tiles", B.o.vae_tile);
    static const char *labels[M_COUNT] = {"SGEMM 2048^3 (sd_gemm)", "text encode, 2 prompts",
                                          "UNet CFG step 512^2 (2x64x64)", "UNet CFG step 256^2 (2x32x32)",
                                          "VAE decode 64x64 -> 512^2", tiled_label, "SegMoE 4x2 CFG step 512^2"};
    for (int i = 0; i < M_COUNT; i++) B.m[i].key = keys[i], B.m[i].label = labels[i];
    int rc = configs_make(&B);
    if (rc) goto fail;
    B.m[M_SGEMM].gmac = 2048.0 * 2048.0 * 2048.0 * 1e-9;
    B.m[M_TEXT].gmac = B.clip_gmac;
    B.m[M_UNET512].gmac = B.unet_gmac512;
    B.m[M_UNET256].gmac = B.unet_gmac256;
    B.m[M_VAE].gmac = B.vae_gmac;
    B.m[M_VAE_TILED].gmac = B.vae_gmac; /* per image (the tiles' overlap is extra work) */
    B.m[M_MOE].gmac = B.moe_gmac512;
    if (B.o.inventory) {
        print_inventory(&B);
        goto done;
    }
    if (B.o.breakdown_only) {
        B.peak = bench_peak_gflops(B.o.threads, bench_vector_bits(), &B.peak_median);
        if (run_breakdowns(&B)) goto fail;
        bench_loadavg(B.load_end);
        if (B.o.json) emit_json(&B);
        else emit_table(&B);
        goto done;
    }
    if (B.o.sdxl) {
        B.peak = bench_peak_gflops(B.o.threads, bench_vector_bits(), &B.peak_median);
        cJSON *j = B.o.json ? cJSON_CreateObject() : NULL;
        if (j) cJSON_AddNumberToObject(j, "threads", B.o.threads), cJSON_AddNumberToObject(j, "peak_gflops", B.peak);
        else printf("fp32 FMA peak: %.1f GFLOP/s (%d threads)\n", B.peak, B.o.threads);
        int src = bench_sdxl_step(B.o.dir, B.o.fresh, B.o.warmup, B.o.reps, B.peak, !B.o.json, j, &B.err);
        if (j && !src) {
            char *txt = cJSON_Print(j);
            if (txt) puts(txt);
            free(txt);
        }
        cJSON_Delete(j);
        if (src) goto fail;
        goto done;
    }
    if (B.o.gemm_study) {
        B.peak = bench_peak_gflops(B.o.threads, bench_vector_bits(), &B.peak_median);
        B.gemm_json = cJSON_CreateObject();
        if (bench_gemm_study(B.o.threads, B.gemm_json, !B.o.json, &B.err)) goto fail;
        bench_loadavg(B.load_end);
        if (B.o.json) emit_json(&B);
        else emit_table(&B);
        goto done;
    }
    if (B.o.vae_only) {
        if (weights_make(&B, 1 << C_VAE)) goto fail;
        B.peak = bench_peak_gflops(B.o.threads, bench_vector_bits(), &B.peak_median);
        if (phase_vae(&B)) goto fail;
        bench_loadavg(B.load_end);
        if (B.o.json) emit_json(&B);
        else emit_table(&B);
        goto done;
    }
    if (B.o.startup_only) {
        if (weights_make(&B, 1 << C_UNET | 1 << C_VAE | 1 << C_CLIP) || phase_startup(&B)) goto fail;
        bench_loadavg(B.load_end);
        if (B.o.json) emit_json(&B);
        else emit_table(&B);
        goto done;
    }
    /* weights first: generating them allocates the whole file, which must not count in the peak RSS */
    int need = 1 << C_UNET;
    if (!B.o.quick) need |= (B.o.vae ? 1 << C_VAE : 0) | (B.o.text ? 1 << C_CLIP : 0) | (B.o.moe ? 1 << C_MOE : 0);
    if (weights_make(&B, need)) goto fail;
    if (!B.o.quick) B.peak = bench_peak_gflops(B.o.threads, bench_vector_bits(), &B.peak_median);
    if (!B.o.json) printf("measuring %s ...\n", B.m[M_SGEMM].label), fflush(stdout);
    if (bench_sgemm_gflops(2048, B.o.reps < 5 ? 5 : B.o.reps, &B.m[M_SGEMM].t, &B.sgemm_gflops, &B.err)) goto fail;
    B.m[M_SGEMM].done = 1;
    if (phase_dense(&B)) goto fail;
    if (!B.o.quick && B.o.vae && phase_vae(&B)) goto fail;
    if (!B.o.quick && B.o.vae && B.o.text && B.o.startup && phase_startup(&B)) goto fail;
    if (!B.o.quick && B.o.moe && phase_moe(&B)) goto fail;
    if (!B.o.quick && B.o.breakdown && B.m[M_UNET512].done) {
        if (run_breakdowns(&B)) goto fail;
    }
    bench_loadavg(B.load_end);
    if (B.o.json) emit_json(&B);
    else emit_table(&B);
done:
    rc = 0;
    goto cleanup;
fail:
    fprintf(stderr, "sdmoe-bench: %s\n", B.err.msg[0] ? B.err.msg : "failed");
    rc = 1;
cleanup:
    if (B.o.delete_weights)
        for (int c = 0; c < C_COUNT; c++)
            if (B.comp[c].path[0]) unlink(B.comp[c].path);
    for (int c = 0; c < C_COUNT; c++) bench_inventory_free(&B.comp[c].inv);
    bench_oplist_free(&B.ops512);
    bench_oplist_free(&B.opsvae);
    cJSON_Delete(B.gemm_json);
    return rc;
}
