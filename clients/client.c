/*
 * Client library. REST uses HTTP/1.0 with Connection: close (no chunked bodies to decode);
 * the WebSocket uses wslay's client context over a non-blocking socket. Long-polling (DESIGN
 * 7.6) is the fallback when the upgrade is refused, or the transport chosen with
 * PARLEY_TRANSPORT=longpoll: one poll is always in flight on its own socket (pc_fd() is that
 * socket, so callers multiplex it as they would the WebSocket), sends go as separate POSTs.
 * Delivery rule: per conversation, a message is handed to the application only when its seq is the
 * next one; a lower seq is a duplicate (dropped, whatever its msg_id), a higher one opens a gap
 * that is filled from history first. So every message arrives once, in order.
 */
#include "client.h"
#include "parley/buf.h"
#include "parley/enc.h"
#include "parley/err.h"
#include "parley/proto.h"
#include "parley/wire.h"
#include "parley/ws.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <openssl/evp.h>
#include <wslay/wslay.h>

#define CONV_BUCKETS  1024
#define IO_TIMEOUT_MS 10000
#define MAX_RESPONSE  (8 << 20)

struct conv_state {
    char conv[PL_CONV_ID_LEN];
    long long seq; /* last seq delivered */
    int started;   /* something delivered or marked seen: seq is a place in the stream */
    struct conv_state *next;
};

struct pc_client_s {
    char host[128];
    int port;
    char *token;
    int fd;
    wslay_event_context_ptr ws;
    unsigned char *pre;
    size_t pre_len, pre_off;
    int close_code;
    int closed;
    char gateway[64];
    json_t *inbox;
    /* Long-polling: the session, the next frame number to take (the next poll's ack), and
     * the answer of the poll in flight on fd, read until the server closes. */
    int lp;
    char sid[40];
    long long lp_next;
    pl_buf_t lp_resp;
    struct conv_state *convs[CONV_BUCKETS];
    size_t delivered, dropped;
};

pc_client_t *pc_new(const char *url)
{
    pc_client_t *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        return NULL;
    }
    c->fd = -1;
    const char *p = strncmp(url, "http://", 7) == 0 ? url + 7 : url;
    const char *colon = strchr(p, ':');
    size_t hl = colon ? (size_t)(colon - p) : strcspn(p, "/");
    if (hl == 0 || hl >= sizeof(c->host)) {
        free(c);
        return NULL;
    }
    memcpy(c->host, p, hl);
    c->host[hl] = '\0';
    c->port = colon ? (int)strtol(colon + 1, NULL, 10) : 80;
    if (c->port <= 0 || c->port > 65535) {
        free(c);
        return NULL;
    }
    return c;
}

void pc_free(pc_client_t **pc)
{
    if (pc == NULL || *pc == NULL) {
        return;
    }
    pc_client_t *c = *pc;
    pc_disconnect(c);
    for (size_t i = 0; i < CONV_BUCKETS; i++) {
        for (struct conv_state *s = c->convs[i], *n; s != NULL; s = n) {
            n = s->next;
            free(s);
        }
    }
    free(c->token);
    free(c);
    *pc = NULL;
}

void pc_set_token(pc_client_t *c, const char *token)
{
    free(c->token);
    c->token = token ? strdup(token) : NULL;
}

static int wait_fd(int fd, short ev, int ms)
{
    struct pollfd p = {.fd = fd, .events = ev};
    int n;
    do {
        n = poll(&p, 1, ms);
    } while (n < 0 && errno == EINTR);
    return n == 1;
}

/* A connected non-blocking TCP socket, or -1. */
static int dial(const char *host, int port)
{
    char ps[8];
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *ai = NULL;
    snprintf(ps, sizeof(ps), "%d", port);
    if (getaddrinfo(host, ps, &hints, &ai) != 0 || ai == NULL) {
        return -1;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
        int soerr = 0;
        socklen_t sl = sizeof(soerr);
        if (errno != EINPROGRESS || !wait_fd(fd, POLLOUT, IO_TIMEOUT_MS) ||
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0 || soerr != 0) {
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(ai);
    if (fd >= 0) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    return fd;
}

static int send_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
            if (!wait_fd(fd, POLLOUT, IO_TIMEOUT_MS)) {
                return PL_ERR_UNAVAIL;
            }
            continue;
        }
        if (w <= 0) {
            return PL_ERR_UNAVAIL;
        }
        p += w;
        n -= (size_t)w;
    }
    return PL_OK;
}

/* Reads an HTTP response head (and whatever follows) into b. Returns the head's length. */
static long read_head(int fd, pl_buf_t *b)
{
    char chunk[4096];
    for (;;) {
        char *end = b->data ? strstr(b->data, "\r\n\r\n") : NULL;
        if (end != NULL) {
            return (long)(end - b->data) + 4;
        }
        if (!wait_fd(fd, POLLIN, IO_TIMEOUT_MS)) {
            return -1;
        }
        ssize_t r = recv(fd, chunk, sizeof(chunk), 0);
        if (r < 0 && (errno == EAGAIN || errno == EINTR)) {
            continue;
        }
        if (r <= 0 || pl_buf_append(b, chunk, (size_t)r) != PL_OK) {
            return -1;
        }
    }
}

int pc_rest(pc_client_t *c, const char *method, const char *path, json_t *body, int *status,
            json_t **out)
{
    int rc = PL_ERR_UNAVAIL;
    pl_buf_t req, resp;
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    *status = 0;
    if (out != NULL) {
        *out = NULL;
    }
    pl_buf_init(&req, 1 << 20);
    pl_buf_init(&resp, MAX_RESPONSE);
    int fd = dial(c->host, c->port);
    if (fd < 0) {
        goto out;
    }
    pl_buf_printf(&req, "%s %s HTTP/1.0\r\nHost: %s:%d\r\nConnection: close\r\n", method, path,
                  c->host, c->port);
    if (c->token != NULL) {
        pl_buf_printf(&req, "Authorization: Bearer %s\r\n", c->token);
    }
    if (text != NULL) {
        pl_buf_printf(&req, "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                      strlen(text), text);
    } else {
        pl_buf_append_str(&req, "Content-Length: 0\r\n\r\n");
    }
    if (send_all(fd, req.data, req.len) != PL_OK) {
        goto out;
    }
    char chunk[16384];
    for (;;) {
        if (!wait_fd(fd, POLLIN, IO_TIMEOUT_MS)) {
            goto out;
        }
        ssize_t r = recv(fd, chunk, sizeof(chunk), 0);
        if (r < 0 && (errno == EAGAIN || errno == EINTR)) {
            continue;
        }
        if (r < 0 || pl_buf_append(&resp, chunk, (size_t)r) != PL_OK) {
            goto out;
        }
        if (r == 0) {
            break;
        }
    }
    if (resp.len < 12 || strncmp(resp.data, "HTTP/1.", 7) != 0) {
        goto out;
    }
    *status = (int)strtol(resp.data + 9, NULL, 10);
    char *bodyp = strstr(resp.data, "\r\n\r\n");
    if (out != NULL && bodyp != NULL && bodyp[4] != '\0') {
        *out = json_loads(bodyp + 4, 0, NULL);
    }
    rc = PL_OK;
out:
    if (fd >= 0) {
        close(fd);
    }
    free(text);
    pl_buf_free(&req);
    pl_buf_free(&resp);
    return rc;
}

/* ---- WebSocket ---- */

static ssize_t ws_recv(wslay_event_context_ptr ws, uint8_t *buf, size_t len, int flags, void *ud)
{
    pc_client_t *c = ud;
    (void)flags;
    if (c->pre_off < c->pre_len) {
        size_t n = c->pre_len - c->pre_off < len ? c->pre_len - c->pre_off : len;
        memcpy(buf, c->pre + c->pre_off, n);
        c->pre_off += n;
        return (ssize_t)n;
    }
    ssize_t r = recv(c->fd, buf, len, 0);
    if (r < 0) {
        wslay_event_set_error(ws, errno == EAGAIN || errno == EINTR ? WSLAY_ERR_WOULDBLOCK
                                                                    : WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    if (r == 0) {
        wslay_event_set_error(ws, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return r;
}

static ssize_t ws_send(wslay_event_context_ptr ws, const uint8_t *data, size_t len, int flags,
                       void *ud)
{
    pc_client_t *c = ud;
    (void)flags;
    ssize_t r = send(c->fd, data, len, MSG_NOSIGNAL);
    if (r < 0) {
        wslay_event_set_error(ws, errno == EAGAIN || errno == EINTR ? WSLAY_ERR_WOULDBLOCK
                                                                    : WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return r;
}

static int ws_mask(wslay_event_context_ptr ws, uint8_t *buf, size_t len, void *ud)
{
    (void)ws;
    (void)ud;
    return pl_random_bytes(buf, len) == PL_OK ? 0 : -1;
}

static void ws_msg(wslay_event_context_ptr ws, const struct wslay_event_on_msg_recv_arg *arg,
                   void *ud)
{
    pc_client_t *c = ud;
    (void)ws;
    if (arg->opcode == WSLAY_CONNECTION_CLOSE) {
        c->close_code = arg->status_code;
        c->closed = 1;
    } else if (arg->opcode == WSLAY_TEXT_FRAME) {
        json_t *f = json_loadb((const char *)arg->msg, arg->msg_length, 0, NULL);
        if (f != NULL) {
            json_array_append_new(c->inbox, f);
        }
    }
}

static const struct wslay_event_callbacks ws_callbacks = {ws_recv, ws_send, ws_mask, NULL,
                                                          NULL,    NULL,    ws_msg};

void pc_disconnect(pc_client_t *c)
{
    c->lp = 0; /* a long-poll session left behind idles out at its gateway */
    pl_buf_free(&c->lp_resp);
    if (c->ws != NULL) {
        wslay_event_context_free(c->ws);
        c->ws = NULL;
    }
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
    free(c->pre);
    c->pre = NULL;
    c->pre_len = c->pre_off = 0;
    json_decref(c->inbox);
    c->inbox = NULL;
}

int pc_fd(const pc_client_t *c)
{
    return c->fd;
}

int pc_close_code(const pc_client_t *c)
{
    return c->close_code;
}

const char *pc_gateway(const pc_client_t *c)
{
    return c->gateway;
}

size_t pc_delivered(const pc_client_t *c)
{
    return c->delivered;
}

size_t pc_dropped(const pc_client_t *c)
{
    return c->dropped;
}

static int flush(pc_client_t *c)
{
    while (c->ws != NULL && wslay_event_want_write(c->ws)) {
        if (wslay_event_send(c->ws) != 0) {
            return PL_ERR_UNAVAIL;
        }
        if (wslay_event_want_write(c->ws) && !wait_fd(c->fd, POLLOUT, IO_TIMEOUT_MS)) {
            return PL_ERR_UNAVAIL;
        }
    }
    return PL_OK;
}

/* Takes the "ready" frame out of the inbox (noting the gateway): 1 when it had come. */
static int take_ready(pc_client_t *c)
{
    for (size_t k = 0; k < json_array_size(c->inbox); k++) {
        json_t *f = json_array_get(c->inbox, k);
        if (strcmp(json_string_value(json_object_get(f, "type")) ?: "", "ready") == 0) {
            snprintf(c->gateway, sizeof(c->gateway), "%s",
                     json_string_value(json_object_get(f, "gateway")) ?: "");
            json_array_remove(c->inbox, k);
            return 1;
        }
    }
    return 0;
}

/* The WebSocket handshake; *refused is set when an HTTP answer other than 101, 401 or 403
 * came (a proxy that does not pass upgrades), the case for falling back to long-polling. */
static int ws_connect(pc_client_t *c, int *refused)
{
    unsigned char raw[16];
    char key[32], accept[29];
    pl_buf_t head;
    pc_disconnect(c);
    c->close_code = 0;
    c->closed = 0;
    c->fd = dial(c->host, c->port);
    if (c->fd < 0) {
        return PL_ERR_UNAVAIL;
    }
    pl_random_bytes(raw, sizeof(raw));
    EVP_EncodeBlock((unsigned char *)key, raw, sizeof(raw));
    pl_buf_init(&head, 16384);
    pl_buf_printf(&head,
                  "GET /ws HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n",
                  c->host, c->port, key);
    if (c->token != NULL) {
        pl_buf_printf(&head, "Authorization: Bearer %s\r\n", c->token);
    }
    pl_buf_append_str(&head, "\r\n");
    int rc = send_all(c->fd, head.data, head.len);
    pl_buf_reset(&head);
    long hl = rc == PL_OK ? read_head(c->fd, &head) : -1;
    if (hl < 0) {
        rc = PL_ERR_UNAVAIL;
        goto fail;
    }
    int status = head.len > 12 ? (int)strtol(head.data + 9, NULL, 10) : 0;
    if (status != 101) {
        rc = status == 401 ? PL_ERR_UNAUTH : status == 403 ? PL_ERR_FORBIDDEN : PL_ERR_UNAVAIL;
        *refused = status != 401 && status != 403 && status != 503 && status != 429;
        goto fail;
    }
    pl_ws_accept(key, accept);
    if (strstr(head.data, accept) == NULL) {
        rc = PL_ERR_PROTO;
        goto fail;
    }
    if ((size_t)hl < head.len) {
        c->pre_len = head.len - (size_t)hl;
        c->pre = malloc(c->pre_len);
        memcpy(c->pre, head.data + hl, c->pre_len);
    }
    pl_buf_free(&head);
    c->inbox = json_array();
    if (wslay_event_context_client_init(&c->ws, &ws_callbacks, c) != 0) {
        pc_disconnect(c);
        return PL_ERR_NOMEM;
    }
    wslay_event_config_set_max_recv_msg_length(c->ws, 4u << 20);
    /* Wait for "ready" (or a close). */
    for (int i = 0; i < 100 && !c->closed; i++) {
        if (c->pre_off < c->pre_len || wait_fd(c->fd, POLLIN, 100)) {
            if (wslay_event_recv(c->ws) != 0) {
                break;
            }
        }
        if (take_ready(c)) {
            return PL_OK;
        }
    }
    pc_disconnect(c);
    return c->close_code == 1008 ? PL_ERR_UNAUTH : PL_ERR_UNAVAIL;
fail:
    pl_buf_free(&head);
    pc_disconnect(c);
    return rc;
}

/* ---- long-polling ---- */

/* Starts the next poll on a socket of its own (answered when frames come, or empty after the
 * server's hold time). */
static int lp_start(pc_client_t *c)
{
    pl_buf_t req;
    c->fd = dial(c->host, c->port);
    if (c->fd < 0) {
        return PL_ERR_UNAVAIL;
    }
    pl_buf_init(&req, 16384);
    pl_buf_printf(&req,
                  "GET /v1/lp/poll?sid=%s&ack=%lld HTTP/1.0\r\nHost: %s:%d\r\n"
                  "Connection: close\r\nAuthorization: Bearer %s\r\n\r\n",
                  c->sid, c->lp_next, c->host, c->port, c->token ? c->token : "");
    int rc = send_all(c->fd, req.data, req.len);
    pl_buf_free(&req);
    pl_buf_reset(&c->lp_resp);
    return rc;
}

/* An answer read whole: its frames (those not taken before) go to the inbox. PL_OK (also for
 * 429 and 503, after a short wait), or PL_ERR_UNAVAIL when the session is over (close_code
 * says why). */
static int lp_take(pc_client_t *c)
{
    const char *d = c->lp_resp.data;
    int status =
        c->lp_resp.len > 12 && strncmp(d, "HTTP/1.", 7) == 0 ? (int)strtol(d + 9, NULL, 10) : 0;
    const char *body = status ? strstr(d, "\r\n\r\n") : NULL;
    json_t *a = body != NULL ? json_loads(body + 4, 0, NULL) : NULL;
    json_t *frames = json_object_get(a, "frames");
    if (status == 429 || status == 503) {
        json_decref(a);
        usleep(500 * 1000); /* over a limit, or busy: the session lives; poll again soon */
        return PL_OK;
    }
    if (status != 200 || !json_is_array(frames)) {
        json_decref(a);
        c->close_code = status == 401 ? 4001 : 1006; /* 404: the session is gone */
        return PL_ERR_UNAVAIL;
    }
    long long next = json_integer_value(json_object_get(a, "next"));
    long long first = next - (long long)json_array_size(frames);
    size_t i;
    json_t *f;
    json_array_foreach(frames, i, f)
    {
        if (first + (long long)i >= c->lp_next) { /* below: taken already, answered twice */
            json_array_append(c->inbox, f);
        }
    }
    if (next > c->lp_next) {
        c->lp_next = next;
    }
    json_t *closed = json_object_get(a, "closed");
    if (closed != NULL) {
        c->close_code = (int)json_integer_value(json_object_get(closed, "code"));
    }
    json_decref(a);
    return closed != NULL ? PL_ERR_UNAVAIL : PL_OK;
}

/* Reads what the poll in flight has for up to timeout_ms; a complete answer is taken and the
 * next poll started at once. */
static int lp_pump(pc_client_t *c, int timeout_ms)
{
    if (c->fd < 0 && lp_start(c) != PL_OK) {
        return PL_ERR_UNAVAIL;
    }
    char chunk[16384];
    while (wait_fd(c->fd, POLLIN, timeout_ms)) {
        ssize_t r = recv(c->fd, chunk, sizeof(chunk), 0);
        if (r < 0 && (errno == EAGAIN || errno == EINTR)) {
            continue;
        }
        if (r > 0 && pl_buf_append(&c->lp_resp, chunk, (size_t)r) == PL_OK) {
            timeout_ms = 0; /* take what is there, do not wait for more */
            continue;
        }
        close(c->fd);
        c->fd = -1;
        if (r < 0 || lp_take(c) != PL_OK) {
            return PL_ERR_UNAVAIL;
        }
        return lp_start(c);
    }
    return PL_OK;
}

/* Opens a long-poll session with a random sid (the edge routes by it) and waits for
 * "ready". */
static int lp_connect(pc_client_t *c)
{
    char path[96];
    int status;
    json_t *a = NULL;
    pc_disconnect(c);
    c->close_code = 0;
    c->closed = 0;
    pl_random_hex(c->sid, 16);
    snprintf(path, sizeof(path), "/v1/lp/open?sid=%s", c->sid);
    if (pc_rest(c, "POST", path, NULL, &status, &a) != PL_OK || status != 200) {
        json_decref(a);
        return status == 401 ? PL_ERR_UNAUTH : PL_ERR_UNAVAIL;
    }
    json_decref(a);
    c->lp = 1;
    c->lp_next = 1;
    pl_buf_init(&c->lp_resp, MAX_RESPONSE);
    c->inbox = json_array();
    for (int i = 0; i < 100; i++) {
        if (lp_pump(c, 100) != PL_OK) {
            break;
        }
        if (take_ready(c)) {
            return PL_OK;
        }
    }
    int code = c->close_code;
    pc_disconnect(c);
    return code == 1008 || code == 4001 ? PL_ERR_UNAUTH : PL_ERR_UNAVAIL;
}

int pc_connect(pc_client_t *c)
{
    const char *t = getenv("PARLEY_TRANSPORT");
    if (t != NULL && strcmp(t, "longpoll") == 0) {
        return lp_connect(c);
    }
    int refused = 0;
    int rc = ws_connect(c, &refused);
    return rc != PL_OK && refused ? lp_connect(c) : rc;
}

const char *pc_transport(const pc_client_t *c)
{
    return c->lp ? "longpoll" : "websocket";
}

int pc_send(pc_client_t *c, const char *to, const char *content, const char *client_id,
            char cid_out[65])
{
    char cid[65];
    if (c->ws == NULL && !c->lp) {
        return PL_ERR_UNAVAIL;
    }
    if (client_id == NULL) {
        pl_random_hex(cid, 16);
        client_id = cid;
    }
    if (cid_out != NULL) {
        snprintf(cid_out, 65, "%s", client_id);
    }
    /* A conversation id (d:…, g:…) goes as conv, a username as to. */
    json_t *f = json_pack("{s:s,s:s,s:s,s:s}", "type", "send", "client_id", client_id,
                          pl_conv_kind(to) ? "conv" : "to", to, "content", content);
    int rc = f ? pc_send_frame(c, f) : PL_ERR_INVAL;
    json_decref(f);
    return rc;
}

int pc_send_frame(pc_client_t *c, json_t *frame)
{
    if (c->lp) {
        char path[96];
        int status;
        json_t *batch = json_pack("[O]", frame);
        snprintf(path, sizeof(path), "/v1/lp/send?sid=%s", c->sid);
        int rc = batch != NULL ? pc_rest(c, "POST", path, batch, &status, NULL) : PL_ERR_NOMEM;
        json_decref(batch);
        /* 429 and 503: not taken; like a frame lost with a socket, it is resent after no ack */
        return rc == PL_OK && status == 202 ? PL_OK : PL_ERR_UNAVAIL;
    }
    char *text = c->ws != NULL ? json_dumps(frame, JSON_COMPACT) : NULL;
    if (text == NULL) {
        return c->ws == NULL ? PL_ERR_UNAVAIL : PL_ERR_INVAL;
    }
    struct wslay_event_msg m = {WSLAY_TEXT_FRAME, (const uint8_t *)text, strlen(text)};
    int rc = wslay_event_queue_msg(c->ws, &m) == 0 ? flush(c) : PL_ERR_UNAVAIL;
    free(text);
    return rc;
}

/* ---- delivery rules ---- */

static struct conv_state *conv_get(pc_client_t *c, const char *conv)
{
    size_t h = 5381;
    for (const char *p = conv; *p; p++) {
        h = h * 33 + (unsigned char)*p;
    }
    h %= CONV_BUCKETS;
    for (struct conv_state *s = c->convs[h]; s != NULL; s = s->next) {
        if (strcmp(s->conv, conv) == 0) {
            return s;
        }
    }
    struct conv_state *s = calloc(1, sizeof(*s));
    if (s != NULL) {
        snprintf(s->conv, sizeof(s->conv), "%s", conv);
        s->next = c->convs[h];
        c->convs[h] = s;
    }
    return s;
}

/*
 * The lowest seq of conv among the pushes that have arrived and wait in the inbox, taking in
 * without waiting whatever the connection has ready; 0 when none. A pull stops there: from
 * that seq on the pushes bring the conversation, and pulling it too would show the pushes as
 * duplicates (a sync that pulled to the end while pushes queued behind it wasted thousands of
 * them after a gateway drain).
 */
static long long first_pushed(pc_client_t *c, const char *conv)
{
    if (c->lp) {
        if (c->fd >= 0 && lp_pump(c, 0) != PL_OK) {
            c->closed = 1;
        }
    } else if (c->ws != NULL && (c->pre_off < c->pre_len || wait_fd(c->fd, POLLIN, 0))) {
        if (wslay_event_recv(c->ws) != 0) {
            c->closed = 1;
        }
    }
    long long low = 0;
    for (size_t k = 0; c->inbox != NULL && k < json_array_size(c->inbox); k++) {
        json_t *f = json_array_get(c->inbox, k);
        long long seq = json_integer_value(json_object_get(f, "seq"));
        const char *fc = json_string_value(json_object_get(f, "conv"));
        if (fc != NULL && strcmp(fc, conv) == 0 && seq > 0 &&
            strcmp(json_string_value(json_object_get(f, "type")) ?: "", "msg") == 0 &&
            (low == 0 || seq < low)) {
            low = seq;
        }
    }
    return low;
}

/* Pulls conv after s->seq (up to before_seq when > 0, and up to the first push of it that has
 * arrived) and delivers it in order. */
static int fill(pc_client_t *c, struct conv_state *s, long long before_seq, pc_msg_fn on_msg,
                void *ud)
{
    for (;;) {
        char path[256];
        int status;
        json_t *resp = NULL;
        snprintf(path, sizeof(path), "/v1/conversations/%s/messages?after_seq=%lld&limit=200",
                 s->conv, s->seq);
        if (pc_rest(c, "GET", path, NULL, &status, &resp) != PL_OK || status != 200) {
            json_decref(resp);
            return PL_ERR_UNAVAIL;
        }
        json_t *msgs = json_object_get(resp, "messages");
        size_t n = json_array_size(msgs);
        int stop = n == 0;
        long long pushed = first_pushed(c, s->conv);
        if (pushed > 0 && (before_seq <= 0 || pushed < before_seq)) {
            before_seq = pushed;
        }
        for (size_t i = 0; i < n; i++) {
            json_t *m = json_array_get(msgs, i);
            long long seq = json_integer_value(json_object_get(m, "seq"));
            if (before_seq > 0 && seq >= before_seq) {
                stop = 1;
                break;
            }
            /* A group's history begins at the member's joined_seq: the first item of a
             * conversation not started yet is where this member's stream starts. */
            if (seq == s->seq + 1 || !s->started) {
                s->seq = seq;
                s->started = 1;
                c->delivered++;
                on_msg(ud, m);
            }
        }
        json_decref(resp);
        if (stop || n < 200) {
            return PL_OK;
        }
    }
}

static void deliver(pc_client_t *c, json_t *m, pc_msg_fn on_msg, void *ud)
{
    const char *conv = json_string_value(json_object_get(m, "conv"));
    long long seq = json_integer_value(json_object_get(m, "seq"));
    struct conv_state *s = conv ? conv_get(c, conv) : NULL;
    if (s == NULL || seq <= s->seq) {
        c->dropped++;
        return;
    }
    if (seq > s->seq + 1) {
        fill(c, s, seq, on_msg, ud); /* a gap: pull what is missing first */
    }
    /* Not started and history held nothing before it: an item is stored before it is pushed,
     * so this is the first item of the member's window (a group joined at seq > 1). */
    if (seq == s->seq + 1 || !s->started) {
        s->seq = seq;
        s->started = 1;
        c->delivered++;
        on_msg(ud, m);
    }
}

int pc_poll(pc_client_t *c, int timeout_ms, pc_msg_fn on_msg, pc_msg_fn on_frame, void *ud)
{
    if (c->lp) {
        if (lp_pump(c, timeout_ms) != PL_OK) {
            c->closed = 1;
        }
    } else if (c->ws == NULL || flush(c) != PL_OK) {
        return PL_ERR_UNAVAIL;
    } else if (c->pre_off < c->pre_len || wait_fd(c->fd, POLLIN, timeout_ms)) {
        if (wslay_event_recv(c->ws) != 0) {
            c->closed = 1;
        }
    }
    json_t *frames = c->inbox;
    c->inbox = json_array();
    size_t i;
    json_t *f;
    json_array_foreach(frames, i, f)
    {
        const char *type = json_string_value(json_object_get(f, "type"));
        if (type != NULL && strcmp(type, "msg") == 0) {
            if (on_msg != NULL) {
                deliver(c, f, on_msg, ud);
            }
            continue;
        }
        long long seq = json_integer_value(json_object_get(f, "seq"));
        const char *conv = json_string_value(json_object_get(f, "conv"));
        struct conv_state *s = type != NULL && strcmp(type, "ack") == 0 &&
                                       json_object_get(f, "client_id") != NULL && conv != NULL
                                   ? conv_get(c, conv)
                                   : NULL;
        if (s != NULL && on_msg != NULL && s->started && seq > s->seq) {
            /* A resend of a stored message is not pushed again: pulled if it is missing. */
            fill(c, s, seq + 1, on_msg, ud);
        }
        if (on_frame != NULL) {
            on_frame(ud, f);
        }
    }
    json_decref(frames);
    flush(c);
    return c->closed ? PL_ERR_UNAVAIL : PL_OK;
}

int pc_sync(pc_client_t *c, pc_msg_fn on_msg, void *ud)
{
    int status;
    json_t *resp = NULL;
    if (pc_rest(c, "GET", "/v1/conversations?limit=1000", NULL, &status, &resp) != PL_OK ||
        status != 200) {
        json_decref(resp);
        return status == 401 ? PL_ERR_UNAUTH : PL_ERR_UNAVAIL;
    }
    int rc = PL_OK;
    size_t i;
    json_t *conv;
    json_array_foreach(json_object_get(resp, "conversations"), i, conv)
    {
        struct conv_state *s = conv_get(c, json_string_value(json_object_get(conv, "conv")));
        long long last = json_integer_value(json_object_get(conv, "last_seq"));
        if (s != NULL && last > s->seq && fill(c, s, 0, on_msg, ud) != PL_OK) {
            rc = PL_ERR_UNAVAIL;
        }
    }
    json_decref(resp);
    return rc;
}

void pc_set_seen(pc_client_t *c, const char *conv, long long seq)
{
    struct conv_state *s = conv_get(c, conv);
    if (s != NULL && seq > s->seq) {
        s->seq = seq;
        s->started = 1;
    }
}
