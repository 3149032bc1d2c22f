#define _POSIX_C_SOURCE 200809L
#include "cli/render.h"

#include <errno.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/image.h"
#include "core/infotext.h"
#include "sampler/scheduler.h"

static int config_uses_karras(sd_pipeline *p) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(sd_pipeline_model(p)->scheduler_config,
                                                      "use_karras_sigmas");
    return cJSON_IsTrue(v);
}

int render_resolve_sampler(sd_pipeline *p, const char *sampler, const char *schedule, render_sampler *out,
                           sd_error *err) {
    memset(out, 0, sizeof *out);
    out->karras = SD_KARRAS_FROM_CONFIG;
    if (sampler) {
        if (sd_sampler_lookup(sampler, &out->id, &out->karras, err)) return -1;
    } else if (sd_pipeline_default_sampler(p, &out->id, err)) {
        return sd_error_prefix(err, "no --sampler given and the model's scheduler is not one sdmoe knows "
                                    "(pass --sampler)");
    }
    const sd_sampler_info *info = sd_sampler_get(out->id);
    if (schedule && !strcmp(schedule, "karras")) {
        if (!info->supports_karras)
            return sd_fail(err, "--scheduler karras: sampler '%s' has no Karras schedule", info->name);
        out->karras = SD_KARRAS_ON;
    } else if (schedule && !strcmp(schedule, "discrete")) {
        out->karras = SD_KARRAS_OFF;
    }
    out->karras_in_use = out->karras == SD_KARRAS_ON ||
                         (out->karras == SD_KARRAS_FROM_CONFIG && info->supports_karras && config_uses_karras(p));
    return 0;
}

int render_output_name(const char *pattern, int index, int count, char *out, size_t cap, sd_error *err) {
    size_t k = 0;
    int used = 0;
    for (const char *s = pattern; *s; s++) {
        char piece[32];
        const char *add = piece;
        if (*s == '%' && s[1] == '%') {
            piece[0] = '%', piece[1] = 0;
            s++;
        } else if (*s == '%') {
            const char *q = s + 1;
            int zero = *q == '0';
            if (zero) q++;
            int width = 0;
            while (*q >= '0' && *q <= '9' && width < 100) width = width * 10 + (*q++ - '0');
            if (*q != 'd' || used || width > 20)
                return sd_fail(err, "-o '%s': only one %%d (or %%0Nd) is allowed in the output name", pattern);
            snprintf(piece, sizeof piece, zero ? "%0*d" : "%*d", width, index);
            used = 1;
            s = q;
        } else {
            piece[0] = *s, piece[1] = 0;
        }
        size_t n = strlen(add);
        if (k + n >= cap) return sd_fail(err, "-o '%s': output name too long", pattern);
        memcpy(out + k, add, n);
        k += n;
    }
    out[k] = 0;
    if (!used && count > 1) {
        const char *slash = strrchr(out, '/');
        char *dot = strrchr(out, '.');
        if (!dot || (slash && dot < slash)) dot = out + k;
        char tail[64];
        snprintf(tail, sizeof tail, "%s", dot);
        int w = snprintf(dot, cap - (size_t)(dot - out), "-%d%s", index, tail);
        if (w < 0 || (size_t)w >= cap - (size_t)(dot - out)) return sd_fail(err, "-o '%s': output name too long", pattern);
    }
    return 0;
}

int render_check_writable(const char *path, sd_error *err) {
    char *copy = strdup(path);
    if (!copy) return sd_fail(err, "out of memory");
    const char *dir = dirname(copy);
    int ok = access(dir, W_OK | X_OK) == 0;
    int e = errno;
    if (!ok) sd_fail(err, "%s: cannot write there: folder '%s': %s", path, dir, strerror(e));
    free(copy);
    return ok ? 0 : -1;
}

int render_infotext(const render_meta *m, char **out, sd_error *err) {
    char sampler[64], moe[96];
    sd_sampler_display(m->sampler.id, 0, sampler, sizeof sampler);
    sd_infotext extra;
    sd_infotext_init(&extra);
    int rc = 0;
    if (m->prompt_syntax && strcmp(m->prompt_syntax, "a1111"))
        rc = sd_infotext_add(&extra, "Prompt syntax", m->prompt_syntax, err);
    if (!rc && m->moe_experts > 0) {
        snprintf(moe, sizeof moe, "%d experts top-%d", m->moe_experts, m->moe_top_k);
        rc = sd_infotext_add(&extra, "MoE", moe, err);
        if (!rc && m->moe_routing && strcmp(m->moe_routing, "segmoe"))
            rc = sd_infotext_add(&extra, "MoE routing", m->moe_routing, err);
    }
    if (!rc && m->sdxl) {
        char v[64];
        snprintf(v, sizeof v, "%dx%d", m->original_width, m->original_height);
        rc = sd_infotext_add(&extra, "Original size", v, err);
        snprintf(v, sizeof v, "%dx%d", m->target_width, m->target_height);
        if (!rc) rc = sd_infotext_add(&extra, "Target size", v, err);
        if (!rc) rc = sd_infotext_add_int(&extra, "Crop top", m->crop_top, err);
        if (!rc) rc = sd_infotext_add_int(&extra, "Crop left", m->crop_left, err);
        if (!rc && m->empty_negative_encoded) rc = sd_infotext_add(&extra, "Empty negative", "encoded", err);
    }
    char version[32];
    snprintf(version, sizeof version, "sdmoe %s", SDMOE_VERSION);
    sd_infotext_params p = {
        .prompt = m->prompt ? m->prompt : "",
        .negative = m->negative,
        .steps = m->steps,
        .sampler = sampler,
        .schedule_type = m->sampler.karras_in_use ? "Karras" : NULL,
        .cfg_scale = m->cfg_scale,
        .seed = (int64_t)m->seed,
        .width = m->width,
        .height = m->height,
        .model_hash = m->model_hash && *m->model_hash ? m->model_hash : NULL,
        .model = m->model_name,
        .clip_skip = m->clip_skip,
        .rng = "CPU",
        .extra = &extra,
        .version = version,
    };
    if (!rc) rc = sd_infotext_format(&p, out, err);
    sd_infotext_free(&extra);
    return rc;
}

void render_meta_sdxl(render_meta *m, sd_pipeline *p, int width, int height, int original_width,
                      int original_height, int target_width, int target_height, int crop_top, int crop_left,
                      const char *negative) {
    m->sdxl = sd_pipeline_is_sdxl(p);
    if (!m->sdxl) return;
    m->original_width = original_width ? original_width : width;
    m->original_height = original_height ? original_height : height;
    m->target_width = target_width ? target_width : width;
    m->target_height = target_height ? target_height : height;
    m->crop_top = crop_top;
    m->crop_left = crop_left;
    m->empty_negative_encoded = negative && !*negative && sd_pipeline_zero_negative(p);
}

int render_save_png(const sd_txt2img_result *r, int i, const char *path, const char *parameters,
                    sd_error *err) {
    sd_image img;
    size_t plane = (size_t)3 * r->width * r->height;
    if (sd_image_from_vae(r->vae_out + (size_t)i * plane, r->width, r->height, &img, err)) return -1;
    sd_png_text text = {.key = "parameters", .text = parameters};
    int rc = sd_png_write(path, &img, &text, parameters ? 1 : 0, err);
    sd_image_free(&img);
    return rc;
}

uint64_t render_random_seed(void) {
    uint64_t s = 0;
    FILE *f = fopen("/dev/urandom", "rb");
    if (!f || fread(&s, sizeof s, 1, f) != 1) s = (uint64_t)time(NULL) * 2654435761u ^ (uint64_t)getpid();
    if (f) fclose(f);
    return s & 0xFFFFFFFFu; /* A1111 and sd.cpp seeds are 32-bit */
}
