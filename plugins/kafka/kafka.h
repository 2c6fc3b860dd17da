/* kafka.h - internals shared by the kafka plugin's files (not installed).
 *
 * kafka.c          the input stage: configuration, the consumer thread,
 *                  Kafka record -> orderd message, rebalances, lifecycle
 * kafka_offsets.c  per-partition in-flight offsets and the low-water mark
 *                  that may be committed (no librdkafka calls)
 *
 * Everything here has hidden visibility; the plugin exports only its
 * descriptor.
 */
#ifndef KF_KAFKA_H
#define KF_KAFKA_H

#include <stddef.h>
#include <stdint.h>

#include <orderd/plugin.h>

struct kf_slot {
    int64_t offset;
    int     done;
};

/*
 * One assignment of one partition to this consumer.  A new kf_part is made
 * for every assign, so a message delivered under an earlier assignment can
 * never be confused with one delivered under the current one: each message
 * keeps a pointer to the kf_part it came from (msg_set_input_data) and an
 * ack for a kf_part that was revoked is ignored.
 *
 * refs counts the submitted messages not yet acked, plus one while the
 * partition is assigned; the kf_part is freed when it drops to zero.  All
 * fields are guarded by the stage's lock.
 */
struct kf_part {
    struct kf_part *next;
    char           *topic;
    int32_t         partition;
    int             assigned;   /* 0 once revoked: its acks are ignored */
    int             paused;     /* paused for max_in_flight */
    int64_t         rewind_to;  /* seeked back to this offset: skip others until it comes, or -1 */
    size_t          refs;

    struct kf_slot *ring;       /* in flight, in offset order */
    size_t          cap, head, len;
    int64_t         last;       /* last offset taken in, or -1 */
    int64_t         done_upto;  /* next offset after the completed prefix, or -1 */
    int64_t         committed;  /* offset last sent to the group coordinator, or -1 */
};

/* KF_PART_NEW - a tracking record for a fresh assignment, holding the
 * assignment's reference.  RETURNS: the record, or NULL on ENOMEM. */
struct kf_part *kf_part_new(const char *topic, int32_t partition);

/* KF_PART_FREE - free p and its ring (no reference checks). */
void kf_part_free(struct kf_part *p);

/* KF_PART_PUSH - take offset in: in flight (done = 0, one more reference)
 * or already complete (done = 1, e.g. dead-lettered).  Offsets must grow.
 * RETURNS: 0, -ENOMEM, or -EINVAL when offset is not above the last one. */
int kf_part_push(struct kf_part *p, int64_t offset, int done);

/* KF_PART_UNPUSH - undo the last kf_part_push(p, offset, 0): the message
 * never entered the pipeline, so no ack will come for it. */
void kf_part_unpush(struct kf_part *p, int64_t offset);

/* KF_PART_DONE - mark offset complete and advance done_upto over the
 * completed prefix.  RETURNS: 0, or -ENOENT when offset is not in flight. */
int kf_part_done(struct kf_part *p, int64_t offset);

/* KF_PART_REVOKE - the partition left this consumer: forget what is in
 * flight and drop the assignment's reference.
 * RETURNS: 1 when no reference is left (the caller frees p), else 0. */
int kf_part_revoke(struct kf_part *p);

/* KF_PART_COMMITTABLE - the offset to commit now (done_upto when it moved
 * past what was committed), or -1 when there is nothing new. */
int64_t kf_part_committable(const struct kf_part *p);

#endif
