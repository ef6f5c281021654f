/*
 * Channels: the table from channel name to subscribers, and the memory
 * backend's backlog (a ring of shared frames per channel).
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "frames.h"
#include "hub_internal.h"

/* ---- the table --------------------------------------------------------- */

/* FNV-1a over the name, started from a per-process random seed and finished
 * with a 64-bit avalanche, so chains are not predictable from outside. */
static uint32_t hash_name(uint64_t seed, const char *s, size_t len)
{
    uint64_t h = 0xcbf29ce484222325ull ^ seed;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ull;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return (uint32_t)h;
}

int spillway_chtab_init(spillway_chtab *t)
{
    struct timespec ts;
    t->nbuckets = 64;
    t->count = 0;
    t->buckets = calloc(t->nbuckets, sizeof(*t->buckets));
    if (t->buckets == NULL) return -1;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    t->seed = ((uint64_t)ts.tv_nsec << 32) ^ (uint64_t)ts.tv_sec ^ ((uint64_t)getpid() << 16) ^
              (uint64_t)(uintptr_t)t;
    return 0;
}

static void channel_free(spillway_channel *ch)
{
    for (uint32_t i = 0; i < ch->ring_len; i++)
        spillway_frame_unref(ch->ring[(ch->ring_start + i) % ch->ring_cap]);
    free(ch->ring);
    free(ch->subs);
    free(ch);
}

void spillway_chtab_free(spillway_chtab *t)
{
    for (uint32_t b = 0; b < t->nbuckets; b++) {
        spillway_channel *ch = t->buckets[b];
        while (ch != NULL) {
            spillway_channel *next = ch->hnext;
            channel_free(ch);
            ch = next;
        }
    }
    free(t->buckets);
    t->buckets = NULL;
    t->nbuckets = 0;
    t->count = 0;
}

spillway_channel *spillway_chtab_find(spillway_chtab *t, const char *name, size_t len)
{
    uint32_t h = hash_name(t->seed, name, len);
    for (spillway_channel *ch = t->buckets[h & (t->nbuckets - 1)]; ch != NULL; ch = ch->hnext) {
        if (ch->hash == h && ch->namelen == len && memcmp(ch->name, name, len) == 0) return ch;
    }
    return NULL;
}

static void grow(spillway_chtab *t)
{
    uint32_t n = t->nbuckets * 2;
    spillway_channel **nb = calloc(n, sizeof(*nb));
    if (nb == NULL) return; /* keep the longer chains; still correct */
    for (uint32_t b = 0; b < t->nbuckets; b++) {
        spillway_channel *ch = t->buckets[b];
        while (ch != NULL) {
            spillway_channel *next = ch->hnext;
            ch->hnext = nb[ch->hash & (n - 1)];
            nb[ch->hash & (n - 1)] = ch;
            ch = next;
        }
    }
    free(t->buckets);
    t->buckets = nb;
    t->nbuckets = n;
}

/* Names go unescaped into the JSON of the reset event (and into Redis keys):
 * besides CR, LF and NUL, refuse what a JSON string would need escaped. A
 * site's name ("<site>|<channel>", hub.h) has one separator, a site of 1 to
 * SPILLWAY_MAX_SITE_LEN bytes before it and a public name after it. */
bool spillway_channel_name_ok(const char *s, size_t len)
{
    const char *sep;
    size_t publen;

    if (len == 0 || len > SPILLWAY_MAX_CHANNEL_LEN) return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f || c == '"' || c == '\\') return false;
    }
    sep = memchr(s, SPILLWAY_SITE_SEP, len);
    if (sep == NULL) return true;
    publen = len - (size_t)(sep + 1 - s);
    return sep > s && (size_t)(sep - s) <= SPILLWAY_MAX_SITE_LEN && publen > 0 &&
           memchr(sep + 1, SPILLWAY_SITE_SEP, publen) == NULL;
}

spillway_channel *spillway_chtab_get(spillway_hub *hub, const char *name, size_t len)
{
    spillway_chtab *t = &hub->chans;
    spillway_channel *ch = spillway_chtab_find(t, name, len);
    uint32_t h;

    if (ch != NULL) return ch;
    if (len == 0 || len > SPILLWAY_MAX_CHANNEL_LEN) return NULL;
    ch = calloc(1, sizeof(*ch) + len + 1);
    if (ch == NULL) return NULL;
    memcpy(ch->name, name, len);
    ch->name[len] = '\0';
    ch->namelen = (uint16_t)len;
    h = hash_name(t->seed, name, len);
    ch->hash = h;
    ch->hnext = t->buckets[h & (t->nbuckets - 1)];
    t->buckets[h & (t->nbuckets - 1)] = ch;
    t->count++;
    atomic_store_explicit(&hub->st_channels, t->count, memory_order_relaxed);
    if (t->count > t->nbuckets) grow(t);
    if (hub->backend.ops->channel_new != NULL) hub->backend.ops->channel_new(hub->backend.self, ch);
    return ch;
}

/* Removes the channel from the table and frees it. The caller makes sure no
 * connection and no pending Redis command refers to it. */
void spillway_channel_drop(spillway_hub *hub, spillway_channel *ch)
{
    spillway_chtab *t = &hub->chans;
    spillway_channel **pp = &t->buckets[ch->hash & (t->nbuckets - 1)];

    while (*pp != NULL && *pp != ch) pp = &(*pp)->hnext;
    if (*pp == ch) *pp = ch->hnext;
    t->count--;
    atomic_store_explicit(&hub->st_channels, t->count, memory_order_relaxed);
    spillway_backlog_clear(hub, ch);
    channel_free(ch);
}

/* Called when a channel may have become useless: no subscribers left, or
 * its backlog went away. */
void spillway_channel_maybe_release(spillway_hub *hub, spillway_channel *ch)
{
    if (ch->nsubs > 0) return;
    hub->backend.ops->channel_unwanted(hub->backend.self, ch);
}

/* ---- subscribers ------------------------------------------------------- */

int spillway_channel_add_sub(spillway_channel *ch, spillway_conn *c, uint32_t slot)
{
    if (ch->nsubs == ch->capsubs) {
        uint32_t n = ch->capsubs ? ch->capsubs * 2 : 4;
        spillway_sub *s = realloc(ch->subs, n * sizeof(*s));
        if (s == NULL) return -1;
        ch->subs = s;
        ch->capsubs = n;
    }
    ch->subs[ch->nsubs].conn = c;
    ch->subs[ch->nsubs].slot = slot;
    c->mem[slot].ch = ch;
    c->mem[slot].idx = ch->nsubs;
    ch->nsubs++;
    return 0;
}

/* Swap-remove: the last subscriber moves into the hole and its membership
 * record learns its new index. */
void spillway_channel_remove_sub(spillway_hub *hub, spillway_channel *ch, uint32_t idx)
{
    uint32_t last = ch->nsubs - 1;
    if (idx != last) {
        spillway_sub moved = ch->subs[last];
        ch->subs[idx] = moved;
        moved.conn->mem[moved.slot].idx = idx;
    }
    ch->nsubs--;
    if (ch->nsubs == 0 && ch->capsubs > 16) {
        free(ch->subs);
        ch->subs = NULL;
        ch->capsubs = 0;
    }
    spillway_channel_maybe_release(hub, ch);
}

void spillway_channel_leave_all(spillway_hub *hub, spillway_conn *c)
{
    for (uint32_t i = c->nmem; i-- > 0;) {
        spillway_member m = c->mem[i];
        if (m.ch != NULL) spillway_channel_remove_sub(hub, m.ch, m.idx);
        c->mem[i].ch = NULL;
    }
}

/* Counts a message in its rate window: the windows are fixed intervals of
 * the loop's clock, so a count needs no timer, and the division runs only
 * when a window ends. */
static void count_message(const spillway_hub *hub, spillway_channel *ch)
{
    if (hub->now >= ch->rate_until) {
        uint64_t w = hub->now / SPILLWAY_RATE_WINDOW_MS;
        ch->rate_prev = w == ch->rate_window + 1 ? ch->rate_cur : 0;
        ch->rate_cur = 0;
        ch->rate_window = w;
        ch->rate_until = (w + 1) * SPILLWAY_RATE_WINDOW_MS;
    }
    ch->rate_cur++;
    ch->messages++;
}

void spillway_channel_fanout(spillway_hub *hub, spillway_channel *ch, spillway_frame *f)
{
    if (spillway_id_cmp(f->id, ch->last) > 0) ch->last = f->id;
    count_message(hub, ch);
    for (uint32_t i = 0; i < ch->nsubs; i++) {
        spillway_conn *c = ch->subs[i].conn;
        if (!(c->flags & SW_CF_CHANNEL)) {
            spillway_conn_deliver(hub, c, f);
            continue;
        }
        /* A stream that asked for channel names gets the tagged copy. */
        spillway_frame *t = spillway_frame_for(hub, c, f, ch);
        if (t != NULL) spillway_conn_deliver(hub, c, t);
    }
}

/* Messages per second over the current window and the one before it (a
 * quiet channel's old windows count nothing). */
static double rate_of(const spillway_hub *hub, const spillway_channel *ch)
{
    uint64_t w = hub->now / SPILLWAY_RATE_WINDOW_MS, n = 0;
    double span = (double)(SPILLWAY_RATE_WINDOW_MS + hub->now % SPILLWAY_RATE_WINDOW_MS) / 1000.0;
    if (ch->rate_window == w) n = (uint64_t)ch->rate_prev + ch->rate_cur;
    else if (ch->rate_window + 1 == w) n = ch->rate_cur;
    return (double)n / span;
}

struct ranked {
    const spillway_channel *ch;
    double rate;
};

/* a before b in the busiest list. */
static bool busier(const struct ranked *a, const struct ranked *b)
{
    double da = a->rate * a->ch->nsubs, db = b->rate * b->ch->nsubs;
    int byname;
    if (da != db) return da > db;
    if (a->rate != b->rate) return a->rate > b->rate;
    if (a->ch->nsubs != b->ch->nsubs) return a->ch->nsubs > b->ch->nsubs;
    byname = memcmp(a->ch->name, b->ch->name, SW_MIN(a->ch->namelen, b->ch->namelen));
    return byname != 0 ? byname < 0 : a->ch->namelen < b->ch->namelen;
}

/* Keeps top[0..n) sorted, busiest first, by insertion: max is small (a
 * dashboard's table), the walk over the channels is the cost. */
size_t spillway_chtab_busiest(spillway_hub *hub, spillway_channel_info *out, size_t max)
{
    spillway_chtab *t = &hub->chans;
    struct ranked *top = malloc((max ? max : 1) * sizeof(*top));
    size_t n = 0;

    if (top == NULL) return 0;
    for (uint32_t b = 0; max > 0 && b < t->nbuckets; b++) {
        for (const spillway_channel *ch = t->buckets[b]; ch != NULL; ch = ch->hnext) {
            struct ranked cand = {ch, rate_of(hub, ch)};
            size_t at;
            if (n == max && !busier(&cand, &top[n - 1])) continue;
            at = n < max ? n++ : n - 1;
            for (; at > 0 && busier(&cand, &top[at - 1]); at--) top[at] = top[at - 1];
            top[at] = cand;
        }
    }
    for (size_t i = 0; i < n; i++) {
        out[i].subscribers = top[i].ch->nsubs;
        out[i].messages = top[i].ch->messages;
        out[i].messages_per_s = top[i].rate;
        out[i].namelen = top[i].ch->namelen;
        memcpy(out[i].name, top[i].ch->name, top[i].ch->namelen + 1u);
    }
    free(top);
    return n;
}

/* ---- the backlog ring (memory backlog, Redis resume cache) ---------- */

static void backlog_account(spillway_hub *hub, spillway_frame *f, int sign)
{
    if (sign > 0) {
        atomic_fetch_add_explicit(&hub->st_backlog_messages, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&hub->st_backlog_bytes, spillway_frame_size(f),
                                  memory_order_relaxed);
    } else {
        atomic_fetch_sub_explicit(&hub->st_backlog_messages, 1, memory_order_relaxed);
        atomic_fetch_sub_explicit(&hub->st_backlog_bytes, spillway_frame_size(f),
                                  memory_order_relaxed);
    }
}

int spillway_backlog_push(spillway_hub *hub, spillway_channel *ch, spillway_frame *f)
{
    uint32_t limit = hub->cfg.backlog_size;

    if (limit == 0) {
        /* No backlog: every message is gone as soon as it is sent. */
        ch->trimmed = spillway_id_max(ch->trimmed, f->id);
        return 0;
    }
    if (ch->ring_len == ch->ring_cap && ch->ring_cap < limit) {
        uint32_t n = ch->ring_cap ? ch->ring_cap * 2 : 8;
        spillway_frame **r;
        if (n > limit) n = limit;
        r = malloc(n * sizeof(*r));
        if (r == NULL) return -1;
        for (uint32_t i = 0; i < ch->ring_len; i++) r[i] = ch->ring[(ch->ring_start + i) % ch->ring_cap];
        free(ch->ring);
        ch->ring = r;
        ch->ring_cap = n;
        ch->ring_start = 0;
    }
    if (ch->ring_len == ch->ring_cap) spillway_backlog_trim(hub, ch, ch->ring_len - 1);
    /* backlog_window: frames older than the window before this one go (by
     * the ids' clock, like Redis's MINID trim). */
    while (hub->cfg.backlog_window_ms > 0 && ch->ring_len > 0 &&
           ch->ring[ch->ring_start]->id.ms + hub->cfg.backlog_window_ms < f->id.ms)
        spillway_backlog_trim(hub, ch, ch->ring_len - 1);
    ch->ring[(ch->ring_start + ch->ring_len) % ch->ring_cap] = spillway_frame_ref(f);
    ch->ring_len++;
    backlog_account(hub, f, +1);
    return 0;
}

/* Drops the whole backlog; what it held counts as trimmed. */
void spillway_backlog_clear(spillway_hub *hub, spillway_channel *ch)
{
    for (uint32_t i = 0; i < ch->ring_len; i++) {
        spillway_frame *f = ch->ring[(ch->ring_start + i) % ch->ring_cap];
        ch->trimmed = spillway_id_max(ch->trimmed, f->id);
        backlog_account(hub, f, -1);
        spillway_frame_unref(f);
    }
    free(ch->ring);
    ch->ring = NULL;
    ch->ring_cap = ch->ring_len = ch->ring_start = 0;
}

void spillway_backlog_adopt(spillway_hub *hub, spillway_channel *ch, spillway_frame **ring, uint32_t n,
                            uint32_t added)
{
    for (uint32_t i = 0; i < added; i++) backlog_account(hub, ring[i], +1);
    free(ch->ring);
    ch->ring = ring;
    ch->ring_cap = n ? n : 0;
    ch->ring_start = 0;
    ch->ring_len = n;
    if (n == 0) {
        free(ring);
        ch->ring = NULL;
    }
}

void spillway_backlog_trim(spillway_hub *hub, spillway_channel *ch, uint32_t max)
{
    while (ch->ring_len > max) {
        spillway_frame *old = ch->ring[ch->ring_start];
        ch->trimmed = spillway_id_max(ch->trimmed, old->id);
        backlog_account(hub, old, -1);
        spillway_frame_unref(old);
        ch->ring_start = (ch->ring_start + 1) % ch->ring_cap;
        ch->ring_len--;
    }
}

/* Stores (without new references) the backlog frames newer than `after` in
 * out (room for ring_len entries); returns how many. */
size_t spillway_backlog_collect(spillway_channel *ch, spillway_id after, spillway_frame **out)
{
    uint32_t lo = 0, hi = ch->ring_len;
    size_t n = 0;
    /* The ring is in id order: binary search the first newer entry. */
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        spillway_frame *f = ch->ring[(ch->ring_start + mid) % ch->ring_cap];
        if (spillway_id_cmp(f->id, after) <= 0) lo = mid + 1;
        else hi = mid;
    }
    for (uint32_t i = lo; i < ch->ring_len; i++) out[n++] = ch->ring[(ch->ring_start + i) % ch->ring_cap];
    return n;
}
