/*
 * runc_harness.c - print the token ids that llama2.c's run.c tokenizer
 * produces for a list of strings, so tinyllm's tokenizer can be checked
 * against it.
 *
 * This file is tinyllm's own code.  It is not built with the project: the
 * fixture generator tools/make_runc_fixtures.py compiles it against a copy of
 * run.c kept outside the repository, e.g.
 *
 *     cc -O2 -DTESTING -I /path/to/llama2.c tools/runc_harness.c -lm -o harness
 *
 * -DTESTING removes run.c's main(); everything else (build_tokenizer, encode,
 * free_tokenizer) is used unchanged.
 *
 * Usage: harness TOKENIZER_BIN VOCAB_SIZE STRINGS_FILE
 *
 * STRINGS_FILE holds the input strings as raw bytes, each one terminated by a
 * NUL byte (so strings may contain newlines, tabs or nothing at all).  For
 * every string, in order, one line of JSON is written to stdout:
 *
 *     {"index": 0, "ids": [1, 29871, ...]}
 *
 * The ids are what encode(tokenizer, text, bos=1, eos=0, ...) returns.
 */
#include "run.c"

static char *slurp(const char *path, long *size_out) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, "harness: cannot open %s\n", path);
        exit(EXIT_FAILURE);
    }
    if (fseek(f, 0, SEEK_END) != 0) {
        fprintf(stderr, "harness: cannot seek %s\n", path);
        exit(EXIT_FAILURE);
    }
    long size = ftell(f);
    rewind(f);
    char *buf = malloc((size_t)size + 1);
    if (buf == NULL) {
        fprintf(stderr, "harness: out of memory\n");
        exit(EXIT_FAILURE);
    }
    if (size > 0 && fread(buf, 1, (size_t)size, f) != (size_t)size) {
        fprintf(stderr, "harness: short read on %s\n", path);
        exit(EXIT_FAILURE);
    }
    buf[size] = '\0';
    fclose(f);
    *size_out = size;
    return buf;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s TOKENIZER_BIN VOCAB_SIZE STRINGS_FILE\n", argv[0]);
        return EXIT_FAILURE;
    }
    int vocab_size = atoi(argv[2]);
    if (vocab_size <= 0) {
        fprintf(stderr, "harness: bad vocab size %s\n", argv[2]);
        return EXIT_FAILURE;
    }

    Tokenizer tokenizer;
    build_tokenizer(&tokenizer, argv[1], vocab_size);

    long size = 0;
    char *data = slurp(argv[3], &size);

    long start = 0;
    int index = 0;
    while (start < size) {
        char *text = data + start;
        size_t len = strlen(text);
        if (start + (long)len >= size) {
            fprintf(stderr, "harness: last string is not NUL-terminated\n");
            return EXIT_FAILURE;
        }
        /* encode() can emit one id per byte plus BOS, the dummy prefix and EOS */
        int *ids = malloc((len + 3) * sizeof(int));
        if (ids == NULL) {
            fprintf(stderr, "harness: out of memory\n");
            return EXIT_FAILURE;
        }
        int n_ids = 0;
        encode(&tokenizer, text, 1, 0, ids, &n_ids);

        printf("{\"index\": %d, \"ids\": [", index);
        for (int k = 0; k < n_ids; k++) {
            printf(k == 0 ? "%d" : ", %d", ids[k]);
        }
        printf("]}\n");

        free(ids);
        start += (long)len + 1;
        index++;
    }

    free(data);
    free_tokenizer(&tokenizer);
    return 0;
}
