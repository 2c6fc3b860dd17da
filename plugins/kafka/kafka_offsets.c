/* kafka_offsets.c - which offset of a partition may be committed.
 *
 * Acks come back in any order from many workers, but a Kafka group only
 * stores one position per partition: "everything before this offset is
 * done".  So the offsets in flight are kept in arrival (= offset) order and
 * the committable position moves only over a prefix that is wholly
 * complete.  Offsets need not be contiguous (compaction, transaction
 * markers): the position is always the completed offset + 1.
 *
 * No locking here: the caller holds the stage's lock.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "kafka.h"

struct kf_part *
kf_part_new(const char *topic, int32_t partition)
{
    struct kf_part *p = calloc(1, sizeof(*p));

    if (p == NULL)
        return NULL;
    p->topic = strdup(topic);
    if (p->topic == NULL) {
        free(p);
        return NULL;
    }
    p->partition = partition;
    p->assigned = 1;
    p->refs = 1;
    p->last = -1;
    p->rewind_to = -1;
    p->done_upto = -1;
    p->committed = -1;
    return p;
}

void
kf_part_free(struct kf_part *p)
{
    if (p == NULL)
        return;
    free(p->ring);
    free(p->topic);
    free(p);
}

static struct kf_slot *
kf_slot_at(struct kf_part *p, size_t i)
{
    return &p->ring[(p->head + i) % p->cap];
}

static void
kf_part_advance(struct kf_part *p)
{
    while (p->len > 0 && p->ring[p->head].done) {
        p->done_upto = p->ring[p->head].offset + 1;
        p->head = (p->head + 1) % p->cap;
        p->len--;
    }
}

int
kf_part_push(struct kf_part *p, int64_t offset, int done)
{
    struct kf_slot *nr;
    size_t          i, ncap;

    if (offset <= p->last)
        return -EINVAL;
    if (p->len == p->cap) {
        ncap = p->cap ? p->cap * 2 : 64;
        nr = malloc(ncap * sizeof(*nr));
        if (nr == NULL)
            return -ENOMEM;
        for (i = 0; i < p->len; i++)
            nr[i] = *kf_slot_at(p, i);
        free(p->ring);
        p->ring = nr;
        p->cap = ncap;
        p->head = 0;
    }
    p->ring[(p->head + p->len) % p->cap] = (struct kf_slot) { .offset = offset, .done = done };
    p->len++;
    p->last = offset;
    if (!done)
        p->refs++;
    kf_part_advance(p);
    return 0;
}

void
kf_part_unpush(struct kf_part *p, int64_t offset)
{
    struct kf_slot *s;

    if (p->len == 0)
        return;
    s = kf_slot_at(p, p->len - 1);
    if (s->offset != offset || s->done)
        return;
    p->len--;
    p->refs--;
    /* the offset must be taken in again when it is fetched again */
    p->last = p->len > 0 ? kf_slot_at(p, p->len - 1)->offset : p->done_upto - 1;
}

int
kf_part_done(struct kf_part *p, int64_t offset)
{
    size_t lo = 0, hi = p->len, mid;

    while (lo < hi) {
        mid = lo + (hi - lo) / 2;
        if (kf_slot_at(p, mid)->offset < offset)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == p->len || kf_slot_at(p, lo)->offset != offset || kf_slot_at(p, lo)->done)
        return -ENOENT;
    kf_slot_at(p, lo)->done = 1;
    kf_part_advance(p);
    return 0;
}

int
kf_part_revoke(struct kf_part *p)
{
    p->assigned = 0;
    p->paused = 0;
    free(p->ring);
    p->ring = NULL;
    p->cap = p->head = p->len = 0;
    p->refs--;
    return p->refs == 0;
}

int64_t
kf_part_committable(const struct kf_part *p)
{
    if (p->done_upto < 0 || p->done_upto == p->committed)
        return -1;
    return p->done_upto;
}
