/* sampler/sampler_table — the sampler rows and name lookups. */
#include "sampler/sampler.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "sampler/sched_internal.h"

static const sd_sampler_info table[SD_SAMPLER_COUNT] = {
    {SD_SAMPLER_DDIM, "ddim", {NULL}, "DDIM", "DDIMScheduler",
     "DDIM, eta 0 (deterministic)", 0, &sched_ops_ddim},
    {SD_SAMPLER_PNDM, "pndm", {"plms", NULL}, "PLMS", "PNDMScheduler",
     "PNDM/PLMS linear multistep (SD 1.x default); N+1 UNet calls", 0, &sched_ops_pndm},
    {SD_SAMPLER_DDPM, "ddpm", {NULL}, "DDPM", "DDPMScheduler",
     "DDPM ancestral sampling (fixed_small variance), noise every step", 0, &sched_ops_ddpm},
    {SD_SAMPLER_EULER, "euler", {"k_euler", "euler_discrete", NULL}, "Euler", "EulerDiscreteScheduler",
     "Euler (k-diffusion), deterministic", 1, &sched_ops_euler},
    {SD_SAMPLER_EULER_A, "euler_a", {"euler_ancestral", "euler-a", "k_euler_a", "k_euler_ancestral", NULL},
     "Euler a", "EulerAncestralDiscreteScheduler", "Euler ancestral, noise every step", 0, &sched_ops_euler_a},
    {SD_SAMPLER_LMS, "lms", {"k_lms", "lms_discrete", NULL}, "LMS", "LMSDiscreteScheduler",
     "linear multistep, order 4", 1, &sched_ops_lms},
    {SD_SAMPLER_HEUN, "heun", {"k_heun", "heun_discrete", NULL}, "Heun", "HeunDiscreteScheduler",
     "Heun (2nd order); 2N-1 UNet calls", 1, &sched_ops_heun},
    {SD_SAMPLER_DPMPP_2M, "dpm++2m", {"dpmpp_2m", "dpmpp2m", "dpm++_2m", "k_dpmpp_2m", "dpmsolver++", NULL},
     "DPM++ 2M", "DPMSolverMultistepScheduler", "DPM-Solver++ 2M (order 2, midpoint)", 1, &sched_ops_dpmpp_2m},
    {SD_SAMPLER_LCM, "lcm", {NULL}, "LCM", "LCMScheduler",
     "latent consistency model sampling (LCM models / LoRA)", 0, &sched_ops_lcm},
};

const sd_sampler_info *sd_sampler_list(int *count) {
    if (count) *count = SD_SAMPLER_COUNT;
    return table;
}

const sd_sampler_info *sd_sampler_get(sd_sampler_id id) {
    return ((int)id >= 0 && id < SD_SAMPLER_COUNT) ? &table[id] : NULL;
}

const char *sd_sampler_names(char *buf, size_t cap) {
    size_t len = 0;
    if (cap) buf[0] = '\0';
    for (int i = 0; i < SD_SAMPLER_COUNT && len < cap; i++)
        len += (size_t)snprintf(buf + len, cap - len, "%s%s", i ? ", " : "", table[i].name);
    return buf;
}

const char *sd_sampler_display(sd_sampler_id id, int karras, char *buf, size_t cap) {
    const sd_sampler_info *info = sd_sampler_get(id);
    snprintf(buf, cap, "%s%s", info ? info->display_name : "?", karras > 0 ? " Karras" : "");
    return buf;
}

static int matches(const sd_sampler_info *r, const char *name, size_t len) {
    if (strlen(r->name) == len && !strncasecmp(r->name, name, len)) return 1;
    if (strlen(r->display_name) == len && !strncasecmp(r->display_name, name, len)) return 1;
    for (int a = 0; r->aliases[a]; a++)
        if (strlen(r->aliases[a]) == len && !strncasecmp(r->aliases[a], name, len)) return 1;
    return 0;
}

/* Length of name without a trailing "_karras" / " karras" / "-karras". */
static size_t strip_karras(const char *name, int *karras) {
    size_t len = strlen(name);
    static const char suffix[] = "karras";
    size_t sl = sizeof suffix - 1;
    *karras = 0;
    if (len > sl + 1 && !strcasecmp(name + len - sl, suffix) && strchr("_ -", name[len - sl - 1])) {
        *karras = 1;
        return len - sl - 1;
    }
    return len;
}

int sd_sampler_lookup(const char *name, sd_sampler_id *id, int *karras, sd_error *err) {
    char names[256];
    int want_karras;
    size_t len = strip_karras(name ? name : "", &want_karras);
    for (int i = 0; i < SD_SAMPLER_COUNT; i++) {
        if (!matches(&table[i], name, len)) continue;
        if (want_karras && !table[i].supports_karras)
            return sd_fail(err, "sampler '%s': %s has no Karras schedule (samplers with one: %s)", name,
                           table[i].name, "euler, lms, heun, dpm++2m");
        *id = table[i].id;
        *karras = want_karras ? SD_KARRAS_ON : SD_KARRAS_FROM_CONFIG;
        return 0;
    }
    return sd_fail(err, "unknown sampler '%s' (valid: %s; add _karras for the Karras schedule)", name ? name : "",
                   sd_sampler_names(names, sizeof names));
}

int sd_sampler_from_class(const char *class_name, sd_sampler_id *id, sd_error *err) {
    char known[512];
    size_t len = 0;
    for (int i = 0; i < SD_SAMPLER_COUNT; i++) {
        if (class_name && !strcmp(class_name, table[i].class_name)) {
            *id = table[i].id;
            return 0;
        }
        len += (size_t)snprintf(known + len, sizeof known - len, "%s%s", i ? ", " : "", table[i].class_name);
    }
    return sd_fail(err, "scheduler class '%s' is not supported (known: %s); choose one with --sampler",
                   class_name ? class_name : "(none)", known);
}
