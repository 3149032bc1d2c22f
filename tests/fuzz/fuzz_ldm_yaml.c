/* sdmoe-fuzz-libs: core unet vae
 *
 * Fuzzes core/ldm_yaml (ldm_yaml_parse: libyaml document -> cJSON with
 * YAML 1.1 scalar typing, depth and alias-expansion limits) and what a
 * single-file checkpoint load does with the result: core/model_arch
 * sd_arch_from_ldm_yaml over the SD 1.5 defaults and sd_arch_from_sgm_yaml
 * (SDXL) over the SDXL defaults, then the synthesised diffusers configs
 * through sd_unet_config_parse / vae_config_from_json. */
#include "core/ldm_yaml.h"
#include "core/model_arch.h"
#include "tests/fuzz/fuzz_common.h"
#include "unet/unet.h"
#include "vae/vae.h"

static void check_configs(const sd_unet_arch *ua, const sd_vae_arch *va) {
    FUZZ_ASSERT(ua->n_levels >= 1 && ua->n_levels <= ARCH_MAX);
    FUZZ_ASSERT(va->n_levels >= 1 && va->n_levels <= ARCH_MAX);
    cJSON *uj = sd_unet_arch_to_config(ua), *vj = sd_vae_arch_to_config(va);
    FUZZ_ASSERT(uj && vj);
    sd_unet_config uc;
    vae_config vc;
    sd_error err = {0};
    if (sd_unet_config_parse(&uc, uj, "fuzz.yaml (unet)", &err)) FUZZ_CHECK_ERROR(err);
    sd_error_clear(&err);
    if (vae_config_from_json(&vc, vj, "fuzz.yaml (vae)", &err)) FUZZ_CHECK_ERROR(err);
    cJSON_Delete(uj);
    cJSON_Delete(vj);
}

static void arch_from_sgm_yaml(const cJSON *y) {
    sd_unet_arch ua;
    sd_vae_arch va;
    sd_sgm_text t;
    sd_ldm_sched sched = {0.00085, 0.012, 1000, 0};
    sd_unet_arch_sdxl(&ua);
    sd_vae_arch_sdxl(&va);
    memset(&t, 0, sizeof t);
    sd_error err = {0};
    if (sd_arch_from_sgm_yaml(y, "fuzz.yaml", &ua, &va, &t, &sched, &err) != 0) {
        FUZZ_CHECK_ERROR(err);
        return;
    }
    FUZZ_ASSERT(ua.text_time && ua.add_embed_in >= 1);
    FUZZ_ASSERT(!t.time_embed_dim_stated || ua.add_embed_in > 6 * ua.addition_time_embed_dim);
    FUZZ_ASSERT(sched.beta_start > 0 && sched.beta_end < 1 && sched.num_train_timesteps >= 1);
    FUZZ_ASSERT(memchr(t.te1_name, '\0', sizeof t.te1_name) && memchr(t.te2_name, '\0', sizeof t.te2_name));
    check_configs(&ua, &va);
}

static void arch_from_yaml(const cJSON *y) {
    sd_unet_arch ua;
    sd_vae_arch va;
    sd_clip_arch ca;
    sd_ldm_sched sched = {0.00085, 0.012, 1000, 0};
    sd_unet_arch_sd15(&ua);
    sd_vae_arch_sd15(&va);
    sd_clip_arch_sd15(&ca);
    sd_error err = {0};
    if (sd_arch_from_ldm_yaml(y, "fuzz.yaml", &ua, &va, &sched, &err) != 0) {
        FUZZ_CHECK_ERROR(err);
        return;
    }
    check_configs(&ua, &va);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    cJSON *y = NULL;
    sd_error err = {0};
    if (ldm_yaml_parse((const char *)data, size, "fuzz.yaml", &y, &err) == 0) {
        FUZZ_ASSERT(cJSON_IsObject(y));
        if (sd_yaml_is_sgm(y)) arch_from_sgm_yaml(y);
        else arch_from_yaml(y);
        cJSON_Delete(y);
    } else {
        FUZZ_CHECK_ERROR(err);
        FUZZ_ASSERT(y == NULL);
    }
    /* the file entry point too (size limit, read errors) on small inputs */
    if (size < 4096) {
        fuzz_file ff;
        fuzz_file_open(&ff, data, size);
        sd_error_clear(&err);
        if (ldm_yaml_load(ff.path, &y, &err) == 0) cJSON_Delete(y);
        else FUZZ_CHECK_ERROR(err);
        fuzz_file_close(&ff);
    }
    return 0;
}
