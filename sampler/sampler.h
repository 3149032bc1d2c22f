/* sampler/sampler — the table of samplers: one row per sampler, used by the
 * CLI parser (--sampler, --help), the PNG metadata writer (A1111 names) and
 * the scheduler factory (sampler/scheduler.h).
 *
 * A row holds the canonical name, the accepted aliases, the A1111 display
 * name, the diffusers class it reproduces (v0.27.2), whether it has a Karras
 * sigma schedule, and (privately) the class defaults and step functions.
 *
 *     sd_sampler_id id; int karras;
 *     if (sd_sampler_lookup("DPM++ 2M Karras", &id, &karras, &err)) ...   // dpm++2m, karras 1
 *     char shown[64]; sd_sampler_display(id, karras, shown, sizeof shown); // "DPM++ 2M Karras"
 */
#ifndef SDMOE_SAMPLER_SAMPLER_H
#define SDMOE_SAMPLER_SAMPLER_H

#include <stddef.h>

#include "core/error.h"

typedef enum sd_sampler_id {
    SD_SAMPLER_DDIM,
    SD_SAMPLER_PNDM,
    SD_SAMPLER_DDPM,
    SD_SAMPLER_EULER,
    SD_SAMPLER_EULER_A,
    SD_SAMPLER_LMS,
    SD_SAMPLER_HEUN,
    SD_SAMPLER_DPMPP_2M,
    SD_SAMPLER_LCM,
    SD_SAMPLER_COUNT
} sd_sampler_id;

/* Karras request for sd_scheduler_create: follow the config's
 * use_karras_sigmas (what diffusers' from_config does), force off, force on. */
#define SD_KARRAS_FROM_CONFIG (-1)
#define SD_KARRAS_OFF 0
#define SD_KARRAS_ON 1

struct sd_sampler_ops; /* private: sampler/sched_internal.h */

typedef struct sd_sampler_info {
    sd_sampler_id id;
    const char *name;             /* canonical CLI name: "euler_a", "dpm++2m" */
    const char *aliases[6];       /* other accepted names, NULL-terminated */
    const char *display_name;     /* A1111 name: "Euler a", "DPM++ 2M", "PLMS" */
    const char *class_name;       /* diffusers class: "EulerAncestralDiscreteScheduler" */
    const char *summary;          /* one line for --help */
    int supports_karras;          /* has use_karras_sigmas in diffusers v0.27.2 */
    const struct sd_sampler_ops *ops;
} sd_sampler_info;

/* The whole table (SD_SAMPLER_COUNT rows, in enum order). */
const sd_sampler_info *sd_sampler_list(int *count);
/* Row of an id (NULL if out of range). */
const sd_sampler_info *sd_sampler_get(sd_sampler_id id);

/* Finds a sampler by name, case-insensitively: the canonical name, an alias,
 * or the A1111 display name; "_karras"/" Karras" after any of them sets
 * *karras = SD_KARRAS_ON (refused for samplers without a Karras schedule),
 * otherwise *karras = SD_KARRAS_FROM_CONFIG.  An unknown name is an error
 * whose message lists the valid names. */
int sd_sampler_lookup(const char *name, sd_sampler_id *id, int *karras, sd_error *err);

/* The sampler that reproduces a scheduler config's `_class_name` (a model's
 * own scheduler, used when no --sampler is given).  Error names the class
 * and lists the known ones. */
int sd_sampler_from_class(const char *class_name, sd_sampler_id *id, sd_error *err);

/* A1111 display text, e.g. "DPM++ 2M Karras" (karras > 0 appends " Karras").
 * Returns buf. */
const char *sd_sampler_display(sd_sampler_id id, int karras, char *buf, size_t cap);

/* "ddim, pndm, ddpm, euler, euler_a, lms, heun, dpm++2m, lcm" into buf. */
const char *sd_sampler_names(char *buf, size_t cap);

#endif
