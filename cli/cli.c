#include "cli/cli.h"

#include <stdio.h>
#include <string.h>

#include "cli/commands.h"

static void print_usage(FILE *out) {
    fprintf(out,
            "usage: sdmoe <command> [options]\n"
            "\n"
            "commands:\n"
            "  generate   text-to-image with a Stable Diffusion or SegMoE model\n"
            "  merge      build a mixture-of-experts model from a SegMoE config\n"
            "  batch      render many images from a jobs file, resumable\n"
            "  info       describe a model folder or checkpoint\n"
            "\n"
            "  sdmoe <command> --help   options of one command\n"
            "  sdmoe --version\n");
}

int cli_main(int argc, char **argv) {
    if (argc < 2) {
        print_usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        print_usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "--version") || !strcmp(cmd, "-V")) {
        printf("sdmoe %s\n", SDMOE_VERSION);
        return 0;
    }
    if (!strcmp(cmd, "info")) return cli_info(argc - 1, argv + 1);
    if (!strcmp(cmd, "merge")) return cli_merge(argc - 1, argv + 1);
    if (!strcmp(cmd, "generate")) return cli_generate(argc - 1, argv + 1);
    if (!strcmp(cmd, "batch")) return cli_batch(argc - 1, argv + 1);
    fprintf(stderr, "sdmoe: unknown command '%s' (expected generate, merge, batch or info)\n", cmd);
    return 2;
}
