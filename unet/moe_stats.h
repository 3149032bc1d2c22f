/* unet/moe_stats — `--moe-stats FILE`: which experts every MoE layer chose
 * at every UNet call, and with what mean weight, written as JSON.
 *
 * Owns: the list of a UNet's MoE layers (forward order: transformer blocks
 * as sd_unet_tblock_at enumerates them, per block attn1.to_q/k/v,
 * attn2.to_q/k/v, ff), the recorded choices and the JSON file.
 *
 *     sd_moe_stats *st;
 *     sd_moe_stats_create(&st, sd_pipeline_unet(p), &err);      // once, after loading
 *     hooks.on_unet_call = ...;   // calls sd_moe_stats_record(st, call, t, &err)
 *                                 // (or on_unet_call = sd_moe_stats_on_unet_call, ctx = st)
 *     sd_pipeline_txt2img(p, &params, &hooks, &res, &err);       // any number of requests
 *     sd_moe_stats_write(st, "stats.json", &err);
 *     sd_moe_stats_free(st);
 *
 * A record reads sd_moe_last_choice of every layer, so it must follow the
 * UNet call it describes.  A record with call 0 (or after
 * sd_moe_stats_begin_run) starts a new run: one run per txt2img request.
 * attn2.to_k / to_v run once per request on the text context (their K/V
 * are cached), so their entries repeat that one decision at every call.
 * With several images in one request, one decision covers the whole batch
 * (SegMoE's routing), so the stats are per call, not per image.
 *
 * JSON (numbers: weights %.6g, timesteps as given; a non-finite weight is null):
 *   { "format": "sdmoe-moe-stats", "format_version": 1,
 *     "num_experts": E, "routing": "segmoe" | "per-token" | "mixed",
 *     "runs": [ {"label": "...", "first_call": 0, "n_calls": 10}, ... ],
 *     "calls": [ {"run": 0, "call": 0, "timestep": 901}, ... ],
 *     "layers": [ {"name": "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
 *                  "kind": "attn1.to_q", "top_k": 2,
 *                  "experts": [[0, 1], ...],          one entry per element of "calls"
 *                  "mean_weights": [[0.73, 0.27], ...],
 *                  "times_selected": [10, 10]}, ... ] }    per expert, over all calls
 * "experts" lists the chosen experts in selection order (SegMoE routing:
 * the top-k of the column sums; per-token routing: the k experts carrying
 * the most weight) and "mean_weights" each one's weight averaged over all
 * rows of the call (see sd_moe_last_choice).
 */
#ifndef SDMOE_UNET_MOE_STATS_H
#define SDMOE_UNET_MOE_STATS_H

#include "core/error.h"
#include "unet/unet.h"

typedef struct sd_moe_stats sd_moe_stats;

/* Collects the MoE layers of u (which must outlive the stats).  A UNet
 * without MoE layers is an error ("no MoE layers: --moe-stats needs a
 * SegMoE model"). */
int sd_moe_stats_create(sd_moe_stats **out, sd_unet *u, sd_error *err);
void sd_moe_stats_free(sd_moe_stats *s);

/* Number of MoE layers / records so far. */
int sd_moe_stats_layer_count(const sd_moe_stats *s);
int sd_moe_stats_call_count(const sd_moe_stats *s);

/* Starts a new run with a label (e.g. "seed 42"; copied; may be NULL). */
int sd_moe_stats_begin_run(sd_moe_stats *s, const char *label, sd_error *err);

/* Records every layer's choice at UNet call `call` (timestep t).  Grows its
 * storage geometrically (amortised, no per-call allocation otherwise). */
int sd_moe_stats_record(sd_moe_stats *s, int call, float timestep, sd_error *err);

/* sd_txt2img_hooks.on_unet_call adapter (ctx = sd_moe_stats*): a failure
 * (out of memory) is kept and returned by sd_moe_stats_write. */
void sd_moe_stats_on_unet_call(void *ctx, int call, float timestep);

/* The JSON text (malloc'd, NUL-terminated) / written atomically to path. */
char *sd_moe_stats_json(const sd_moe_stats *s, sd_error *err);
int sd_moe_stats_write(const sd_moe_stats *s, const char *path, sd_error *err);

#endif
