/* pipe.c - the engine: one pipeline's input, queue, workers and stages.
 *
 * Every message accepted from the input (or read back from the spool) is
 * "in flight" until it is finished: completed, dead-lettered or abandoned.
 * in_flight is bounded by queue_size; that bound is the backpressure inputs
 * feel (submit blocks, or -EAGAIN with ORDERD_SUBMIT_NOWAIT).
 *
 * A message carries the index of the next stage to run.  Workers take a
 * batch of ready messages and walk the stages in order, handing each stage
 * the messages that are at it (so a batch of messages resumed from the
 * retry heap at different stages still works).  RETRY parks a message in a
 * min-heap keyed by due time; PENDING parks it with the plugin until
 * settle(); both come back through the ready queue.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../plugins/common/deadline.h"
#include "../plugins/common/jsondec.h"
#include "../plugins/common/jsonenc.h"
#include "dlq.h"
#include "loader.h"
#include "log.h"
#include "msg.h"
#include "pipe.h"
#include "spool.h"
#include "util.h"

/* Per-partition-key turn taking: a key that has a message in flight holds
 * later messages with the same key back until it finishes, so commands on
 * one order never race (e.g. "pay" and "cancel" reading the same snapshot).
 * Keys are hashed; a collision only serializes two keys, never reorders. */
#define OD_KEY_BUCKETS 4096

/* submit_async(ORDERD_SUBMIT_OUTCOME) into a spooled pipeline: the message
 * is rebuilt from its record by the spool reader, so whoever waits for its
 * outcome is filed by spool seq until finish() finds it. */
#define OD_WAIT_BUCKETS 1024

struct od_waiter {
    struct od_pipe      *p;
    orderd_submit_done   done;
    void                *arg;
    uint64_t             seq;
    struct od_waiter    *next;        /* bucket chain */
};

struct od_keyslot {
    uint64_t            hash;
    orderd_msg         *head, *tail;     /* waiting for the key's turn */
    struct od_keyslot  *next;
};

struct od_pipe {
    const struct od_pipeline_conf *pc;
    char                *state_dir;
    struct orderd_inst   input;
    struct orderd_inst  *stages;       /* transforms, store, publishers */
    size_t               nstages;
    struct orderd_inst  *store;        /* one of stages, or NULL */

    pthread_mutex_t      mu;
    pthread_cond_t       work;         /* workers: something is ready or due */
    pthread_cond_t       space;        /* submitters: in_flight went down */
    pthread_cond_t       idle;         /* drain: in_flight reached 0 */
    orderd_msg          *head, *tail;  /* ready queue */
    size_t               nready;
    orderd_msg         **heap;         /* retry heap, by due_ms */
    size_t               nheap, heapcap;
    orderd_msg          *all;          /* every message in flight */
    struct od_keyslot  **keys;         /* OD_KEY_BUCKETS chains, when ordered */
    uint64_t             in_flight;
    int                  accepting;
    int                  stopping;
    int                  started;

    pthread_t           *workers;
    size_t               nworkers;

    struct od_spool     *spool;
    pthread_t            spool_reader;
    int                  spool_reader_running;

    pthread_mutex_t      wmu;          /* waiters by seq; never held while calling out */
    struct od_waiter    *waiters[OD_WAIT_BUCKETS];
    size_t               nwaiters;

    struct od_gauge_fn  *g_queue, *g_inflight;
    struct pipe_spool_gauge {
        struct od_pipe     *p;
        unsigned            what;     /* index into spool_gauges[] */
        struct od_gauge_fn *g;
    }                    g_spool[7];
    char                 labels[160];
};

/* ---- the set of running pipelines, for host->lookup ------------------------ */

static pthread_rwlock_t current_lock = PTHREAD_RWLOCK_INITIALIZER;
static struct od_pipe **current;
static size_t ncurrent;

void od_pipes_set_current(struct od_pipe **pipes, size_t n)
{
    pthread_rwlock_wrlock(&current_lock);
    current = pipes;
    ncurrent = n;
    pthread_rwlock_unlock(&current_lock);
}

int od_pipe_lookup(struct orderd_inst *inst, const char *pipeline, const char *key, json_t **out)
{
    struct od_pipe *p = NULL;
    int rc = -ENOTSUP;

    *out = NULL;
    pthread_rwlock_rdlock(&current_lock);
    if (pipeline == NULL) {
        p = inst->pipe;
    } else {
        for (size_t i = 0; i < ncurrent; i++)
            if (strcmp(current[i]->pc->name, pipeline) == 0)
                p = current[i];
    }
    if (p && p->store && p->store->stage->lookup)
        rc = p->store->stage->lookup(p->store->state, key, out);
    pthread_rwlock_unlock(&current_lock);
    return rc;
}

/* ---- queue and heap (p->mu held) -------------------------------------------- */

static void ready_push(struct od_pipe *p, orderd_msg *m)
{
    m->next = NULL;
    if (p->tail)
        p->tail->next = m;
    else
        p->head = m;
    p->tail = m;
    p->nready++;
}

static orderd_msg *ready_pop(struct od_pipe *p)
{
    orderd_msg *m = p->head;

    if (m) {
        p->head = m->next;
        if (p->head == NULL)
            p->tail = NULL;
        p->nready--;
        m->next = NULL;
    }
    return m;
}

static int heap_push(struct od_pipe *p, orderd_msg *m)
{
    size_t i;

    if (p->nheap == p->heapcap) {
        size_t cap = p->heapcap ? p->heapcap * 2 : 64;
        orderd_msg **grown = realloc(p->heap, cap * sizeof(*grown));
        if (grown == NULL)
            return -ENOMEM;
        p->heap = grown;
        p->heapcap = cap;
    }
    i = p->nheap++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (p->heap[parent]->due_ms <= m->due_ms)
            break;
        p->heap[i] = p->heap[parent];
        i = parent;
    }
    p->heap[i] = m;
    return 0;
}

static orderd_msg *heap_pop(struct od_pipe *p)
{
    orderd_msg *top, *last;
    size_t i = 0;

    if (p->nheap == 0)
        return NULL;
    top = p->heap[0];
    last = p->heap[--p->nheap];
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, min = i;
        const orderd_msg *cand = last;
        if (l < p->nheap && p->heap[l]->due_ms < cand->due_ms) {
            min = l;
            cand = p->heap[l];
        }
        if (r < p->nheap && p->heap[r]->due_ms < cand->due_ms)
            min = r;
        if (min == i)
            break;
        p->heap[i] = p->heap[min];
        i = min;
    }
    if (p->nheap > 0)
        p->heap[i] = last;
    return top;
}

static void track(struct od_pipe *p, orderd_msg *m)
{
    m->all_prev = NULL;
    m->all_next = p->all;
    if (p->all)
        p->all->all_prev = m;
    p->all = m;
}

static void untrack(struct od_pipe *p, orderd_msg *m)
{
    if (m->all_prev)
        m->all_prev->all_next = m->all_next;
    else
        p->all = m->all_next;
    if (m->all_next)
        m->all_next->all_prev = m->all_prev;
    m->all_prev = m->all_next = NULL;
}

/* ---- finishing a message ----------------------------------------------------- */

static void key_release(struct od_pipe *p, orderd_msg *m);

static const char *inst_name(const struct orderd_inst *i)
{
    return i->sc->name;
}

/* Remove and return the waiter filed under seq, or NULL. */
static struct od_waiter *waiter_take(struct od_pipe *p, uint64_t seq)
{
    struct od_waiter **w, *found = NULL;

    pthread_mutex_lock(&p->wmu);
    for (w = &p->waiters[seq % OD_WAIT_BUCKETS]; p->nwaiters > 0 && *w; w = &(*w)->next) {
        if ((*w)->seq == seq) {
            found = *w;
            *w = found->next;
            __atomic_sub_fetch(&p->nwaiters, 1, __ATOMIC_RELAXED);
            break;
        }
    }
    pthread_mutex_unlock(&p->wmu);
    return found;
}

/* Tell a submit_async(ORDERD_SUBMIT_OUTCOME) caller how m ended, once. */
static void notify(struct od_pipe *p, orderd_msg *m, orderd_outcome o, const char *reason)
{
    orderd_result res = { .outcome = o, .reason = reason };

    orderd_submit_done done = __atomic_exchange_n(&m->done, NULL, __ATOMIC_ACQ_REL);

    if (done != NULL) {
        done(m->done_arg, 0, &res);
    } else if (m->has_spool && __atomic_load_n(&p->nwaiters, __ATOMIC_RELAXED) > 0) {
        struct od_waiter *w = waiter_take(p, m->spool_seq);
        if (w != NULL) {
            w->done(w->arg, 0, &res);
            free(w);
        }
    }
}

/* The pipeline is done with m: tell its source, free it, make room. */
static void finish(struct od_pipe *p, orderd_msg *m, orderd_outcome o, const char *reason)
{
    notify(p, m, o, o == ORDERD_RETRY && reason == NULL ? "given back to its source" : reason);
    if (m->has_spool) {
        if (o == ORDERD_RETRY)
            od_spool_requeue(p->spool, m->spool_seq);
        else
            od_spool_complete(p->spool, m->spool_seq);
    } else if (p->input.stage->ack) {
        p->input.stage->ack(p->input.state, m, o, reason);
    }
    pthread_mutex_lock(&p->mu);
    untrack(p, m);
    if (m->keyed)
        key_release(p, m);
    p->in_flight--;
    pthread_cond_signal(&p->space);
    if (p->in_flight == 0)
        pthread_cond_broadcast(&p->idle);
    pthread_mutex_unlock(&p->mu);
    od_msg_free(m);
}

/* finish(m, ORDERD_OK) for the n messages of a batch that passed the last
 * stage: one spool call and one lock for all of them instead of one each. */
#define OD_FINISH_RUN 64

static void finish_ok_many(struct od_pipe *p, orderd_msg **ms, size_t n)
{
    uint64_t seqs[OD_FINISH_RUN];

    for (size_t at = 0; at < n; at += OD_FINISH_RUN) {
        size_t end = n - at < OD_FINISH_RUN ? n : at + OD_FINISH_RUN, nseq = 0;

        for (size_t i = at; i < end; i++) {
            orderd_msg *m = ms[i];

            notify(p, m, ORDERD_OK, NULL);
            if (m->has_spool)
                seqs[nseq++] = m->spool_seq;
            else if (p->input.stage->ack)
                p->input.stage->ack(p->input.state, m, ORDERD_OK, NULL);
        }
        if (nseq > 0)
            od_spool_complete_many(p->spool, seqs, nseq);
        pthread_mutex_lock(&p->mu);
        for (size_t i = at; i < end; i++) {
            untrack(p, ms[i]);
            if (ms[i]->keyed)
                key_release(p, ms[i]);
        }
        p->in_flight -= end - at;
        if (end - at > 1)
            pthread_cond_broadcast(&p->space);
        else
            pthread_cond_signal(&p->space);
        if (p->in_flight == 0)
            pthread_cond_broadcast(&p->idle);
        pthread_mutex_unlock(&p->mu);
        for (size_t i = at; i < end; i++)
            od_msg_free(ms[i]);
    }
}

/* Schedule m to run again at due (monotonic ms). */
static void reschedule(struct od_pipe *p, orderd_msg *m, int64_t due)
{
    pthread_mutex_lock(&p->mu);
    m->due_ms = due;
    if (heap_push(p, m) < 0) {
        /* No memory for the heap: run it again now rather than lose it. */
        ready_push(p, m);
    }
    pthread_cond_signal(&p->work);
    pthread_mutex_unlock(&p->mu);
}

static void dead_letter(struct od_pipe *p, orderd_msg *m, const char *stage, const char *reason)
{
    char labels[256];

    if ((p->input.stage->flags & ORDERD_SF_DEADLETTERS) && !m->has_spool) {
        od_logf(ORDERD_LOG_WARN, p->pc->name, stage, NULL,
                "message %s rejected, dead-lettered by the input: %s", m->id, reason);
        finish(p, m, ORDERD_REJECT, reason);
        return;
    }
    if (od_dlq_append(p->state_dir, p->pc->name, stage, m, reason) < 0) {
        od_logf(ORDERD_LOG_ERR, p->pc->name, stage, NULL,
                "message %s: cannot write dead letter; will try again in 5s", m->id);
        m->stage = 0;
        reschedule(p, m, mono_ms() + 5000);
        return;
    }
    od_logf(ORDERD_LOG_WARN, p->pc->name, stage, NULL, "message %s dead-lettered: %s", m->id, reason);
    notify(p, m, ORDERD_REJECT, reason);
    snprintf(labels, sizeof(labels), "pipeline=\"%s\"", p->pc->name);
    od_metrics_counter_add("orderd_dead_letters_total", "Messages written to the dead-letter area",
                           labels, 1);
    finish(p, m, ORDERD_OK, NULL);
}

/* Retries of one stage are exhausted: abandon the message to its source. */
static void abandon(struct od_pipe *p, orderd_msg *m, const char *stage)
{
    const struct od_retry_conf *r = &p->pc->retry;
    char why[1200];

    if ((p->input.stage->flags & ORDERD_SF_REDELIVERS) && !m->has_spool) {
        od_logf(ORDERD_LOG_WARN, p->pc->name, stage, NULL,
                "message %s abandoned to the input after %u tries: %s", m->id, m->attempts,
                m->reason ? m->reason : "");
        finish(p, m, ORDERD_RETRY, m->reason);
        return;
    }
    /* The source cannot redeliver: the core does, as a broker would. */
    if (m->delivery_count >= r->max_deliveries) {
        snprintf(why, sizeof(why), "gave up after %u deliveries: %s", m->delivery_count,
                 m->reason ? m->reason : "retries exhausted");
        dead_letter(p, m, stage, why);
        return;
    }
    od_logf(ORDERD_LOG_WARN, p->pc->name, stage, NULL,
            "message %s abandoned after %u tries (delivery %u of %u): %s", m->id, m->attempts,
            m->delivery_count, r->max_deliveries, m->reason ? m->reason : "");
    m->delivery_count++;
    m->stage = 0;
    m->attempts = 0;
    reschedule(p, m, mono_ms() + r->redeliver_delay_ms);
}

/*
 * Apply one stage's outcome to m.  RETURNS 1 when m goes on to the next
 * stage in this batch, 0 when it left the batch.
 */
static int route(struct od_pipe *p, struct orderd_inst *st, orderd_msg *m, orderd_outcome o)
{
    const struct od_retry_conf *r = &p->pc->retry;

    switch (o) {
    case ORDERD_OK:
        atomic_fetch_add_explicit(&st->metrics.ok, 1, memory_order_relaxed);
        m->stage++;
        m->attempts = 0;
        if (m->stage >= p->nstages) {
            finish(p, m, ORDERD_OK, NULL);
            return 0;
        }
        return 1;
    case ORDERD_RETRY: {
        int64_t delay;
        atomic_fetch_add_explicit(&st->metrics.retry, 1, memory_order_relaxed);
        m->attempts++;
        if (m->attempts >= r->max_attempts) {
            abandon(p, m, inst_name(st));
            return 0;
        }
        delay = od_backoff_ms(m->attempts - 1, r->backoff_base_ms, r->backoff_cap_ms);
        if ((int64_t)m->retry_after_ms > delay)
            delay = m->retry_after_ms;
        m->retry_after_ms = 0;
        od_logf(ORDERD_LOG_DEBUG, p->pc->name, inst_name(st), NULL,
                "message %s: retry %u in %lld ms: %s", m->id, m->attempts, (long long)delay,
                m->reason ? m->reason : "");
        reschedule(p, m, mono_ms() + delay);
        return 0;
    }
    case ORDERD_REJECT:
        atomic_fetch_add_explicit(&st->metrics.reject, 1, memory_order_relaxed);
        dead_letter(p, m, inst_name(st), m->reason ? m->reason : "rejected");
        return 0;
    case ORDERD_DROP:
        atomic_fetch_add_explicit(&st->metrics.drop, 1, memory_order_relaxed);
        finish(p, m, ORDERD_OK, NULL);
        return 0;
    case ORDERD_PENDING:
        if (!(st->stage->flags & ORDERD_SF_ASYNC_SETTLE)) {
            od_logf(ORDERD_LOG_ERR, p->pc->name, inst_name(st), NULL,
                    "answered PENDING without ORDERD_SF_ASYNC_SETTLE; treated as RETRY");
            m->reason = m->reason ? m->reason : strdup("plugin answered PENDING without the flag");
            return route(p, st, m, ORDERD_RETRY);
        }
        atomic_fetch_add_explicit(&st->metrics.pending, 1, memory_order_relaxed);
        return 0;
    }
    od_logf(ORDERD_LOG_ERR, p->pc->name, inst_name(st), NULL,
            "returned unknown outcome %d; treated as RETRY", (int)o);
    return route(p, st, m, ORDERD_RETRY);
}

/* host->settle(): a PENDING message's outcome arrives from a plugin thread. */
void od_pipe_settle(orderd_msg *m, const orderd_result *res)
{
    struct od_pipe *p = m->origin->pipe;
    struct orderd_inst *st;

    if (m->stage >= p->nstages)
        return;
    st = &p->stages[m->stage];
    if (res->reason)
        od_msg_set_reason(m, res->reason);
    m->retry_after_ms = res->retry_after_ms;
    od_metrics_stage_observe(&st->metrics, od_mono_ns() - m->start_ns);
    if (res->outcome == ORDERD_PENDING)
        return;
    if (route(p, st, m, res->outcome)) {
        pthread_mutex_lock(&p->mu);
        ready_push(p, m);
        pthread_cond_signal(&p->work);
        pthread_mutex_unlock(&p->mu);
    }
}

/* ---- workers ------------------------------------------------------------------ */

/* A message of a batch that was not handed to the stage because the
 * pipeline is stopping: it stays in flight and goes back to its source. */
#define OD_NOT_RUN ((orderd_outcome)-1)

static int is_stopping(struct od_pipe *p)
{
    return __atomic_load_n(&p->stopping, __ATOMIC_RELAXED);
}

static void run_stage(struct od_pipe *p, struct orderd_inst *st, orderd_msg **msgs, size_t n,
                      orderd_result *res)
{
    int64_t t0 = od_mono_ns(), elapsed;

    atomic_fetch_add_explicit(&st->metrics.in, n, memory_order_relaxed);
    for (size_t i = 0; i < n; i++) {
        msgs[i]->start_ns = t0;
        free(msgs[i]->reason);
        msgs[i]->reason = NULL;
        msgs[i]->retry_after_ms = 0;
    }
    if (st->stage->flags & ORDERD_SF_SERIAL)
        pthread_mutex_lock(&st->serial);
    if (st->stage->process_batch && (n > 1 || st->stage->process == NULL)) {
        for (size_t i = 0; i < n; i++)
            res[i] = (orderd_result){ .outcome = ORDERD_OK };
        if (st->stage->process_batch(st->state, msgs, n, res) < 0) {
            for (size_t i = 0; i < n; i++) {
                res[i].outcome = ORDERD_RETRY;
                res[i].reason = "process_batch failed";
            }
        }
        for (size_t i = 0; i < n; i++) {
            if (res[i].outcome == ORDERD_PENDING)
                continue;   /* the plugin may have settled it already */
            if (res[i].reason && res[i].reason != msgs[i]->reason)
                od_msg_set_reason(msgs[i], res[i].reason);
            if (res[i].retry_after_ms)
                msgs[i]->retry_after_ms = res[i].retry_after_ms;
        }
    } else {
        /* At the drain deadline, finish the message at hand, not the batch. */
        for (size_t i = 0; i < n; i++)
            res[i].outcome = (i > 0 && is_stopping(p)) ? OD_NOT_RUN
                                                       : st->stage->process(st->state, msgs[i]);
    }
    if (st->stage->flags & ORDERD_SF_SERIAL)
        pthread_mutex_unlock(&st->serial);
    elapsed = (od_mono_ns() - t0) / (int64_t)n;
    for (size_t i = 0; i < n; i++)
        if (res[i].outcome != ORDERD_PENDING && res[i].outcome != OD_NOT_RUN)
            od_metrics_stage_observe(&st->metrics, elapsed);
}

/* Runs the batch through the stages.  sub, at and res have room for n;
 * messages that passed the last stage are gathered in sub's free tail
 * and finished together. */
static void process_batch(struct od_pipe *p, orderd_msg **batch, size_t n,
                          orderd_msg **sub, size_t *at, orderd_result *res)
{
    if (p->nstages == 0) {
        /* An input (with its spool) alone: what it accepts is done. */
        finish_ok_many(p, batch, n);
        return;
    }
    for (size_t s = 0; s < p->nstages; s++) {
        struct orderd_inst *st = &p->stages[s];
        bool last = s + 1 == p->nstages;
        size_t k = 0, nok = 0;

        for (size_t i = 0; i < n; i++)
            if (batch[i] && batch[i]->stage == s) {
                at[k] = i;
                sub[k++] = batch[i];
            }
        if (k == 0)
            continue;
        if (is_stopping(p))
            return;   /* what is left stays in flight for its source */
        run_stage(p, st, sub, k, res);
        for (size_t j = 0; j < k; j++) {
            if (res[j].outcome == OD_NOT_RUN)
                continue;
            if (last && res[j].outcome == ORDERD_OK) {
                /* Done: finished with the others below.  sub[nok] is
                 * free, as nok <= j. */
                atomic_fetch_add_explicit(&st->metrics.ok, 1, memory_order_relaxed);
                sub[nok++] = sub[j];
                batch[at[j]] = NULL;
                continue;
            }
            if (route(p, st, sub[j], res[j].outcome))
                continue;
            /* It left the batch (and may already belong to another thread):
             * forget the pointer without touching what it points to. */
            batch[at[j]] = NULL;
        }
        if (nok > 0)
            finish_ok_many(p, sub, nok);
    }
}

/* Move due retries into the ready queue; return ms until the next one (-1: none). */
static int64_t promote_due(struct od_pipe *p)
{
    int64_t now = mono_ms();

    while (p->nheap > 0 && p->heap[0]->due_ms <= now)
        ready_push(p, heap_pop(p));
    return p->nheap ? p->heap[0]->due_ms - now : -1;
}

static void timed_wait(pthread_cond_t *cv, pthread_mutex_t *mu, int64_t ms)
{
    struct timespec ts = deadline_after_ms(ms);

    pthread_cond_timedwait(cv, mu, &ts);
}

static void *worker_main(void *arg)
{
    struct od_pipe *p = arg;
    size_t max = p->pc->batch.max;
    orderd_msg **batch = calloc(max, sizeof(*batch)), **sub = calloc(max, sizeof(*sub));
    size_t *at = calloc(max, sizeof(*at));
    orderd_result *res = calloc(max, sizeof(*res));

    if (batch == NULL || sub == NULL || at == NULL || res == NULL) {
        od_logf(ORDERD_LOG_ERR, p->pc->name, NULL, NULL, "worker: out of memory");
        goto out;
    }
    pthread_mutex_lock(&p->mu);
    for (;;) {
        size_t n = 0;
        int64_t next = promote_due(p);

        if (p->stopping)
            break;
        if (p->nready == 0) {
            if (next < 0)
                timed_wait(&p->work, &p->mu, 1000);
            else
                timed_wait(&p->work, &p->mu, next);
            continue;
        }
        if (p->pc->batch.linger_ms > 0 && p->nready < max) {
            timed_wait(&p->work, &p->mu, p->pc->batch.linger_ms);
            if (p->stopping)
                break;
        }
        while (n < max && p->nready > 0)
            batch[n++] = ready_pop(p);
        if (p->nready > 0)
            pthread_cond_signal(&p->work);   /* more for another worker */
        pthread_mutex_unlock(&p->mu);
        process_batch(p, batch, n, sub, at, res);
        pthread_mutex_lock(&p->mu);
    }
    pthread_mutex_unlock(&p->mu);
out:
    free(batch);
    free(sub);
    free(at);
    free(res);
    return NULL;
}

/* ---- intake --------------------------------------------------------------------- */

static uint64_t key_hash(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ULL;

    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 0x100000001b3ULL;
    return h;
}

/* Take m's key turn.  RETURNS 1 when m must wait (queued on the slot), 0
 * when it may run now.  p->mu held. */
static int key_wait(struct od_pipe *p, orderd_msg *m)
{
    uint64_t h = key_hash(m->partition_key);
    struct od_keyslot **b = &p->keys[h % OD_KEY_BUCKETS], *k;

    m->key_hash = h;
    for (k = *b; k; k = k->next) {
        if (k->hash == h) {
            m->next = NULL;
            if (k->tail)
                k->tail->next = m;
            else
                k->head = m;
            k->tail = m;
            m->keyed = 1;
            return 1;
        }
    }
    k = calloc(1, sizeof(*k));
    if (k == NULL)
        return 0;   /* no memory for the slot: run unordered rather than stall */
    k->hash = h;
    k->next = *b;
    *b = k;
    m->keyed = 1;
    return 0;
}

/* m finished: hand its key's turn to the next waiting message.  p->mu held. */
static void key_release(struct od_pipe *p, orderd_msg *m)
{
    struct od_keyslot **pp = &p->keys[m->key_hash % OD_KEY_BUCKETS], *k;

    for (; (k = *pp) != NULL; pp = &k->next) {
        if (k->hash != m->key_hash)
            continue;
        if (k->head) {
            orderd_msg *next = k->head;
            k->head = next->next;
            if (k->head == NULL)
                k->tail = NULL;
            ready_push(p, next);
            pthread_cond_signal(&p->work);
        } else {
            *pp = k->next;
            free(k);
        }
        return;
    }
}

/* The index of the stage named name (0, the first, when unknown or the input). */
static size_t stage_index(const struct od_pipe *p, const char *name)
{
    for (size_t i = 0; name && i < p->nstages; i++)
        if (strcmp(p->stages[i].sc->name, name) == 0)
            return i;
    return 0;
}

/* A replayed dead letter carries the stage to resume at as a property. */
#define OD_REPLAY_PROP "orderd.replay_stage"

static size_t take_replay_stage(const struct od_pipe *p, orderd_msg *m)
{
    const orderd_host *h = od_host_table();
    const char *name = h->msg_prop(m, OD_REPLAY_PROP);
    size_t idx;

    if (name == NULL)
        return 0;
    idx = stage_index(p, name);
    h->msg_set_prop(m, OD_REPLAY_PROP, NULL);
    return idx;
}

static void pipe_msg_free(void *m)
{
    od_msg_free(m);
}

/* The spool record of a submitted message.  The message itself goes to the
 * spool with it, as the record's in-memory copy, when reading the record
 * back would give the same message (*m stays); otherwise it is freed here
 * (*m becomes NULL).  RETURNS: the malloc'd record, or NULL. */
static char *spool_record(orderd_msg **m, size_t *len)
{
    bool exact = false;
    char *text = od_msg_record_exact(*m, len, &exact);

    if (text == NULL || !exact) {
        od_msg_free(*m);
        *m = NULL;
        return text;
    }
    /* Only what the record holds travels with it. */
    (*m)->input_ptr = NULL;
    (*m)->input_u64 = 0;
    (*m)->done = NULL;
    (*m)->done_arg = NULL;
    return text;
}

/* Take m into flight (blocking for room unless nowait).  p->mu held.
 * Wakes no worker: *ready is set when m went to the ready queue, and the
 * caller wakes one (admit_locked() does). */
static int admit_quiet_locked(struct od_pipe *p, orderd_msg *m, int nowait, const int *open,
                              bool *ready)
{
    while (p->in_flight >= p->pc->queue_size && *open && !p->stopping) {
        if (nowait)
            return -EAGAIN;
        pthread_cond_wait(&p->space, &p->mu);
    }
    if (!*open || p->stopping)
        return -ESHUTDOWN;
    p->in_flight++;
    track(p, m);
    m->stage = take_replay_stage(p, m);
    m->attempts = 0;
    if (p->keys && m->partition_key && key_wait(p, m))
        return 0;   /* queued behind its key */
    ready_push(p, m);
    *ready = true;
    return 0;
}

static int admit_locked(struct od_pipe *p, orderd_msg *m, int nowait, const int *open)
{
    bool ready = false;
    int rc = admit_quiet_locked(p, m, nowait, open, &ready);

    if (ready)
        pthread_cond_signal(&p->work);
    return rc;
}


/* host->submit() */
int od_pipe_submit(struct orderd_inst *inst, orderd_msg *m, unsigned flags)
{
    struct od_pipe *p = inst->pipe;
    int rc;

    if (m == NULL)
        return -EINVAL;
    m->origin = &p->input;
    if (p->spool) {
        char *text;
        size_t len;
        uint64_t seq;

        if (!p->accepting) {
            od_msg_free(m);
            return -ESHUTDOWN;
        }
        text = spool_record(&m, &len);
        if (text == NULL) {
            od_msg_free(m);
            return -ENOMEM;
        }
        rc = od_spool_append_obj(p->spool, text, len, m, &seq);
        free(text);
        atomic_fetch_add_explicit(&inst->metrics.in, 1, memory_order_relaxed);
        if (rc == 0)
            atomic_fetch_add_explicit(&inst->metrics.ok, 1, memory_order_relaxed);
        return rc;
    }
    pthread_mutex_lock(&p->mu);
    rc = admit_locked(p, m, (flags & ORDERD_SUBMIT_NOWAIT) != 0, &p->accepting);
    pthread_mutex_unlock(&p->mu);
    atomic_fetch_add_explicit(&inst->metrics.in, 1, memory_order_relaxed);
    if (rc < 0)
        od_msg_free(m);
    else
        atomic_fetch_add_explicit(&inst->metrics.ok, 1, memory_order_relaxed);
    return rc;
}

static const orderd_result od_accepted = { .outcome = ORDERD_OK };

/* The spool wrote (or failed to write) an async submit's record. */
static void spooled(void *arg, int rc, uint64_t seq)
{
    struct od_waiter *w = arg;

    (void)seq;
    w->done(w->arg, rc, &od_accepted);
    free(w);
}

/* Same, for a caller who waits for the outcome: it is filed by seq, and
 * finish() may already have answered it and freed w, unless the write
 * failed (then the record never became visible). */
static void spooled_outcome(void *arg, int rc, uint64_t seq)
{
    struct od_waiter *w;

    if (rc == 0)
        return;     /* arg may be gone: do not touch it */
    w = waiter_take(((struct od_waiter *)arg)->p, seq);
    if (w != NULL) {
        w->done(w->arg, rc, &od_accepted);
        free(w);
    }
}

/* host->submit_async() */
int od_pipe_submit_async(struct orderd_inst *inst, orderd_msg *m, unsigned flags,
                         orderd_submit_done done, void *arg)
{
    struct od_pipe *p = inst->pipe;
    int outcome = (flags & ORDERD_SUBMIT_OUTCOME) != 0;
    int defer = (flags & ORDERD_SUBMIT_DEFER) != 0;
    int rc;

    if (m == NULL)
        return -EINVAL;
    if (done == NULL) {
        od_msg_free(m);
        return -EINVAL;
    }
    m->origin = &p->input;
    atomic_fetch_add_explicit(&inst->metrics.in, 1, memory_order_relaxed);
    if (p->spool) {
        struct od_waiter *w;
        char *text;
        size_t len;

        if (!p->accepting) {
            od_msg_free(m);
            return -ESHUTDOWN;
        }
        text = spool_record(&m, &len);
        w = text ? malloc(sizeof(*w)) : NULL;
        if (w == NULL) {
            free(text);
            od_msg_free(m);
            return -ENOMEM;
        }
        *w = (struct od_waiter){ .p = p, .done = done, .arg = arg };
        if (!outcome) {
            rc = od_spool_append_async_obj(p->spool, text, len, m, defer, spooled, w, &w->seq);
        } else {
            /* Filed before the reader can see the record: finish() takes
             * wmu too, so it cannot look before w is in the table. */
            pthread_mutex_lock(&p->wmu);
            rc = od_spool_append_async_obj(p->spool, text, len, m, defer, spooled_outcome, w,
                                           &w->seq);
            if (rc == 0) {
                struct od_waiter **b = &p->waiters[w->seq % OD_WAIT_BUCKETS];
                w->next = *b;
                *b = w;
                __atomic_add_fetch(&p->nwaiters, 1, __ATOMIC_RELAXED);
            }
            pthread_mutex_unlock(&p->wmu);
        }
        if (rc < 0) {
            free(w);
            return rc;
        }
        atomic_fetch_add_explicit(&inst->metrics.ok, 1, memory_order_relaxed);
        return 0;
    }
    if (outcome) {
        m->done = done;
        m->done_arg = arg;
    }
    pthread_mutex_lock(&p->mu);
    rc = admit_locked(p, m, (flags & ORDERD_SUBMIT_NOWAIT) != 0, &p->accepting);
    pthread_mutex_unlock(&p->mu);
    if (rc < 0) {
        od_msg_free(m);
        return rc;
    }
    /* m may be finished and freed by now: only its caller's data is used. */
    atomic_fetch_add_explicit(&inst->metrics.ok, 1, memory_order_relaxed);
    if (!outcome)
        done(arg, 0, &od_accepted);
    return 0;
}

/* host->submit_flush() */
int od_pipe_submit_flush(struct orderd_inst *inst)
{
    struct od_pipe *p = inst->pipe;

    if (p->spool)
        od_spool_flush(p->spool);
    return 0;
}

/* Records the reader takes at a time, while the window has room: one
 * lock of the pipeline and one wake-up of a worker for all of them. */
#define OD_READ_RUN 64

/* The next spooled record as a message in flight-to-be, or NULL with *rc
 * set (-EAGAIN: none within timeout_ms; 0: a record that is not a message,
 * completed). */
static orderd_msg *spool_take(struct od_pipe *p, int64_t timeout_ms, int *rc)
{
    uint64_t seq;
    void *data, *obj;
    size_t len;
    orderd_msg *m;

    *rc = od_spool_next_obj(p->spool, &seq, &data, &len, &obj, timeout_ms);
    if (*rc < 0)
        return NULL;
    if (obj != NULL) {
        m = obj;    /* its submitter's message: nothing to read or parse */
    } else {
        json_t *j = jdec_loadb(data, len, NULL);

        free(data);
        m = j ? od_msg_from_json(j) : NULL;
        json_decref(j);
    }
    if (m == NULL) {
        od_logf(ORDERD_LOG_ERR, p->pc->name, NULL, NULL,
                "spool record %llu is not a message; completing it", (unsigned long long)seq);
        od_spool_complete(p->spool, seq);
        return NULL;
    }
    m->origin = &p->input;
    m->has_spool = 1;
    m->spool_seq = seq;
    return m;
}

/* The spool's reader: records become messages in flight, oldest first. */
static void *spool_reader_main(void *arg)
{
    struct od_pipe *p = arg;
    static const int always = 1;
    orderd_msg *run[OD_READ_RUN];

    for (;;) {
        size_t room, n = 0, i;
        bool ready = false;
        int rc = 0;

        pthread_mutex_lock(&p->mu);
        while (p->in_flight >= p->pc->queue_size && !p->stopping && p->spool_reader_running)
            pthread_cond_wait(&p->space, &p->mu);
        if (p->stopping || !p->spool_reader_running) {
            pthread_mutex_unlock(&p->mu);
            break;
        }
        room = (size_t)(p->pc->queue_size - p->in_flight);
        pthread_mutex_unlock(&p->mu);

        /* wait for one, then take what is there without waiting */
        while (n < room && n < OD_READ_RUN) {
            orderd_msg *m = spool_take(p, n == 0 ? 500 : 0, &rc);

            if (m != NULL)
                run[n++] = m;
            else if (rc != 0)
                break;
        }
        if (n == 0) {
            if (rc == -EAGAIN || rc == 0)
                continue;
            break;
        }
        pthread_mutex_lock(&p->mu);
        for (i = 0; i < n; i++) {
            if (admit_quiet_locked(p, run[i], 0, &always, &ready) < 0)
                break;
        }
        if (ready)
            pthread_cond_signal(&p->work);
        pthread_mutex_unlock(&p->mu);
        if (i < n) {
            /* stopping: what was not admitted is handed out again later */
            for (; i < n; i++) {
                od_spool_requeue(p->spool, run[i]->spool_seq);
                od_msg_free(run[i]);
            }
            break;
        }
    }
    return NULL;
}

/* ---- lifecycle ------------------------------------------------------------------ */

static int inst_init(struct od_pipe *p, struct orderd_inst *inst, const struct od_stage_conf *sc)
{
    const char *kind = od_kind_name(sc->kind);

    inst->pipe = p;
    inst->sc = sc;
    inst->stage = sc->stage;
    pthread_mutex_init(&inst->serial, NULL);
    inst->metrics.pipeline = p->pc->name;
    inst->metrics.stage = sc->name;
    inst->metrics.plugin = sc->plugin->name;
    inst->metrics.kind = kind;
    if (sc->stage->create(inst, od_host_table(), sc->conf, &inst->state) < 0) {
        od_logf(ORDERD_LOG_ERR, p->pc->name, sc->name, sc->plugin->name,
                "cannot create %s stage (%s:%d)", kind, sc->file, sc->line);
        return -EINVAL;
    }
    inst->created = 1;
    od_metrics_stage_register(&inst->metrics);
    return 0;
}

static void inst_fini(struct orderd_inst *inst)
{
    if (inst->created) {
        od_metrics_stage_unregister(&inst->metrics);
        if (inst->stage->destroy)
            inst->stage->destroy(inst->state);
        inst->created = 0;
    }
    if (inst->stage)
        pthread_mutex_destroy(&inst->serial);
}

static double g_queue(void *arg)
{
    struct od_pipe *p = arg;
    double v;
    pthread_mutex_lock(&p->mu);
    v = (double)(p->nready + p->nheap);
    pthread_mutex_unlock(&p->mu);
    return v;
}

static double g_inflight(void *arg)
{
    return (double)od_pipe_in_flight(arg);
}

/* The spool's series, in the order of struct pipe_spool_gauge g_spool[]. */
static const struct {
    const char *name, *help;
} spool_gauges[] = {
    { "orderd_spool_bytes", "Bytes in the spool on disk" },
    { "orderd_spool_records", "Spooled records not yet completed" },
    { "orderd_spool_commits_total", "Group commits written to the spool" },
    { "orderd_spool_appends_total", "Records written to the spool by group commits" },
    { "orderd_spool_sync_seconds_total", "Time spent in the group commits' fdatasync" },
    { "orderd_spool_memory_hits_total", "Spooled records handed to the pipeline from memory, not read back" },
    { "orderd_spool_reads_total", "Spooled records read back from disk for the pipeline" },
};
_Static_assert(sizeof(spool_gauges) / sizeof(spool_gauges[0]) ==
               sizeof(((struct od_pipe *)0)->g_spool) / sizeof(struct pipe_spool_gauge),
               "one handle per spool series");

static double g_spool(void *arg)
{
    const struct pipe_spool_gauge *sg = arg;
    struct od_spool_stats st;

    od_spool_stats(sg->p->spool, &st);
    switch (sg->what) {
    case 0:  return (double)st.bytes;
    case 1:  return (double)st.records;
    case 2:  return (double)st.commits;
    case 3:  return (double)st.committed;
    case 4:  return (double)st.sync_ns / 1e9;
    case 5:  return (double)st.hot_hits;
    default: return (double)st.reads;
    }
}

int od_pipe_create(const struct od_pipeline_conf *pc, const char *state_dir, struct od_pipe **out)
{
    struct od_pipe *p = calloc(1, sizeof(*p));
    pthread_condattr_t ca;
    size_t k = 0;

    *out = NULL;
    if (p == NULL)
        return -ENOMEM;
    p->pc = pc;
    p->state_dir = strdup(state_dir);
    pthread_mutex_init(&p->mu, NULL);
    pthread_mutex_init(&p->wmu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&p->work, &ca);
    pthread_condattr_destroy(&ca);
    pthread_cond_init(&p->space, NULL);
    pthread_cond_init(&p->idle, NULL);
    snprintf(p->labels, sizeof(p->labels), "pipeline=\"%s\"", pc->name);

    if (pc->ordered && (p->keys = calloc(OD_KEY_BUCKETS, sizeof(*p->keys))) == NULL)
        goto fail;
    p->nstages = pc->ntransforms + (pc->store ? 1 : 0) + pc->npublish;
    p->stages = calloc(p->nstages + 1, sizeof(*p->stages));
    if (p->stages == NULL)
        goto fail;
    if (pc->spool) {
        struct od_spool_opts so = {
            .dir = json_string_value(json_object_get(pc->spool, "path")),
            .max_bytes = (uint64_t)json_integer_value(json_object_get(pc->spool, "max_bytes")),
            .segment_bytes = (uint64_t)json_integer_value(json_object_get(pc->spool, "segment_bytes")),
            .sync = json_is_true(json_object_get(pc->spool, "sync")),
            .group_delay_ms = json_integer_value(json_object_get(pc->spool, "group_delay")),
            /* Submitted messages wait in memory for the reader, up to as
             * many as may be in flight and 8 MiB of their records. */
            .hot_max = (size_t)pc->queue_size,
            .hot_bytes = (uint64_t)8 << 20,
            .hot_free = pipe_msg_free,
        };
        int rc = od_spool_open(&so, &p->spool);
        if (rc < 0) {
            od_logf(ORDERD_LOG_ERR, pc->name, NULL, NULL, "cannot open spool %s: %s", so.dir,
                    strerror(-rc));
            goto fail;
        }
    }
    for (size_t i = 0; i < pc->ntransforms; i++)
        if (inst_init(p, &p->stages[k++], &pc->transforms[i]) < 0)
            goto fail;
    if (pc->store) {
        p->store = &p->stages[k];
        if (inst_init(p, &p->stages[k++], pc->store) < 0)
            goto fail;
    }
    for (size_t i = 0; i < pc->npublish; i++)
        if (inst_init(p, &p->stages[k++], &pc->publish[i]) < 0)
            goto fail;
    if (inst_init(p, &p->input, &pc->input) < 0)
        goto fail;
    p->g_queue = od_metrics_gauge_fn("orderd_pipeline_queue_depth",
                                     "Messages waiting for a worker (ready or waiting to retry)",
                                     p->labels, g_queue, p);
    p->g_inflight = od_metrics_gauge_fn("orderd_pipeline_in_flight",
                                        "Messages accepted and not yet finished", p->labels,
                                        g_inflight, p);
    for (unsigned i = 0; p->spool != NULL && i < sizeof(spool_gauges) / sizeof(spool_gauges[0]); i++) {
        struct pipe_spool_gauge *sg = &p->g_spool[i];
        sg->p = p;
        sg->what = i;
        sg->g = od_metrics_gauge_fn(spool_gauges[i].name, spool_gauges[i].help, p->labels,
                                    g_spool, sg);
    }
    *out = p;
    return 0;
fail:
    od_pipe_destroy(p);
    return -EINVAL;
}

int od_pipe_start(struct od_pipe *p)
{
    int rc;

    p->workers = calloc(p->pc->workers, sizeof(*p->workers));
    if (p->workers == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < p->pc->workers; i++) {
        if ((rc = pthread_create(&p->workers[i], NULL, worker_main, p)) != 0) {
            od_logf(ORDERD_LOG_ERR, p->pc->name, NULL, NULL, "cannot start worker: %s", strerror(rc));
            return -rc;
        }
        p->nworkers++;
    }
    if (p->spool) {
        p->spool_reader_running = 1;
        if ((rc = pthread_create(&p->spool_reader, NULL, spool_reader_main, p)) != 0) {
            p->spool_reader_running = 0;
            return -rc;
        }
    }
    pthread_mutex_lock(&p->mu);
    p->accepting = 1;
    pthread_mutex_unlock(&p->mu);
    p->started = 1;
    rc = p->input.stage->start(p->input.state);
    if (rc < 0) {
        od_logf(ORDERD_LOG_ERR, p->pc->name, inst_name(&p->input), p->input.sc->plugin->name,
                "input did not start: %s", strerror(-rc));
        return rc;
    }
    od_logf(ORDERD_LOG_INFO, p->pc->name, NULL, NULL, "started: %zu stage%s, %zu worker%s%s",
            p->nstages + 1, p->nstages ? "s" : "", p->nworkers, p->nworkers == 1 ? "" : "s",
            p->spool ? ", spooled" : "");
    return 0;
}

void od_pipe_stop_input(struct od_pipe *p)
{
    pthread_mutex_lock(&p->mu);
    p->accepting = 0;
    pthread_cond_broadcast(&p->space);
    pthread_mutex_unlock(&p->mu);
    if (p->started && p->input.stage->stop)
        p->input.stage->stop(p->input.state);
    if (p->spool) {
        pthread_mutex_lock(&p->mu);
        p->spool_reader_running = 0;
        pthread_cond_broadcast(&p->space);
        pthread_mutex_unlock(&p->mu);
        od_spool_shutdown(p->spool);
        if (p->started)
            pthread_join(p->spool_reader, NULL);
    }
}

size_t od_pipe_drain(struct od_pipe *p, int64_t deadline_ms)
{
    size_t left;

    pthread_mutex_lock(&p->mu);
    while (p->in_flight > 0) {
        int64_t now = mono_ms();
        if (now >= deadline_ms)
            break;
        /* Retries due after the deadline would only hold us up: run them now. */
        timed_wait(&p->idle, &p->mu, deadline_ms - now < 200 ? deadline_ms - now : 200);
        promote_due(p);
    }
    left = (size_t)p->in_flight;
    __atomic_store_n(&p->stopping, 1, __ATOMIC_RELAXED);
    pthread_cond_broadcast(&p->work);
    pthread_cond_broadcast(&p->space);
    pthread_mutex_unlock(&p->mu);
    for (size_t i = 0; i < p->nworkers; i++)
        pthread_join(p->workers[i], NULL);
    p->nworkers = 0;
    if (left)
        od_logf(ORDERD_LOG_WARN, p->pc->name, NULL, NULL,
                "%zu message%s still in flight at the drain deadline; left to the source to redeliver",
                left, left == 1 ? "" : "s");
    return left;
}

void od_pipe_destroy(struct od_pipe *p)
{
    orderd_msg *m;

    if (p == NULL)
        return;
    od_metrics_gauge_fn_remove(p->g_queue);
    od_metrics_gauge_fn_remove(p->g_inflight);
    for (size_t i = 0; i < sizeof(p->g_spool) / sizeof(p->g_spool[0]); i++)
        od_metrics_gauge_fn_remove(p->g_spool[i].g);
    if (p->nworkers) {   /* not drained: stop now */
        od_pipe_stop_input(p);
        od_pipe_drain(p, 0);
    }
    /* Whoever still waits for an outcome hears now, while the input exists.
     * Under mu: a plugin may still settle (and finish) one of these. */
    pthread_mutex_lock(&p->mu);
    for (m = p->all; m != NULL; m = m->all_next)
        notify(p, m, ORDERD_RETRY, m->has_spool ? "the pipeline stopped first; it stays in the spool"
                                                : "the pipeline stopped first");
    pthread_mutex_unlock(&p->mu);
    for (size_t b = 0; b < OD_WAIT_BUCKETS; b++) {
        struct od_waiter *w, *next;
        for (w = p->waiters[b]; w != NULL; w = next) {
            orderd_result res = { .outcome = ORDERD_RETRY,
                                  .reason = "the pipeline stopped first; it stays in the spool" };
            next = w->next;
            w->done(w->arg, 0, &res);
            free(w);
        }
        p->waiters[b] = NULL;
    }
    p->nwaiters = 0;
    /* Input first (it may still ack), then the stages; after this no plugin
     * holds a message, so what is left in flight can be freed.  Unacked
     * messages are redelivered by their source (offset, spool, broker). */
    inst_fini(&p->input);
    for (size_t i = 0; i < p->nstages; i++)
        inst_fini(&p->stages[i]);
    while ((m = p->all) != NULL) {
        untrack(p, m);
        if (m->has_spool)
            od_spool_requeue(p->spool, m->spool_seq);
        od_msg_free(m);
    }
    if (p->spool)
        od_spool_close(p->spool);
    for (size_t b = 0; p->keys && b < OD_KEY_BUCKETS; b++) {
        struct od_keyslot *k = p->keys[b], *next;
        for (; k; k = next) {
            next = k->next;
            free(k);
        }
    }
    free(p->keys);
    free(p->stages);
    free(p->heap);
    free(p->workers);
    free(p->state_dir);
    pthread_mutex_destroy(&p->mu);
    pthread_mutex_destroy(&p->wmu);
    pthread_cond_destroy(&p->work);
    pthread_cond_destroy(&p->space);
    pthread_cond_destroy(&p->idle);
    free(p);
}

/* ---- the admin API's view ------------------------------------------------------ */

static json_t *stage_json(const struct orderd_inst *i)
{
    const struct od_stage_metrics *m = &i->metrics;

    return json_pack("{s:s s:s s:s s:I s:I s:I s:I s:I s:I}",
        "name", i->sc->name, "plugin", i->sc->plugin->name, "kind", od_kind_name(i->sc->kind),
        "in", (json_int_t)atomic_load(&m->in), "ok", (json_int_t)atomic_load(&m->ok),
        "retry", (json_int_t)atomic_load(&m->retry), "reject", (json_int_t)atomic_load(&m->reject),
        "drop", (json_int_t)atomic_load(&m->drop), "pending", (json_int_t)atomic_load(&m->pending));
}

json_t *od_pipes_status(void)
{
    json_t *arr = json_array();

    pthread_rwlock_rdlock(&current_lock);
    for (size_t i = 0; i < ncurrent; i++) {
        struct od_pipe *p = current[i];
        json_t *stages = json_array(), *dl = NULL, *j;
        size_t queued;
        uint64_t inflight;

        json_array_append_new(stages, stage_json(&p->input));
        for (size_t k = 0; k < p->nstages; k++)
            json_array_append_new(stages, stage_json(&p->stages[k]));
        pthread_mutex_lock(&p->mu);
        queued = p->nready + p->nheap;
        inflight = p->in_flight;
        pthread_mutex_unlock(&p->mu);
        od_dlq_read(p->state_dir, p->pc->name, &dl);
        j = json_pack("{s:s s:I s:I s:I s:o}", "name", p->pc->name,
                      "in_flight", (json_int_t)inflight, "queue_depth", (json_int_t)queued,
                      "dead_letters", (json_int_t)json_array_size(dl), "stages", stages);
        json_decref(dl);
        if (p->spool) {
            struct od_spool_stats st;
            od_spool_stats(p->spool, &st);
            json_object_set_new(j, "spool", json_pack("{s:I s:I s:I}", "bytes", (json_int_t)st.bytes,
                                "records", (json_int_t)st.records, "segments", (json_int_t)st.segments));
        } else {
            json_object_set_new(j, "spool", json_null());
        }
        json_array_append_new(arr, j);
    }
    pthread_rwlock_unlock(&current_lock);
    return arr;
}

/* Re-inject one dead letter into its pipeline at the stage that rejected it.
 * Never blocks: a full pipeline answers -EAGAIN. */
int od_pipe_replay(const char *pipeline, const json_t *entry)
{
    struct od_pipe *p = NULL;
    orderd_msg *m;
    int rc;

    pthread_rwlock_rdlock(&current_lock);
    for (size_t i = 0; i < ncurrent; i++)
        if (strcmp(current[i]->pc->name, pipeline) == 0)
            p = current[i];
    if (p == NULL) {
        pthread_rwlock_unlock(&current_lock);
        return -ENOENT;
    }
    m = od_msg_from_json(entry);
    if (m == NULL) {
        pthread_rwlock_unlock(&current_lock);
        return -EINVAL;
    }
    od_host_table()->msg_set_prop(m, OD_REPLAY_PROP,
                                  json_string_value(json_object_get(entry, "stage")));
    m->delivery_count = 1;
    rc = od_pipe_submit(&p->input, m, ORDERD_SUBMIT_NOWAIT);
    pthread_rwlock_unlock(&current_lock);
    return rc;
}

const char *od_pipe_state_dir(const struct od_pipe *p)
{
    return p->state_dir;
}

const char *od_pipe_name(const struct od_pipe *p)
{
    return p->pc->name;
}

uint64_t od_pipe_in_flight(const struct od_pipe *p)
{
    struct od_pipe *mp = (struct od_pipe *)p;
    uint64_t v;

    pthread_mutex_lock(&mp->mu);
    v = p->in_flight;
    pthread_mutex_unlock(&mp->mu);
    return v;
}
