/*
 * Fuzz target for the SSE encoder: the same round-trip property as
 * test_sse.c (sse_roundtrip in sse_ref.h), on inputs libFuzzer makes up.
 *
 *   clang-14 -fsanitize=fuzzer,address,undefined ... fuzz_sse.c sse.c
 *   ./fuzz_sse -runs=200000
 *
 * Input layout: byte 0 holds flags (bit 0: an id, bit 1: an event), bytes 1
 * and 2 the id and event lengths (each cut down to what is left), then the
 * id, the event and the data bytes. Every input is valid, so the fuzzer
 * spends its time on contents, not on the framing.
 *
 * Built with -DFUZZ_STANDALONE (gcc, no libFuzzer) it gets a main() that runs
 * the same function on seeded random inputs, and on any files named on the
 * command line (to replay a crash found elsewhere).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "sse_ref.h"

int LLVMFuzzerTestOneInput(const uint8_t *in, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *in, size_t size)
{
    const char *p = (const char *)in + 3;
    size_t rest, idlen, evlen;
    const char *why;

    if (size < 3) return 0;
    rest = size - 3;
    idlen = in[1] <= rest ? in[1] : rest;
    rest -= idlen;
    evlen = in[2] <= rest ? in[2] : rest;
    rest -= evlen;
    why = sse_roundtrip((in[0] & 1) ? p : NULL, idlen, (in[0] & 2) ? p + idlen : NULL, evlen,
                        p + idlen + evlen, rest);
    if (why != NULL) {
        fprintf(stderr, "fuzz_sse: round trip broken: %s\n", why);
        abort();
    }
    return 0;
}

#ifdef FUZZ_STANDALONE
#include <inttypes.h>
#include <string.h>

/* splitmix64, as in check.h (not included here: it would bring a second
 * main). */
static uint64_t next_rand(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int replay(const char *path)
{
    FILE *f = fopen(path, "rb");
    uint8_t *buf;
    long n;
    if (f == NULL || fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
        perror(path);
        if (f) fclose(f);
        return 1;
    }
    buf = malloc((size_t)n + 1);
    if (buf == NULL || fread(buf, 1, (size_t)n, f) != (size_t)n) {
        perror(path);
        free(buf);
        fclose(f);
        return 1;
    }
    fclose(f);
    LLVMFuzzerTestOneInput(buf, (size_t)n);
    free(buf);
    return 0;
}

int main(int argc, char **argv)
{
    static const uint8_t special[] = {'\r', '\n', 0, ' ', ':', 'a'};
    const char *e = getenv("CHECK_SEED");
    uint64_t seed = e ? strtoull(e, NULL, 0) : 0x5eed5eed2024ull, s = seed;
    const char *r = getenv("FUZZ_RUNS");
    unsigned long runs = r ? strtoul(r, NULL, 10) : 200000;
    uint8_t buf[1024];

    if (argc > 1) {
        int rc = 0;
        for (int i = 1; i < argc; i++) rc |= replay(argv[i]);
        printf("fuzz_sse (replay): %d passed, %d failed\n", argc - 1 - rc, rc);
        return rc;
    }
    for (unsigned long run = 0; run < runs; run++) {
        size_t n = (size_t)(next_rand(&s) % 100 < 95 ? next_rand(&s) % 64 : next_rand(&s) % sizeof(buf));
        for (size_t i = 0; i < n; i++) {
            uint64_t k = next_rand(&s);
            buf[i] = (k & 7) < 5 ? special[(k >> 3) % sizeof(special)] : (uint8_t)(k >> 8);
        }
        /* Keep the length bytes small, like the inputs a fuzzer grows. */
        if (n > 1) buf[1] %= 24;
        if (n > 2) buf[2] %= 24;
        LLVMFuzzerTestOneInput(buf, n);
    }
    printf("fuzz_sse: seed %#" PRIx64 ", %lu random inputs\n", seed, runs);
    printf("fuzz_sse: 1 passed, 0 failed\n");
    return 0;
}
#endif
