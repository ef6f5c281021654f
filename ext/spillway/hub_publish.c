/*
 * The publishes of the hub's public API (hub.h), on the caller's thread:
 * checks, the frame encoded before the queue's lock is taken (sized for
 * the longest id; only the id is written under the lock, where the
 * backend issues it in queue order), the async publishes' tickets, and the
 * memory backend's cursor.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "channel.h"
#include "commands.h"
#include "hub_internal.h"
#include "idem.h"
#include "sse.h"
#include "targets.h"

/* What both publish paths check first. */
static int check_publish(spillway_hub *hub, const char *fn, const char *channel, size_t chlen, char *err,
                         size_t errlen)
{
    if (!atomic_load(&hub->running)) {
        spillway_set_err(err, errlen, "%s: the hub is not running", fn);
        return -EPIPE;
    }
    if (!spillway_channel_name_ok(channel, chlen)) {
        spillway_set_err(err, errlen, "%s: invalid channel name", fn);
        return -EINVAL;
    }
    return 0;
}

struct publish_stamp {
    spillway_hub *hub;
    spillway_frame *frame;
    size_t cap;
    const char *event, *data;
    size_t evlen, datalen;
    char *idbuf;
};

/* Under the queue lock: the id, and the frame around it. */
static void stamp_publish(spillway_qnode *node, void *arg)
{
    struct publish_stamp *st = arg;
    spillway_hub *hub = st->hub;
    spillway_id id = hub->backend.ops->issue_id(hub->backend.self, spillway_wall_ms());
    size_t idlen;
    ssize_t len;

    SW_UNUSED(node);
    idlen = spillway_id_format(id, st->idbuf);
    len = spillway_sse_encode(st->frame->data, st->cap, st->idbuf, idlen, st->event, st->evlen,
                              st->data, st->datalen);
    /* The caller sized the frame for the longest id and checked the fields,
     * so this cannot fail. */
    st->frame->len = len > 0 ? (uint32_t)len : 0;
    st->frame->id = id;
}

/* The targets of a publish (text NULL: none), checked on the caller's
 * thread. 0, or -EINVAL / -ENOMEM with err set. */
static int parse_targets(const char *fn, const char *text, size_t len, spillway_targets **out, char *err,
                         size_t errlen)
{
    const char *why = NULL;
    *out = NULL;
    if (text == NULL) return 0;
    *out = spillway_targets_parse(text, len, false, &why);
    if (*out != NULL) return 0;
    spillway_set_err(err, errlen, "%s: targets %s", fn, why);
    return strcmp(why, "out of memory") == 0 ? -ENOMEM : -EINVAL;
}

/* A frame sized for the message with the longest id; NULL with err set. */
static spillway_frame *sized_frame(const char *event, size_t evlen, const char *data, size_t datalen, size_t *cap,
                                   int *rc, char *err, size_t errlen)
{
    char longest[SPILLWAY_ID_TEXT_MAX];
    spillway_frame *f;
    ssize_t need;

    memset(longest, '9', SPILLWAY_ID_TEXT_MAX - 1);
    longest[20] = '-';
    need = spillway_sse_size(longest, SPILLWAY_ID_TEXT_MAX - 1, event, evlen, data, datalen);
    *rc = -EINVAL;
    if (need < 0) {
        spillway_set_err(err, errlen, "spillway_hub_publish: %s", spillway_sse_strerror(need));
        return NULL;
    }
    if ((size_t)need > SPILLWAY_FRAME_MAX) {
        spillway_set_err(err, errlen, "spillway_hub_publish: a frame of %zd bytes is over SPILLWAY_FRAME_MAX (%u)",
                         need, SPILLWAY_FRAME_MAX);
        return NULL;
    }
    f = spillway_frame_new((size_t)need);
    *rc = -ENOMEM;
    if (f == NULL) spillway_set_err(err, errlen, "spillway_hub_publish: out of memory (%zd bytes)", need);
    *cap = (size_t)need;
    return f;
}

int spillway_hub_publish(spillway_hub *hub, const char *channel, size_t chlen, const char *event,
                         size_t evlen, const char *data, size_t datalen, char *idbuf, char *err,
                         size_t errlen)
{
    return spillway_hub_publish_to(hub, channel, chlen, event, evlen, data, datalen, NULL, 0, idbuf, err, errlen);
}

int spillway_hub_publish_to(spillway_hub *hub, const char *channel, size_t chlen, const char *event, size_t evlen,
                            const char *data, size_t datalen, const char *targets, size_t targetslen, char *idbuf,
                            char *err, size_t errlen)
{
    struct publish_stamp st;
    spillway_cmd_publish *cmd;
    spillway_targets *to;
    int rc;

    if (hub->backend.ops->publish == NULL) {
        spillway_set_err(err, errlen, "spillway_hub_publish: this hub uses %s (publish through %s)",
                         hub->backend.ops->name, hub->backend.ops->name);
        return -EINVAL;
    }
    rc = check_publish(hub, "spillway_hub_publish", channel, chlen, err, errlen);
    if (rc == 0) rc = parse_targets("spillway_hub_publish", targets, targetslen, &to, err, errlen);
    if (rc != 0) return rc;
    st.frame = sized_frame(event, evlen, data, datalen, &st.cap, &rc, err, errlen);
    cmd = st.frame ? spillway_cmd_publish_new(SW_CMD_PUBLISH, channel, chlen, st.frame, 0) : NULL;
    if (cmd == NULL) {
        if (st.frame != NULL) spillway_set_err(err, errlen, "spillway_hub_publish: out of memory");
        spillway_frame_unref(st.frame);
        spillway_targets_unref(to);
        return st.frame != NULL ? -ENOMEM : rc;
    }
    st.frame->targets = to;
    st.hub = hub;
    st.event = event;
    st.evlen = evlen;
    st.data = data;
    st.datalen = datalen;
    st.idbuf = idbuf;
    rc = spillway_queue_push(&hub->q, &cmd->base.node, 0, stamp_publish, &st);
    if (rc == -EAGAIN || rc == -EPIPE) {
        spillway_cmd_free(&cmd->base);
        spillway_set_err(err, errlen, rc == -EAGAIN ? "spillway_hub_publish: the hub's queue is full (queue_limit %u)"
                                                    : "spillway_hub_publish: the hub is stopping (queue_limit %u)",
                         hub->cfg.queue_limit);
        return rc;
    }
    return 0;
}

void spillway_hub_cursor(spillway_hub *hub, char *idbuf)
{
    spillway_id id;
    pthread_mutex_lock(&hub->q.lock);
    id = hub->backend.ops->issued != NULL ? hub->backend.ops->issued(hub->backend.self) : hub->start;
    pthread_mutex_unlock(&hub->q.lock);
    spillway_id_format(id, idbuf);
}

struct async_stamp {
    spillway_hub *hub;
    uint64_t seq;
};

static void stamp_async(spillway_qnode *node, void *arg)
{
    struct async_stamp *st = arg;
    st->seq = ++st->hub->async_issued;
    ((spillway_cmd_publish *)node)->seq = st->seq;
}

/* The command of an async publish of body, with its idempotency key after
 * the channel (the backend names it in its own store); NULL when out of
 * memory. */
static spillway_cmd_publish *async_cmd(spillway_hub *hub, const char *channel, size_t chlen, spillway_frame *body,
                                       const char *key, size_t keylen, bool generated)
{
    spillway_cmd_publish *cmd = spillway_cmd_publish_new(SW_CMD_PUBLISH_ASYNC, channel, chlen, body, keylen);
    if (cmd == NULL) return NULL;
    memcpy(cmd->channel + chlen, key, keylen);
    cmd->keylen = (uint32_t)keylen;
    cmd->key_ttl_ms = generated ? spillway_idem_generated_ttl_ms(&hub->cfg.redis)
                                : SW_MAX(hub->cfg.redis.idempotency_ttl_ms, 1u);
    return cmd;
}

int spillway_hub_publish_async(spillway_hub *hub, const char *channel, size_t chlen,
                               const char *event, size_t evlen, const char *data,
                               size_t datalen, const char *key, size_t keylen, uint64_t *seq,
                               char *err, size_t errlen)
{
    return spillway_hub_publish_async_to(hub, channel, chlen, event, evlen, data, datalen, NULL, 0, key, keylen, seq,
                                         err, errlen);
}

/* The body an async publish sends: the targets line (targets.h) when there
 * are targets, then the message without its id. NULL when out of memory. */
static spillway_frame *async_body(const char *event, size_t evlen, const char *data, size_t datalen,
                                  const char *targets, size_t targetslen, size_t need)
{
    size_t head = targets != NULL ? sizeof(SPILLWAY_TARGETS_FIELD) - 1 + targetslen + 1 : 0;
    spillway_frame *body = spillway_frame_new(head + need);
    if (body == NULL) return NULL;
    if (head > 0) {
        memcpy(body->data, SPILLWAY_TARGETS_FIELD, head - targetslen - 1);
        memcpy(body->data + head - targetslen - 1, targets, targetslen);
        body->data[head - 1] = '\n';
    }
    spillway_sse_encode(body->data + head, need, NULL, 0, event, evlen, data, datalen);
    return body;
}

int spillway_hub_publish_async_to(spillway_hub *hub, const char *channel, size_t chlen, const char *event,
                                  size_t evlen, const char *data, size_t datalen, const char *targets,
                                  size_t targetslen, const char *key, size_t keylen, uint64_t *seq, char *err,
                                  size_t errlen)
{
    struct async_stamp st = {hub, 0};
    spillway_cmd_publish *cmd;
    spillway_frame *body;
    spillway_targets *to;
    char genkey[SPILLWAY_IDEM_GEN_LEN + 1];
    ssize_t need;
    int rc;

    if (hub->backend.ops->publish_async == NULL) {
        spillway_set_err(err, errlen, "spillway_hub_publish_async: no Redis configured");
        return -EINVAL;
    }
    rc = check_publish(hub, "spillway_hub_publish_async", channel, chlen, err, errlen);
    if (rc == 0) rc = parse_targets("spillway_hub_publish_async", targets, targetslen, &to, err, errlen);
    if (rc != 0) return rc;
    spillway_targets_unref(to); /* checked; they travel as text */
    if (key != NULL && !spillway_idem_key_ok(key, keylen)) {
        spillway_set_err(err, errlen, "spillway_hub_publish_async: invalid idempotency key (1 to %d bytes, no CR, LF or NUL)",
                SPILLWAY_IDEM_KEY_MAX);
        return -EINVAL;
    }
    if (key == NULL) {
        /* Made up here, on the caller's thread: the reactor's time goes to I/O. */
        spillway_idem_generate(genkey);
        key = genkey;
        keylen = SPILLWAY_IDEM_GEN_LEN;
    }
    need = spillway_sse_size(NULL, 0, event, evlen, data, datalen);
    if (need < 0) {
        spillway_set_err(err, errlen, "spillway_hub_publish_async: %s", spillway_sse_strerror(need));
        return -EINVAL;
    }
    if (atomic_fetch_add(&hub->async_waiting_count, 1) >= hub->cfg.redis.async_limit) {
        atomic_fetch_sub(&hub->async_waiting_count, 1);
        spillway_set_err(err, errlen, "spillway_hub_publish_async: %u async publishes are waiting for Redis (async_limit)",
                         hub->cfg.redis.async_limit);
        return -EAGAIN;
    }
    body = async_body(event, evlen, data, datalen, targets, targetslen, (size_t)need);
    cmd = body ? async_cmd(hub, channel, chlen, body, key, keylen, key == genkey) : NULL;
    if (cmd == NULL) {
        spillway_frame_unref(body);
        atomic_fetch_sub(&hub->async_waiting_count, 1);
        spillway_set_err(err, errlen, "spillway_hub_publish_async: out of memory");
        return -ENOMEM;
    }
    rc = spillway_queue_push(&hub->q, &cmd->base.node, SPILLWAY_QUEUE_FORCE, stamp_async, &st);
    if (rc == -EPIPE) {
        spillway_cmd_free(&cmd->base);
        atomic_fetch_sub(&hub->async_waiting_count, 1);
        spillway_set_err(err, errlen, "spillway_hub_publish_async: the hub is stopping");
        return rc;
    }
    *seq = st.seq;
    return 0;
}
