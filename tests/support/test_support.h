/* tests/support — helpers shared by the Criterion tests: locating the
 * fixtures (SDMOE_FIXTURES, default ../shared/fixtures from the project
 * root; under CI a missing fixture fails instead of skipping), reading
 * reference tensors, and comparing with the fixtures' tolerance rule
 * max|got - ref| <= max(max_abs, rel_to_max * max|ref|). */
#ifndef SDMOE_TEST_SUPPORT_H
#define SDMOE_TEST_SUPPORT_H

#include <criterion/criterion.h>
#include <stddef.h>
#include <stdint.h>

#include "core/safetensors.h"

/* Absolute path of the fixtures folder (static storage). */
const char *tst_fixtures_dir(void);
/* Path under the fixtures (malloc'd). */
char *tst_fixture_path(const char *rel);
/* Path under the project source tree (malloc'd). */
char *tst_source_path(const char *rel);
/* Path of the built sdmoe executable. */
const char *tst_sdmoe_bin(void);

/* Skips the test (or fails it when CI is set) if the fixture is absent.
 * Returns 1 if present. Use: if (!tst_require_fixture("refs/unet.safetensors")) return; */
int tst_require_fixture(const char *rel);

/* Opens a fixture safetensors file; aborts the test on error. */
void tst_open_ref(st_file *f, const char *rel);
/* Reads tensor `name` as f32 (malloc'd); numel optional. Fails the test if absent. */
float *tst_ref_f32(const st_file *f, const char *name, size_t *numel);
/* Reads an integer tensor as int64 (malloc'd). */
int64_t *tst_ref_i64(const st_file *f, const char *name, size_t *numel);
/* Shape of tensor `name` (fails if absent). */
const st_tensor *tst_ref_tensor(const st_file *f, const char *name);

/* Returns max|got-ref| and checks it against the tolerance; on failure the
 * Criterion message names `what`, the max error, its index and the bound. */
double tst_check_close(const char *what, const float *got, const float *ref, size_t n,
                       double max_abs, double rel_to_max);

/* Parses a fixture JSON file (Python's NaN/Infinity tokens read as null);
 * fails the test if it is missing (under CI) or invalid.  cJSON_Delete it. */
struct cJSON;
struct cJSON *tst_load_json(const char *rel);

/* Runs a shell command, returns its exit status (or 128+signal). Output
 * goes to the files given (may be NULL = /dev/null). */
int tst_run(const char *cmd, const char *stdout_path, const char *stderr_path);
/* A fresh temporary directory (malloc'd path). */
char *tst_tmpdir(void);

#endif
