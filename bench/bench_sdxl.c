/* bench/bench_sdxl — one SDXL-shaped UNet CFG step at 1024^2 (issue 11's
 * performance figure; contract in bench/bench.h).
 *
 * The UNet is SDXL base 1.0's (2.57 G parameters, f32 file ~9.6 GB written
 * once with random weights), loaded through the real loader; the request
 * state a generation sets once (attn2 K/V of a [2, 77, 2048] context, the
 * add_embedding of pooled [2, 1280] + time ids [2, 6]) is set before timing,
 * as sampler/pipeline.c does.  Each timed call is one batch-2 forward of a
 * 128x128 latent: what one CFG sampling step costs. */
#include <stdio.h>
#include <stdlib.h>

#include "bench/bench.h"
#include "core/kernels.h"
#include "core/weights.h"
#include "unet/unet.h"

#define SDXL_SEED 20261204ull

typedef struct sdxl_run {
    sd_unet *u;
    float *lat, *out;
    int64_t h, w;
} sdxl_run;

static int sdxl_call(void *p, sd_error *err) {
    sdxl_run *r = p;
    return sd_unet_forward(r->u, r->lat, 2, r->h, r->w, 999.0f, NULL, r->out, err);
}

/* Context, pooled embedding and time ids of a CFG pair, then the latents. */
static int sdxl_request(sdxl_run *r, const sd_unet_config *c, sd_error *err) {
    int64_t ctx_n = 2 * 77 * (int64_t)c->cross_attention_dim[0], lat_n = 2 * 4 * r->h * r->w;
    float *ctx = malloc((size_t)ctx_n * sizeof(float));
    float *pooled = malloc((size_t)(2 * c->add_text_dim) * sizeof(float));
    r->lat = malloc((size_t)lat_n * sizeof(float));
    r->out = malloc((size_t)lat_n * sizeof(float));
    int rc = -1;
    if (!ctx || !pooled || !r->lat || !r->out) {
        sd_fail(err, "bench: out of memory");
        goto out;
    }
    bench_fill_uniform(ctx, ctx_n, 1.0f, SDXL_SEED, 1);
    bench_fill_uniform(pooled, 2 * c->add_text_dim, 1.0f, SDXL_SEED, 2);
    bench_fill_uniform(r->lat, lat_n, 1.7f, SDXL_SEED, 3);
    const float ids[12] = {1024, 1024, 0, 0, 1024, 1024, 1024, 1024, 0, 0, 1024, 1024};
    if (sd_unet_set_added_cond(r->u, pooled, ids, 2, err) || sd_unet_set_context(r->u, ctx, 2, 77, err) ||
        sd_unet_reserve(r->u, 2, r->h, r->w, 77, err))
        goto out;
    rc = 0;
out:
    free(ctx);
    free(pooled);
    return rc;
}

static void report(const bench_timing *t, double gmac, double load_ms, int64_t bytes, double peak_gflops, int print,
                   cJSON *json) {
    double gmacs = gmac / (t->ms * 1e-3), pct = peak_gflops > 0 ? 100.0 * 2.0 * gmacs / peak_gflops : 0;
    double rss = (double)bench_status_kb("VmHWM") / 1024.0;
    if (print) {
        printf("SDXL UNet CFG step 1024^2 (2x4x128x128, %.1f GMAC): %.2f s median [%.2f fastest] of %d, "
               "%.1f GMAC/s", gmac, t->ms * 1e-3, t->min_ms * 1e-3, t->reps, gmacs);
        if (pct > 0) printf(", %.1f %% of the %.0f GFLOP/s peak", pct, peak_gflops);
        printf(", cpu %.2f\n  load %.1f s, weights %.0f MB, peak RSS %.0f MB, %d threads\n", t->cpu_share,
               load_ms * 1e-3, (double)bytes / 1048576.0, rss, sd_get_threads());
    }
    if (json) {
        cJSON *o = cJSON_AddObjectToObject(json, "sdxl");
        cJSON_AddNumberToObject(o, "unet_step_ms_1024", t->ms);
        cJSON_AddNumberToObject(o, "unet_step_min_ms_1024", t->min_ms);
        cJSON_AddNumberToObject(o, "unet_step_gmac_1024", gmac);
        cJSON_AddNumberToObject(o, "unet_step_gmacs_1024", gmacs);
        if (pct > 0) cJSON_AddNumberToObject(o, "unet_step_pct_peak", pct);
        cJSON_AddNumberToObject(o, "cpu_share", t->cpu_share);
        cJSON_AddNumberToObject(o, "load_ms", load_ms);
        cJSON_AddNumberToObject(o, "weights_mb", (double)bytes / 1048576.0);
        cJSON_AddNumberToObject(o, "peak_rss_mb", rss);
    }
}

int bench_sdxl_step(const char *dir, int fresh, int warmup, int reps, double peak_gflops, int print, cJSON *json,
                    sd_error *err) {
    sd_unet_config cfg;
    bench_inventory inv = {0};
    bench_oplist ops = {0};
    sd_weights *w = NULL;
    sdxl_run r = {.h = 128, .w = 128};
    int rc = -1;
    cJSON *cj = bench_sdxl_unet_config_json();
    if (!cj) return sd_fail(err, "bench: out of memory");
    if (sd_unet_config_parse(&cfg, cj, "SDXL unet/config.json", err)) goto out;
    if (bench_unet_arch(&cfg, &inv, &ops, 2, r.h, r.w, 77, NULL, err)) goto out;
    double gmac = bench_oplist_macs(&ops, 0) * 1e-9;
    if (print) printf("SDXL UNet: %.0f M params, %.1f GMAC per CFG step at 1024^2\n", (double)inv.params * 1e-6, gmac);
    int written = 0;
    int64_t bytes = 0;
    double write_ms = 0;
    if (bench_weights_ensure(dir, "sdxl_unet_f32.safetensors", &inv, BENCH_F32, SDXL_SEED, fresh, &written, &bytes,
                             &write_ms, err))
        goto out;
    if (print && written) printf("weights: written %.0f MB in %.1f s\n", (double)bytes / 1048576.0, write_ms * 1e-3);
    char path[1024];
    snprintf(path, sizeof path, "%s/sdxl_unet_f32.safetensors", dir);
    bench_reset_hwm();
    double t0 = bench_now_ms();
    const char *paths[1] = {path};
    if (sd_weights_open(&w, paths, 1, err)) goto out;
    sd_binder b = {.w = w, .component = "unet", .prefix = ""};
    if (sd_unet_load(&r.u, &cfg, &b, err) || sd_binder_check_complete(&b, err)) goto out;
    double load_ms = bench_now_ms() - t0;
    if (sdxl_request(&r, &cfg, err)) goto out;
    if (print) printf("measuring SDXL UNet CFG step 1024^2 ...\n"), fflush(stdout);
    bench_timing t;
    if (bench_time(&t, warmup, reps, sdxl_call, &r, err)) goto out;
    for (int64_t i = 0; i < 2 * 4 * r.h * r.w; i++)
        if (r.out[i] != r.out[i]) {
            sd_fail(err, "bench: the SDXL step produced NaN");
            goto out;
        }
    report(&t, gmac, load_ms, bytes, peak_gflops, print, json);
    rc = 0;
out:
    sd_unet_free(r.u);
    sd_weights_free(w);
    free(r.lat);
    free(r.out);
    bench_inventory_free(&inv);
    bench_oplist_free(&ops);
    cJSON_Delete(cj);
    return rc;
}
