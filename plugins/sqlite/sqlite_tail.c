/* sqlite_tail.c - the events a store committed last, kept in memory for
 * the feeds reading the same file in the same process.
 *
 * A feed that has caught up would read every event back with a SELECT
 * right after the store wrote it, and check its text again.  Instead the
 * store hands what it just committed to the file's tail: a ring of the
 * latest events, in seq order, that a feed takes from as long as its
 * position is inside the ring.  Anything else (a feed far behind, another
 * writer's rows, a ring that was cut short) is read with the SELECT as
 * before, so the ring is only ever a shortcut to rows that are committed:
 *
 *  - events go in after their COMMIT succeeded, under the store's write
 *    lock, so in commit order;
 *  - the ring only holds consecutive seqs: an event that does not follow
 *    the last one (another writer's rows in between, an event the store
 *    could not copy) empties it first;
 *  - a feed takes from it only when it holds the seq right after the
 *    feed's position, and then a run of consecutive ones.
 *
 * Tails are found by the database file's device and inode, so a store and
 * a feed naming one file by different paths share one.  The store copies
 * nothing while no feed is registered.  Bounded by SQ_TAIL_MAX events and
 * SQ_TAIL_MAX_BYTES of them; the oldest go first.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "../common/deadline.h"
#include "sq.h"

#define SQ_TAIL_MAX       8192
#define SQ_TAIL_MAX_BYTES (16u << 20)

struct sq_tail {
    dev_t             dev;
    ino_t             ino;
    int               users;        /* sq_tail_open()s; under sq_tails_lock */
    struct sq_tail   *next;
    _Atomic int       feeds;        /* feeds taking from it; 0: the store keeps nothing */

    pthread_mutex_t   lock;         /* everything below */
    pthread_cond_t    more;
    uint64_t          gen;          /* raised by every publish and wake */
    struct sq_event  *ring[SQ_TAIL_MAX];
    size_t            head, n;      /* oldest at ring[head] */
    size_t            bytes;
};

static pthread_mutex_t  sq_tails_lock = PTHREAD_MUTEX_INITIALIZER;
static struct sq_tail  *sq_tails;

struct sq_event *
sq_event_new(int64_t seq, const char *id, const char *stream, const char *type,
             size_t type_len, int64_t version, const char *body, size_t body_len)
{
    char             ver[24];
    size_t           lid = strlen(id) + 1, ls = strlen(stream) + 1;
    size_t           lt = type ? type_len + 1 : 0, lv;
    struct sq_event *ev;
    char            *p;

    lv = (size_t) snprintf(ver, sizeof(ver), "%lld", (long long) version) + 1;
    ev = malloc(sizeof(*ev) + lid + ls + lt + lv + body_len + 1);
    if (ev == NULL)
        return NULL;
    atomic_init(&ev->refs, 1);
    ev->seq = seq;
    ev->size = sizeof(*ev) + lid + ls + lt + lv + body_len + 1;
    p = ev->data;
    ev->id = memcpy(p, id, lid);
    p += lid;
    ev->stream = memcpy(p, stream, ls);
    p += ls;
    ev->type = NULL;
    if (type != NULL) {
        memcpy(p, type, type_len);
        p[type_len] = '\0';
        ev->type = p;
    }
    p += lt;
    ev->version = memcpy(p, ver, lv);
    p += lv;
    ev->body = memcpy(p, body, body_len);
    p[body_len] = '\0';
    ev->body_len = body_len;
    return ev;
}

void
sq_event_unref(struct sq_event *ev)
{
    if (ev != NULL && atomic_fetch_sub_explicit(&ev->refs, 1, memory_order_acq_rel) == 1)
        free(ev);
}

/* Drop the oldest event.  Under t->lock. */
static void
sq_tail_drop(struct sq_tail *t)
{
    struct sq_event *ev = t->ring[t->head];

    t->bytes -= ev->size;
    t->head = (t->head + 1) % SQ_TAIL_MAX;
    t->n--;
    sq_event_unref(ev);
}

struct sq_tail *
sq_tail_open(const char *path)
{
    struct stat     sb;
    struct sq_tail *t;

    if (stat(path, &sb) != 0)
        return NULL;
    pthread_mutex_lock(&sq_tails_lock);
    for (t = sq_tails; t != NULL; t = t->next)
        if (t->dev == sb.st_dev && t->ino == sb.st_ino)
            break;
    if (t == NULL && (t = calloc(1, sizeof(*t))) != NULL) {
        pthread_condattr_t ca;

        t->dev = sb.st_dev;
        t->ino = sb.st_ino;
        atomic_init(&t->feeds, 0);
        pthread_mutex_init(&t->lock, NULL);
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&t->more, &ca);
        pthread_condattr_destroy(&ca);
        t->next = sq_tails;
        sq_tails = t;
    }
    if (t != NULL)
        t->users++;
    pthread_mutex_unlock(&sq_tails_lock);
    return t;
}

void
sq_tail_close(struct sq_tail *t)
{
    struct sq_tail **pp;

    if (t == NULL)
        return;
    pthread_mutex_lock(&sq_tails_lock);
    if (--t->users > 0) {
        pthread_mutex_unlock(&sq_tails_lock);
        return;
    }
    for (pp = &sq_tails; *pp != t; pp = &(*pp)->next)
        ;
    *pp = t->next;
    pthread_mutex_unlock(&sq_tails_lock);
    while (t->n > 0)
        sq_tail_drop(t);
    pthread_cond_destroy(&t->more);
    pthread_mutex_destroy(&t->lock);
    free(t);
}

void
sq_tail_feed(struct sq_tail *t, int delta)
{
    if (t != NULL)
        atomic_fetch_add_explicit(&t->feeds, delta, memory_order_relaxed);
}

int
sq_tail_wanted(struct sq_tail *t)
{
    return t != NULL && atomic_load_explicit(&t->feeds, memory_order_relaxed) > 0;
}

void
sq_tail_publish(struct sq_tail *t, struct sq_event **evs, size_t n)
{
    size_t i;

    if (n == 0)
        return;
    pthread_mutex_lock(&t->lock);
    for (i = 0; i < n; i++) {
        struct sq_event *ev = evs[i];

        if (t->n > 0 && t->ring[(t->head + t->n - 1) % SQ_TAIL_MAX]->seq + 1 != ev->seq) {
            while (t->n > 0)    /* not consecutive: start over from this one */
                sq_tail_drop(t);
        }
        while (t->n > 0 && (t->n == SQ_TAIL_MAX || t->bytes + ev->size > SQ_TAIL_MAX_BYTES))
            sq_tail_drop(t);
        t->ring[(t->head + t->n) % SQ_TAIL_MAX] = ev;
        t->n++;
        t->bytes += ev->size;
    }
    t->gen++;
    pthread_cond_broadcast(&t->more);
    pthread_mutex_unlock(&t->lock);
}

size_t
sq_tail_take(struct sq_tail *t, int64_t after, struct sq_event **out, size_t max, uint64_t *gen)
{
    size_t  i, k = 0;
    int64_t first;

    pthread_mutex_lock(&t->lock);
    *gen = t->gen;
    if (t->n > 0) {
        first = t->ring[t->head]->seq;
        if (after >= first - 1 && after < first + (int64_t) t->n - 1) {
            for (i = (size_t) (after + 1 - first); i < t->n && k < max; i++, k++) {
                out[k] = t->ring[(t->head + i) % SQ_TAIL_MAX];
                atomic_fetch_add_explicit(&out[k]->refs, 1, memory_order_relaxed);
            }
        }
    }
    pthread_mutex_unlock(&t->lock);
    return k;
}

void
sq_tail_wait(struct sq_tail *t, uint64_t gen, int64_t ms)
{
    struct timespec ts = deadline_after_ms(ms);

    pthread_mutex_lock(&t->lock);
    while (t->gen == gen && pthread_cond_timedwait(&t->more, &t->lock, &ts) == 0)
        ;
    pthread_mutex_unlock(&t->lock);
}

void
sq_tail_wake(struct sq_tail *t)
{
    pthread_mutex_lock(&t->lock);
    t->gen++;
    pthread_cond_broadcast(&t->more);
    pthread_mutex_unlock(&t->lock);
}
