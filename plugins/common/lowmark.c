/* lowmark.c - the low-water mark of in-order submits and out-of-order acks
 * (see lowmark.h).
 *
 * Slot i of the window (0 = oldest) is ring[(head + i) & (cap - 1)] and
 * holds ticket first + i, so an ack is an index, not a search.  A record
 * that needs no ack does not take a slot: it moves the end of the newest
 * one, which is where the mark goes once that slot is popped. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "lowmark.h"

#define LOWMARK_MIN_CAP 64      /* a power of two, as every capacity */

struct lowmark_slot {
    struct lowmark_pos end;     /* the mark once this and all before it are acked */
    int                acked;
};

static struct lowmark_slot *
lowmark_slot(const struct lowmark *lm, size_t i)
{
    return &lm->ring[(lm->head + i) & (lm->cap - 1)];
}

void
lowmark_reset(struct lowmark *lm, struct lowmark_pos start)
{
    /* The tickets in flight are skipped, never reused: their acks miss. */
    lm->first += lm->len;
    lm->head = 0;
    lm->len = 0;
    lm->unacked = 0;
    lm->mark = start;
}

int
lowmark_add(struct lowmark *lm, struct lowmark_pos end, uint64_t *ticket)
{
    struct lowmark_slot *ring;
    size_t cap, i;

    if (lm->len == lm->cap) {
        cap = lm->cap ? lm->cap * 2 : LOWMARK_MIN_CAP;
        if (cap > SIZE_MAX / sizeof(*ring))
            return -ENOMEM;
        ring = malloc(cap * sizeof(*ring));
        if (ring == NULL)
            return -ENOMEM;
        for (i = 0; i < lm->len; i++)
            ring[i] = *lowmark_slot(lm, i);
        free(lm->ring);
        lm->ring = ring;
        lm->cap = cap;
        lm->head = 0;
    }
    *lowmark_slot(lm, lm->len) = (struct lowmark_slot) { .end = end };
    *ticket = lm->first + lm->len;
    lm->len++;
    lm->unacked++;
    return 0;
}

void
lowmark_pass(struct lowmark *lm, struct lowmark_pos end)
{
    if (lm->len == 0)
        lm->mark = end;
    else
        lowmark_slot(lm, lm->len - 1)->end = end;
}

int
lowmark_cancel(struct lowmark *lm, uint64_t ticket)
{
    if (lm->len == 0 || ticket != lm->first + lm->len - 1
        || lowmark_slot(lm, lm->len - 1)->acked)
        return -EINVAL;
    lm->len--;
    lm->unacked--;
    return 0;
}

int
lowmark_ack(struct lowmark *lm, uint64_t ticket)
{
    struct lowmark_slot *s;

    if (ticket < lm->first || ticket - lm->first >= lm->len)
        return -ENOENT;
    s = lowmark_slot(lm, (size_t) (ticket - lm->first));
    if (s->acked)
        return -ENOENT;
    s->acked = 1;
    lm->unacked--;
    /* Each slot is popped once, so this loop is O(1) per ack on average. */
    while (lm->len > 0 && lm->ring[lm->head].acked) {
        lm->mark = lm->ring[lm->head].end;
        lm->head = (lm->head + 1) & (lm->cap - 1);
        lm->len--;
        lm->first++;
    }
    return 0;
}

struct lowmark_pos
lowmark_mark(const struct lowmark *lm)
{
    return lm->mark;
}

size_t
lowmark_pending(const struct lowmark *lm)
{
    return lm->unacked;
}

size_t
lowmark_span(const struct lowmark *lm)
{
    return lm->len;
}

void
lowmark_free(struct lowmark *lm)
{
    free(lm->ring);
    memset(lm, 0, sizeof(*lm));
}
