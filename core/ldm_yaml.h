/* core/ldm_yaml — reading CompVis/LDM model yamls (Stable Diffusion's
 * v1-inference.yaml layout, what A1111 puts beside a checkpoint).
 *
 * The YAML document is converted to a cJSON tree (plain scalars typed as
 * YAML 1.1 resolves them: integers and floats -> numbers, true/false ->
 * booleans, null/~/empty -> null, everything else and every quoted scalar ->
 * strings), so the architecture is then read with the same typed accessors
 * (core/json.h) as a diffusers config.json.
 */
#ifndef SDMOE_CORE_LDM_YAML_H
#define SDMOE_CORE_LDM_YAML_H

#include <cjson/cJSON.h>

#include "core/error.h"

/* Parses the first YAML document of `path` (at most 16 MB, top level a
 * mapping) into a new cJSON object.  Errors name the file, line and column. */
int ldm_yaml_load(const char *path, cJSON **out, sd_error *err);

/* Parses YAML text (len bytes); `name` is used in messages. */
int ldm_yaml_parse(const char *text, size_t len, const char *name, cJSON **out, sd_error *err);

#endif
