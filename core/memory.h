/* core/memory — large buffers on transparent huge pages.
 *
 * Loading a model allocates gigabytes (oneDNN's reordered convolution
 * weights, f16 -> f32 conversions, activation workspaces).  On the VMs sdmoe
 * runs on, touching that memory 4 KB page by 4 KB page costs more than the
 * copy itself (first-touch faults went through the hypervisor: 2.2 GB of
 * reordered weights took 5 s to fault in).  Buffers of SD_BIG_MIN bytes or
 * more are therefore mapped 2 MB-aligned with madvise(MADV_HUGEPAGE), so the
 * kernel faults them in 2 MB at a time where transparent huge pages are
 * enabled ("madvise" or "always"); smaller ones come from malloc.  The
 * contents are zero-initialised either way only for mapped buffers: callers
 * must not rely on it. */
#ifndef SDMOE_CORE_MEMORY_H
#define SDMOE_CORE_MEMORY_H

#include <stddef.h>

#define SD_BIG_MIN ((size_t)4 << 20)

/* 64-byte aligned (2 MB aligned when >= SD_BIG_MIN); NULL on failure or 0 bytes. */
void *sd_big_alloc(size_t bytes);
/* Frees a buffer of sd_big_alloc; `bytes` must be the size it was asked with. */
void sd_big_free(void *p, size_t bytes);

/* Scratch memory shared by modules that never compute at the same time: the
 * UNet's activation workspace while sampling and the VAE's while decoding
 * live in one set of pages instead of one each, so a generation's peak RSS
 * is the weights plus the larger of the two, not their sum (issue 9).  The
 * pages stay mapped between calls (no first-touch faults per image).
 * Contents survive neither a call that grows it nor another user's call:
 * only per-call temporaries may live there.  Zero-initialise with {0}. */
typedef struct sd_scratch {
    void *base;
    size_t bytes;
} sd_scratch;

/* The region, grown to at least `bytes` (the old contents are dropped when it
 * grows); NULL when out of memory, the scratch then being empty. */
void *sd_scratch_reserve(sd_scratch *s, size_t bytes);
void sd_scratch_release(sd_scratch *s);

#endif
