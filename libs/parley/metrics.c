/*
 * Metrics registry. Series are kept in one list in registration order; rendering groups them
 * by name so each family gets its HELP and TYPE lines once, as the exposition format requires.
 */
#include "parley/metrics.h"
#include "parley/err.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

enum kind { COUNTER, GAUGE, HISTOGRAM };

struct pl_metric_s {
    struct pl_metric_s *next;
    enum kind kind;
    char *name;
    char *help;
    char *labels;
    _Atomic int64_t value; /* counter or gauge */
    double *bounds;        /* histogram only */
    size_t nbounds;
    _Atomic uint64_t *buckets; /* nbounds + 1, the last one is +Inf */
    _Atomic uint64_t sum_bits; /* a double, updated by compare-and-swap */
    _Atomic uint64_t count;
};

struct pl_metrics_s {
    pthread_mutex_t lock;
    pl_metric_t *head;
    pl_metric_t *tail;
};

const double pl_metrics_latency_bounds[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                            0.01,   0.025,   0.05,   0.1,   0.25,   0.5,
                                            1,      2.5,     5,      10};
const size_t pl_metrics_latency_nbounds =
    sizeof(pl_metrics_latency_bounds) / sizeof(pl_metrics_latency_bounds[0]);

pl_metrics_t *pl_metrics_new(void)
{
    pl_metrics_t *m = calloc(1, sizeof(*m));
    if (m != NULL) {
        pthread_mutex_init(&m->lock, NULL);
    }
    return m;
}

static void metric_free(pl_metric_t *s)
{
    free(s->name);
    free(s->help);
    free(s->labels);
    free(s->bounds);
    free((void *)s->buckets);
    free(s);
}

void pl_metrics_free(pl_metrics_t **pm)
{
    if (pm == NULL || *pm == NULL) {
        return;
    }
    pl_metrics_t *m = *pm;
    for (pl_metric_t *s = m->head, *next; s != NULL; s = next) {
        next = s->next;
        metric_free(s);
    }
    pthread_mutex_destroy(&m->lock);
    free(m);
    *pm = NULL;
}

static int same_labels(const char *a, const char *b)
{
    return strcmp(a ? a : "", b ? b : "") == 0;
}

static pl_metric_t *get(pl_metrics_t *m, enum kind kind, const char *name, const char *help,
                        const char *labels, const double *bounds, size_t nbounds)
{
    pl_metric_t *s = NULL;
    pthread_mutex_lock(&m->lock);
    for (pl_metric_t *p = m->head; p != NULL; p = p->next) {
        if (strcmp(p->name, name) == 0) {
            if (p->kind != kind) {
                goto out;
            }
            if (same_labels(p->labels, labels)) {
                s = p;
                goto out;
            }
        }
    }
    s = calloc(1, sizeof(*s));
    if (s == NULL) {
        goto out;
    }
    s->kind = kind;
    s->name = strdup(name);
    s->help = strdup(help ? help : "");
    s->labels = labels && *labels ? strdup(labels) : NULL;
    if (kind == HISTOGRAM) {
        s->nbounds = nbounds;
        s->bounds = malloc(sizeof(double) * (nbounds ? nbounds : 1));
        s->buckets = calloc(nbounds + 1, sizeof(*s->buckets));
        if (s->bounds != NULL) {
            memcpy(s->bounds, bounds, sizeof(double) * nbounds);
        }
    }
    if (s->name == NULL || s->help == NULL || (labels && *labels && s->labels == NULL) ||
        (kind == HISTOGRAM && (s->bounds == NULL || s->buckets == NULL))) {
        metric_free(s);
        s = NULL;
        goto out;
    }
    /* Keep a family's series next to each other so rendering can group them. */
    pl_metric_t *after = NULL;
    for (pl_metric_t *p = m->head; p != NULL; p = p->next) {
        if (strcmp(p->name, name) == 0) {
            after = p;
        }
    }
    if (after != NULL) {
        s->next = after->next;
        after->next = s;
        if (m->tail == after) {
            m->tail = s;
        }
    } else if (m->tail != NULL) {
        m->tail->next = s;
        m->tail = s;
    } else {
        m->head = m->tail = s;
    }
out:
    pthread_mutex_unlock(&m->lock);
    return s;
}

pl_metric_t *pl_metrics_counter(pl_metrics_t *m, const char *name, const char *help,
                                const char *labels)
{
    return get(m, COUNTER, name, help, labels, NULL, 0);
}

pl_metric_t *pl_metrics_gauge(pl_metrics_t *m, const char *name, const char *help,
                              const char *labels)
{
    return get(m, GAUGE, name, help, labels, NULL, 0);
}

pl_metric_t *pl_metrics_histogram(pl_metrics_t *m, const char *name, const char *help,
                                  const char *labels, const double *bounds, size_t nbounds)
{
    return get(m, HISTOGRAM, name, help, labels, bounds, nbounds);
}

void pl_metric_add(pl_metric_t *c, uint64_t n)
{
    if (c != NULL) {
        atomic_fetch_add_explicit(&c->value, (int64_t)n, memory_order_relaxed);
    }
}

void pl_metric_set(pl_metric_t *g, int64_t v)
{
    if (g != NULL) {
        atomic_store_explicit(&g->value, v, memory_order_relaxed);
    }
}

void pl_metric_gauge_add(pl_metric_t *g, int64_t delta)
{
    if (g != NULL) {
        atomic_fetch_add_explicit(&g->value, delta, memory_order_relaxed);
    }
}

int64_t pl_metric_value(const pl_metric_t *c)
{
    return c ? atomic_load_explicit(&c->value, memory_order_relaxed) : 0;
}

void pl_metric_observe(pl_metric_t *h, double v)
{
    if (h == NULL || h->kind != HISTOGRAM || isnan(v)) {
        return;
    }
    size_t i = 0;
    while (i < h->nbounds && v > h->bounds[i]) {
        i++;
    }
    atomic_fetch_add_explicit(&h->buckets[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
    uint64_t old = atomic_load_explicit(&h->sum_bits, memory_order_relaxed);
    for (;;) {
        double sum;
        memcpy(&sum, &old, sizeof(sum));
        sum += v;
        uint64_t bits;
        memcpy(&bits, &sum, sizeof(bits));
        if (atomic_compare_exchange_weak(&h->sum_bits, &old, bits)) {
            break;
        }
    }
}

/* Writes `name{labels,extra}` (either part may be empty). */
static int series(pl_buf_t *out, const char *name, const char *suffix, const char *labels,
                  const char *extra)
{
    int rc = pl_buf_printf(out, "%s%s", name, suffix);
    if (rc == PL_OK && (labels || extra)) {
        rc = pl_buf_printf(out, "{%s%s%s}", labels ? labels : "", labels && extra ? "," : "",
                           extra ? extra : "");
    }
    return rc;
}

static int render_histogram(pl_buf_t *out, pl_metric_t *s)
{
    int rc = PL_OK;
    uint64_t cum = 0;
    char le[64];
    for (size_t i = 0; i <= s->nbounds && rc == PL_OK; i++) {
        cum += atomic_load_explicit(&s->buckets[i], memory_order_relaxed);
        if (i < s->nbounds) {
            snprintf(le, sizeof(le), "le=\"%g\"", s->bounds[i]);
        } else {
            snprintf(le, sizeof(le), "le=\"+Inf\"");
        }
        rc = series(out, s->name, "_bucket", s->labels, le);
        if (rc == PL_OK) {
            rc = pl_buf_printf(out, " %llu\n", (unsigned long long)cum);
        }
    }
    uint64_t bits = atomic_load_explicit(&s->sum_bits, memory_order_relaxed);
    double sum;
    memcpy(&sum, &bits, sizeof(sum));
    if (rc == PL_OK) {
        rc = series(out, s->name, "_sum", s->labels, NULL);
    }
    if (rc == PL_OK) {
        rc = pl_buf_printf(out, " %.9g\n", sum);
    }
    if (rc == PL_OK) {
        rc = series(out, s->name, "_count", s->labels, NULL);
    }
    if (rc == PL_OK) {
        rc = pl_buf_printf(
            out, " %llu\n",
            (unsigned long long)atomic_load_explicit(&s->count, memory_order_relaxed));
    }
    return rc;
}

int pl_metrics_render(pl_metrics_t *m, pl_buf_t *out)
{
    static const char *const types[] = {"counter", "gauge", "histogram"};
    int rc = PL_OK;
    const char *family = NULL;
    pthread_mutex_lock(&m->lock);
    for (pl_metric_t *s = m->head; s != NULL && rc == PL_OK; s = s->next) {
        if (family == NULL || strcmp(family, s->name) != 0) {
            family = s->name;
            rc = pl_buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", s->name, s->help, s->name,
                               types[s->kind]);
        }
        if (rc != PL_OK) {
            break;
        }
        if (s->kind == HISTOGRAM) {
            rc = render_histogram(out, s);
        } else {
            rc = series(out, s->name, "", s->labels, NULL);
            if (rc == PL_OK) {
                rc =
                    pl_buf_printf(out, " %lld\n",
                                  (long long)atomic_load_explicit(&s->value, memory_order_relaxed));
            }
        }
    }
    pthread_mutex_unlock(&m->lock);
    return rc;
}
