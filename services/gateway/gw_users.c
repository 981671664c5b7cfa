/*
 * May the sender write to the recipient? (see gw_users.h) The worker asks parley-auth
 * (GET /internal/users/<name>?from=<sender>, answered 200, 403 or 404 without a token) with a
 * blocking HTTP/1.1 request, and the loop caches the answer per pair: a yes or a no for a
 * minute (parley-auth's notices make the gateways forget sooner, and the store decides again
 * before numbering), absence for five seconds (a user may register any moment). Answers are
 * bucketed by recipient, so forgetting a recipient reads one bucket.
 */
#include "gw_users.h"
#include "parley/enc.h"
#include "parley/err.h"
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

/* One blocking lookup. Returns PL_OK, PL_ERR_NOTFOUND, PL_ERR_FORBIDDEN or PL_ERR_UNAVAIL. */
static int ask_auth(const char *host, int port, const char *name, const char *from)
{
    int rc = PL_ERR_UNAVAIL;
    char portstr[8];
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *ai = NULL;
    snprintf(portstr, sizeof(portstr), "%d", port);
    if (getaddrinfo(host, portstr, &hints, &ai) != 0 || ai == NULL) {
        return PL_ERR_UNAVAIL;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        freeaddrinfo(ai);
        return PL_ERR_UNAVAIL;
    }
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0 &&
        (errno != EINPROGRESS || !wait_fd(fd, POLLOUT, HTTP_TIMEOUT_MS))) {
        goto out;
    }
    int soerr = 0;
    socklen_t sl = sizeof(soerr);
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0 || soerr != 0) {
        goto out;
    }
    char req[384];
    int n = snprintf(req, sizeof(req),
                     "GET /internal/users/%s?from=%s HTTP/1.1\r\nHost: %s\r\n"
                     "Connection: close\r\n\r\n",
                     name, from, host);
    if (send(fd, req, (size_t)n, MSG_NOSIGNAL) != n) {
        goto out;
    }
    char resp[64];
    size_t got = 0;
    while (got < 12 && wait_fd(fd, POLLIN, HTTP_TIMEOUT_MS)) {
        ssize_t r = recv(fd, resp + got, sizeof(resp) - 1 - got, 0);
        if (r <= 0) {
            break;
        }
        got += (size_t)r;
    }
    resp[got] = '\0';
    if (strncmp(resp, "HTTP/1.1 200", 12) == 0) {
        rc = PL_OK;
    } else if (strncmp(resp, "HTTP/1.1 404", 12) == 0) {
        rc = PL_ERR_NOTFOUND;
    } else if (strncmp(resp, "HTTP/1.1 403", 12) == 0) {
        rc = PL_ERR_FORBIDDEN;
    }
out:
    close(fd);
    freeaddrinfo(ai);
    return rc;
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
        l->result = ask_auth(u->host, u->port, l->name, l->from);
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
        free(l);
    }
    for (lookup_t *l = u->done, *next; l != NULL; l = next) {
        next = l->next;
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
    k->until_ms = pl_now_ms() + (result == PL_ERR_NOTFOUND ? UNKNOWN_TTL_MS : KNOWN_TTL_MS);
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
    snprintf(job->name, sizeof(job->name), "%s", name);
    snprintf(job->from, sizeof(job->from), "%s", from);
    l->next = u->pending;
    u->pending = l;
    pthread_mutex_lock(&u->lock);
    job->next = u->todo;
    u->todo = job;
    pthread_cond_signal(&u->cond);
    pthread_mutex_unlock(&u->lock);
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
        if (job->result != PL_ERR_UNAVAIL) {
            known_set(u, job->name, job->from, job->result);
        }
        for (lookup_t **pp = &u->pending; *pp != NULL; pp = &(*pp)->next) {
            if (strcmp((*pp)->name, job->name) == 0 && strcmp((*pp)->from, job->from) == 0) {
                lookup_t *l = *pp;
                *pp = l->next;
                answer_all(l, job->result);
                break;
            }
        }
        free(job);
    }
}
