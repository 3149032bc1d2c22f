#include "core/half.h"

/* Element-wise; src may be unaligned inside a mapping, so read via memcpy. */
void sd_f16_to_f32_n(const uint16_t *src, float *dst, size_t n) {
    const unsigned char *p = (const unsigned char *)src;
    #pragma omp parallel for schedule(static) if (n > (1u << 16))
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        dst[i] = sd_f16_to_f32(h);
    }
}

void sd_bf16_to_f32_n(const uint16_t *src, float *dst, size_t n) {
    const unsigned char *p = (const unsigned char *)src;
    #pragma omp parallel for schedule(static) if (n > (1u << 16))
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        dst[i] = sd_bf16_to_f32(h);
    }
}

void sd_f32_to_f16_n(const float *src, uint16_t *dst, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = sd_f32_to_f16(src[i]);
}

void sd_f32_to_bf16_n(const float *src, uint16_t *dst, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = sd_f32_to_bf16(src[i]);
}
