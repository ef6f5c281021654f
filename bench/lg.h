/*
 * The loadgen's shared state and the interfaces between its files:
 *
 *   loadgen.c    connections, the epoll loop, stdin commands, main
 *   lg_parse.c   response bodies: chunked/Content-Length/close framing, the
 *                SSE line grammar, message_bus's JSON arrays
 *   lg_stats.c   per-message bookkeeping (seq, latency histogram) and the
 *                JSON lines the loadgen prints
 *   lg_pub.c     the lockstep publisher (-P): publishes the next batch when
 *                every stream has everything published so far
 *
 * Everything runs on one thread; nothing here is locked.
 */
#ifndef BENCH_LG_H
#define BENCH_LG_H

#include <signal.h>
#include <stdint.h>

#include "util.h"

/* Limits, named so a failure can say which one it hit. */
#define LG_MAX_CONNS 19900         /* below `ulimit -n` 20000 with room for stdio and epoll */
#define LG_MAX_HEAD (64 * 1024)    /* response head */
#define LG_MAX_LINE (1024 * 1024)  /* one SSE line or one message_bus chunk */
#define LG_MAX_DATA (1024 * 1024)  /* one SSE event's data */
#define LG_READ_BUF (256 * 1024)
#define LG_MAX_EXPECT (1 << 22)    /* -e: per-connection seen-bitmap size */

/* epoll ids that are not connection indexes */
#define LG_ID_STDIN UINT32_MAX
#define LG_ID_PUB (UINT32_MAX - 1)

enum lg_mode { MODE_SSE, MODE_MB, MODE_LP };
enum lg_cstate { C_IDLE, C_CONNECTING, C_HEAD, C_BODY, C_WAIT_RETRY, C_DEAD };
enum lg_ckstate { CK_SIZE, CK_EXT, CK_DATA, CK_DATA_END, CK_TRAILER, CK_END };

enum lg_err {
    E_CONNECT, E_REFUSED, E_RESET, E_TIMEOUT, E_EOF_HEAD, E_STATUS, E_PROTO, E_SOCKET, E_NERR
};

struct conn {
    int fd;
    uint8_t state;
    uint8_t chunked;
    uint8_t ever_ok;  /* counted in `connected` */
    uint8_t cr;       /* SSE: the previous span ended with CR */
    uint8_t body_seen; /* at least one body byte since the head */
    uint8_t ckstate;
    uint8_t ck_digits;
    uint8_t has_clen;
    uint16_t retries;
    int64_t clen;     /* remaining Content-Length when has_clen */
    int64_t ck_left;  /* chunk bytes left, or trailer line length */
    int64_t t_attempt; /* mono ns when this attempt started */
    char *buf;        /* head, partial line, or partial message_bus segment */
    uint32_t len, cap;
    char *data;       /* SSE data buffer of the event being assembled */
    uint32_t dlen, dcap;
    uint32_t msgs;
    uint32_t unique;
    uint32_t lost, dup, ooo;
    uint32_t polls;
    int64_t last_seq;  /* highest seq seen; -1 until the first one */
    int64_t mb_pos;    /* message_bus: last message id seen on our channel */
    char lp_id[64];    /* lp: the last SSE id seen, the next poll's Last-Event-ID */
    uint64_t *seen;    /* bitmap of the owed seqs (base+1..base+expect) when -e is given */
    uint32_t stale;    /* messages at or before the resume cursor (-B): the client had them */
    uint16_t local_port;
    int64_t t_first;   /* mono ns when the first attempt started (retries keep it) */
    int64_t t_head;    /* mono ns when the stream counted as connected */
    int64_t t_served;  /* mono ns when it had -M unique messages; 0 until then */
};

/* The lockstep publisher's state (lg_pub.c); inactive unless -P is given. */
struct lg_pub {
    int on;              /* -P given */
    int raw;             /* -p raw: K pipelined POSTs stamped here; else one POST &count=K */
    struct url url;
    int64_t batch;       /* -K: messages per batch */
    int64_t total;       /* -n: messages at most */
    int64_t min_batches; /* -N: batches at least, even past the duration */
    int64_t duration_ns; /* -D: start no new batch after this long (0: until -n) */
    int64_t stall_ns;    /* -L: a batch not complete after this long ends the run */
    int64_t size;        /* -s: pad messages to about this many bytes */
    int wait_go;         /* -g: publish only after "go" on stdin */
    int go;              /* "go" arrived (or not needed) */

    int fd;
    char *out;           /* requests not yet written */
    size_t out_len, out_off, out_cap;
    char *in;            /* answers not yet parsed */
    size_t in_len, in_cap;
    char *pad;
    size_t padlen;

    int64_t published;   /* messages sent so far (the highest seq) */
    int64_t target;      /* seq every open stream must have before the next batch */
    int reached;         /* open streams whose `unique` reached target */
    int64_t batches, batches_done;
    int64_t requests, answers, ok, bad_status, errors, reconnects;
    int64_t batch_k;     /* messages in the current batch */
    int64_t first_send_real_ns, first_send_mono_ns, batch_send_real_ns, batch_send_mono_ns;
    int64_t done_real_ns; /* last receive of the last complete batch */
    int64_t delivered_done; /* deliveries owed by the complete batches */
    int64_t messages_done;  /* messages of the complete batches */
    int done;            /* no more batches: finished, stalled or failed */
    int stalled;
    int failed_streams;  /* streams that died while they owed messages */
    int64_t *round_ns;   /* per batch: send to the last stream's receive */
    int64_t round_cap;
};

struct lg_state {
    enum lg_mode mode;
    struct url url;
    int target;          /* connections wanted */
    int launched;        /* connections whose first attempt started */
    int in_flight;       /* started, neither connected nor given up */
    int max_in_flight;
    int addr_lo, addr_hi;
    int max_retries;
    int64_t connect_timeout_ns;
    int64_t deadline_ns;   /* absolute mono, 0 = none */
    int64_t idle_ns;       /* stop after this long without a message, 0 = never */
    int64_t want_msgs;     /* -M */
    int64_t expect;        /* -e */
    int hold;
    int quiet;
    int ready_on_body;
    int64_t batch_ns;      /* -b: minimum loop period, lets bytes pile up per read */
    int mb_plain;          /* -m mb-lp: ask message_bus for plain long polls (Dont-Chunk) */
    char mb_channel[256];
    char mb_channel_enc[768];
    char last_event_id[128]; /* -I: resume cursor of every stream ("" = none) */
    int64_t seq_base;      /* -B: seqs up to this one came before the cursor */
    int64_t linger_ns;     /* -G: once every stream is served, read on this long */

    int ep;
    struct conn *c;
    char *rbuf;

    /* counters */
    int connected, failed, closed_by_server, open;
    uint64_t retries, repolls, messages, other_events, comments, ids, retry_fields, bytes;
    uint64_t errs[E_NERR];
    int64_t first_pub_ns, first_rx_ns, last_rx_ns;
    int64_t start_real_ns, start_mono_ns, all_connected_mono_ns;
    int64_t last_msg_mono_ns;
    int64_t first_launch_mono_ns; /* the first attempt of the first connection */
    uint64_t stale;
    double cpu_at_first_rx;
    int ready_printed_for;
    int stdin_open;
    uint64_t connect_lat_sum_ns;
    int64_t connect_lat_max_ns;

    struct lg_pub pub;
};

extern struct lg_state lg;
extern volatile sig_atomic_t lg_stop;
extern int64_t lg_now_real; /* CLOCK_REALTIME when the bytes being parsed were read */
extern int64_t lg_now_mono; /* CLOCK_MONOTONIC at the same moment */

/* loadgen.c */
void lg_mark_connected(struct conn *c);

/* lg_parse.c */
/* Append to a growable buffer; returns -1 when it would pass `limit`. */
int lg_grow_append(char **b, uint32_t *len, uint32_t *cap, const char *p, size_t n, size_t limit);
/* Body bytes as read from the socket. Returns 1 when the response is
 * complete, -1 on a protocol error, 0 otherwise. */
int lg_body_feed(struct conn *c, const char *p, size_t n);
/* One message_bus JSON array (no separator). Returns -1 if it does not parse. */
int lg_mb_segment(struct conn *c, const char *p, size_t n);

/* lg_stats.c */
double lg_cpu_now(void);
/* A message's data: "<seq> <t_ns>[ ...]"; anything else is an "other" event. */
void lg_on_data(struct conn *c, const char *d, size_t n, int64_t now_real);
void lg_print_ready(void);
void lg_print_status(int64_t seq);
void lg_print_summary(void);

/* lg_pub.c */
int lg_pub_start(void);            /* connect; -1 (with a message) on failure */
void lg_pub_tick(void);            /* publish the next batch when the last one is complete */
void lg_pub_on_event(uint32_t events);
void lg_pub_reached(struct conn *c, uint32_t before); /* c->unique grew from `before` */
void lg_pub_conn_lost(struct conn *c); /* an open stream went away */
void lg_pub_print(void);           /* the "lockstep" member of the summary */
int lg_pub_finished(void);         /* every batch done (or stalled) and answered: stop */

#endif
