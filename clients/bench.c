/*
 * parley-bench: an open-loop load generator for the gateway. Each of P worker processes
 * holds its share of the connections on one epoll loop (wslay client contexts), and sends on
 * a fixed schedule: message k of a worker is due at t0 + k / rate, whatever happened to the
 * ones before, and latency is counted from that intended time (so a slow server cannot make
 * the generator slow down and hide its own queueing). Users come in pairs inside a worker:
 * each sends to its partner. The client_id carries the intended time, so the ack and the
 * partner's push both give a latency without any shared clock state.
 *
 * Tokens are signed here with the cluster's private key (the gateway checks signature,
 * claims and the Redis revocation flag, not a login); the users must exist for the recipient
 * check, which the driver script arranges. Not a test: it prints figures.
 *
 * Modes: chat (default), idle (connect, authenticate, hold: memory per connection), connect
 * (connect as fast as possible: handshakes per second), group (every connection is a member
 * of the group --conv; the first --senders connections of each worker send to it in turn at
 * the rate, and every other member's push of a message counts as a delivery; --ports spreads
 * the connections over several gateways).
 */
#include "parley/enc.h"
#include "parley/err.h"
#include "parley/jwt.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <wslay/wslay.h>

/* ---- log-linear histogram (HDR style): 64 linear steps per power of two, in µs ---- */

#define H_SUB     64
#define H_EXP     40
#define H_BUCKETS (H_SUB * H_EXP)

typedef struct {
    uint64_t n[H_BUCKETS];
    uint64_t count;
    uint64_t max;
} hist_t;

static size_t h_index(uint64_t v)
{
    if (v < H_SUB) {
        return (size_t)v;
    }
    int e = 63 - __builtin_clzll(v); /* 2^e <= v < 2^(e+1), e >= 6 */
    uint64_t step = 1ULL << (e - 6); /* 64 steps across the octave */
    size_t i = (size_t)(e - 5) * H_SUB + (size_t)((v - (1ULL << e)) / step);
    return i < H_BUCKETS ? i : H_BUCKETS - 1;
}

static uint64_t h_value(size_t i)
{
    if (i < H_SUB) {
        return i;
    }
    int e = (int)(i / H_SUB) + 5;
    uint64_t step = 1ULL << (e - 6);
    return (1ULL << e) + (uint64_t)(i % H_SUB) * step + step / 2;
}

static void h_add(hist_t *h, uint64_t v)
{
    h->n[h_index(v)]++;
    h->count++;
    h->max = v > h->max ? v : h->max;
}

static double h_pct(const hist_t *h, double p)
{
    if (h->count == 0) {
        return 0;
    }
    uint64_t want = (uint64_t)ceil(p * (double)h->count), seen = 0;
    for (size_t i = 0; i < H_BUCKETS; i++) {
        seen += h->n[i];
        if (seen >= want) {
            return (double)h_value(i) / 1000.0;
        }
    }
    return (double)h->max / 1000.0;
}

/* ---- what a worker reports to the parent, over its pipe ---- */

typedef struct {
    int final;
    uint64_t opened, ready, failed, sent, acked, delivered, echoed, errors, rate_limited, closed;
    uint64_t reads, read_acks, receipts; /* --receipts */
    uint64_t duplicates;    /* pushes of a seq the connection had already been pushed */
    double connect_seconds; /* connect mode: first connect to last ready */
    hist_t ack, deliver;    /* only in the final report */
} report_t;

/* ---- options ---- */

static struct {
    const char *host;
    int port;
    int conns; /* total connections (users), even */
    int procs;
    double rate; /* total messages per second */
    double seconds;
    double warmup; /* seconds sent at the rate first and not counted */
    double drain;
    int size; /* content bytes */
    const char *prefix;
    const char *key;
    const char *mode;
    char src[16][32];
    int nsrc;
    int first_user;
    const char *conv; /* group mode: the group's conversation id */
    int senders;      /* group mode: senders per worker */
    int ports[16];    /* connection i goes to ports[i % nports] (default: port) */
    int nports;
    int receipts; /* every delivered message is answered with a read frame */
} opt = {.host = "127.0.0.1",
         .port = 8080,
         .conns = 100,
         .procs = 2,
         .rate = 100,
         .seconds = 10,
         .warmup = 2,
         .drain = 3,
         .size = 32,
         .prefix = "bench",
         .key = "var/local/keys/jwt-private.pem",
         .mode = "chat",
         .senders = 1};

/* ---- one connection ---- */

enum { C_CONNECTING, C_HANDSHAKE, C_AUTH, C_OPEN, C_DEAD };

typedef struct conn_s {
    int fd;
    int state;
    int idx; /* user index within the worker */
    char user[40];
    char peer[40];
    char hs[1024];
    size_t hs_len;
    wslay_event_context_ptr ws;
    /* The highest seq pushed per conversation (a connection here writes in one or two), to
     * count duplicate pushes: by conversation-id hash, the oldest slot reused. */
    size_t seen_conv[4];
    long long seen_seq[4];
    int seen_next;
} conn_t;

static report_t rep;
static int ep;
static uint64_t measure_from; /* messages due before this (the warm-up) are not counted */

static uint64_t now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (uint64_t)t.tv_sec * 1000000u + (uint64_t)t.tv_nsec / 1000u;
}

static ssize_t c_recv(wslay_event_context_ptr ws, uint8_t *buf, size_t len, int flags, void *ud)
{
    conn_t *c = ud;
    (void)flags;
    ssize_t r = recv(c->fd, buf, len, 0);
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        wslay_event_set_error(ws, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    if (r <= 0) {
        wslay_event_set_error(ws, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return r;
}

static ssize_t c_send(wslay_event_context_ptr ws, const uint8_t *data, size_t len, int flags,
                      void *ud)
{
    conn_t *c = ud;
    (void)flags;
    ssize_t r = send(c->fd, data, len, MSG_NOSIGNAL);
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        wslay_event_set_error(ws, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    if (r < 0) {
        wslay_event_set_error(ws, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return r;
}

static int c_mask(wslay_event_context_ptr ws, uint8_t *buf, size_t len, void *ud)
{
    (void)ws;
    (void)ud;
    for (size_t i = 0; i < len; i++) {
        buf[i] = (uint8_t)rand(); /* masking is not a secret here */
    }
    return 0;
}

/* The intended send time is the third dot-separated field of our client ids. */
static uint64_t cid_time(const char *cid)
{
    const char *p = cid ? strchr(cid, '.') : NULL;
    p = p ? strchr(p + 1, '.') : NULL;
    return p ? strtoull(p + 1, NULL, 10) : 0;
}

static void c_interest(conn_t *c);

/* --receipts: the reader tells the server it has read msg, as a client showing it would. */
static void send_read(conn_t *c, json_t *msg)
{
    char text[160];
    int n = snprintf(text, sizeof(text), "{\"type\":\"read\",\"conv\":\"%s\",\"seq\":%lld}",
                     json_string_value(json_object_get(msg, "conv")),
                     (long long)json_integer_value(json_object_get(msg, "seq")));
    struct wslay_event_msg m = {WSLAY_TEXT_FRAME, (const uint8_t *)text, (size_t)n};
    if (n > 0 && (size_t)n < sizeof(text) && wslay_event_queue_msg(c->ws, &m) == 0) {
        rep.reads++;
        c_interest(c);
    }
}

/* 1 when msg's seq is not above the highest seq this connection was pushed in its conv. */
static int seen_before(conn_t *c, json_t *msg)
{
    const char *conv = json_string_value(json_object_get(msg, "conv"));
    long long seq = json_integer_value(json_object_get(msg, "seq"));
    size_t h = conv != NULL ? pl_hash_str(conv) | 1 : 0;
    if (h == 0 || seq <= 0) {
        return 0;
    }
    for (int i = 0; i < 4; i++) {
        if (c->seen_conv[i] == h) {
            int dup = seq <= c->seen_seq[i];
            c->seen_seq[i] = dup ? c->seen_seq[i] : seq;
            return dup;
        }
    }
    c->seen_conv[c->seen_next] = h;
    c->seen_seq[c->seen_next] = seq;
    c->seen_next = (c->seen_next + 1) % 4;
    return 0;
}

static void c_msg(wslay_event_context_ptr ws, const struct wslay_event_on_msg_recv_arg *arg,
                  void *ud)
{
    conn_t *c = ud;
    (void)ws;
    if (arg->opcode == WSLAY_CONNECTION_CLOSE) {
        rep.closed++;
        return;
    }
    if (arg->opcode != WSLAY_TEXT_FRAME) {
        return;
    }
    uint64_t t = now_us();
    json_t *j = json_loadb((const char *)arg->msg, arg->msg_length, 0, NULL);
    const char *type = json_string_value(json_object_get(j, "type"));
    const char *cid = json_string_value(json_object_get(j, "client_id"));
    if (type == NULL) {
        /* nothing */
    } else if (strcmp(type, "ack") == 0 && json_object_get(j, "cursor") != NULL) {
        rep.read_acks++;
    } else if (strcmp(type, "receipt") == 0) {
        rep.receipts++;
    } else if (strcmp(type, "ready") == 0) {
        c->state = C_OPEN;
        rep.ready++;
    } else if (cid_time(cid) != 0 && cid_time(cid) < measure_from) {
        /* warm-up traffic */
    } else if (strcmp(type, "ack") == 0) {
        uint64_t due = cid_time(cid);
        rep.acked++;
        h_add(&rep.ack, t > due ? t - due : 0);
    } else if (strcmp(type, "msg") == 0 && seen_before(c, j)) {
        rep.duplicates++; /* dropped by seq, as a client does */
    } else if (strcmp(type, "msg") == 0) {
        const char *sender = json_string_value(json_object_get(j, "sender"));
        if (sender != NULL && strcmp(sender, c->user) == 0) {
            rep.echoed++; /* the sender's own device learns the seq */
        } else {
            uint64_t due = cid_time(cid);
            rep.delivered++;
            h_add(&rep.deliver, t > due ? t - due : 0);
            if (opt.receipts) {
                send_read(c, j);
            }
        }
    } else if (strcmp(type, "error") == 0) {
        const char *code = json_string_value(json_object_get(j, "code"));
        rep.errors++;
        rep.rate_limited += code != NULL && strcmp(code, "rate_limited") == 0;
    }
    json_decref(j);
}

static const struct wslay_event_callbacks callbacks = {c_recv, c_send, c_mask, NULL,
                                                       NULL,   NULL,   c_msg};

static void c_kill(conn_t *c)
{
    if (c->state == C_DEAD) {
        return;
    }
    if (c->state != C_OPEN) {
        rep.failed++;
    }
    c->state = C_DEAD;
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    if (c->ws != NULL) {
        wslay_event_context_free(c->ws);
        c->ws = NULL;
    }
}

static void c_interest(conn_t *c)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (c->state == C_CONNECTING || (c->ws != NULL && wslay_event_want_write(c->ws))) {
        ev.events |= EPOLLOUT;
    }
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static int c_open(conn_t *c, int src)
{
    int port = opt.nports > 0 ? opt.ports[src % opt.nports] : opt.port;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, opt.host, &sa.sin_addr);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        return -1;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (opt.nsrc > 0) {
        struct sockaddr_in from = {.sin_family = AF_INET};
        inet_pton(AF_INET, opt.src[src % opt.nsrc], &from.sin_addr);
        if (bind(c->fd, (struct sockaddr *)&from, sizeof(from)) != 0) {
            close(c->fd);
            return -1;
        }
    }
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 && errno != EINPROGRESS) {
        close(c->fd);
        return -1;
    }
    c->state = C_CONNECTING;
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    rep.opened++;
    return 0;
}

static void c_handshake_send(conn_t *c, const char *token)
{
    unsigned char raw[16];
    char key[PL_B64URL_LEN(16) + 4];
    pl_random_bytes(raw, sizeof(raw));
    /* Standard base64 of 16 bytes (the b64url form differs only in + and /). */
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t k = 0;
    for (int i = 0; i < 15; i += 3) {
        uint32_t v = (uint32_t)raw[i] << 16 | (uint32_t)raw[i + 1] << 8 | raw[i + 2];
        key[k++] = b64[v >> 18 & 63];
        key[k++] = b64[v >> 12 & 63];
        key[k++] = b64[v >> 6 & 63];
        key[k++] = b64[v & 63];
    }
    key[k++] = b64[raw[15] >> 2];
    key[k++] = b64[(raw[15] & 3) << 4];
    key[k++] = '=';
    key[k++] = '=';
    key[k] = '\0';
    char req[2048];
    int n = snprintf(req, sizeof(req),
                     "GET /ws HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                     "Sec-WebSocket-Version: 13\r\nAuthorization: Bearer %s\r\n\r\n",
                     opt.host, opt.port, key, token);
    if (n <= 0 || send(c->fd, req, (size_t)n, MSG_NOSIGNAL) != n) {
        c_kill(c);
        return;
    }
    c->state = C_HANDSHAKE;
    c_interest(c);
}

/* Reads the 101 response; the bytes after it (the "ready" frame may follow at once) are
 * left in the socket only when none came with it, so the response is read a byte at a time
 * until its end: cheap, and once per connection. */
static void c_handshake_recv(conn_t *c)
{
    while (c->hs_len < sizeof(c->hs) - 1) {
        ssize_t r = recv(c->fd, c->hs + c->hs_len, 1, 0);
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return;
        }
        if (r <= 0) {
            c_kill(c);
            return;
        }
        c->hs_len++;
        c->hs[c->hs_len] = '\0';
        if (c->hs_len >= 4 && memcmp(c->hs + c->hs_len - 4, "\r\n\r\n", 4) == 0) {
            if (strncmp(c->hs, "HTTP/1.1 101", 12) != 0) {
                c_kill(c);
                return;
            }
            wslay_event_context_client_init(&c->ws, &callbacks, c);
            c->state = C_AUTH;
            return;
        }
    }
    c_kill(c);
}

static void c_io(conn_t *c, uint32_t events, char **tokens)
{
    if (c->state == C_DEAD) {
        return;
    }
    if (c->state == C_CONNECTING) {
        int err = 0;
        socklen_t l = sizeof(err);
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err != 0 || (events & (EPOLLERR | EPOLLHUP))) {
            c_kill(c);
            return;
        }
        if (events & EPOLLOUT) {
            c_handshake_send(c, tokens[c->idx]);
        }
        return;
    }
    if (c->state == C_HANDSHAKE) {
        c_handshake_recv(c);
        if (c->state != C_AUTH) {
            return;
        }
    }
    if ((events & EPOLLIN) || c->state == C_AUTH) {
        if (wslay_event_recv(c->ws) != 0) {
            c_kill(c);
            return;
        }
    }
    if (wslay_event_want_write(c->ws) && wslay_event_send(c->ws) != 0) {
        c_kill(c);
        return;
    }
    if (!wslay_event_want_read(c->ws) && !wslay_event_want_write(c->ws)) {
        c_kill(c);
        return;
    }
    c_interest(c);
}

static void send_one(conn_t *c, uint64_t k, uint64_t due, int w, const char *content)
{
    char cid[64], frame[70000];
    snprintf(cid, sizeof(cid), "%d.%llu.%llu", w, (unsigned long long)k, (unsigned long long)due);
    int n = snprintf(frame, sizeof(frame),
                     "{\"type\":\"send\",\"client_id\":\"%s\",\"%s\":\"%s\",\"content\":\"%s\"}",
                     cid, opt.conv ? "conv" : "to", opt.conv ? opt.conv : c->peer, content);
    struct wslay_event_msg m = {WSLAY_TEXT_FRAME, (const uint8_t *)frame, (size_t)n};
    if (wslay_event_queue_msg(c->ws, &m) == 0 && due >= measure_from) {
        rep.sent++;
    }
}

static void report(int fd, int final)
{
    rep.final = final;
    const char *p = (const char *)&rep;
    size_t left = final ? sizeof(rep) : offsetof(report_t, ack);
    while (left > 0) {
        ssize_t w = write(fd, p, left);
        if (w <= 0) {
            return;
        }
        p += w;
        left -= (size_t)w;
    }
}

/* Access tokens for users [first, first + n), signed with the cluster's private key. NULL
 * when the key cannot be used. */
static char **mint_tokens(conn_t *cs, int first, int n)
{
    char pem[8192];
    FILE *f = fopen(opt.key, "r");
    size_t pem_len = f ? fread(pem, 1, sizeof(pem), f) : 0;
    if (f != NULL) {
        fclose(f);
    }
    pl_jwt_signer_t *signer = NULL;
    if (pem_len == 0 ||
        pl_jwt_signer_new(pem, pem_len, "parley", "parley", 3600, &signer) != PL_OK) {
        fprintf(stderr, "parley-bench: cannot use the private key %s\n", opt.key);
        return NULL;
    }
    char **tokens = calloc((size_t)n, sizeof(*tokens));
    long now_s = (long)time(NULL);
    for (int i = 0; tokens != NULL && i < n; i++) {
        cs[i].idx = i;
        snprintf(cs[i].user, sizeof(cs[i].user), "%s%07d", opt.prefix, first + i);
        snprintf(cs[i].peer, sizeof(cs[i].peer), "%s%07d", opt.prefix, first + (i ^ 1));
        char sid[PL_SESSION_ID_LEN];
        pl_random_hex(sid, 16);
        pl_jwt_sign(signer, cs[i].user, sid, now_s, &tokens[i], NULL);
    }
    pl_jwt_signer_free(&signer);
    return tokens;
}

/* Opens the n sockets in waves of 256, so the listen backlog is not the thing measured. */
static void connect_all(conn_t *cs, int w, int n, char **tokens, int out)
{
    struct epoll_event evs[512];
    uint64_t t_start = now_us();
    int opened = 0;
    while ((uint64_t)rep.ready + rep.failed < (uint64_t)n) {
        while (opened < n && opened - (int)(rep.ready + rep.failed) < 256) {
            if (c_open(&cs[opened], w + opened) != 0) {
                rep.failed++;
                cs[opened].state = C_DEAD;
            }
            opened++;
        }
        int k = epoll_wait(ep, evs, 512, 100);
        for (int i = 0; i < k; i++) {
            c_io(evs[i].data.ptr, evs[i].events, tokens);
        }
        if (now_us() > t_start + 60000000) {
            break; /* a minute to connect is plenty */
        }
    }
    rep.connect_seconds = (double)(now_us() - t_start) / 1e6;
    report(out, 0);
}

/* The measured phase: warm-up, the open-loop schedule (chat mode), then the drain. */
static void run_schedule(conn_t *cs, int w, int n, char **tokens, const char *content, int out)
{
    struct epoll_event evs[512];
    int group = strcmp(opt.mode, "group") == 0;
    double rate = strcmp(opt.mode, "chat") == 0 || group ? opt.rate / opt.procs : 0;
    uint64_t senders = group && opt.senders < n ? (uint64_t)opt.senders : (uint64_t)n;
    uint64_t t0 = now_us(), k = 0;
    measure_from = t0 + (uint64_t)(opt.warmup * 1e6);
    uint64_t end = measure_from + (uint64_t)(opt.seconds * 1e6);
    uint64_t stop = end + (uint64_t)(opt.drain * 1e6);
    if (strcmp(opt.mode, "connect") == 0) {
        stop = end = t0;
    }
    uint64_t next_report = t0 + 1000000;
    for (uint64_t t = t0; t < stop; t = now_us()) {
        /* Every message whose time has come goes out now: open loop. */
        while (rate > 0 && t < end && t0 + (uint64_t)((double)k * 1e6 / rate) <= t) {
            uint64_t due = t0 + (uint64_t)((double)k * 1e6 / rate);
            conn_t *c = &cs[k % senders];
            if (c->state == C_OPEN) {
                send_one(c, k, due, w, content);
                c_io(c, 0, tokens);
            }
            k++;
        }
        /* At least a millisecond between wake-ups, sending whatever fell due meanwhile: a
         * spinning generator would take the CPU the servers under test share with it. */
        int timeout = 50;
        if (rate > 0 && t < end) {
            uint64_t due = t0 + (uint64_t)((double)k * 1e6 / rate);
            timeout = due > t + 1000 ? (int)((due - t) / 1000) : 1;
        }
        int m = epoll_wait(ep, evs, 512, timeout);
        for (int i = 0; i < m; i++) {
            c_io(evs[i].data.ptr, evs[i].events, tokens);
        }
        if (t >= next_report) {
            next_report += 1000000;
            report(out, 0);
        }
    }
}

/* One worker: users [first, first + n) of the whole run. */
static int worker(int w, int first, int n, int out)
{
    conn_t *cs = calloc((size_t)n, sizeof(*cs));
    char **tokens = cs != NULL ? mint_tokens(cs, first, n) : NULL;
    if (tokens == NULL) {
        free(cs);
        return 1;
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    char *content = malloc((size_t)opt.size + 1);
    memset(content, 'x', (size_t)opt.size);
    content[opt.size] = '\0';
    connect_all(cs, w, n, tokens, out);
    run_schedule(cs, w, n, tokens, content, out);
    report(out, 1);
    for (int i = 0; i < n; i++) {
        c_kill(&cs[i]);
        free(tokens[i]);
    }
    free(cs);
    free(tokens);
    free(content);
    return 0;
}

/* Reads fd until buf holds want bytes (have already there), waiting while the writer is
 * mid-record. 0 when complete, -1 at end of file or on an error. */
static int read_rest(int fd, char *buf, size_t have, size_t want)
{
    while (have < want) {
        ssize_t m = read(fd, buf + have, want - have);
        if (m > 0) {
            have += (size_t)m;
        } else if (m == 0 || (errno != EAGAIN && errno != EINTR)) {
            return -1;
        } else {
            struct pollfd p = {.fd = fd, .events = POLLIN};
            poll(&p, 1, 100);
        }
    }
    return 0;
}

/* Splits a comma-separated list into out (at most max items of under 32 bytes). */
static int split_list(const char *s, char out[][32], int max)
{
    int n = 0;
    for (const char *t = s; *t && n < max;) {
        const char *comma = strchr(t, ',');
        size_t len = comma ? (size_t)(comma - t) : strlen(t);
        snprintf(out[n++], 32, "%.*s", (int)len, t);
        t += len + (comma != NULL);
    }
    return n;
}

static void usage(void)
{
    fprintf(
        stderr,
        "usage: parley-bench [--mode chat|idle|connect|group] [--host H] [--port P]\n"
        "         [--ports P1,P2,..] [--conns N] [--procs P] [--rate MSGS_PER_S] [--seconds S]\n"
        "         [--warmup S] [--drain S] [--size BYTES] [--conv g:ID] [--senders N]\n"
        "         [--prefix NAME] [--first-user I] [--key PEM] [--src 127.0.0.2,127.0.0.3]\n"
        "         [--receipts]\n"
        "Users <prefix><7 digits> must exist; each sends to its pair (i xor 1), or in group\n"
        "mode to the group --conv, of which they must be members.\n");
}

int main(int argc, char **argv)
{
    static const struct option longs[] = {
        {"mode", 1, 0, 'm'},
        {"host", 1, 0, 'h'},
        {"port", 1, 0, 'p'},
        {"conns", 1, 0, 'c'},
        {"procs", 1, 0, 'P'},
        {"rate", 1, 0, 'r'},
        {"seconds", 1, 0, 's'},
        {"drain", 1, 0, 'd'},
        {"size", 1, 0, 'z'},
        {"prefix", 1, 0, 'x'},
        {"key", 1, 0, 'k'},
        {"src", 1, 0, 'S'},
        {"first-user", 1, 0, 'f'},
        {"warmup", 1, 0, 'w'},
        {"conv", 1, 0, 'g'},
        {"senders", 1, 0, 'n'},
        {"ports", 1, 0, 'o'},
        {"receipts", 0, 0, 'R'},
        {0, 0, 0, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "", longs, NULL)) != -1) {
        switch (ch) {
        case 'm':
            opt.mode = optarg;
            break;
        case 'h':
            opt.host = optarg;
            break;
        case 'p':
            opt.port = (int)strtol(optarg, NULL, 10);
            break;
        case 'c':
            opt.conns = (int)strtol(optarg, NULL, 10);
            break;
        case 'P':
            opt.procs = (int)strtol(optarg, NULL, 10);
            break;
        case 'r':
            opt.rate = strtod(optarg, NULL);
            break;
        case 's':
            opt.seconds = strtod(optarg, NULL);
            break;
        case 'd':
            opt.drain = strtod(optarg, NULL);
            break;
        case 'z':
            opt.size = (int)strtol(optarg, NULL, 10);
            break;
        case 'x':
            opt.prefix = optarg;
            break;
        case 'k':
            opt.key = optarg;
            break;
        case 'f':
            opt.first_user = (int)strtol(optarg, NULL, 10);
            break;
        case 'w':
            opt.warmup = strtod(optarg, NULL);
            break;
        case 'g':
            opt.conv = optarg;
            break;
        case 'n':
            opt.senders = (int)strtol(optarg, NULL, 10);
            break;
        case 'o': {
            char ports[16][32];
            int n = split_list(optarg, ports, 16);
            for (int i = 0; i < n; i++) {
                char *end = NULL;
                opt.ports[i] = (int)strtol(ports[i], &end, 10);
                if (end == ports[i] || *end != '\0') {
                    usage();
                    return 2;
                }
            }
            opt.nports = n;
            break;
        }
        case 'S':
            opt.nsrc = split_list(optarg, opt.src, 16);
            break;
        case 'R':
            opt.receipts = 1;
            break;
        default:
            usage();
            return 2;
        }
    }
    if (opt.conns < 2 || opt.procs < 1 || opt.conns % (2 * opt.procs) != 0 || opt.size < 1 ||
        opt.size > 60000) {
        fprintf(stderr, "parley-bench: --conns must be a multiple of 2 x --procs\n");
        usage();
        return 2;
    }
    struct rlimit rl = {20000, 20000};
    setrlimit(RLIMIT_NOFILE, &rl);
    signal(SIGPIPE, SIG_IGN);
    int per = opt.conns / opt.procs;
    int *fds = calloc((size_t)opt.procs, sizeof(int));
    pid_t *pids = calloc((size_t)opt.procs, sizeof(pid_t));
    for (int w = 0; w < opt.procs; w++) {
        int p[2];
        if (pipe(p) != 0) {
            return 1;
        }
        pids[w] = fork();
        if (pids[w] == 0) {
            close(p[0]);
            srand((unsigned)(getpid() ^ time(NULL)));
            _exit(worker(w, opt.first_user + w * per, per, p[1]));
        }
        close(p[1]);
        fds[w] = p[0];
        fcntl(fds[w], F_SETFL, O_NONBLOCK);
    }
    /* Progress: the workers' latest counters, summed, once a second. */
    report_t *last = calloc((size_t)opt.procs, sizeof(report_t));
    int done = 0;
    time_t t0 = time(NULL);
    while (done < opt.procs) {
        usleep(200000);
        for (int w = 0; w < opt.procs; w++) {
            for (;;) {
                report_t r;
                size_t want = offsetof(report_t, ack);
                char *dst = (char *)&r;
                ssize_t n = read(fds[w], dst, want);
                /* A report is written in one piece: once it has started, finish it. */
                if (n <= 0 || read_rest(fds[w], dst, (size_t)n, want) != 0) {
                    break;
                }
                if (r.final) {
                    if (read_rest(fds[w], dst, want, sizeof(r)) == 0) {
                        last[w] = r;
                    }
                    done++;
                    break;
                }
                memcpy(&last[w], &r, want);
            }
        }
        report_t s = {0};
        for (int w = 0; w < opt.procs; w++) {
            s.ready += last[w].ready;
            s.failed += last[w].failed;
            s.sent += last[w].sent;
            s.acked += last[w].acked;
            s.delivered += last[w].delivered;
            s.errors += last[w].errors;
        }
        fprintf(stderr,
                "\r[bench %3lds] ready %llu failed %llu sent %llu acked %llu delivered %llu "
                "errors %llu   ",
                (long)(time(NULL) - t0), (unsigned long long)s.ready, (unsigned long long)s.failed,
                (unsigned long long)s.sent, (unsigned long long)s.acked,
                (unsigned long long)s.delivered, (unsigned long long)s.errors);
    }
    fprintf(stderr, "\n");
    for (int w = 0; w < opt.procs; w++) {
        waitpid(pids[w], NULL, 0);
    }
    report_t s = {0};
    double connect_s = 0;
    for (int w = 0; w < opt.procs; w++) {
        report_t *r = &last[w];
        s.ready += r->ready;
        s.failed += r->failed;
        s.sent += r->sent;
        s.acked += r->acked;
        s.delivered += r->delivered;
        s.echoed += r->echoed;
        s.errors += r->errors;
        s.rate_limited += r->rate_limited;
        s.closed += r->closed;
        s.reads += r->reads;
        s.read_acks += r->read_acks;
        s.receipts += r->receipts;
        s.duplicates += r->duplicates;
        connect_s = r->connect_seconds > connect_s ? r->connect_seconds : connect_s;
        for (size_t i = 0; i < H_BUCKETS; i++) {
            s.ack.n[i] += r->ack.n[i];
            s.deliver.n[i] += r->deliver.n[i];
        }
        s.ack.count += r->ack.count;
        s.deliver.count += r->deliver.count;
        s.ack.max = r->ack.max > s.ack.max ? r->ack.max : s.ack.max;
        s.deliver.max = r->deliver.max > s.deliver.max ? r->deliver.max : s.deliver.max;
    }
    /* One JSON object on stdout; the driver adds CPU and memory of the servers. */
    printf("{\"mode\":\"%s\",\"conns\":%d,\"procs\":%d,\"rate\":%.0f,\"seconds\":%.1f,"
           "\"ready\":%llu,\"failed\":%llu,\"connect_seconds\":%.3f,\"handshakes_per_s\":%.0f,"
           "\"sent\":%llu,\"acked\":%llu,\"delivered\":%llu,\"lost\":%lld,\"errors\":%llu,"
           "\"rate_limited\":%llu,\"closed\":%llu,\"reads\":%llu,\"read_acks\":%llu,"
           "\"receipts\":%llu,\"echoed\":%llu,\"duplicates\":%llu,"
           "\"ack_ms\":{\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"p999\":%.3f,\"max\":%.3f},"
           "\"deliver_ms\":{\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"p999\":%.3f,\"max\":%.3f}}\n",
           opt.mode, opt.conns, opt.procs, opt.rate, opt.seconds, (unsigned long long)s.ready,
           (unsigned long long)s.failed, connect_s, connect_s > 0 ? (double)s.ready / connect_s : 0,
           (unsigned long long)s.sent, (unsigned long long)s.acked, (unsigned long long)s.delivered,
           (long long)s.sent - (long long)s.delivered, (unsigned long long)s.errors,
           (unsigned long long)s.rate_limited, (unsigned long long)s.closed,
           (unsigned long long)s.reads, (unsigned long long)s.read_acks,
           (unsigned long long)s.receipts, (unsigned long long)s.echoed,
           (unsigned long long)s.duplicates, h_pct(&s.ack, .5), h_pct(&s.ack, .9),
           h_pct(&s.ack, .99), h_pct(&s.ack, .999), (double)s.ack.max / 1000.0,
           h_pct(&s.deliver, .5), h_pct(&s.deliver, .9), h_pct(&s.deliver, .99),
           h_pct(&s.deliver, .999), (double)s.deliver.max / 1000.0);
    free(last);
    free(fds);
    free(pids);
    return 0;
}
