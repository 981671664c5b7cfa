/*
 * A small Prometheus metrics registry: counters, gauges and histograms, each series named by
 * a metric name and an optional label set, rendered in the text exposition format for
 * /metrics. Updates are lock-free atomics, safe from any thread; registration and rendering
 * take the registry's lock. Not for high-cardinality labels such as user names.
 */
#ifndef PARLEY_METRICS_H
#define PARLEY_METRICS_H

#include "parley/buf.h"

#include <stddef.h>
#include <stdint.h>

typedef struct pl_metrics_s pl_metrics_t;
typedef struct pl_metric_s pl_metric_t;

/* Returns a new empty registry, or NULL when out of memory. */
pl_metrics_t *pl_metrics_new(void);

/* Frees the registry and every series in it, then sets *m to NULL. Accepts NULL. */
void pl_metrics_free(pl_metrics_t **m);

/*
 * Finds or creates a series. labels is the inside of the braces, such as `code="200"`, or
 * NULL. name, help and labels are copied. The series lives as long as the registry. Returns
 * NULL when out of memory or when name is already registered with another type.
 */
pl_metric_t *pl_metrics_counter(pl_metrics_t *m, const char *name, const char *help,
                                const char *labels);
pl_metric_t *pl_metrics_gauge(pl_metrics_t *m, const char *name, const char *help,
                              const char *labels);

/* bounds are the buckets' upper bounds in increasing order (copied); +Inf is implied. */
pl_metric_t *pl_metrics_histogram(pl_metrics_t *m, const char *name, const char *help,
                                  const char *labels, const double *bounds, size_t nbounds);

/* Counter and gauge updates. All accept NULL (a metric that failed to register). */
void pl_metric_add(pl_metric_t *c, uint64_t n);
#define pl_metric_inc(c) pl_metric_add((c), 1)
void pl_metric_set(pl_metric_t *g, int64_t v);
void pl_metric_gauge_add(pl_metric_t *g, int64_t delta);
void pl_metric_observe(pl_metric_t *h, double v);

/* Current value of a counter or gauge, for tests and readiness logic. */
int64_t pl_metric_value(const pl_metric_t *c);

/* Appends the exposition text of every series to out. Errors as pl_buf_append(). */
int pl_metrics_render(pl_metrics_t *m, pl_buf_t *out);

/* Latency buckets in seconds from 100 µs to 10 s, for pl_metrics_histogram(). */
extern const double pl_metrics_latency_bounds[];
extern const size_t pl_metrics_latency_nbounds;

#endif
