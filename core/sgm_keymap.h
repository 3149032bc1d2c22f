/* core/sgm_keymap — exact name tables for SDXL single-file checkpoints in
 * Stability's SGM layout (sgm.models.diffusion.DiffusionEngine, what
 * sd_xl_base_1.0.safetensors and civitai SDXL models use):
 *
 *   model.diffusion_model.*                  UNet, LDM names (core/ldm_keymap; add_embedding
 *                                            = label_emb.0.0 / label_emb.0.2)
 *   first_stage_model.*                      VAE, LDM names (core/ldm_keymap)
 *   conditioner.embedders.0.transformer.*    text_encoder: HF CLIPTextModel names (text_model.*)
 *   conditioner.embedders.1.model.*          text_encoder_2: OpenCLIP names, translated here
 *
 * text_encoder_2 (diffusers v0.27.2 loaders/single_file_utils.py
 * convert_open_clip_checkpoint, textenc_conversion_lst and
 * textenc_transformer_conversion_lst, inverted):
 *
 *   CLIPTextModelWithProjection (HF)                   OpenCLIP (under conditioner.embedders.1.model.)
 *   text_model.embeddings.token_embedding.weight       token_embedding.weight
 *   text_model.embeddings.position_embedding.weight    positional_embedding
 *   text_model.final_layer_norm.{weight,bias}          ln_final.{weight,bias}
 *   text_projection.weight [proj, hidden]              text_projection [hidden, proj]   (transposed:
 *                                                      OpenCLIP computes x @ P, HF a Linear with P^T)
 *   text_model.encoder.layers.<i>.                     transformer.resblocks.<i>.
 *     layer_norm1 / layer_norm2                          ln_1 / ln_2
 *     self_attn.q_proj / k_proj / v_proj .weight         attn.in_proj_weight rows [0,h) / [h,2h) / [2h,3h)
 *     self_attn.q_proj / k_proj / v_proj .bias           attn.in_proj_bias   the same slices
 *     self_attn.out_proj                                 attn.out_proj
 *     mlp.fc1 / mlp.fc2                                  mlp.c_fc / mlp.c_proj
 *
 * text_model.embeddings.position_ids has no counterpart.  "logit_scale"
 * (CLIP's contrastive temperature, present in SDXL files, unused for text
 * encoding) maps to itself so that the loader can mark it ignored.
 *
 * As core/ldm_keymap: a name is parsed field by field; anything outside the
 * grammar has no counterpart (-1).  The q/k/v slices are views into the fused
 * tensor (no copy); text_projection is bound as a one-time transposed copy
 * (core/weights SD_MAP_TRANSPOSED).
 */
#ifndef SDMOE_CORE_SGM_KEYMAP_H
#define SDMOE_CORE_SGM_KEYMAP_H

#include <stddef.h>

#define SGM_UNET_PREFIX "model.diffusion_model."
#define SGM_VAE_PREFIX "first_stage_model."
#define SGM_CLIP_PREFIX "conditioner.embedders.0.transformer."
#define SGM_OPENCLIP_PREFIX "conditioner.embedders.1.model."
/* What SDXL refiner files have instead of both text encoders (not supported). */
#define SGM_REFINER_OPENCLIP_PREFIX "conditioner.embedders.0.model."

/* sd_name_map_fn for text_encoder_2: HF name -> OpenCLIP name (without the
 * prefix).  q/k/v set *slice_index 0/1/2 and *slice_count 3;
 * text_projection.weight sets *slice_count = SD_MAP_TRANSPOSED. */
int sgm_openclip_key(const char *name, char *out, size_t cap, int *slice_index, int *slice_count);

#endif
