/* core/memory — large buffers on transparent huge pages (see memory.h). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "core/memory.h"

#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>

#define HUGE_ALIGN ((size_t)2 << 20)

static size_t page_round(size_t n) { return (n + 4095) & ~(size_t)4095; }

void *sd_big_alloc(size_t bytes) {
    if (bytes == 0) return NULL;
    if (bytes < SD_BIG_MIN) return aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    size_t len = page_round(bytes), span = len + HUGE_ALIGN;
    if (span < len) return NULL; /* overflow */
    uint8_t *raw = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) return NULL;
    uintptr_t start = ((uintptr_t)raw + HUGE_ALIGN - 1) & ~(uintptr_t)(HUGE_ALIGN - 1);
    size_t head = start - (uintptr_t)raw, tail = span - head - len;
    if (head) munmap(raw, head);
    if (tail) munmap((uint8_t *)start + len, tail);
#ifdef MADV_HUGEPAGE
    madvise((void *)start, len, MADV_HUGEPAGE); /* advice only: 4 KB pages if THP is off */
#endif
    return (void *)start;
}

void sd_big_free(void *p, size_t bytes) {
    if (!p) return;
    if (bytes < SD_BIG_MIN) {
        free(p);
        return;
    }
    munmap(p, page_round(bytes));
}

void *sd_scratch_reserve(sd_scratch *s, size_t bytes) {
    if (bytes <= s->bytes && s->base) return s->base;
    sd_scratch_release(s); /* free first: never hold both sizes at once */
    s->base = sd_big_alloc(bytes ? bytes : 64);
    s->bytes = s->base ? (bytes ? bytes : 64) : 0;
    return s->base;
}

void sd_scratch_release(sd_scratch *s) {
    sd_big_free(s->base, s->bytes);
    s->base = NULL;
    s->bytes = 0;
}
