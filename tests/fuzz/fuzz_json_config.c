/* sdmoe-fuzz-libs: core unet vae text_encoder sampler
 *
 * Fuzzes the diffusers config.json readers on arbitrary bytes: sd_json_load
 * (core/json, through a memfd), then every config reader that takes the
 * parsed object -- unet/unet.h sd_unet_config_parse, vae/vae.h
 * vae_config_from_json, core/model_arch sd_{unet,vae,clip}_arch_from_config
 * (text encoder config) and the round trip arch -> config -> arch -- and the
 * typed accessors of core/json on every key of the object.  The same object
 * is also offered as the "segmoe_config" of a UNet config, as a text
 * encoder config (text_encoder/clip_text sd_clip_text_config_read) and as a
 * scheduler_config.json: every sampler of sampler/scheduler is built from
 * it (sd_scheduler_create, a step count taken from the input) and run for
 * its calls on a 4-float latent. */
#include <math.h>

#include "core/json.h"
#include "core/model_arch.h"
#include "core/rng.h"
#include "sampler/scheduler.h"
#include "tests/fuzz/fuzz_common.h"
#include "text_encoder/clip_text.h"
#include "unet/unet.h"
#include "vae/vae.h"

static void typed_reads(const cJSON *obj) {
    sd_error err = {0};
    for (const cJSON *it = obj->child; it; it = it->next) {
        if (!it->string) continue;
        int i, n, ints[8];
        double d;
        char buf[64], strs[4][64];
        if (sd_json_int(obj, "f", it->string, 0, &i, &err)) FUZZ_CHECK_ERROR(err);
        if (sd_json_float(obj, "f", it->string, 0, &d, &err)) FUZZ_CHECK_ERROR(err);
        if (sd_json_bool(obj, "f", it->string, 0, &i, &err)) FUZZ_CHECK_ERROR(err);
        if (sd_json_string(obj, "f", it->string, NULL, buf, sizeof buf, &err)) FUZZ_CHECK_ERROR(err);
        if (sd_json_int_list(obj, "f", it->string, ints, 8, &n, &err)) FUZZ_CHECK_ERROR(err);
        else FUZZ_ASSERT(n >= 0 && n <= 8);
        if (sd_json_string_list(obj, "f", it->string, strs, 4, &n, &err)) FUZZ_CHECK_ERROR(err);
        else FUZZ_ASSERT(n >= 0 && n <= 4);
        sd_error_clear(&err);
    }
}

static void arch_readers(const cJSON *obj) {
    sd_error err = {0};
    sd_unet_arch ua;
    if (sd_unet_arch_from_config(obj, "unet/config.json", &ua, &err) == 0) {
        FUZZ_ASSERT(ua.n_levels >= 1 && ua.n_levels <= ARCH_MAX);
        cJSON *back = sd_unet_arch_to_config(&ua);
        FUZZ_ASSERT(back != NULL);
        sd_unet_arch ub;
        /* what sdmoe writes it must read back */
        if (sd_unet_arch_from_config(back, "round-trip", &ub, &err) != 0) {
            fprintf(stderr, "unet arch round trip failed: %s\n", err.msg);
            abort();
        }
        cJSON_Delete(back);
    } else {
        FUZZ_CHECK_ERROR(err);
    }
    sd_error_clear(&err);
    sd_vae_arch va;
    if (sd_vae_arch_from_config(obj, "vae/config.json", &va, &err) == 0) {
        cJSON *back = sd_vae_arch_to_config(&va);
        FUZZ_ASSERT(back != NULL);
        sd_vae_arch vb;
        if (sd_vae_arch_from_config(back, "round-trip", &vb, &err) != 0) {
            fprintf(stderr, "vae arch round trip failed: %s\n", err.msg);
            abort();
        }
        cJSON_Delete(back);
    } else {
        FUZZ_CHECK_ERROR(err);
    }
    sd_error_clear(&err);
    sd_clip_arch ca;
    if (sd_clip_arch_from_config(obj, "text_encoder/config.json", &ca, &err) == 0) {
        cJSON *back = sd_clip_arch_to_config(&ca);
        FUZZ_ASSERT(back != NULL);
        cJSON_Delete(back);
    } else {
        FUZZ_CHECK_ERROR(err);
    }
}

static void component_readers(cJSON *obj) {
    sd_error err = {0};
    sd_unet_config uc;
    if (sd_unet_config_parse(&uc, obj, "unet/config.json", &err) == 0)
        FUZZ_ASSERT(uc.n_levels >= 1 && uc.n_levels <= SD_UNET_MAX_LEVELS);
    else
        FUZZ_CHECK_ERROR(err);
    sd_error_clear(&err);
    vae_config vc;
    if (vae_config_from_json(&vc, obj, "vae/config.json", &err) == 0)
        FUZZ_ASSERT(vc.n_levels >= 1 && vc.n_levels <= VAE_MAX_LEVELS);
    else
        FUZZ_CHECK_ERROR(err);

    /* the same object as the segmoe_config of an otherwise default UNet config */
    cJSON *wrap = cJSON_CreateObject();
    FUZZ_ASSERT(wrap != NULL);
    cJSON_AddItemReferenceToObject(wrap, "segmoe_config", obj);
    sd_error_clear(&err);
    if (sd_unet_config_parse(&uc, wrap, "unet/config.json", &err) != 0) FUZZ_CHECK_ERROR(err);
    cJSON_Delete(wrap); /* deletes only the reference */
}

static void run_scheduler(sd_scheduler *s) {
    enum { N = 4 };
    float x[N] = {0.5f, -1.0f, 0.25f, 2.0f}, in[N], eps[N];
    sd_rng gen;
    sd_rng_seed(&gen, 7);
    int calls = sd_scheduler_num_calls(s);
    FUZZ_ASSERT(calls >= 1);
    for (int c = 0; c < calls; c++) {
        (void)sd_scheduler_timestep(s, c);
        sd_scheduler_scale_model_input(s, c, x, in, N);
        for (int i = 0; i < N; i++) eps[i] = 0.1f * in[i];
        sd_error err = {0};
        if (sd_scheduler_step(s, c, eps, x, &gen, &err) != 0) {
            FUZZ_CHECK_ERROR(err);
            return;
        }
    }
}

static void schedulers(const cJSON *obj, const uint8_t *data, size_t size) {
    int steps = 1 + (int)((size ? data[size / 2] : 0) % 60);
    for (int id = 0; id < SD_SAMPLER_COUNT; id++) {
        for (int karras = SD_KARRAS_FROM_CONFIG; karras <= SD_KARRAS_ON; karras += 2) {
            sd_scheduler *s = NULL;
            sd_error err = {0};
            if (sd_scheduler_create(&s, obj, "scheduler_config.json", (sd_sampler_id)id, karras, steps, 4, &err) ==
                0) {
                run_scheduler(s);
                sd_scheduler_free(s);
            } else {
                FUZZ_CHECK_ERROR(err);
                FUZZ_ASSERT(s == NULL);
            }
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_file ff;
    fuzz_file_open(&ff, data, size);
    cJSON *obj = NULL;
    sd_error err = {0};
    if (sd_json_load(ff.path, &obj, &err) == 0) {
        FUZZ_ASSERT(cJSON_IsObject(obj));
        typed_reads(obj);
        arch_readers(obj);
        component_readers(obj);
        sd_clip_text_config tc;
        sd_error_clear(&err);
        if (sd_clip_text_config_read(obj, "text_encoder/config.json", &tc, &err) == 0)
            FUZZ_ASSERT(tc.hidden_size > 0 && tc.num_heads > 0 && tc.hidden_size % tc.num_heads == 0);
        else
            FUZZ_CHECK_ERROR(err);
        schedulers(obj, data, size);
        cJSON_Delete(obj);
    } else {
        FUZZ_CHECK_ERROR(err);
        FUZZ_ASSERT(obj == NULL);
    }
    fuzz_file_close(&ff);
    return 0;
}
