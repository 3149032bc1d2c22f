/* core/model_internal — helpers shared by model.c (folders, common parts)
 * and model_single.c (single-file checkpoints).  Not a public contract. */
#ifndef SDMOE_CORE_MODEL_INTERNAL_H
#define SDMOE_CORE_MODEL_INTERNAL_H

#include "core/model.h"

/* malloc'd printf (NULL when out of memory). */
char *model_strf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* 0 if dir holds a CLIP BPE tokenizer (vocab.json and merges.txt). */
int model_check_tokenizer(const char *dir, const char *what, sd_error *err);

/* The SD 1.5 scheduler_config.json (PNDM) as a new object. */
cJSON *model_sd15_scheduler_config(void);

/* Ignores the text encoder's position_ids buffer (int64 0..76, carries no
 * information) so that sd_binder_check_complete need not know about it. */
void model_ignore_position_ids(sd_component *c);

int model_open_single(sd_model *m, const char *path, const sd_model_options *opt, sd_error *err);

#endif
