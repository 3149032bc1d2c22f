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

#endif
