/* pipe.h - the engine: one pipeline's input, queue, workers and stages.
 *
 *   input --submit--> [bounded queue] --> workers: transforms -> store -> publish
 *                          ^   retry heap (backoff with full jitter)   |
 *                          +------------------------------------------+
 * Outcomes: OK advances; RETRY waits and runs the same stage again, up to
 * retry.max_attempts, then abandons to the input; REJECT dead-letters; DROP
 * completes; PENDING parks the message until settle().  The input's ack() is
 * called once per message, after the last stage.
 */
#ifndef OD_PIPE_H
#define OD_PIPE_H

#include <pthread.h>
#include <stdint.h>
#include <orderd/plugin.h>
#include "conf.h"
#include "metrics.h"

struct od_pipe;

/* The host's view of one configured stage (orderd_inst is opaque to plugins). */
struct orderd_inst {
    struct od_pipe          *pipe;
    const struct od_stage_conf *sc;
    const orderd_stage      *stage;
    void                    *state;
    int                      created;
    pthread_mutex_t          serial;   /* ORDERD_SF_SERIAL */
    struct od_stage_metrics  metrics;
};

/* Build a pipeline from its validated configuration: create every stage.
 * RETURNS: 0 or negative errno (logged); *out is NULL on failure. */
int  od_pipe_create(const struct od_pipeline_conf *pc, const char *state_dir, struct od_pipe **out);
/* Start workers, then the input.  0 or negative errno. */
int  od_pipe_start(struct od_pipe *p);
/* Stop the input: no new messages are accepted (submit -> -ESHUTDOWN). */
void od_pipe_stop_input(struct od_pipe *p);
/* Wait until nothing is in flight or deadline (monotonic ms) passes; then
 * stop the workers.  Messages still in flight at the deadline are abandoned
 * to their input.  RETURNS: number of messages abandoned. */
size_t od_pipe_drain(struct od_pipe *p, int64_t deadline_ms);
/* Stop and destroy stages and free the pipeline. */
void od_pipe_destroy(struct od_pipe *p);

const char *od_pipe_name(const struct od_pipe *p);
/* Messages accepted but not yet acked (queued + processing + waiting to retry). */
uint64_t od_pipe_in_flight(const struct od_pipe *p);

/* The running set, for lookups by pipeline name (host->lookup). */
void od_pipes_set_current(struct od_pipe **pipes, size_t n);

/* Host functions backed by the engine (see orderd_host in plugin.h). */
int  od_pipe_submit(struct orderd_inst *inst, orderd_msg *m, unsigned flags);
int  od_pipe_submit_async(struct orderd_inst *inst, orderd_msg *m, unsigned flags,
                          orderd_submit_done done, void *arg);
int  od_pipe_submit_flush(struct orderd_inst *inst);
void od_pipe_settle(orderd_msg *m, const orderd_result *res);
int  od_pipe_lookup(struct orderd_inst *inst, const char *pipeline, const char *key, json_t **out);
const char *od_pipe_state_dir(const struct od_pipe *p);

/* For the admin API: the running pipelines as JSON (name, in_flight,
 * queue_depth, spool, dead_letters, stages with counters). */
json_t *od_pipes_status(void);
/* Re-inject a dead-letter entry (as od_dlq_read gives it) into the running
 * pipeline at the stage that dead-lettered it.  Does not block.
 * RETURNS: 0; -ENOENT no such pipeline; -EAGAIN full; -EINVAL bad entry;
 * other negative errno from the spool. */
int od_pipe_replay(const char *pipeline, const json_t *entry);

#endif
