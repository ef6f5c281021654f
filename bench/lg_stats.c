/*
 * The loadgen's bookkeeping and output: every message's seq and latency
 * (per connection: lost, duplicated, out of order, and with -e an exact
 * bitmap of what arrived), and the JSON lines it prints (ready, status,
 * the summary).
 */
#define _GNU_SOURCE
#include <sys/resource.h>

#include "lg.h"

static const char *err_names[E_NERR] = {
    "connect", "refused", "reset", "timeout", "eof_before_head", "bad_status", "protocol", "socket"
};

double lg_cpu_now(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* ---------- latency histogram: 128 linear buckets, then 64 per octave (<1.6% error) ---------- */

#define H_SUB 64
#define H_BUCKETS (128 + 64 * 40)
static uint64_t hist[H_BUCKETS];
static uint64_t hist_n, hist_max_ns;
static double hist_sum_us;

static int h_index(uint64_t us)
{
    if (us < 128)
        return (int)us;
    int msb = 63 - __builtin_clzll(us);
    int shift = msb - 6;
    int idx = 128 + (msb - 7) * H_SUB + (int)((us >> shift) - 64);
    return idx < H_BUCKETS ? idx : H_BUCKETS - 1;
}

/* Midpoint of a bucket, in microseconds. */
static double h_value(int idx)
{
    if (idx < 128)
        return idx + 0.5;
    int octave = (idx - 128) / H_SUB;
    int sub = (idx - 128) % H_SUB;
    int shift = octave + 1;
    double lo = (double)((uint64_t)(sub + 64) << shift);
    return lo + (double)(1ULL << shift) / 2;
}

static void h_add(int64_t ns)
{
    if (ns < 0)
        ns = 0;
    uint64_t us = (uint64_t)ns / 1000;
    hist[h_index(us)]++;
    hist_n++;
    hist_sum_us += (double)us;
    if ((uint64_t)ns > hist_max_ns)
        hist_max_ns = (uint64_t)ns;
}

static double h_pct(double p)
{
    if (hist_n == 0)
        return 0;
    uint64_t want = (uint64_t)(p * (double)hist_n);
    if (want < 1)
        want = 1;
    uint64_t acc = 0;
    for (int i = 0; i < H_BUCKETS; i++) {
        acc += hist[i];
        if (acc >= want) {
            double v = h_value(i);
            double mx = (double)hist_max_ns / 1000.0;
            return v > mx ? mx : v;
        }
    }
    return (double)hist_max_ns / 1000.0;
}
/* ---------- messages ---------- */

static void record(struct conn *c, int64_t seq, int64_t tns, int64_t now_real)
{
    lg.messages++;
    c->msgs++;
    lg.last_msg_mono_ns = mono_ns();
    h_add(now_real - tns);
    if (lg.first_pub_ns == 0 || tns < lg.first_pub_ns)
        lg.first_pub_ns = tns;
    if (lg.first_rx_ns == 0) {
        lg.first_rx_ns = now_real;
        lg.cpu_at_first_rx = lg_cpu_now();
    }
    lg.last_rx_ns = now_real;

    if (lg.seq_base > 0 && seq <= lg.seq_base) {
        /* The stream resumed after this one (-I/-B): sending it again is a
         * duplicate from the client's point of view. */
        c->stale++;
        lg.stale++;
        return;
    }
    if (c->last_seq < 0)
        c->last_seq = lg.expect > 0 ? lg.seq_base : seq - 1; /* with -e every seq from base+1 is owed */
    int64_t bit = seq - lg.seq_base - 1; /* index of seq in the owed range */
    int tracked = c->seen && bit >= 0 && bit < lg.expect;
    int was_seen = tracked && (c->seen[bit >> 6] >> (bit & 63) & 1);
    uint32_t unique_before = c->unique;
    if (seq > c->last_seq) {
        if (seq > c->last_seq + 1)
            c->lost += (uint32_t)(seq - c->last_seq - 1);
        c->last_seq = seq;
        c->unique++;
    } else if (tracked) {
        if (was_seen)
            c->dup++;
        else {
            c->ooo++; /* it arrived late: it was counted as lost when the gap opened */
            if (c->lost)
                c->lost--;
            c->unique++;
        }
    } else if (seq == c->last_seq)
        c->dup++;
    else
        c->ooo++;
    if (tracked)
        c->seen[bit >> 6] |= 1ULL << (bit & 63);
    if (c->unique != unique_before) {
        lg_pub_reached(c, unique_before);
        if (lg.want_msgs > 0 && c->unique == lg.want_msgs && !c->t_served)
            c->t_served = lg_now_mono ? lg_now_mono : mono_ns();
    }
}

void lg_on_data(struct conn *c, const char *d, size_t n, int64_t now_real)
{
    size_t i = 0;
    int64_t seq = 0, tns = 0;
    while (i < n && d[i] >= '0' && d[i] <= '9')
        seq = seq * 10 + (d[i++] - '0');
    if (i == 0 || i >= n || d[i] != ' ') {
        lg.other_events++;
        return;
    }
    size_t j = ++i;
    while (i < n && d[i] >= '0' && d[i] <= '9')
        tns = tns * 10 + (d[i++] - '0');
    if (i == j) {
        lg.other_events++;
        return;
    }
    record(c, seq, tns, now_real);
}

/* ---------- reporting ---------- */

static void conn_stats(uint64_t *lost, uint64_t *dup, uint64_t *ooo, uint64_t *missing,
                       int64_t *minm, int64_t *maxm, int *with_all)
{
    *lost = *dup = *ooo = *missing = 0;
    *minm = -1;
    *maxm = 0;
    *with_all = 0;
    for (int i = 0; i < lg.launched; i++) {
        struct conn *c = &lg.c[i];
        if (!c->ever_ok)
            continue;
        *lost += c->lost;
        *dup += c->dup + c->stale;
        *ooo += c->ooo;
        /* In lockstep only what was published is owed (-n is an upper bound). */
        int64_t owed = lg.pub.on && lg.pub.published < lg.expect ? lg.pub.published : lg.expect;
        if (owed > 0 && c->unique < owed)
            *missing += (uint64_t)(owed - c->unique);
        if (*minm < 0 || c->msgs < *minm)
            *minm = c->msgs;
        if (c->msgs > *maxm)
            *maxm = c->msgs;
        if (lg.want_msgs > 0 && c->msgs >= lg.want_msgs)
            (*with_all)++;
    }
    if (*minm < 0)
        *minm = 0;
}

/* ---------- per-stream time to served (-M) ---------- */

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of a sorted array, in ms. */
static double pct_ms(const int64_t *v, int n, double p)
{
    if (n == 0)
        return -1;
    int k = (int)(p * n + 0.999999) - 1;
    if (k < 0)
        k = 0;
    if (k >= n)
        k = n - 1;
    return (double)v[k] / 1e6;
}

static void print_dist(const char *name, int64_t *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_i64);
    printf("\"%s\":{\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"max\":%.3f}", name, pct_ms(v, n, 0.50),
           pct_ms(v, n, 0.90), pct_ms(v, n, 0.99), n ? (double)v[n - 1] / 1e6 : -1.0);
}

/* With -M: how long each stream took to have its -M unique messages, from
 * the first attempt of the whole run (every stream of a storm starts then),
 * from its own first attempt, and from its response head (the server's own
 * resume path, without the wait in the accept queue). */
static void print_served(void)
{
    if (lg.want_msgs <= 0)
        return;
    int64_t *a = malloc(sizeof(int64_t) * (size_t)(lg.launched + 1));
    int64_t *b = malloc(sizeof(int64_t) * (size_t)(lg.launched + 1));
    int64_t *h = malloc(sizeof(int64_t) * (size_t)(lg.launched + 1));
    if (!a || !b || !h) {
        free(a);
        free(b);
        free(h);
        return;
    }
    int n = 0;
    for (int i = 0; i < lg.launched; i++) {
        struct conn *c = &lg.c[i];
        if (!c->ever_ok || !c->t_served)
            continue;
        a[n] = c->t_served - lg.first_launch_mono_ns;
        b[n] = c->t_served - c->t_first;
        h[n] = c->t_served - c->t_head;
        n++;
    }
    printf(",\"served\":{\"streams\":%d,\"of\":%d,\"want\":%lld,", n, lg.connected, (long long)lg.want_msgs);
    print_dist("from_start_ms", a, n);
    putchar(',');
    print_dist("from_attempt_ms", b, n);
    putchar(',');
    print_dist("from_head_ms", h, n);
    putchar('}');
    free(a);
    free(b);
    free(h);
}

void lg_print_ready(void)
{
    int lp = lg.launched > 0 ? lg.c[0].local_port : 0;
    printf("{\"event\":\"ready\",\"target\":%d,\"connected\":%d,\"failed\":%d,\"open\":%d,"
           "\"first_local_addr\":\"127.0.0.%d\",\"first_local_port\":%d,\"elapsed_s\":%.3f}\n",
           lg.target, lg.connected, lg.failed, lg.open, lg.addr_lo, lp,
           (double)(mono_ns() - lg.start_mono_ns) / 1e9);
    fflush(stdout);
}

void lg_print_status(int64_t seq)
{
    int have = 0;
    for (int i = 0; i < lg.launched; i++)
        if (lg.c[i].ever_ok && lg.c[i].state != C_DEAD && lg.c[i].last_seq >= seq)
            have++;
    printf("{\"event\":\"status\",\"target\":%d,\"launched\":%d,\"connected\":%d,\"failed\":%d,"
           "\"open\":%d,\"closed_by_server\":%d,\"in_flight\":%d,\"messages\":%llu,\"seq\":%lld,"
           "\"have_seq\":%d,\"repolls\":%llu}\n",
           lg.target, lg.launched, lg.connected, lg.failed, lg.open, lg.closed_by_server, lg.in_flight,
           (unsigned long long)lg.messages, (long long)seq, have, (unsigned long long)lg.repolls);
    fflush(stdout);
}

void lg_print_summary(void)
{
    uint64_t lost, dup, ooo, missing;
    int64_t minm, maxm;
    int with_all;
    conn_stats(&lost, &dup, &ooo, &missing, &minm, &maxm, &with_all);
    double cpu = lg_cpu_now();
    /* CPU spent from the first message on, over the receive window: near 1.0
     * means the loadgen itself was the bottleneck of that run. */
    double rx_window = lg.last_rx_ns > lg.first_rx_ns ? (double)(lg.last_rx_ns - lg.first_rx_ns) / 1e9 : 0;
    double busy = rx_window > 0 ? (cpu - lg.cpu_at_first_rx) / rx_window : 0;
    /* The measurement window runs from the earliest publish stamp seen to the
     * last receive: it covers publishing and fan-out, and needs no agreement
     * between publisher and loadgen about when "start" was. */
    double window = 0;
    if (lg.messages && lg.last_rx_ns > lg.first_pub_ns)
        window = (double)(lg.last_rx_ns - lg.first_pub_ns) / 1e9;
    printf("{\"mode\":\"%s\",\"url\":\"http://%s:%d%s\",\"target\":%d,\"connected\":%d,\"failed\":%d,"
           "\"retries\":%llu,\"closed_by_server\":%d,\"open_at_end\":%d,\"repolls\":%llu,"
           "\"messages\":%llu,\"other_events\":%llu,\"comments\":%llu,\"ids\":%llu,"
           "\"expect_per_conn\":%lld,\"conns_with_all\":%d,\"min_per_conn\":%lld,\"max_per_conn\":%lld,"
           "\"lost\":%llu,\"missing\":%llu,\"dup\":%llu,\"ooo\":%llu,"
           "\"first_publish_ns\":%lld,\"first_rx_ns\":%lld,\"last_rx_ns\":%lld,\"window_s\":%.6f,"
           "\"deliveries_per_s\":%.1f,"
           "\"latency_ms\":{\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"p999\":%.3f,\"max\":%.3f,\"mean\":%.3f},"
           "\"connect_s\":{\"all\":%.3f,\"mean\":%.4f,\"max\":%.3f},"
           "\"bytes\":%llu,\"cpu_s\":%.3f,\"cpu_busy_in_window\":%.3f,\"deliveries_per_cpu_s\":%.0f,\"wall_s\":%.3f",
           lg.mode == MODE_SSE ? "sse" : lg.mode == MODE_LP ? "lp" : lg.mb_plain ? "mb-lp" : "mb", lg.url.host, lg.url.port, lg.url.path, lg.target,
           lg.connected, lg.failed, (unsigned long long)lg.retries, lg.closed_by_server, lg.open,
           (unsigned long long)lg.repolls, (unsigned long long)lg.messages,
           (unsigned long long)lg.other_events, (unsigned long long)lg.comments,
           (unsigned long long)lg.ids, (long long)lg.expect, with_all, (long long)minm, (long long)maxm,
           (unsigned long long)lost, (unsigned long long)missing, (unsigned long long)dup,
           (unsigned long long)ooo, (long long)lg.first_pub_ns, (long long)lg.first_rx_ns,
           (long long)lg.last_rx_ns, window, window > 0 ? (double)lg.messages / window : 0.0,
           h_pct(0.50) / 1000, h_pct(0.90) / 1000, h_pct(0.99) / 1000, h_pct(0.999) / 1000,
           (double)hist_max_ns / 1e6, hist_n ? hist_sum_us / (double)hist_n / 1000 : 0.0,
           lg.all_connected_mono_ns ? (double)(lg.all_connected_mono_ns - lg.start_mono_ns) / 1e9 : -1.0,
           lg.connected ? (double)lg.connect_lat_sum_ns / lg.connected / 1e9 : 0.0,
           (double)lg.connect_lat_max_ns / 1e9, (unsigned long long)lg.bytes, cpu, busy,
           cpu > 0 ? (double)lg.messages / cpu : 0.0, (double)(mono_ns() - lg.start_mono_ns) / 1e9);
    lg_pub_print();
    printf(",\"stale\":%llu", (unsigned long long)lg.stale);
    print_served();
    printf(",\"errors\":{");
    int first = 1;
    for (int i = 0; i < E_NERR; i++) {
        if (!lg.errs[i])
            continue;
        printf("%s\"%s\":%llu", first ? "" : ",", err_names[i], (unsigned long long)lg.errs[i]);
        first = 0;
    }
    printf("}}\n");
    fflush(stdout);
}
