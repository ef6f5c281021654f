#include "id.h"

#include <time.h>

uint64_t spillway_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

struct timespec spillway_timespec_after(clockid_t clock, uint32_t ms)
{
    struct timespec t;
    clock_gettime(clock, &t);
    t.tv_sec += ms / 1000;
    t.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (t.tv_nsec >= 1000000000L) {
        t.tv_sec++;
        t.tv_nsec -= 1000000000L;
    }
    return t;
}

uint64_t spillway_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Parses a run of 1..20 decimal digits into a uint64; -1 on overflow/empty. */
static int parse_u64(const char *s, size_t len, uint64_t *out)
{
    uint64_t v = 0;
    if (len == 0 || len > 20) return -1;
    for (size_t i = 0; i < len; i++) {
        unsigned d = (unsigned)(unsigned char)s[i] - '0';
        if (d > 9) return -1;
        if (v > (UINT64_MAX - d) / 10) return -1;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

int spillway_id_parse(const char *s, size_t len, spillway_id *out)
{
    size_t dash = len;
    spillway_id id = {0, 0};

    if (s == NULL) return -1;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '-') {
            dash = i;
            break;
        }
    }
    if (parse_u64(s, dash, &id.ms) != 0) return -1;
    if (dash < len && parse_u64(s + dash + 1, len - dash - 1, &id.seq) != 0) return -1;
    *out = id;
    return 0;
}

static size_t format_u64(uint64_t v, char *buf)
{
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    for (size_t i = 0; i < n; i++) buf[i] = tmp[n - 1 - i];
    return n;
}

size_t spillway_id_format(spillway_id id, char *buf)
{
    size_t n = format_u64(id.ms, buf);
    buf[n++] = '-';
    n += format_u64(id.seq, buf + n);
    buf[n] = '\0';
    return n;
}

spillway_id spillway_id_next(spillway_id last, uint64_t now_ms)
{
    spillway_id id;
    if (now_ms > last.ms) {
        id.ms = now_ms;
        id.seq = 0;
    } else if (last.seq < UINT64_MAX) {
        id.ms = last.ms;
        id.seq = last.seq + 1;
    } else {
        /* The sequence is spent: borrow the next millisecond rather than
         * wrap to 0 and go back in time. */
        id.ms = last.ms + 1;
        id.seq = 0;
    }
    return id;
}
