/* metrics.h - the process-wide metric registry, rendered as Prometheus text.
 *
 * Hot-path updates are lock-free (relaxed atomics on per-stage structs the
 * caller owns); registration and rendering take a mutex.
 */
#ifndef OD_METRICS_H
#define OD_METRICS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* Latency buckets (seconds) of the per-stage processing histogram. */
#define OD_LAT_BUCKETS 15
extern const double od_lat_bounds[OD_LAT_BUCKETS];  /* upper bounds; +Inf is implicit */

/* Per-stage counters; embedded in the stage instance, registered by pointer. */
struct od_stage_metrics {
    const char *pipeline, *stage, *plugin, *kind;   /* borrowed; outlive registration */
    atomic_uint_fast64_t in, ok, retry, reject, drop, pending;
    atomic_uint_fast64_t lat_bucket[OD_LAT_BUCKETS + 1];  /* last is +Inf */
    atomic_uint_fast64_t lat_count;
    atomic_uint_fast64_t lat_sum_ns;
};

void od_metrics_init(void);
void od_metrics_shutdown(void);

void od_metrics_stage_register(struct od_stage_metrics *sm);
void od_metrics_stage_unregister(struct od_stage_metrics *sm);
void od_metrics_stage_observe(struct od_stage_metrics *sm, int64_t elapsed_ns);

/* A gauge whose value is read at render time, e.g. a pipeline's queue depth.
 * name is a full metric name (orderd_...); labels is pre-rendered
 * `pipeline="x"` text or "".  The handle unregisters it.  A name ending in
 * "_total" is rendered as a counter (a value that only grows). */
struct od_gauge_fn;
struct od_gauge_fn *od_metrics_gauge_fn(const char *name, const char *help, const char *labels,
                                        double (*fn)(void *arg), void *arg);
void od_metrics_gauge_fn_remove(struct od_gauge_fn *g);

/* Process-wide counters owned by the core (e.g. reloads, dead letters). */
void od_metrics_counter_add(const char *name, const char *help, const char *labels, double delta);

/* Plugin metrics: orderd_plugin_<name>{pipeline,stage}; counters add, gauges set.
 * Unknown names are created on first use; invalid names are ignored. */
void od_metrics_plugin_add(const char *pipeline, const char *stage, const char *name, double delta);
void od_metrics_plugin_set(const char *pipeline, const char *stage, const char *name, double value);

/* Render everything in Prometheus text exposition format 0.0.4.  Caller frees. */
char *od_metrics_render(size_t *len);

#endif
