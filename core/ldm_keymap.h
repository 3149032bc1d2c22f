/* core/ldm_keymap — exact name tables from diffusers tensor names to the
 * CompVis/LDM names of single-file SD 1.x checkpoints.
 *
 * Components bind by diffusers name; a single-file binder translates each
 * name with these functions, then prepends its prefix
 * ("model.diffusion_model.", "first_stage_model.", ...).  The tables are the
 * ones of diffusers v0.27.2 scripts/convert_diffusers_to_original_stable_diffusion.py
 * (unet_conversion_map*, vae_conversion_map*), generalised from SD 1.5's
 * fixed 4 levels x 2 layers to any layout read from the config (SDXL's
 * 3 levels with transformer_layers_per_block [1, 2, 10] included: the
 * transformer depth only adds transformer_blocks.<k> inside an attention,
 * whose names are unchanged; add_embedding as in diffusers v0.27.2
 * loaders/single_file_utils.py convert_ldm_unet_checkpoint):
 *
 *   UNet                                     LDM (under model.diffusion_model.)
 *   conv_in                                  input_blocks.0.0
 *   time_embedding.linear_1 / linear_2       time_embed.0 / time_embed.2
 *   add_embedding.linear_1 / linear_2        label_emb.0.0 / label_emb.0.2 (SDXL "text_time")
 *   down_blocks.i.resnets.j                  input_blocks.n.0   n = 1 + sum_{k<i}(layers_k + 1) + j
 *   down_blocks.i.attentions.j               input_blocks.n.1
 *   down_blocks.i.downsamplers.0.conv        input_blocks.(n of j = layers_i).0.op
 *   mid_block.resnets.0 / attentions.0 / resnets.1   middle_block.0 / .1 / .2
 *   up_blocks.i.resnets.j                    output_blocks.n.0  n = sum_{k<i}(layers_(L-1-k) + 1) + j
 *   up_blocks.i.attentions.j                 output_blocks.n.1
 *   up_blocks.i.upsamplers.0.conv            output_blocks.(last n of block i).(1 or 2 with attention).conv
 *   conv_norm_out / conv_out                 out.0 / out.2
 *   resnet parts norm1 conv1 time_emb_proj norm2 conv2 conv_shortcut
 *             -> in_layers.0 in_layers.2 emb_layers.1 out_layers.0 out_layers.3 skip_connection
 *   attention internals (norm, proj_in, transformer_blocks.*, proj_out): unchanged
 *
 *   VAE (encoder./decoder.)                  LDM (under first_stage_model.)
 *   down_blocks.i.resnets.j / downsamplers.0 down.i.block.j / down.i.downsample
 *   up_blocks.i.resnets.j / upsamplers.0     up.(L-1-i).block.j / up.(L-1-i).upsample
 *   mid_block.resnets.0/1, attentions.0      mid.block_1/2, mid.attn_1
 *   attention group_norm to_q to_k to_v to_out.0 (or query key value proj_attn)
 *                                            norm q k v proj_out
 *   conv_shortcut, conv_norm_out             nin_shortcut, norm_out
 *
 *   CLIP text encoder: identical names under cond_stage_model.transformer.
 *
 * No substring rewriting: a name is parsed field by field and anything that
 * does not fit the grammar has no counterpart (-1).
 */
#ifndef SDMOE_CORE_LDM_KEYMAP_H
#define SDMOE_CORE_LDM_KEYMAP_H

#include <stddef.h>

#include "core/error.h"
#include "core/weights.h"

#define LDM_MAX_LEVELS 8

/* What the UNet names depend on; read from the diffusers config. */
typedef struct ldm_unet_layout {
    int n_levels;                         /* len(block_out_channels) */
    int layers[LDM_MAX_LEVELS];           /* layers_per_block of down block i; up block L-1-i has one more */
    unsigned char up_attn[LDM_MAX_LEVELS];/* 1 if up block i has attentions (moves its upsampler to .2) */
} ldm_unet_layout;

typedef struct ldm_vae_layout {
    int n_levels;                         /* len(block_out_channels) */
} ldm_vae_layout;

/* Translates a diffusers UNet / VAE tensor name to the LDM name (without the
 * component prefix) into out[cap].  Returns 0, or -1 when the name has no
 * counterpart (unknown field, index out of the layout's range, too long). */
/* snprintf into out[cap] for a key name; -1 when it does not fit (also used by sgm_keymap). */
int ldm_key_format(char *out, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

int ldm_unet_key(const ldm_unet_layout *lay, const char *name, char *out, size_t cap);
int ldm_vae_key(const ldm_vae_layout *lay, const char *name, char *out, size_t cap);

/* sd_name_map_fn adapters for sd_binder.map.  sd_name_map_fn carries no
 * context pointer, so each distinct layout is interned (copied once into a
 * small process-wide table of immutable entries, thread-safe) and gets its
 * own trampoline; equal layouts share one.  Fails only when more than
 * LDM_LAYOUT_SLOTS distinct layouts are in use in one process. */
#define LDM_LAYOUT_SLOTS 8
int ldm_unet_map_fn(const ldm_unet_layout *lay, sd_name_map_fn *out, sd_error *err);
int ldm_vae_map_fn(const ldm_vae_layout *lay, sd_name_map_fn *out, sd_error *err);

/* For checkpoints whose CLIP keys lack the "text_model." level (older
 * transformers): strips a leading "text_model." from the diffusers name. */
int ldm_clip_strip_text_model(const char *name, char *out, size_t cap, int *slice_index, int *slice_count);

#endif
