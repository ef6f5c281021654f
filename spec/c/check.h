/*
 * A small test harness for the C core's unit tests.
 *
 *   TEST(name) { CHECK(x == 1); REQUIRE_INT(n, ==, 3); }
 *   CHECK_MAIN
 *
 * Tests register themselves from constructors and run in the order they are
 * defined. CHECK* records a failure and goes on (so one run reports every
 * broken expectation of a test); REQUIRE* records it and leaves the test at
 * once (for expectations whose failure makes the rest meaningless, such as a
 * NULL pointer). CHECK may be used from any thread; REQUIRE only from the
 * test's own thread (elsewhere it aborts, which still fails the run).
 *
 * A test binary takes optional arguments: substrings of the test names to run.
 * The last line it prints is "<binary>: N passed, N failed".
 *
 * Environment:
 *   CHECK_SEED=n   seed of the test PRNG (default: fixed, so runs repeat)
 *   CHECK_SLOW=n   multiply every deadline by n and scale stress loops down
 *                  (set by the valgrind task, where everything runs ~30x slower)
 *
 * Everything here is static: include it from exactly one file per binary.
 */
#ifndef SPILLWAY_CHECK_H
#define SPILLWAY_CHECK_H

#include <inttypes.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Helpers of a header: a binary that does not use one must not warn. */
#define CHECK_API static __attribute__((unused))

typedef struct check_test {
    const char *name;
    void (*fn)(void);
    struct check_test *next;
} check_test;

static check_test *check_head, **check_tailp = &check_head;
static atomic_int check_failures; /* failures of the running test */
static jmp_buf check_jmp;
static pthread_t check_main_thread;
static pthread_mutex_t check_print_lock = PTHREAD_MUTEX_INITIALIZER;

CHECK_API void check_register(check_test *t)
{
    *check_tailp = t;
    check_tailp = &t->next;
}

#define TEST(name)                                                             \
    static void name(void);                                                    \
    static check_test check_reg_##name = {#name, name, NULL};                  \
    __attribute__((constructor)) static void check_add_##name(void)            \
    {                                                                          \
        check_register(&check_reg_##name);                                     \
    }                                                                          \
    static void name(void)

/* Records a failure; leaves the test when fatal. */
CHECK_API void check_failed(bool fatal, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
CHECK_API void check_failed(bool fatal, const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    pthread_mutex_lock(&check_print_lock);
    fprintf(stderr, "%s:%d: check failed: ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
    pthread_mutex_unlock(&check_print_lock);
    atomic_fetch_add(&check_failures, 1);
    if (fatal) {
        if (!pthread_equal(pthread_self(), check_main_thread)) abort();
        longjmp(check_jmp, 1);
    }
}

#define CHECK_GEN_(fatal, cond, ...)                                           \
    do {                                                                       \
        if (!(cond)) check_failed(fatal, __FILE__, __LINE__, __VA_ARGS__);     \
    } while (0)

#define CHECK(e) CHECK_GEN_(false, (e), "%s", #e)
#define REQUIRE(e) CHECK_GEN_(true, (e), "%s", #e)

/* Integer comparisons that print both sides. */
#define CHECK_INT_(fatal, a, op, b)                                            \
    do {                                                                       \
        long long ca_ = (long long)(a), cb_ = (long long)(b);                  \
        CHECK_GEN_(fatal, ca_ op cb_, "%s %s %s (%lld %s %lld)", #a, #op, #b,  \
                   ca_, #op, cb_);                                             \
    } while (0)
#define CHECK_U64_(fatal, a, op, b)                                            \
    do {                                                                       \
        unsigned long long ca_ = (unsigned long long)(a),                      \
                           cb_ = (unsigned long long)(b);                      \
        CHECK_GEN_(fatal, ca_ op cb_, "%s %s %s (%llu %s %llu)", #a, #op, #b,  \
                   ca_, #op, cb_);                                             \
    } while (0)
#define CHECK_INT(a, op, b) CHECK_INT_(false, a, op, b)
#define REQUIRE_INT(a, op, b) CHECK_INT_(true, a, op, b)
#define CHECK_U64(a, op, b) CHECK_U64_(false, a, op, b)
#define REQUIRE_U64(a, op, b) CHECK_U64_(true, a, op, b)

/* Prints s[0..len) with C escapes, at most 200 bytes of it. */
CHECK_API void check_escape(FILE *out, const char *s, size_t len)
{
    size_t show = len > 200 ? 200 : len;
    fputc('"', out);
    for (size_t i = 0; i < show; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n') fputs("\\n", out);
        else if (c == '\r') fputs("\\r", out);
        else if (c == '"' || c == '\\') fprintf(out, "\\%c", c);
        else if (c < 32 || c >= 127) fprintf(out, "\\x%02x", c);
        else fputc(c, out);
    }
    fputc('"', out);
    if (show < len) fprintf(out, "... (%zu bytes)", len);
}

CHECK_API bool check_mem_at(bool fatal, const char *file, int line, const char *ea, const char *eb,
                         const void *a, size_t alen, const void *b, size_t blen)
{
    if (alen == blen && (alen == 0 || memcmp(a, b, alen) == 0)) return true;
    pthread_mutex_lock(&check_print_lock);
    fprintf(stderr, "%s:%d: check failed: %s == %s\n  left:  ", file, line, ea, eb);
    check_escape(stderr, a, alen);
    fputs("\n  right: ", stderr);
    check_escape(stderr, b, blen);
    fputc('\n', stderr);
    fflush(stderr);
    pthread_mutex_unlock(&check_print_lock);
    atomic_fetch_add(&check_failures, 1);
    if (fatal) {
        if (!pthread_equal(pthread_self(), check_main_thread)) abort();
        longjmp(check_jmp, 1);
    }
    return false;
}

/* Byte strings with explicit lengths, and NUL-terminated strings. */
#define CHECK_MEM(a, alen, b, blen) check_mem_at(false, __FILE__, __LINE__, #a, #b, a, alen, b, blen)
#define REQUIRE_MEM(a, alen, b, blen) check_mem_at(true, __FILE__, __LINE__, #a, #b, a, alen, b, blen)
#define CHECK_STR(a, b)                                                        \
    do {                                                                       \
        const char *sa_ = (a), *sb_ = (b);                                     \
        check_mem_at(false, __FILE__, __LINE__, #a, #b, sa_, strlen(sa_), sb_, \
                     strlen(sb_));                                             \
    } while (0)

/* ---- time and deadlines ------------------------------------------------- */

CHECK_API uint64_t check_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* The CHECK_SLOW factor (1 when unset). */
CHECK_API unsigned check_slow(void)
{
    const char *s = getenv("CHECK_SLOW");
    long v = s ? strtol(s, NULL, 10) : 1;
    return v >= 1 ? (unsigned)v : 1u;
}

/* A deadline ms from now, stretched by CHECK_SLOW. */
CHECK_API uint64_t check_deadline(uint64_t ms)
{
    return check_now_ms() + ms * check_slow();
}

/*
 * Waits until cond holds or the deadline passes; true when it held. For
 * state that offers nothing to block on (counters another thread updates):
 * it re-checks every millisecond, so it waits for the condition, not for a
 * guessed duration.
 */
#define WAIT_UNTIL(cond, ms)                                                   \
    ({                                                                         \
        uint64_t wu_deadline_ = check_deadline(ms);                            \
        bool wu_ok_;                                                           \
        while (!(wu_ok_ = (cond)) && check_now_ms() < wu_deadline_) {         \
            struct timespec wu_ts_ = {0, 1000000};                             \
            nanosleep(&wu_ts_, NULL);                                          \
        }                                                                      \
        wu_ok_;                                                                \
    })

/* ---- a deterministic PRNG (splitmix64) ---------------------------------- */

typedef struct check_rng {
    uint64_t s;
} check_rng;

CHECK_API uint64_t check_seed(void)
{
    const char *s = getenv("CHECK_SEED");
    return s ? strtoull(s, NULL, 0) : 0x5eed5eed2024ull;
}

CHECK_API uint64_t check_rand(check_rng *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [0, n) (n > 0; the bias is irrelevant for tests). */
CHECK_API uint32_t check_below(check_rng *r, uint32_t n)
{
    return (uint32_t)(check_rand(r) % n);
}

/* ---- the runner ------------------------------------------------------- */

/* setjmp in a frame of its own, so no local of the runner can be clobbered. */
CHECK_API void check_run_one(const check_test *t)
{
    if (setjmp(check_jmp) == 0) t->fn();
}

CHECK_API int check_main(int argc, char **argv)
{
    const char *prog = strrchr(argv[0], '/') ? strrchr(argv[0], '/') + 1 : argv[0];
    int passed = 0, failed = 0;

    check_main_thread = pthread_self();
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("%s: seed %#" PRIx64 "\n", prog, check_seed());
    for (check_test *t = check_head; t != NULL; t = t->next) {
        uint64_t t0;
        bool wanted = argc < 2;
        for (int i = 1; i < argc; i++) wanted |= strstr(t->name, argv[i]) != NULL;
        if (!wanted) continue;
        atomic_store(&check_failures, 0);
        t0 = check_now_ms();
        check_run_one(t);
        if (atomic_load(&check_failures) == 0) {
            passed++;
            printf("  ok    %-56s %6" PRIu64 " ms\n", t->name, check_now_ms() - t0);
        } else {
            failed++;
            printf("  FAIL  %-56s %6" PRIu64 " ms\n", t->name, check_now_ms() - t0);
        }
    }
    printf("%s: %d passed, %d failed\n", prog, passed, failed);
    /* Without filters, a binary that ran nothing is broken too. */
    return failed == 0 && (passed > 0 || argc > 1) ? 0 : 1;
}

#define CHECK_MAIN                                                             \
    int main(int argc, char **argv)                                            \
    {                                                                          \
        return check_main(argc, argv);                                         \
    }

#endif
