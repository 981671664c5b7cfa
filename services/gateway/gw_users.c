/*
 * Does the recipient exist? The gateway links no MongoDB driver, so it asks parley-auth
 * (GET /internal/users/<name>, answered 200 or 404 without a token) from a worker thread with
 * a blocking HTTP/1.1 request, and caches the answer on the loop: existence for ten minutes
 * (accounts are never renamed), absence for five seconds (a user may register any moment).
 * Concurrent sends to one unknown name share one lookup.
 */
#include "gw.h"
#include "parley/enc.h"
#include "parley/err.h"
#include "parley/log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#define KNOWN_TTL_MS    (10 * 60 * 1000)
#define UNKNOWN_TTL_MS  5000
#define KNOWN_MAX       100000
#define HTTP_TIMEOUT_MS 2000

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

/* One blocking lookup. Returns PL_OK, PL_ERR_NOTFOUND or PL_ERR_UNAVAIL. */
static int ask_auth(const char *host, int port, const char *name)
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
    char req[256];
    int n = snprintf(req, sizeof(req),
                     "GET /internal/users/%s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n",
                     name, host);
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
    }
out:
    close(fd);
    freeaddrinfo(ai);
    return rc;
}

static void *worker(void *arg)
{
    gw_ctx_t *ctx = arg;
    pthread_mutex_lock(&ctx->look_lock);
    for (;;) {
        while (ctx->look_todo == NULL && !atomic_load(&ctx->stopping)) {
            pthread_cond_wait(&ctx->look_cond, &ctx->look_lock);
        }
        if (atomic_load(&ctx->stopping)) {
            break;
        }
        gw_lookup_t *l = ctx->look_todo;
        ctx->look_todo = l->next;
        pthread_mutex_unlock(&ctx->look_lock);
        l->result = ask_auth(ctx->auth_host, ctx->auth_port, l->name);
        pthread_mutex_lock(&ctx->look_lock);
        l->next = ctx->look_done;
        ctx->look_done = l;
        uint64_t one = 1;
        ssize_t w = write(ctx->look_fd, &one, sizeof(one));
        (void)w;
    }
    pthread_mutex_unlock(&ctx->look_lock);
    return NULL;
}

int gw_users_start(gw_ctx_t *ctx)
{
    pthread_mutex_init(&ctx->look_lock, NULL);
    pthread_cond_init(&ctx->look_cond, NULL);
    ctx->look_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (ctx->look_fd < 0 ||
        gw_loop_add(ctx->loop, &ctx->look_w, ctx->look_fd, EPOLLIN, gw_users_on_done, ctx) !=
            PL_OK ||
        pthread_create(&ctx->worker, NULL, worker, ctx) != 0) {
        return PL_ERR_IO;
    }
    return PL_OK;
}

void gw_users_stop(gw_ctx_t *ctx)
{
    pthread_mutex_lock(&ctx->look_lock);
    pthread_cond_broadcast(&ctx->look_cond);
    pthread_mutex_unlock(&ctx->look_lock);
    pthread_join(ctx->worker, NULL);
    gw_loop_del(ctx->loop, &ctx->look_w);
    close(ctx->look_fd);
    for (int pass = 0; pass < 3; pass++) {
        gw_lookup_t *l = pass == 0   ? ctx->look_todo
                         : pass == 1 ? ctx->look_done
                                     : ctx->look_pending;
        while (l != NULL) {
            gw_lookup_t *next = l->next;
            while (l->waiting != NULL) {
                gw_send_t *s = l->waiting;
                l->waiting = s->next;
                free(s->content);
                free(s);
            }
            free(l);
            l = next;
        }
    }
    for (size_t i = 0; i < GW_KNOWN_BUCKETS; i++) {
        for (gw_known_t *k = ctx->known[i], *next; k != NULL; k = next) {
            next = k->next;
            free(k);
        }
        ctx->known[i] = NULL;
    }
    pthread_mutex_destroy(&ctx->look_lock);
    pthread_cond_destroy(&ctx->look_cond);
}

static gw_known_t *known_find(gw_ctx_t *ctx, const char *name)
{
    for (gw_known_t *k = ctx->known[pl_hash_str(name) % GW_KNOWN_BUCKETS]; k; k = k->next) {
        if (strcmp(k->name, name) == 0) {
            return k;
        }
    }
    return NULL;
}

static void known_set(gw_ctx_t *ctx, const char *name, int exists)
{
    gw_known_t *k = known_find(ctx, name);
    if (k == NULL) {
        if (ctx->nknown >= KNOWN_MAX) {
            /* Bounded: dropping the cache costs one lookup per name. */
            for (size_t i = 0; i < GW_KNOWN_BUCKETS; i++) {
                for (gw_known_t *e = ctx->known[i], *next; e != NULL; e = next) {
                    next = e->next;
                    free(e);
                }
                ctx->known[i] = NULL;
            }
            ctx->nknown = 0;
        }
        k = calloc(1, sizeof(*k));
        if (k == NULL) {
            return;
        }
        snprintf(k->name, sizeof(k->name), "%s", name);
        size_t h = pl_hash_str(name) % GW_KNOWN_BUCKETS;
        k->next = ctx->known[h];
        ctx->known[h] = k;
        ctx->nknown++;
    }
    k->exists = exists;
    k->until_ms = pl_now_ms() + (exists ? KNOWN_TTL_MS : UNKNOWN_TTL_MS);
}

void gw_users_forget(gw_ctx_t *ctx, const char *name)
{
    gw_known_t *k = known_find(ctx, name);
    if (k != NULL) {
        k->until_ms = 0;
    }
}

static void settle(gw_ctx_t *ctx, gw_send_t *s, int result)
{
    if (result == PL_OK) {
        gw_produce(ctx, s);
    } else if (result == PL_ERR_NOTFOUND) {
        gw_send_fail(ctx, s, "not_found", "no such user", 0);
    } else {
        gw_send_fail(ctx, s, "unavailable", "cannot check the recipient now; retry", 1000);
    }
}

void gw_users_check(gw_ctx_t *ctx, gw_send_t *s)
{
    gw_known_t *k = known_find(ctx, s->to);
    if (k != NULL && k->until_ms > pl_now_ms()) {
        settle(ctx, s, k->exists ? PL_OK : PL_ERR_NOTFOUND);
        return;
    }
    for (gw_lookup_t *l = ctx->look_pending; l != NULL; l = l->next) {
        if (strcmp(l->name, s->to) == 0) {
            /* Appended, so sends waiting on one lookup are produced in the order received. */
            gw_send_t **tail = &l->waiting;
            while (*tail != NULL) {
                tail = &(*tail)->next;
            }
            s->next = NULL;
            *tail = s;
            return;
        }
    }
    gw_lookup_t *l = calloc(1, sizeof(*l));
    gw_lookup_t *job = calloc(1, sizeof(*job));
    if (l == NULL || job == NULL) {
        free(l);
        free(job);
        settle(ctx, s, PL_ERR_UNAVAIL);
        return;
    }
    /* The loop keeps l (with its waiting sends); the worker gets a copy of the name only. */
    snprintf(l->name, sizeof(l->name), "%s", s->to);
    snprintf(job->name, sizeof(job->name), "%s", s->to);
    l->waiting = s;
    s->next = NULL;
    l->next = ctx->look_pending;
    ctx->look_pending = l;
    pthread_mutex_lock(&ctx->look_lock);
    job->next = ctx->look_todo;
    ctx->look_todo = job;
    pthread_cond_signal(&ctx->look_cond);
    pthread_mutex_unlock(&ctx->look_lock);
}

void gw_users_on_done(gw_watch_t *w, uint32_t events)
{
    gw_ctx_t *ctx = w->ud;
    uint64_t n;
    (void)events;
    ssize_t r = read(ctx->look_fd, &n, sizeof(n));
    (void)r;
    pthread_mutex_lock(&ctx->look_lock);
    gw_lookup_t *done = ctx->look_done;
    ctx->look_done = NULL;
    pthread_mutex_unlock(&ctx->look_lock);
    while (done != NULL) {
        gw_lookup_t *job = done;
        done = job->next;
        if (job->result != PL_ERR_UNAVAIL) {
            known_set(ctx, job->name, job->result == PL_OK);
        }
        for (gw_lookup_t **pp = &ctx->look_pending; *pp != NULL; pp = &(*pp)->next) {
            if (strcmp((*pp)->name, job->name) == 0) {
                gw_lookup_t *l = *pp;
                *pp = l->next;
                while (l->waiting != NULL) {
                    gw_send_t *s = l->waiting;
                    l->waiting = s->next;
                    settle(ctx, s, job->result);
                }
                free(l);
                break;
            }
        }
        free(job);
    }
}
