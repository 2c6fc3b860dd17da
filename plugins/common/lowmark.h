/* lowmark.h - the low-water mark of an input whose messages are submitted
 * in order and acked out of order.
 *
 * An input hands its records to the pipeline in source order (file lines,
 * event sequence numbers, the documents of a page) and workers ack them in
 * any order.  What it may save as its position is the low-water mark: the
 * point before which every record was acked or needed no ack.  A restart
 * resumes there and reads again at most what was in flight (at-least-once,
 * never a gap).
 *
 * The window keeps one slot per message in flight, oldest first, in a ring
 * that grows to the most ever in flight at once and no further.  Each
 * message gets a ticket, its number in submit order: an ack finds its slot
 * by ticket at once and the mark moves over the acked prefix, so an ack
 * costs O(1) amortised.  A ticket is never handed out twice, so an ack for
 * a message from before lowmark_reset() is recognised and refused.
 *
 * Not thread-safe: the caller holds its own lock around every call.  Used
 * by the file, sqlite, cosmos and kafka inputs; each compiles it in (plugins
 * hide its symbols).
 */
#ifndef LOWMARK_H
#define LOWMARK_H

#include <stddef.h>
#include <stdint.h>

/* A position in an input's source. */
struct lowmark_pos {
    uint64_t off;       /* byte offset or sequence number */
    uint64_t line;      /* records before off, for inputs that number them
                           (the file input's line numbers); else 0 */
};

struct lowmark_slot;

/* Zero-initialise it: nothing in flight, the mark at { 0, 0 }. */
struct lowmark {
    struct lowmark_slot *ring;
    size_t               cap, head, len;
    size_t               unacked;   /* slots not acked yet */
    uint64_t             first;     /* ticket of the oldest slot */
    struct lowmark_pos   mark;      /* where everything before the oldest slot ends */
};

/* LOWMARK_RESET - forget what is in flight (the source was replaced, or a
 * new page begins) and put the mark at start.  Acks for what was in flight
 * are refused from now on.  The ring is kept for reuse. */
void lowmark_reset(struct lowmark *lm, struct lowmark_pos start);

/* LOWMARK_ADD - a message about to be submitted, after everything added or
 * passed so far; once it and everything before it are acked the mark is
 * end.  Add before submit(): the ack may come before submit() returns.
 * RETURNS: 0 with *ticket set (keep it with the message), or -ENOMEM with
 * nothing changed. */
int lowmark_add(struct lowmark *lm, struct lowmark_pos end, uint64_t *ticket);

/* LOWMARK_PASS - a record after everything added so far that needs no ack
 * (a blank line, one dead-lettered at once): the mark reaches end as soon
 * as everything before it is acked, at once when nothing is in flight.
 * Never allocates. */
void lowmark_pass(struct lowmark *lm, struct lowmark_pos end);

/* LOWMARK_CANCEL - take back the newest message, added with ticket, whose
 * submit() failed (no ack will come), before anything else was added or
 * passed.  RETURNS: 0, or -EINVAL when ticket is not the newest message in
 * flight. */
int lowmark_cancel(struct lowmark *lm, uint64_t ticket);

/* LOWMARK_ACK - the message with ticket is done, whatever its outcome.
 * RETURNS: 0, or -ENOENT when it is not in flight (acked already, never
 * added, cancelled, or from before a reset). */
int lowmark_ack(struct lowmark *lm, uint64_t ticket);

/* LOWMARK_MARK - the low-water mark: where to resume. */
struct lowmark_pos lowmark_mark(const struct lowmark *lm);

/* LOWMARK_PENDING - how many messages are in flight: added, not acked. */
size_t lowmark_pending(const struct lowmark *lm);

/* LOWMARK_SPAN - how many messages the window holds: from the oldest one
 * in flight to the newest, acked ones included (records passed take no
 * room).  This, not lowmark_pending(), is what the ring's memory follows,
 * so an input that bounds it bounds that memory even when one message
 * stays in flight long. */
size_t lowmark_span(const struct lowmark *lm);

/* LOWMARK_FREE - release the ring; lm is then as if zero-initialised. */
void lowmark_free(struct lowmark *lm);

#endif
