/* sdmoe-fuzz-libs: core unet vae
 *
 * Fuzzes core/ldm_yaml (ldm_yaml_parse: libyaml document -> cJSON with
 * YAML 1.1 scalar typing, depth and alias-expansion limits) and what a
 * single-file checkpoint load does with the result: core/model_arch
 * sd_arch_from_ldm_yaml over the SD 1.5 defaults, then the synthesised
 * diffusers configs through sd_unet_config_parse / vae_config_from_json. */
#include "core/ldm_yaml.h"
#include "core/model_arch.h"
#include "tests/fuzz/fuzz_common.h"
#include "unet/unet.h"
#include "vae/vae.h"

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
    FUZZ_ASSERT(ua.n_levels >= 1 && ua.n_levels <= ARCH_MAX);
    FUZZ_ASSERT(va.n_levels >= 1 && va.n_levels <= ARCH_MAX);
    cJSON *uj = sd_unet_arch_to_config(&ua), *vj = sd_vae_arch_to_config(&va);
    FUZZ_ASSERT(uj && vj);
    sd_unet_config uc;
    vae_config vc;
    sd_error_clear(&err);
    if (sd_unet_config_parse(&uc, uj, "fuzz.yaml (unet)", &err)) FUZZ_CHECK_ERROR(err);
    sd_error_clear(&err);
    if (vae_config_from_json(&vc, vj, "fuzz.yaml (vae)", &err)) FUZZ_CHECK_ERROR(err);
    cJSON_Delete(uj);
    cJSON_Delete(vj);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    cJSON *y = NULL;
    sd_error err = {0};
    if (ldm_yaml_parse((const char *)data, size, "fuzz.yaml", &y, &err) == 0) {
        FUZZ_ASSERT(cJSON_IsObject(y));
        arch_from_yaml(y);
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
