/*
 * May the sender write to the recipient? (see gw_users.h) The worker asks parley-auth
 * (GET /internal/users/<name>?from=<sender>, answered 200, 403 or 404 without a token) with a
 * blocking HTTP/1.1 request, and the loop caches the answer per pair: a yes for a minute
 * (parley-auth's notices make the gateways forget sooner, and the store decides again before
 * numbering), absence for five seconds (a user may register any moment), a no not at all (a
 * refused sender asks each time, within its send budget, so an unblock counts at once). Answers are
 * bucketed by recipient, so forgetting a recipient reads one bucket.
 */
#include "gw_users.h"
#include "parley/enc.h"
#include "parley/err.h"
#include "parley/buf.h"
#include "parley/log.h"
#include "parley/wire.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#define KNOWN_TTL_MS    (60 * 1000)
#define UNKNOWN_TTL_MS  5000
#define KNOWN_MAX       100000
#define HTTP_TIMEOUT_MS 2000
#define HTTP_BODY_MAX   (4 * 1024 * 1024) /* a viewers list of 10,000 names fits */
#define KNOWN_BUCKETS   4096

typedef struct known_s {
    char name[PL_USERNAME_LEN];
    char from[PL_USERNAME_LEN];
    int result; /* PL_OK, PL_ERR_NOTFOUND or PL_ERR_FORBIDDEN */
    long long until_ms;
    struct known_s *next;
} known_t;

/* One question waiting for a lookup. */
typedef struct waiter_s {
    gw_users_answer_fn fn;
    void *arg;
    struct waiter_s *next;
} waiter_t;

/* A lookup: one per name in flight, with every question waiting on it. */
typedef struct lookup_s {
    char name[PL_USERNAME_LEN];
    char from[PL_USERNAME_LEN];
    /* presence jobs (gw_users_presence) and calls (gw_users_call): no cache, one answer each */
    uint64_t job_id; /* 0 for a permission lookup */
    char method[8];  /* a call: its request */
    char path[160];
    char *body;
    char status[8];
    long long at_ms;
    json_t *viewers;
    gw_users_viewers_fn vfn;
    void *varg;
    int result;
    waiter_t *waiting;
    struct lookup_s *next;
} lookup_t;

struct gw_users_s {
    gw_loop_t *loop;
    char host[128];
    int port;
    pthread_t worker;
    int worker_started;
    atomic_int stopping;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    lookup_t *todo;    /* for the worker */
    lookup_t *done;    /* for the loop */
    lookup_t *pending; /* loop-owned: in flight, with their waiters */
    gw_watch_t w;
    int fd;
    known_t *known[KNOWN_BUCKETS];
    size_t nknown;
    uint64_t next_job;
};

/* Waits for fd to become ready for events, at most ms. 1 when ready. */
static int wait_fd(int fd, short events, int ms)
{
    struct pollfd p = {.fd = fd, .events = events};
    int n;
    do {
        n = poll(&p, 1, ms);
    } while (n < 0 && errno == EINTR);
    return n == 1;
}

/* A connected socket to host:port, or -1. */
static int dial(const char *host, int port)
{
    char portstr[8];
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *ai = NULL;
    snprintf(portstr, sizeof(portstr), "%d", port);
    if (getaddrinfo(host, portstr, &hints, &ai) != 0 || ai == NULL) {
        return -1;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int ok = fd >= 0;
    if (ok && connect(fd, ai->ai_addr, ai->ai_addrlen) < 0 &&
        (errno != EINPROGRESS || !wait_fd(fd, POLLOUT, HTTP_TIMEOUT_MS))) {
        ok = 0;
    }
    int soerr = 0;
    socklen_t sl = sizeof(soerr);
    if (ok && (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0 || soerr != 0)) {
        ok = 0;
    }
    freeaddrinfo(ai);
    if (!ok && fd >= 0) {
        close(fd);
    }
    return ok ? fd : -1;
}

/*
 * One blocking HTTP/1.1 request to parley-auth (Connection: close). Returns the status (0 when
 * no answer came); with out, the body parsed as JSON (NULL when it is not, or too large).
 */
static int http_call(const char *host, int port, const char *method, const char *path,
                     const char *body, json_t **out)
{
    int status = 0;
    int fd = dial(host, port);
    if (out != NULL) {
        *out = NULL;
    }
    if (fd < 0) {
        return 0;
    }
    size_t blen = body ? strlen(body) : 0;
    char head[512];
    int n = snprintf(head, sizeof(head),
                     "%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n"
                     "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                     method, path, host, blen);
    pl_buf_t in;
    pl_buf_init(&in, HTTP_BODY_MAX);
    if (n > 0 && (size_t)n < sizeof(head) && send(fd, head, (size_t)n, MSG_NOSIGNAL) == n &&
        (blen == 0 || send(fd, body, blen, MSG_NOSIGNAL) == (ssize_t)blen)) {
        char chunk[4096];
        while (wait_fd(fd, POLLIN, HTTP_TIMEOUT_MS)) {
            ssize_t r = recv(fd, chunk, sizeof(chunk), 0);
            if (r <= 0 || pl_buf_append(&in, chunk, (size_t)r) != PL_OK ||
                (out == NULL && in.len >= 12)) {
                break; /* the status line is all a status question needs */
            }
        }
    }
    close(fd);
    if (in.len >= 12 && strncmp(in.data, "HTTP/1.1 ", 9) == 0) {
        status = (int)strtol(in.data + 9, NULL, 10);
    }
    const char *sep = in.len ? memmem(in.data, in.len, "\r\n\r\n", 4) : NULL;
    if (out != NULL && sep != NULL) {
        size_t off = (size_t)(sep + 4 - in.data);
        *out = json_loadb(in.data + off, in.len - off, 0, NULL);
    }
    pl_buf_free(&in);
    return status;
}

/* One permission lookup. Returns PL_OK, PL_ERR_NOTFOUND, PL_ERR_FORBIDDEN or PL_ERR_UNAVAIL. */
static int ask_auth(const char *host, int port, const char *name, const char *from)
{
    char path[128];
    snprintf(path, sizeof(path), "/internal/users/%s?from=%s", name, from);
    switch (http_call(host, port, "GET", path, NULL, NULL)) {
    case 200:
        return PL_OK;
    case 404:
        return PL_ERR_NOTFOUND;
    case 403:
        return PL_ERR_FORBIDDEN;
    default:
        return PL_ERR_UNAVAIL;
    }
}

/* A presence change about to be announced: who may see it (see gw_users_presence). */
static int ask_viewers(const char *host, int port, lookup_t *l)
{
    char path[96];
    char body[96];
    snprintf(path, sizeof(path), "/internal/presence/%s", l->name);
    snprintf(body, sizeof(body), "{\"status\":\"%s\",\"at\":%lld}", l->status, l->at_ms);
    json_t *resp = NULL;
    int status = http_call(host, port, "POST", path, body, &resp);
    json_t *v = json_object_get(resp, "viewers");
    if (status == 200 && json_is_array(v)) {
        l->viewers = json_incref(v);
    }
    json_decref(resp);
    return l->viewers != NULL ? PL_OK : status == 404 ? PL_ERR_NOTFOUND : PL_ERR_UNAVAIL;
}

/* A call (gw_users_call): the whole JSON answer of a 200 goes back in l->viewers. */
static int ask_call(const char *host, int port, lookup_t *l)
{
    json_t *resp = NULL;
    int status = http_call(host, port, l->method, l->path, l->body, &resp);
    if (status == 200 && resp != NULL) {
        l->viewers = resp;
        return PL_OK;
    }
    json_decref(resp);
    return status == 404 ? PL_ERR_NOTFOUND : status == 403 ? PL_ERR_FORBIDDEN : PL_ERR_UNAVAIL;
}

static void *worker(void *arg)
{
    gw_users_t *u = arg;
    pthread_mutex_lock(&u->lock);
    for (;;) {
        while (u->todo == NULL && !atomic_load(&u->stopping)) {
            pthread_cond_wait(&u->cond, &u->lock);
        }
        if (atomic_load(&u->stopping)) {
            break;
        }
        lookup_t *l = u->todo;
        u->todo = l->next;
        pthread_mutex_unlock(&u->lock);
        l->result = l->path[0]  ? ask_call(u->host, u->port, l)
                    : l->job_id ? ask_viewers(u->host, u->port, l)
                                : ask_auth(u->host, u->port, l->name, l->from);
        pthread_mutex_lock(&u->lock);
        l->next = u->done;
        u->done = l;
        uint64_t one = 1;
        ssize_t w = write(u->fd, &one, sizeof(one));
        (void)w;
    }
    pthread_mutex_unlock(&u->lock);
    return NULL;
}

/* Queues a copy of l for the worker. */
static void submit(gw_users_t *u, const lookup_t *l, lookup_t *job)
{
    *job = *l;
    job->waiting = NULL;
    job->next = NULL;
    pthread_mutex_lock(&u->lock);
    job->next = u->todo;
    u->todo = job;
    pthread_cond_signal(&u->cond);
    pthread_mutex_unlock(&u->lock);
}

void gw_users_presence(gw_users_t *u, const char *user, const char *status, long long at_ms,
                       gw_users_viewers_fn fn, void *arg)
{
    lookup_t *l = calloc(1, sizeof(*l));
    lookup_t *job = calloc(1, sizeof(*job));
    if (l == NULL || job == NULL) {
        free(l);
        free(job);
        fn(arg, PL_ERR_UNAVAIL, NULL);
        return;
    }
    snprintf(l->name, sizeof(l->name), "%s", user);
    snprintf(l->status, sizeof(l->status), "%s", status);
    l->at_ms = at_ms;
    l->job_id = ++u->next_job;
    l->vfn = fn;
    l->varg = arg;
    l->next = u->pending;
    u->pending = l;
    submit(u, l, job);
}

void gw_users_call(gw_users_t *u, const char *method, const char *path, json_t *body,
                   gw_users_viewers_fn fn, void *arg)
{
    lookup_t *l = calloc(1, sizeof(*l));
    lookup_t *job = calloc(1, sizeof(*job));
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (l == NULL || job == NULL || (body != NULL && text == NULL) ||
        strlen(path) >= sizeof(l->path)) {
        free(l);
        free(job);
        free(text);
        fn(arg, PL_ERR_UNAVAIL, NULL);
        return;
    }
    snprintf(l->method, sizeof(l->method), "%s", method);
    snprintf(l->path, sizeof(l->path), "%s", path);
    l->job_id = ++u->next_job;
    l->vfn = fn;
    l->varg = arg;
    l->next = u->pending;
    u->pending = l;
    l->body = text;
    submit(u, l, job); /* the worker's copy owns the body from here */
    l->body = NULL;
}

/* The pending lookup job answers, unlinked from the pending list; NULL when none. */
static lookup_t *take_pending(gw_users_t *u, const lookup_t *job)
{
    for (lookup_t **pp = &u->pending; *pp != NULL; pp = &(*pp)->next) {
        lookup_t *l = *pp;
        if (job->job_id ? l->job_id == job->job_id
                        : l->job_id == 0 && strcmp(l->name, job->name) == 0 &&
                              strcmp(l->from, job->from) == 0) {
            *pp = l->next;
            return l;
        }
    }
    return NULL;
}

static void on_done(gw_watch_t *w, uint32_t events);

gw_users_t *gw_users_new(gw_loop_t *loop, const char *host, int port)
{
    gw_users_t *u = calloc(1, sizeof(*u));
    if (u == NULL) {
        return NULL;
    }
    u->loop = loop;
    snprintf(u->host, sizeof(u->host), "%s", host);
    u->port = port;
    pthread_mutex_init(&u->lock, NULL);
    pthread_cond_init(&u->cond, NULL);
    u->fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (u->fd < 0 || gw_loop_add(loop, &u->w, u->fd, EPOLLIN, on_done, u) != PL_OK ||
        pthread_create(&u->worker, NULL, worker, u) != 0) {
        gw_users_free(&u);
        return NULL;
    }
    u->worker_started = 1;
    return u;
}

static void forget_all(gw_users_t *u)
{
    for (size_t i = 0; i < KNOWN_BUCKETS; i++) {
        for (known_t *k = u->known[i], *next; k != NULL; k = next) {
            next = k->next;
            free(k);
        }
        u->known[i] = NULL;
    }
    u->nknown = 0;
}

/* Answers every question waiting on l with rc, in the order asked, and frees l. */
static void answer_all(lookup_t *l, int rc)
{
    if (l->job_id != 0) {
        l->vfn(l->varg, rc, rc == PL_OK ? l->viewers : NULL);
        json_decref(l->viewers);
        free(l);
        return;
    }
    while (l->waiting != NULL) {
        waiter_t *q = l->waiting;
        l->waiting = q->next;
        q->fn(q->arg, rc);
        free(q);
    }
    free(l);
}

void gw_users_free(gw_users_t **pu)
{
    if (pu == NULL || *pu == NULL) {
        return;
    }
    gw_users_t *u = *pu;
    if (u->worker_started) {
        pthread_mutex_lock(&u->lock);
        atomic_store(&u->stopping, 1);
        pthread_cond_broadcast(&u->cond);
        pthread_mutex_unlock(&u->lock);
        pthread_join(u->worker, NULL);
    }
    if (u->fd >= 0) {
        gw_loop_del(u->loop, &u->w);
        close(u->fd);
    }
    /* The worker's copies carry no waiters; the loop's lookups answer theirs. */
    for (lookup_t *l = u->todo, *next; l != NULL; l = next) {
        next = l->next;
        free(l->body);
        free(l);
    }
    for (lookup_t *l = u->done, *next; l != NULL; l = next) {
        next = l->next;
        json_decref(l->viewers);
        free(l->body);
        free(l);
    }
    for (lookup_t *l = u->pending, *next; l != NULL; l = next) {
        next = l->next;
        answer_all(l, PL_ERR_UNAVAIL);
    }
    forget_all(u);
    pthread_mutex_destroy(&u->lock);
    pthread_cond_destroy(&u->cond);
    free(u);
    *pu = NULL;
}

static known_t *known_find(gw_users_t *u, const char *name, const char *from)
{
    for (known_t *k = u->known[pl_hash_str(name) % KNOWN_BUCKETS]; k; k = k->next) {
        if (strcmp(k->name, name) == 0 && strcmp(k->from, from) == 0) {
            return k;
        }
    }
    return NULL;
}

static void known_set(gw_users_t *u, const char *name, const char *from, int result)
{
    known_t *k = known_find(u, name, from);
    if (k == NULL) {
        if (u->nknown >= KNOWN_MAX) {
            forget_all(u); /* bounded: dropping the cache costs one lookup per name */
        }
        k = calloc(1, sizeof(*k));
        if (k == NULL) {
            return;
        }
        snprintf(k->name, sizeof(k->name), "%s", name);
        snprintf(k->from, sizeof(k->from), "%s", from);
        size_t h = pl_hash_str(name) % KNOWN_BUCKETS;
        k->next = u->known[h];
        u->known[h] = k;
        u->nknown++;
    }
    k->result = result;
    /* A known answer lives 60 to 90 s: answers taken together (every user of a login storm,
     * every pair of a bench step) would otherwise all lapse in the same second and be asked
     * again at once, holding their sends behind a burst of lookups (make bench-receipts saw
     * p99 over 3 s in the step that met it). */
    long long jitter = result == PL_ERR_NOTFOUND
                           ? 0
                           : (long long)((pl_hash_str(from) ^ pl_hash_str(name)) % 30000);
    k->until_ms =
        pl_now_ms() + (result == PL_ERR_NOTFOUND ? UNKNOWN_TTL_MS : KNOWN_TTL_MS) + jitter;
}

void gw_users_forget(gw_users_t *u, const char *name)
{
    for (known_t *k = u->known[pl_hash_str(name) % KNOWN_BUCKETS]; k; k = k->next) {
        if (strcmp(k->name, name) == 0) {
            k->until_ms = 0;
        }
    }
}

/* Appends a question to l, so questions waiting on one lookup are answered in order. */
static int add_waiter(lookup_t *l, gw_users_answer_fn fn, void *arg)
{
    waiter_t *q = calloc(1, sizeof(*q));
    if (q == NULL) {
        return PL_ERR_NOMEM;
    }
    q->fn = fn;
    q->arg = arg;
    waiter_t **tail = &l->waiting;
    while (*tail != NULL) {
        tail = &(*tail)->next;
    }
    *tail = q;
    return PL_OK;
}

void gw_users_ask(gw_users_t *u, const char *name, const char *from, gw_users_answer_fn fn,
                  void *arg)
{
    known_t *k = known_find(u, name, from);
    if (k != NULL && k->until_ms > pl_now_ms()) {
        fn(arg, k->result);
        return;
    }
    for (lookup_t *l = u->pending; l != NULL; l = l->next) {
        if (strcmp(l->name, name) == 0 && strcmp(l->from, from) == 0) {
            if (add_waiter(l, fn, arg) != PL_OK) {
                fn(arg, PL_ERR_UNAVAIL);
            }
            return;
        }
    }
    lookup_t *l = calloc(1, sizeof(*l));
    lookup_t *job = calloc(1, sizeof(*job));
    if (l == NULL || job == NULL || add_waiter(l, fn, arg) != PL_OK) {
        free(l);
        free(job);
        fn(arg, PL_ERR_UNAVAIL);
        return;
    }
    /* The loop keeps l (with its waiters); the worker gets a copy of the name only. */
    snprintf(l->name, sizeof(l->name), "%s", name);
    snprintf(l->from, sizeof(l->from), "%s", from);
    l->next = u->pending;
    u->pending = l;
    submit(u, l, job);
}

static void on_done(gw_watch_t *w, uint32_t events)
{
    gw_users_t *u = w->ud;
    uint64_t n;
    (void)events;
    ssize_t r = read(u->fd, &n, sizeof(n));
    (void)r;
    pthread_mutex_lock(&u->lock);
    lookup_t *done = u->done;
    u->done = NULL;
    pthread_mutex_unlock(&u->lock);
    while (done != NULL) {
        lookup_t *job = done;
        done = job->next;
        /* A "no" is never cached: an unblock or a new contact must count from its answer on,
         * while a stale "yes" is caught by the store before numbering. */
        if (job->job_id == 0 && (job->result == PL_OK || job->result == PL_ERR_NOTFOUND)) {
            known_set(u, job->name, job->from, job->result);
        }
        lookup_t *l = take_pending(u, job);
        if (l != NULL) {
            l->viewers = job->viewers; /* handed over */
            job->viewers = NULL;
            answer_all(l, job->result);
        }
        json_decref(job->viewers);
        free(job->body);
        free(job);
    }
}
