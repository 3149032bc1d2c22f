/* tests/fuzz/replay_main — a libFuzzer-free main() for the fuzz targets.
 *
 * Linked with one tests/fuzz/fuzz_<name>.c it becomes replay_<name> (the
 * SDMOE_FUZZ_REPLAY block of CMakeLists.txt): no libFuzzer, no sanitizer,
 * any compiler.  It calls LLVMFuzzerInitialize (when the target has one),
 * then LLVMFuzzerTestOneInput once per input, all in one process:
 *
 *   replay_<name> [-q] PATH...    a PATH is a file or a folder (its regular
 *                                 files, recursively, in name order)
 *   replay_<name> [-q] @LIST      the paths listed in file LIST, one a line
 *
 * Each input is read into a heap block of exactly its size (as libFuzzer
 * does), so a read one byte past the input is caught by valgrind
 * (scripts/valgrind-parsers.sh).  Exit status 0 when every input was
 * replayed, 2 when an input could not be read; a target's own invariant
 * failure aborts. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

static int quiet;
static long n_inputs, n_bytes, n_bad;

static void replay_file(const char *path) {
    FILE *f = fopen(path, "rb");
    struct stat st;
    if (!f || fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fprintf(stderr, "replay: %s: cannot read a regular file\n", path);
        if (f) fclose(f);
        n_bad++;
        return;
    }
    size_t size = (size_t)st.st_size;
    uint8_t *data = malloc(size ? size : 1);
    if (!data || (size && fread(data, 1, size, f) != size)) {
        fprintf(stderr, "replay: %s: read failed\n", path);
        free(data);
        fclose(f);
        n_bad++;
        return;
    }
    fclose(f);
    if (!quiet) fprintf(stderr, "replay: %s (%zu bytes)\n", path, size);
    /* a zero-size input gets a zero-size block: any read of it is an error */
    if (size == 0) {
        free(data);
        data = malloc(0);
    }
    LLVMFuzzerTestOneInput(data, size);
    free(data);
    n_inputs++;
    n_bytes += (long)size;
}

static int by_name(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void replay_path(const char *path, int depth) {
    struct stat st;
    if (stat(path, &st) != 0) {
        fprintf(stderr, "replay: %s: no such file\n", path);
        n_bad++;
        return;
    }
    if (!S_ISDIR(st.st_mode)) {
        replay_file(path);
        return;
    }
    if (depth > 16) return;
    DIR *d = opendir(path);
    if (!d) {
        fprintf(stderr, "replay: %s: cannot open folder\n", path);
        n_bad++;
        return;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            char **grown = realloc(names, cap * sizeof *names);
            if (!grown) abort();
            names = grown;
        }
        size_t len = strlen(path) + strlen(e->d_name) + 2;
        names[n] = malloc(len);
        if (!names[n]) abort();
        snprintf(names[n], len, "%s/%s", path, e->d_name);
        n++;
    }
    closedir(d);
    if (n) qsort(names, n, sizeof *names, by_name);
    for (size_t i = 0; i < n; i++) {
        struct stat est;
        /* only regular files and folders: no FIFOs, no links to devices */
        if (lstat(names[i], &est) == 0 && (S_ISREG(est.st_mode) || S_ISDIR(est.st_mode)))
            replay_path(names[i], depth + 1);
        free(names[i]);
    }
    free(names);
}

static void replay_list(const char *list) {
    FILE *f = fopen(list, "r");
    if (!f) {
        fprintf(stderr, "replay: %s: cannot open list\n", list);
        n_bad++;
        return;
    }
    char line[4096];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        if (line[0]) replay_path(line, 0);
    }
    fclose(f);
}

int main(int argc, char **argv) {
    if (LLVMFuzzerInitialize) LLVMFuzzerInitialize(&argc, &argv);
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-q") == 0) quiet = 1;
        else if (argv[i][0] == '@') replay_list(argv[i] + 1);
        else replay_path(argv[i], 0);
    }
    fprintf(stderr, "replay: %s: %ld inputs, %ld bytes%s\n", argv[0], n_inputs, n_bytes,
            n_bad ? ", some paths unreadable" : "");
    return n_bad ? 2 : 0;
}
