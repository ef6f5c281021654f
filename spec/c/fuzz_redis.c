/*
 * Fuzz target for the Redis links' reply handling: whatever bytes come in
 * on the subscriber link and the command link, the hub must neither crash,
 * nor leak, nor break its own bookkeeping.
 *
 *   clang-14 -fsanitize=fuzzer,address,undefined ... fuzz_redis.c <the core> -lhiredis
 *   ./fuzz_redis -runs=20000 build_dir/ spec/c/corpus_redis/
 *
 * Each input starts from the same state (redis_fixture.h): three channels
 * with live streams, one stream still joining, and on the command link a gap
 * repair, a barrier, a resume and an async publish waiting for their
 * answers. The input is then a program of operations, each a byte and its
 * arguments:
 *
 *   0 n bytes    n raw bytes on the subscriber link
 *   1 n bytes    n raw bytes on the command link
 *   2 n bytes    a message on the hub's control channel with that payload
 *   3 c n bytes  a message on channel c (c0..c3; c3 has no stream) with that payload
 *   4 t          the clock moves on t * 16 ms (timers: reconnects, timeouts, PINGs)
 *   5 f          the fake Redis answers on its own what f says (FX_AUTO_*)
 *   6 m          a stream joins the channels in bitmask m (bit 4: with a cursor,
 *                bit 5: with a cursor that is not an id)
 *   7 i          stream i leaves
 *   8 c          an async publish on channel c
 *   9 r          the fake Redis closes a link (r odd: subscriber)
 *  10 n tokens   n RESP pieces on the subscriber link, each byte picking one
 *                from PIECES (whole replies are easier to make that way)
 *  11 n tokens   the same on the command link
 *
 * Built with -DFUZZ_STANDALONE (gcc, no libFuzzer) it gets a main() that
 * replays the files named on the command line, or the seed corpus and then
 * seeded random programs (for valgrind and for machines without clang).
 */
#include <stddef.h>
#include <stdint.h>

#include "redis_fixture.h"

int LLVMFuzzerTestOneInput(const uint8_t *in, size_t size);

#define MAX_OPS 64
#define FIRST_ID "1700000000000-1"

static const char *const CHANNELS[] = {"c0", "c1", "c2", "c3"};

/* What replies are made of. */
static const char *const PIECES[] = {
    "*0\r\n", "*1\r\n", "*2\r\n", "*3\r\n", "*4\r\n", "*-1\r\n", "$-1\r\n", "$0\r\n\r\n", ":0\r\n", ":1\r\n",
    ":-1\r\n", ":99\r\n", "+OK\r\n", "+PONG\r\n", "-ERR x\r\n", "-NOSCRIPT x\r\n", "$7\r\nmessage\r\n",
    "$9\r\nsubscribe\r\n", "$11\r\nunsubscribe\r\n", "$4\r\npong\r\n", "$8\r\npmessage\r\n",
    "$5\r\nfx:c0\r\n", "$5\r\nfx:c1\r\n", "$5\r\nfx:c2\r\n", "$5\r\nfx:c3\r\n", "$15\r\n" FIRST_ID "\r\n",
    "$28\r\nid: 1700000000000-9\ndata: x\n\n\r\n", "$27\r\nid: 1700000000000-1\ndata: x\n\n\r\n",
    "$5\r\nhello\r\n", "$17\r\n1 1700000000000-1\r\n", "$17\r\n9 1700000000000-1\r\n", ">3\r\n", "%1\r\n",
    "#t\r\n", "_\r\n", "?\r\n",
};

/* The starting state; see the header comment. */
static fx *prelude(void)
{
    fx *x = fx_new(FX_AUTO_ALL);
    const char *s0[] = {"c0", "c1"}, *s1[] = {"c1"}, *s2[] = {"c2"}, *s3[] = {"c0"};

    fx_attach(x, s0, 2, NULL);
    fx_attach(x, s1, 1, NULL);
    fx_publish(x, "c0", "m1"); /* FIRST_ID: the hub's position */
    /* The subscriber link drops: the repair waits for its answer. */
    x->autos = FX_AUTO_ALL & ~FX_AUTO_RESUME;
    fx_kill(x, 'S');
    x->autos = FX_AUTO_SUBSCRIBE | FX_AUTO_PING;
    fx_attach(x, s2, 1, NULL);       /* its barrier waits */
    fx_attach(x, s3, 1, FIRST_ID);   /* its resume waits */
    fx_publish(x, "c1", "m2");       /* waits */
    return x;
}

/* The next argument byte (0 past the end). */
static uint8_t arg(const uint8_t **p, const uint8_t *end)
{
    return *p < end ? *(*p)++ : 0;
}

/* The next n bytes, cut at the end. */
static size_t take(const uint8_t **p, const uint8_t *end, size_t n, const char **out)
{
    size_t k = (size_t)(end - *p) < n ? (size_t)(end - *p) : n;
    *out = (const char *)*p;
    *p += k;
    return k;
}

/* What no sequence of replies may do to the hub's counters. */
static void check_invariants(fx *x)
{
    spillway_stats st = fx_stats(x);
    if (st.joining > st.connections || st.connections > FX_MAX_STREAMS || st.async_pending > 256) {
        fprintf(stderr, "fuzz_redis: broken counters: joining %llu, connections %llu, async_pending %llu\n",
                (unsigned long long)st.joining, (unsigned long long)st.connections,
                (unsigned long long)st.async_pending);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *in, size_t size)
{
    const uint8_t *p = in, *end = in + size;
    fx *x = prelude();
    int ops = 0;

    while (p < end && ops++ < MAX_OPS) {
        uint8_t op = arg(&p, end) % 12;
        const char *bytes;
        size_t n;
        switch (op) {
        case 0:
        case 1:
            n = take(&p, end, arg(&p, end), &bytes);
            fx_send(x, op == 0 ? 'S' : 'C', bytes, n);
            break;
        case 2:
            n = take(&p, end, arg(&p, end), &bytes);
            fx_ctl_message(x, bytes, n);
            break;
        case 3: {
            char name[16];
            int k = snprintf(name, sizeof(name), FX_NS ":%s", CHANNELS[arg(&p, end) % 4]);
            n = take(&p, end, arg(&p, end), &bytes);
            fx_push_message(x, name, (size_t)k, bytes, n);
            fx_turn(x);
            break;
        }
        case 4:
            fx_advance(x, (uint64_t)arg(&p, end) * 16);
            break;
        case 5:
            x->autos = arg(&p, end) & FX_AUTO_ALL;
            break;
        case 6: {
            uint8_t m = arg(&p, end);
            const char *names[4];
            uint32_t k = 0;
            for (int i = 0; i < 4; i++)
                if (m & (1u << i)) names[k++] = CHANNELS[i];
            if (k == 0) names[k++] = CHANNELS[0];
            fx_attach(x, names, k, (m & 16) ? FIRST_ID : (m & 32) ? "not-an-id" : NULL);
            break;
        }
        case 7:
            if (x->nstreams > 0) fx_leave(x, arg(&p, end) % x->nstreams);
            break;
        case 8:
            fx_publish(x, CHANNELS[arg(&p, end) % 4], "fuzz");
            break;
        case 9:
            fx_kill(x, (arg(&p, end) & 1) ? 'S' : 'C');
            break;
        case 10:
        case 11: {
            tbuf t = {0};
            n = take(&p, end, arg(&p, end), &bytes);
            for (size_t i = 0; i < n; i++) {
                const char *pc = PIECES[(uint8_t)bytes[i] % (sizeof(PIECES) / sizeof(PIECES[0]))];
                tbuf_put(&t, pc, strlen(pc));
            }
            fx_send(x, op == 10 ? 'S' : 'C', t.p, t.len);
            tbuf_free(&t);
            break;
        }
        }
        check_invariants(x);
    }
    /* Whatever happened, the hub can still get back to work. */
    x->autos = FX_AUTO_ALL;
    fx_advance(x, 5000);
    check_invariants(x);
    fx_free(x);
    return 0;
}

#ifdef FUZZ_STANDALONE
#include <dirent.h>
#include <inttypes.h>

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
    uint8_t buf[65536];
    size_t n;
    if (f == NULL) {
        perror(path);
        return 1;
    }
    n = fread(buf, 1, sizeof(buf), f);
    fclose(f);
    LLVMFuzzerTestOneInput(buf, n);
    return 0;
}

/* Random programs built from RESP pieces, so that most of them say
 * something to the hub rather than fail at the first byte. */
static size_t random_program(uint64_t *s, uint8_t *buf, size_t cap)
{
    static const char *const pieces[] = {"*3\r\n", "*2\r\n", "*1\r\n", "*0\r\n", "*-1\r\n", "$7\r\nmessage\r\n",
                                         "$9\r\nsubscribe\r\n", "$4\r\npong\r\n", "$5\r\nfx:c0\r\n", "$-1\r\n",
                                         ":0\r\n", ":1\r\n", "+OK\r\n", "-ERR x\r\n", "$15\r\n" FIRST_ID "\r\n",
                                         "$28\r\nid: 1700000000000-9\ndata: x\n\n\r\n", "$0\r\n\r\n"};
    size_t n = 0;
    while (n + 260 < cap && next_rand(s) % 8 != 0) {
        uint8_t op = (uint8_t)(next_rand(s) % 12);
        buf[n++] = op;
        if (op >= 10) {
            size_t len = next_rand(s) % 16;
            buf[n++] = (uint8_t)len;
            for (size_t i = 0; i < len; i++) buf[n++] = (uint8_t)next_rand(s);
        } else if (op <= 3) {
            size_t start, len = 0;
            if (op == 3) buf[n++] = (uint8_t)next_rand(s);
            start = n++;
            while (len < 200 && next_rand(s) % 4 != 0) {
                const char *pc = pieces[next_rand(s) % (sizeof(pieces) / sizeof(pieces[0]))];
                size_t k = strlen(pc);
                if (len + k > 255) break;
                memcpy(buf + n, pc, k);
                n += k;
                len += k;
            }
            buf[start] = (uint8_t)len;
        } else {
            buf[n++] = (uint8_t)(op == 4 ? next_rand(s) % 200 : next_rand(s));
        }
    }
    return n;
}

int main(int argc, char **argv)
{
    const char *e = getenv("CHECK_SEED");
    uint64_t seed = e ? strtoull(e, NULL, 0) : 0x5eed5eed2024ull, s = seed;
    const char *r = getenv("FUZZ_RUNS");
    unsigned long runs = r ? strtoul(r, NULL, 10) : 2000;
    const char *corpus = getenv("FUZZ_CORPUS");
    unsigned long replayed = 0;
    uint8_t buf[8192];

    if (argc > 1) {
        int rc = 0;
        for (int i = 1; i < argc; i++) rc |= replay(argv[i]);
        printf("fuzz_redis (replay): %d passed, %d failed\n", argc - 1 - rc, rc);
        return rc;
    }
    if (corpus != NULL) {
        DIR *d = opendir(corpus);
        struct dirent *de;
        while (d != NULL && (de = readdir(d)) != NULL) {
            char path[4096];
            if (de->d_name[0] == '.') continue;
            snprintf(path, sizeof(path), "%s/%s", corpus, de->d_name);
            if (replay(path) == 0) replayed++;
        }
        if (d != NULL) closedir(d);
    }
    for (unsigned long run = 0; run < runs; run++) LLVMFuzzerTestOneInput(buf, random_program(&s, buf, sizeof(buf)));
    printf("fuzz_redis: seed %#" PRIx64 ", %lu seeds, %lu random programs\n", seed, replayed, runs);
    printf("fuzz_redis: 1 passed, 0 failed\n");
    return 0;
}
#endif
