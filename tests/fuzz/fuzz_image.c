/* sdmoe-fuzz-libs: core
 *
 * Fuzzes the image readers of core/image: sd_png_read (libpng with text
 * chunks before/after IDAT) and sd_image_load (PNG/JPEG sniffing and
 * stb_image decoding with the SD_IMAGE_MAX_PIXELS guard). */
#include "core/image.h"
#include "tests/fuzz/fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_file ff;
    fuzz_file_open(&ff, data, size);
    sd_error err = {0};
    sd_image img;
    sd_png_info info;
    if (sd_png_read(ff.path, &img, &info, &err) == 0) {
        FUZZ_ASSERT(img.width == info.width && img.height == info.height);
        FUZZ_ASSERT((uint64_t)img.width * (uint64_t)img.height <= SD_IMAGE_MAX_PIXELS);
        if (img.width && img.height) {
            volatile uint8_t last = img.rgb[(size_t)img.width * img.height * 3 - 1];
            (void)last;
        }
        for (int i = 0; i < info.n_text; i++) {
            FUZZ_ASSERT(info.text[i].key && info.text[i].text);
            FUZZ_ASSERT(sd_png_info_find(&info, info.text[i].key) != NULL);
        }
        sd_png_info_free(&info);
        sd_image_free(&img);
    } else {
        FUZZ_CHECK_ERROR(err);
        FUZZ_ASSERT(img.rgb == NULL && info.text == NULL);
    }
    sd_error_clear(&err);
    if (sd_image_load(ff.path, &img, &err) == 0) {
        FUZZ_ASSERT(img.width > 0 && img.height > 0 && img.rgb != NULL);
        FUZZ_ASSERT((uint64_t)img.width * (uint64_t)img.height <= SD_IMAGE_MAX_PIXELS);
        volatile uint8_t last = img.rgb[(size_t)img.width * img.height * 3 - 1];
        (void)last;
        sd_image_free(&img);
    } else {
        FUZZ_CHECK_ERROR(err);
        FUZZ_ASSERT(img.rgb == NULL);
    }
    fuzz_file_close(&ff);
    return 0;
}
