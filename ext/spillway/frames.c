/*
 * Every byte on the wire other than an event's own encoding (sse.c): the
 * HTTP head, the opening comment with the retry hint, the heartbeat, the
 * last retry hint at stop, and the `event: reset` frame.
 */
#include <stdio.h>
#include <string.h>

#include "frames.h"
#include "id.h"

static spillway_frame *text_frame(const char *s)
{
    return spillway_frame_copy(s, strlen(s));
}

int spillway_frames_build(spillway_hub *hub)
{
    static const char head[] = "HTTP/1.1 200 OK\r\n"
                               "Content-Type: text/event-stream; charset=utf-8\r\n"
                               "Cache-Control: no-cache, no-transform\r\n"
                               "X-Accel-Buffering: no\r\n"
                               "Connection: close\r\n";
    const char *extra = hub->cfg.extra_headers ? hub->cfg.extra_headers : "";
    char retry[64];
    size_t hlen = strlen(head), elen = strlen(extra);

    hub->f_head = spillway_frame_new(hlen + elen + 2);
    if (hub->f_head == NULL) return -1;
    memcpy(hub->f_head->data, head, hlen);
    memcpy(hub->f_head->data + hlen, extra, elen);
    memcpy(hub->f_head->data + hlen + elen, "\r\n", 2);

    /* An opening comment (some proxies wait for the first body byte before
     * they pass the head on) and the reconnection delay. */
    snprintf(retry, sizeof(retry), ": spillway\n\nretry: %u\n\n", hub->cfg.retry_ms);
    hub->f_open = text_frame(retry);
    snprintf(retry, sizeof(retry), "retry: %u\n\n", hub->cfg.retry_ms);
    hub->f_retry = text_frame(retry);
    hub->f_heartbeat = text_frame(":\n\n");
    if (hub->f_open == NULL || hub->f_retry == NULL || hub->f_heartbeat == NULL) return -1;
    return 0;
}

/* A Turbo stream's reset: a message Turbo applies (SPILLWAY_ATTACH_TURBO). */
static spillway_frame *turbo_refresh(spillway_id now)
{
    static const char body[] = "\nevent: message\ndata: <turbo-stream action=\"refresh\"></turbo-stream>\n\n";
    char idtext[SPILLWAY_ID_TEXT_MAX];
    size_t idlen = spillway_id_format(now, idtext);
    spillway_frame *f = spillway_frame_new(4 + idlen + sizeof(body) - 1);
    if (f == NULL) return NULL;
    memcpy(f->data, "id: ", 4);
    memcpy(f->data + 4, idtext, idlen);
    memcpy(f->data + 4 + idlen, body, sizeof(body) - 1);
    f->len = (uint32_t)(4 + idlen + sizeof(body) - 1);
    f->id = now;
    return f;
}

spillway_frame *spillway_frame_reset(const spillway_conn *c, const bool *reset, spillway_id now)
{
    char idtext[SPILLWAY_ID_TEXT_MAX];
    size_t idlen = spillway_id_format(now, idtext);
    size_t len = 4 + idlen + 1 + 13 + 22 + 4;
    spillway_frame *f;
    char *p;

    if (c->flags & SW_CF_TURBO) return turbo_refresh(now);
    for (uint32_t i = 0; i < c->nmem; i++)
        if (reset[i]) len += c->mem[i].ch->namelen + 3;
    f = spillway_frame_new(len);
    if (f == NULL) return NULL;
    p = f->data;
    memcpy(p, "id: ", 4), p += 4;
    memcpy(p, idtext, idlen), p += idlen;
    memcpy(p, "\nevent: reset\ndata: {\"channels\":[", 33), p += 33;
    {
        bool first = true;
        for (uint32_t i = 0; i < c->nmem; i++) {
            if (!reset[i]) continue;
            if (!first) *p++ = ',';
            first = false;
            *p++ = '"';
            memcpy(p, c->mem[i].ch->name, c->mem[i].ch->namelen);
            p += c->mem[i].ch->namelen;
            *p++ = '"';
        }
    }
    memcpy(p, "]}\n\n", 4), p += 4;
    f->len = (uint32_t)(p - f->data);
    f->id = now;
    return f;
}

spillway_frame *spillway_frame_tagged(spillway_frame *f, const char *name, size_t namelen)
{
    const char *nl;
    size_t head;
    spillway_frame *t;

    if (f->tagged != NULL) return f->tagged;
    if (spillway_id_is_zero(f->id)) return f;
    nl = memchr(f->data, '\n', f->len);
    head = nl != NULL ? (size_t)(nl - f->data) + 1 : 0;
    t = spillway_frame_new(f->len + 9 + namelen + 1);
    if (t == NULL) return NULL;
    memcpy(t->data, f->data, head);
    memcpy(t->data + head, "channel: ", 9);
    memcpy(t->data + head + 9, name, namelen);
    t->data[head + 9 + namelen] = '\n';
    memcpy(t->data + head + 10 + namelen, f->data + head, f->len - head);
    t->id = f->id;
    t->targets = spillway_targets_ref(f->targets);
    f->tagged = t;
    return t;
}

spillway_frame *spillway_frame_for(spillway_hub *hub, spillway_conn *c, spillway_frame *f, const spillway_channel *ch)
{
    spillway_frame *t;
    if (!(c->flags & SW_CF_CHANNEL)) return f;
    t = spillway_frame_tagged(f, ch->name, ch->namelen);
    if (t == NULL) {
        spillway_hub_log(hub, SW_LOG_MEMORY, "a message naming its channel: out of memory");
        spillway_conn_doom_why(hub, c, false, "out of memory");
    }
    return t;
}

bool spillway_frames_for(spillway_hub *hub, spillway_conn *c, spillway_frame **frames, size_t n,
                         const spillway_channel *ch)
{
    if (!(c->flags & SW_CF_CHANNEL)) return true;
    for (size_t i = 0; i < n; i++)
        if ((frames[i] = spillway_frame_for(hub, c, frames[i], ch)) == NULL) return false;
    return true;
}

void spillway_frames_free(spillway_hub *hub)
{
    spillway_frame_unref(hub->f_head);
    spillway_frame_unref(hub->f_open);
    spillway_frame_unref(hub->f_retry);
    spillway_frame_unref(hub->f_heartbeat);
    hub->f_head = hub->f_open = hub->f_retry = hub->f_heartbeat = NULL;
}

void spillway_frame_channel_names(const spillway_conn *c, const bool *which, char *out, size_t n)
{
    size_t len = 0;
    out[0] = '\0';
    for (uint32_t i = 0; i < c->nmem && len + 1 < n; i++) {
        const spillway_channel *ch = c->mem[i].ch;
        if (which != NULL && !which[i]) continue;
        len += (size_t)snprintf(out + len, n - len, "%s%.*s", len ? "\n" : "", (int)ch->namelen, ch->name);
    }
    if (len >= n) out[n - 1] = '\0';
}
