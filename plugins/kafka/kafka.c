/* kafka.c - the kafka input: a consumer-group member that submits each
 * record of its topics to the pipeline and commits a partition's offset
 * only once the pipeline completed every record before it.
 *
 * One thread polls the consumer.  Records become messages (id, JSON body,
 * headers as properties, the key as partition key); a payload that is not
 * JSON goes to the dead letters and counts as complete.  Acks arrive from
 * any worker in any order and only mark records done in their partition's
 * low-water mark (../common/lowmark.h); the consumer thread commits the
 * completed prefix asynchronously every commit_interval, and synchronously
 * on revoke and stop.  On revoke the partition's tracking is dropped, so
 * acks of records still in the pipeline from it are ignored: the next owner
 * fetches them again from the committed offset (at-least-once, nothing
 * skipped).  A partition with max_in_flight records in the pipeline is
 * paused until acks bring it below.
 *
 * librdkafka calls the rebalance and commit callbacks only from inside
 * rd_kafka_consumer_poll() / rd_kafka_consumer_close(), i.e. on the consumer
 * thread (or in destroy() once that thread is gone).
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <librdkafka/rdkafka.h>
#include <orderd/plugin.h>

#include "../common/deadline.h"
#include "../common/lowmark.h"

enum kf_id_from { KF_ID_OFFSET, KF_ID_KEY, KF_ID_HEADER };

/*
 * One assignment of one partition to this consumer.  A new kf_part is made
 * for every assign, so a message delivered under an earlier assignment can
 * never be confused with one delivered under the current one: each message
 * keeps a pointer to the kf_part it came from and its lowmark ticket
 * (msg_set_input_data), and an ack for a kf_part that was revoked is ignored.
 *
 * The low-water mark takes the records in offset order; a record ends at its
 * offset + 1, so the mark is the offset to commit: the one after the longest
 * completed prefix.  Offsets need not be contiguous (compaction, transaction
 * markers).  A mark of 0 means nothing was completed yet: there is nothing
 * to commit (committing 0 would move the group back to the start).
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

    struct lowmark  lm;         /* records in flight; mark.off = offset to commit, or 0 */
    int64_t         last;       /* last offset taken in, or -1 */
    int64_t         committed;  /* offset last sent to the group coordinator, or -1 */
};

struct kf {
    orderd_inst        *inst;
    const orderd_host  *h;
    rd_kafka_t         *rk;
    rd_kafka_topic_partition_list_t *topics;
    char               *group;
    enum kf_id_from     id_from;
    char               *id_header;
    int                 poll_ms;
    int64_t             commit_ms;
    size_t              max_in_flight;

    pthread_t           thread;
    int                 started;
    int                 subscribed;
    int64_t             commit_at;  /* consumer thread: monotonic ms of the next commit */
    int                 failing;    /* consumer thread: submit failing, logged once */

    pthread_mutex_t     lock;       /* everything below, and every kf_part */
    int                 stopping;
    struct kf_part     *parts;      /* assigned now */
    struct kf_part     *retired;    /* revoked, still referenced by messages in flight */
};

static const orderd_option kf_options[] = {
    { .key = "bootstrap_servers", .type = ORDERD_T_STRING, .flags = ORDERD_OPT_REQUIRED,
      .help = "Kafka brokers to contact first, as \"host:port[,host:port...]\" (bootstrap.servers)" },
    { .key = "topics", .type = ORDERD_T_STRLIST, .flags = ORDERD_OPT_REQUIRED,
      .help = "topics to consume; a name starting with ^ is a regular expression" },
    { .key = "group_id", .type = ORDERD_T_STRING,
      .help = "consumer group that shares the partitions and owns the committed offsets"
              " (default: the pipeline's name)" },
    { .key = "client_id", .type = ORDERD_T_STRING, .def = "orderd",
      .help = "client.id sent to the brokers, as seen in their logs and quotas" },
    { .key = "auto_offset_reset", .type = ORDERD_T_STRING, .def = "earliest",
      .choices = "earliest|latest",
      .help = "where a partition without a committed offset starts: its oldest record or only new ones" },
    { .key = "poll_timeout", .type = ORDERD_T_DURATION, .def = "100ms",
      .help = "longest one consumer poll waits for records; also bounds how long stop takes" },
    { .key = "commit_interval", .type = ORDERD_T_DURATION, .def = "1s",
      .help = "how often completed offsets are committed (also on rebalance and stop)" },
    { .key = "max_in_flight", .type = ORDERD_T_INT, .def = "1000",
      .help = "records of one partition in the pipeline at once before it is paused (1-1000000)" },
    { .key = "message_id", .type = ORDERD_T_STRING, .def = "offset", .choices = "offset|key|header",
      .help = "message id: \"<topic>-<partition>-<offset>\", the record key, or the header"
              " message_id_header (offset form when the key or header is missing)" },
    { .key = "message_id_header", .type = ORDERD_T_STRING, .def = "message-id",
      .help = "record header holding the message id when message_id = \"header\"" },
    { .key = "sasl_username", .type = ORDERD_T_STRING,
      .help = "SASL user name (sasl.username); set security.protocol and sasl.mechanism in properties" },
    { .key = "sasl_password", .type = ORDERD_T_STRING, .flags = ORDERD_OPT_SECRET,
      .help = "SASL password (sasl.password); sasl_password_file or sasl_password_env keep it"
              " out of the config" },
    { .key = "properties", .type = ORDERD_T_STRLIST,
      .help = "extra librdkafka settings as \"name=value\" (e.g. \"security.protocol=SASL_SSL\");"
              " offset commit settings belong to the plugin and are refused" },
    { .key = NULL }
};

/* Settings the at-least-once contract depends on: the plugin sets them. */
static const char *const kf_reserved[] = {
    "enable.auto.commit", "enable.auto.offset.store", "group.id", "bootstrap.servers",
    "metadata.broker.list", "auto.offset.reset", "client.id", "enable.partition.eof",
    "sasl.password", "sasl.username", NULL
};

static void kf_destroy(void *state);

/* ---- tracking (under lock) ---- */

/* A tracking record for a fresh assignment, holding the assignment's
 * reference.  RETURNS: the record, or NULL on ENOMEM. */
static struct kf_part *
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
    p->committed = -1;
    return p;
}

static void
kf_part_free(struct kf_part *p)
{
    if (p == NULL)
        return;
    lowmark_free(&p->lm);
    free(p->topic);
    free(p);
}

/* Where the mark goes once the record at offset and all before it are done. */
static struct lowmark_pos
kf_end(int64_t offset)
{
    return (struct lowmark_pos) { .off = (uint64_t) offset + 1 };
}

/* The offset to commit now (the mark, when it moved past what was
 * committed), or -1 when there is nothing new. */
static int64_t
kf_committable(const struct kf_part *p)
{
    int64_t off = (int64_t) lowmark_mark(&p->lm).off;

    if (off == 0 || off == p->committed)
        return -1;
    return off;
}

static struct kf_part *
kf_find(struct kf *k, const char *topic, int32_t partition)
{
    struct kf_part *p;

    for (p = k->parts; p != NULL; p = p->next)
        if (p->partition == partition && strcmp(p->topic, topic) == 0)
            return p;
    return NULL;
}

static void
kf_unlink(struct kf_part **list, struct kf_part *p)
{
    for (; *list != NULL; list = &(*list)->next)
        if (*list == p) {
            *list = p->next;
            p->next = NULL;
            return;
        }
}

/* Take p out of the assigned set, forget what it has in flight (acks of it
 * are ignored from now on) and drop the assignment's reference; free p or
 * keep it for the acks still to come. */
static void
kf_drop(struct kf *k, struct kf_part *p)
{
    kf_unlink(&k->parts, p);
    p->assigned = 0;
    p->paused = 0;
    lowmark_free(&p->lm);
    if (--p->refs == 0) {
        kf_part_free(p);
        return;
    }
    p->next = k->retired;
    k->retired = p;
}

/* ---- commits ---- */

/* Commit the completed prefix of the given partitions (all assigned ones
 * when only is NULL).  sync waits for the coordinator's answer. */
static void
kf_commit(struct kf *k, const rd_kafka_topic_partition_list_t *only, int sync)
{
    rd_kafka_topic_partition_list_t *l;
    rd_kafka_topic_partition_t      *e;
    rd_kafka_resp_err_t              err;
    struct kf_part                  *p;
    int64_t                          off;
    int                              i;

    l = rd_kafka_topic_partition_list_new(8);
    if (l == NULL)
        return;
    pthread_mutex_lock(&k->lock);
    for (p = k->parts; p != NULL; p = p->next) {
        if (only != NULL && rd_kafka_topic_partition_list_find(only, p->topic, p->partition) == NULL)
            continue;
        off = kf_committable(p);
        if (off < 0)
            continue;
        rd_kafka_topic_partition_list_add(l, p->topic, p->partition)->offset = off;
        p->committed = off;
    }
    pthread_mutex_unlock(&k->lock);

    if (l->cnt > 0) {
        err = rd_kafka_commit(k->rk, l, !sync);
        if (sync && err != RD_KAFKA_RESP_ERR_NO_ERROR)
            k->h->log(k->inst, ORDERD_LOG_WARN,
                      "kafka: cannot commit offsets of group '%s': %s (records after the last"
                      " committed offset will be consumed again)", k->group, rd_kafka_err2str(err));
        else if (!sync && err != RD_KAFKA_RESP_ERR_NO_ERROR)
            k->h->log(k->inst, ORDERD_LOG_WARN, "kafka: cannot queue an offset commit: %s",
                      rd_kafka_err2str(err));
        if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
            /* offer the same offsets again at the next interval */
            pthread_mutex_lock(&k->lock);
            for (i = 0; i < l->cnt; i++) {
                e = &l->elems[i];
                p = kf_find(k, e->topic, e->partition);
                if (p != NULL && p->committed == e->offset)
                    p->committed = -1;
            }
            pthread_mutex_unlock(&k->lock);
            k->h->metric_add(k->inst, "kafka_commit_errors", 1);
        }
        /* successes are counted by kf_commit_cb, which sees sync commits too */
    }
    rd_kafka_topic_partition_list_destroy(l);
}

/* The answer to an asynchronous commit (consumer thread, inside poll). */
static void
kf_commit_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t *offsets,
             void *opaque)
{
    struct kf                  *k = opaque;
    rd_kafka_topic_partition_t *e;
    struct kf_part             *p;
    int                         i, failed = 0;

    if (err == RD_KAFKA_RESP_ERR__NO_OFFSET)
        return;
    pthread_mutex_lock(&k->lock);
    for (i = 0; offsets != NULL && i < offsets->cnt; i++) {
        e = &offsets->elems[i];
        if (err == RD_KAFKA_RESP_ERR_NO_ERROR && e->err == RD_KAFKA_RESP_ERR_NO_ERROR)
            continue;
        failed = 1;
        p = kf_find(k, e->topic, e->partition);
        if (p != NULL && p->committed == e->offset)
            p->committed = -1;
    }
    pthread_mutex_unlock(&k->lock);
    if (failed || err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        k->h->log(k->inst, ORDERD_LOG_WARN, "kafka: offset commit for group '%s' failed: %s;"
                  " retrying at the next commit_interval", k->group,
                  rd_kafka_err2str(err != RD_KAFKA_RESP_ERR_NO_ERROR ? err
                                   : offsets->elems[0].err));
        k->h->metric_add(k->inst, "kafka_commit_errors", 1);
    } else {
        k->h->metric_add(k->inst, "kafka_commits", 1);
    }
}

/* ---- rebalances ---- */

static void
kf_assign(struct kf *k, rd_kafka_topic_partition_list_t *parts, int incremental)
{
    rd_kafka_topic_partition_t *e;
    struct kf_part             *p;
    rd_kafka_error_t           *error = NULL;
    rd_kafka_resp_err_t         err = RD_KAFKA_RESP_ERR_NO_ERROR;
    int                         i;

    pthread_mutex_lock(&k->lock);
    for (i = 0; i < parts->cnt; i++) {
        e = &parts->elems[i];
        p = kf_find(k, e->topic, e->partition);
        if (p != NULL)
            kf_drop(k, p);  /* a stale assignment: its acks must not count now */
        p = kf_part_new(e->topic, e->partition);
        if (p == NULL)
            continue;       /* untracked: its records are left for the next owner */
        p->next = k->parts;
        k->parts = p;
    }
    pthread_mutex_unlock(&k->lock);

    if (incremental)
        error = rd_kafka_incremental_assign(k->rk, parts);
    else
        err = rd_kafka_assign(k->rk, parts);
    if (error != NULL) {
        k->h->log(k->inst, ORDERD_LOG_ERR, "kafka: cannot take assigned partitions: %s",
                  rd_kafka_error_string(error));
        rd_kafka_error_destroy(error);
    } else if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        k->h->log(k->inst, ORDERD_LOG_ERR, "kafka: cannot take assigned partitions: %s",
                  rd_kafka_err2str(err));
    }
    k->h->log(k->inst, ORDERD_LOG_INFO, "kafka: group '%s' assigned %d partition(s)",
              k->group, parts->cnt);
}

static void
kf_revoke(struct kf *k, rd_kafka_topic_partition_list_t *parts, int incremental, int lost)
{
    rd_kafka_topic_partition_t *e;
    struct kf_part             *p;
    rd_kafka_error_t           *error = NULL;
    int                         i;

    /* a lost partition already has another owner: committing would be refused */
    if (!lost)
        kf_commit(k, parts, 1);
    pthread_mutex_lock(&k->lock);
    for (i = 0; i < parts->cnt; i++) {
        e = &parts->elems[i];
        p = kf_find(k, e->topic, e->partition);
        if (p != NULL)
            kf_drop(k, p);
    }
    pthread_mutex_unlock(&k->lock);

    if (incremental)
        error = rd_kafka_incremental_unassign(k->rk, parts);
    else
        rd_kafka_assign(k->rk, NULL);
    if (error != NULL) {
        k->h->log(k->inst, ORDERD_LOG_WARN, "kafka: cannot give up partitions: %s",
                  rd_kafka_error_string(error));
        rd_kafka_error_destroy(error);
    }
    k->h->log(k->inst, ORDERD_LOG_INFO, "kafka: group '%s' %s %d partition(s)", k->group,
              lost ? "lost" : "revoked", parts->cnt);
}

static void
kf_rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    struct kf *k = opaque;
    int        incremental = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;

    k->h->metric_add(k->inst, "kafka_rebalances", 1);
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS)
        kf_assign(k, parts, incremental);
    else
        kf_revoke(k, parts, incremental, rd_kafka_assignment_lost(rk));
}

/* ---- librdkafka's own messages ---- */

static void
kf_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    struct kf *k = rd_kafka_opaque(rk);
    int        lvl = level <= 3 ? ORDERD_LOG_ERR : level == 4 ? ORDERD_LOG_WARN
                   : level <= 6 ? ORDERD_LOG_INFO : ORDERD_LOG_DEBUG;

    if (k != NULL)
        k->h->log(k->inst, lvl, "kafka: librdkafka %s: %s", fac, buf);
}

static void
kf_error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    struct kf *k = opaque;
    char       fatal[256];

    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        rd_kafka_fatal_error(rk, fatal, sizeof(fatal));
        k->h->log(k->inst, ORDERD_LOG_ERR, "kafka: fatal consumer error: %s", fatal);
        return;
    }
    /* transient (a broker down, a timeout): librdkafka retries by itself */
    k->h->log(k->inst, ORDERD_LOG_WARN, "kafka: %s: %s",
              rd_kafka_err2name((rd_kafka_resp_err_t) err), reason);
}

/* ---- records -> messages ---- */

/* A NUL-terminated copy of bytes that hold no NUL, or NULL. */
static char *
kf_cstr(const void *p, size_t len)
{
    char *s;

    if (p == NULL || memchr(p, '\0', len) != NULL)
        return NULL;
    s = malloc(len + 1);
    if (s == NULL)
        return NULL;
    memcpy(s, p, len);
    s[len] = '\0';
    return s;
}

/* Id, properties, partition key and time of m from the record.
 * RETURNS: 0 or -ENOMEM. */
static int
kf_fill(struct kf *k, orderd_msg *m, const rd_kafka_message_t *rkm)
{
    const orderd_host        *h = k->h;
    rd_kafka_headers_t       *hdrs = NULL;
    rd_kafka_timestamp_type_t tstype;
    const char               *topic = rd_kafka_topic_name(rkm->rkt), *name;
    const void               *val;
    char                      buf[64], *id = NULL, *s;
    size_t                    i, sz;
    int64_t                   ts;
    int                       ret = 0;

    if (rd_kafka_message_headers(rkm, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        for (i = 0; rd_kafka_header_get_all(hdrs, i, &name, &val, &sz) == RD_KAFKA_RESP_ERR_NO_ERROR;
             i++) {
            s = val != NULL ? kf_cstr(val, sz) : strdup("");
            if (s == NULL)
                continue;   /* binary header: not a string property */
            if (k->id_from == KF_ID_HEADER && id == NULL && s[0] != '\0'
                && strcmp(name, k->id_header) == 0)
                id = strdup(s);
            ret = h->msg_set_prop(m, name, s);
            free(s);
            if (ret < 0)
                goto out;
        }
    }
    if (rkm->key != NULL && rkm->key_len > 0) {
        s = kf_cstr(rkm->key, rkm->key_len);
        if (s != NULL) {
            ret = h->msg_set_partition_key(m, s);
            if (k->id_from == KF_ID_KEY && id == NULL)
                id = s;
            else
                free(s);
            if (ret < 0)
                goto out;
        }
    }
    /* set last, so a header of the same name cannot pass for them */
    snprintf(buf, sizeof(buf), "%" PRId32, rkm->partition);
    if ((ret = h->msg_set_prop(m, "kafka_topic", topic)) < 0
        || (ret = h->msg_set_prop(m, "kafka_partition", buf)) < 0)
        goto out;
    snprintf(buf, sizeof(buf), "%" PRId64, rkm->offset);
    if ((ret = h->msg_set_prop(m, "kafka_offset", buf)) < 0)
        goto out;

    if (id != NULL) {
        ret = h->msg_set_id(m, id);
    } else {
        size_t n = strlen(topic) + 48;

        id = malloc(n);
        if (id == NULL) {
            ret = -ENOMEM;
            goto out;
        }
        snprintf(id, n, "%s-%" PRId32 "-%" PRId64, topic, rkm->partition, rkm->offset);
        ret = h->msg_set_id(m, id);
    }
    if (ret < 0)
        goto out;
    ts = rd_kafka_message_timestamp(rkm, &tstype);
    if (ts >= 0)
        h->msg_set_enqueued_ms(m, ts);

out:
    free(id);
    return ret;
}

/* Hand one record to the pipeline (or the dead letters).
 * RETURNS: 0; 1 when it was skipped (not ours); 2 when its partition is
 * full and must be paused and rewound to it; or negative errno when it must
 * be fetched again. */
static int
kf_dispatch(struct kf *k, const rd_kafka_message_t *rkm)
{
    const orderd_host *h = k->h;
    struct kf_part    *p;
    json_error_t       jerr;
    json_t            *body;
    orderd_msg        *m;
    char               reason[256];
    uint64_t           ticket;
    int64_t            prev;
    int                ret, bad = 0;

    pthread_mutex_lock(&k->lock);
    p = kf_find(k, rd_kafka_topic_name(rkm->rkt), rkm->partition);
    if (p == NULL || rkm->offset <= p->last
        || (p->rewind_to >= 0 && rkm->offset != p->rewind_to)) {
        /* fetched before a revoke or a rewind: not to be taken in */
        pthread_mutex_unlock(&k->lock);
        return 1;
    }
    p->rewind_to = -1;
    if (lowmark_span(&p->lm) >= k->max_in_flight) {
        /* full: this record is fetched again once acks make room */
        p->paused = 1;
        p->rewind_to = rkm->offset;
        pthread_mutex_unlock(&k->lock);
        return 2;
    }
    pthread_mutex_unlock(&k->lock);

    body = rkm->payload != NULL
           ? json_loadb(rkm->payload, rkm->len, JSON_DECODE_ANY, &jerr) : NULL;
    if (body == NULL) {
        bad = 1;
        if (rkm->payload == NULL)
            snprintf(reason, sizeof(reason), "kafka: record has no payload");
        else
            snprintf(reason, sizeof(reason), "kafka: payload is not JSON: %s at byte %d",
                     jerr.text, jerr.position);
        /* keep what arrived, when jansson can hold it, for the dead-letter viewer */
        body = rkm->payload != NULL ? json_stringn(rkm->payload, rkm->len) : NULL;
        if (body == NULL)
            body = json_null();
    }
    m = h->msg_new(k->inst, body);
    if (m == NULL)
        return -ENOMEM;
    ret = kf_fill(k, m, rkm);
    if (ret < 0) {
        h->msg_free(m);
        return ret;
    }

    if (bad) {
        ret = h->dead_letter(k->inst, m, reason);
        if (ret < 0)
            return ret;
        h->metric_add(k->inst, "kafka_dead_letters", 1);
        /* complete at once: no ack comes for a dead letter */
        pthread_mutex_lock(&k->lock);
        lowmark_pass(&p->lm, kf_end(rkm->offset));
        p->last = rkm->offset;
        pthread_mutex_unlock(&k->lock);
        return 0;
    }

    /* in flight before submit: the ack may come back before submit() returns */
    pthread_mutex_lock(&k->lock);
    ret = lowmark_add(&p->lm, kf_end(rkm->offset), &ticket);
    prev = p->last;
    if (ret == 0) {
        p->last = rkm->offset;
        p->refs++;
    }
    pthread_mutex_unlock(&k->lock);
    if (ret < 0) {
        h->msg_free(m);
        return ret;
    }
    h->msg_set_input_data(m, p, ticket);
    ret = h->submit(k->inst, m, 0);
    if (ret < 0) {
        /* no ack will come: take it back, to be taken in again when refetched */
        pthread_mutex_lock(&k->lock);
        if (lowmark_cancel(&p->lm, ticket) == 0) {
            p->last = prev;
            p->refs--;
        }
        p->rewind_to = rkm->offset;
        pthread_mutex_unlock(&k->lock);
        return ret;
    }
    h->metric_add(k->inst, "kafka_messages", 1);
    return 0;
}

/* Fetch rkm's partition again from rkm's offset (after a failed submit). */
static void
kf_rewind(struct kf *k, const rd_kafka_message_t *rkm)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_error_t                *error;

    if (l == NULL)
        return;
    rd_kafka_topic_partition_list_add(l, rd_kafka_topic_name(rkm->rkt), rkm->partition)->offset =
        rkm->offset;
    error = rd_kafka_seek_partitions(k->rk, l, 1000);
    if (error != NULL) {
        k->h->log(k->inst, ORDERD_LOG_WARN, "kafka: cannot rewind %s [%" PRId32 "]: %s",
                  rd_kafka_topic_name(rkm->rkt), rkm->partition, rd_kafka_error_string(error));
        rd_kafka_error_destroy(error);
    }
    rd_kafka_topic_partition_list_destroy(l);
}

/* Pause rkm's partition and fetch it again from rkm, once resumed. */
static void
kf_pause(struct kf *k, const rd_kafka_message_t *rkm)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);

    if (l == NULL)
        return;
    rd_kafka_topic_partition_list_add(l, rd_kafka_topic_name(rkm->rkt), rkm->partition);
    rd_kafka_pause_partitions(k->rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    kf_rewind(k, rkm);
}

/* Resume partitions that acks brought below max_in_flight. */
static void
kf_flow(struct kf *k)
{
    rd_kafka_topic_partition_list_t *resume = NULL;
    struct kf_part                  *p;

    pthread_mutex_lock(&k->lock);
    for (p = k->parts; p != NULL; p = p->next) {
        if (!p->paused || lowmark_span(&p->lm) >= k->max_in_flight)
            continue;
        if (resume == NULL && (resume = rd_kafka_topic_partition_list_new(4)) == NULL)
            break;
        rd_kafka_topic_partition_list_add(resume, p->topic, p->partition);
        p->paused = 0;
    }
    pthread_mutex_unlock(&k->lock);
    if (resume != NULL) {
        rd_kafka_resume_partitions(k->rk, resume);
        rd_kafka_topic_partition_list_destroy(resume);
    }
}

static int
kf_stopping(struct kf *k)
{
    int s;

    pthread_mutex_lock(&k->lock);
    s = k->stopping;
    pthread_mutex_unlock(&k->lock);
    return s;
}

static void *
kf_run(void *arg)
{
    struct kf          *k = arg;
    rd_kafka_message_t *rkm;
    int                 ret;

    while (!kf_stopping(k)) {
        rkm = rd_kafka_consumer_poll(k->rk, k->poll_ms);
        if (rkm != NULL) {
            if (rkm->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
                ret = kf_dispatch(k, rkm);
                if (ret == 2) {
                    kf_pause(k, rkm);
                } else if (ret < 0 && ret != -ESHUTDOWN) {
                    if (!k->failing)
                        k->h->log(k->inst, ORDERD_LOG_WARN,
                                  "kafka: cannot submit %s [%" PRId32 "] offset %" PRId64 ": %s;"
                                  " fetching it again", rd_kafka_topic_name(rkm->rkt),
                                  rkm->partition, rkm->offset, strerror(-ret));
                    k->failing = 1;
                    kf_rewind(k, rkm);
                } else if (ret == 0 && k->failing) {
                    k->h->log(k->inst, ORDERD_LOG_INFO, "kafka: submitting again");
                    k->failing = 0;
                }
            } else if (rkm->err != RD_KAFKA_RESP_ERR__PARTITION_EOF) {
                k->h->log(k->inst, ORDERD_LOG_WARN, "kafka: consumer: %s",
                          rd_kafka_message_errstr(rkm));
            }
            rd_kafka_message_destroy(rkm);
            if (k->failing) {
                /* back off; rebalances wait at most this long, heartbeats not at all */
                struct timespec ts = { k->poll_ms / 1000, (k->poll_ms % 1000) * 1000000L };

                nanosleep(&ts, NULL);
            }
        }
        kf_flow(k);
        if (mono_ms() >= k->commit_at) {
            kf_commit(k, NULL, 0);
            k->commit_at = mono_ms() + k->commit_ms;
        }
    }
    return NULL;
}

/* ---- stage callbacks ---- */

static int
kf_start(void *state)
{
    struct kf          *k = state;
    rd_kafka_resp_err_t err;
    int                 ret;

    if (k->started)
        return 0;
    if (!k->subscribed) {
        err = rd_kafka_subscribe(k->rk, k->topics);
        if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
            k->h->log(k->inst, ORDERD_LOG_ERR, "kafka: cannot subscribe: %s", rd_kafka_err2str(err));
            return -EINVAL;
        }
        k->subscribed = 1;
    }
    pthread_mutex_lock(&k->lock);
    k->stopping = 0;
    pthread_mutex_unlock(&k->lock);
    k->commit_at = mono_ms() + k->commit_ms;
    ret = pthread_create(&k->thread, NULL, kf_run, k);
    if (ret != 0) {
        k->h->log(k->inst, ORDERD_LOG_ERR, "kafka: cannot start the consumer thread: %s",
                  strerror(ret));
        return -ret;
    }
    k->started = 1;
    return 0;
}

static void
kf_stop(void *state)
{
    struct kf *k = state;

    if (!k->started)
        return;
    pthread_mutex_lock(&k->lock);
    k->stopping = 1;
    pthread_mutex_unlock(&k->lock);
    pthread_join(k->thread, NULL);
    k->started = 0;
    kf_commit(k, NULL, 1);
}

static void
kf_ack(void *state, orderd_msg *m, orderd_outcome outcome, const char *reason)
{
    struct kf      *k = state;
    struct kf_part *p;
    uint64_t        ticket = 0;
    int             ret = 0, stale;

    p = k->h->msg_input_data(m, &ticket);
    if (p == NULL)
        return;
    /* without SF_REDELIVERS the core settled RETRY/REJECT itself: every ack is final */
    if (outcome != ORDERD_OK)
        k->h->log(k->inst, ORDERD_LOG_DEBUG, "kafka: %s acked with outcome %d (%s)",
                  k->h->msg_id(m), (int) outcome, reason ? reason : "");
    pthread_mutex_lock(&k->lock);
    stale = !p->assigned;
    if (!stale)
        ret = lowmark_ack(&p->lm, ticket);
    if (ret == 0 && --p->refs == 0) {
        kf_unlink(&k->retired, p);
        kf_part_free(p);
    }
    pthread_mutex_unlock(&k->lock);
    if (stale)
        k->h->metric_add(k->inst, "kafka_stale_acks", 1);
    else if (ret < 0)
        k->h->log(k->inst, ORDERD_LOG_WARN, "kafka: ack for %s (offset %s) which is not in flight",
                  k->h->msg_id(m), k->h->msg_prop(m, "kafka_offset"));
}

/* Apply one librdkafka setting.  RETURNS: 0, or -EINVAL after logging. */
static int
kf_set(struct kf *k, rd_kafka_conf_t *conf, const char *name, const char *value, int secret)
{
    char err[512];

    if (rd_kafka_conf_set(conf, name, value, err, sizeof(err)) != RD_KAFKA_CONF_OK) {
        k->h->log(k->inst, ORDERD_LOG_ERR, "kafka: setting %s = %s: %s", name,
                  secret ? "(secret)" : value, err);
        return -EINVAL;
    }
    return 0;
}

static int
kf_configure(struct kf *k, const json_t *conf, rd_kafka_conf_t *rc)
{
    const char *v;
    json_t     *e;
    char       *name;
    size_t      i, j;
    int         ret;

    json_array_foreach(json_object_get(conf, "properties"), i, e) {
        const char *kv = json_string_value(e), *eq = kv ? strchr(kv, '=') : NULL;

        if (eq == NULL || eq == kv) {
            k->h->log(k->inst, ORDERD_LOG_ERR, "kafka: properties: \"%s\" is not \"name=value\"",
                      kv ? kv : "");
            return -EINVAL;
        }
        name = strndup(kv, (size_t) (eq - kv));
        if (name == NULL)
            return -ENOMEM;
        for (j = 0; kf_reserved[j] != NULL; j++)
            if (strcmp(name, kf_reserved[j]) == 0)
                break;
        if (kf_reserved[j] != NULL) {
            k->h->log(k->inst, ORDERD_LOG_ERR, "kafka: properties: %s is set by the plugin%s",
                      name, strncmp(name, "sasl.", 5) == 0 ? " (use sasl_username / sasl_password)"
                      : " (use the stage's own keys)");
            free(name);
            return -EINVAL;
        }
        ret = kf_set(k, rc, name, eq + 1, strstr(name, "password") != NULL
                     || strstr(name, "secret") != NULL);
        free(name);
        if (ret < 0)
            return ret;
    }

    if ((ret = kf_set(k, rc, "bootstrap.servers",
                      json_string_value(json_object_get(conf, "bootstrap_servers")), 0)) < 0
        || (ret = kf_set(k, rc, "group.id", k->group, 0)) < 0
        || (ret = kf_set(k, rc, "client.id",
                         json_string_value(json_object_get(conf, "client_id")), 0)) < 0
        || (ret = kf_set(k, rc, "auto.offset.reset",
                         json_string_value(json_object_get(conf, "auto_offset_reset")), 0)) < 0
        /* the plugin alone decides what is committed, and only completed records */
        || (ret = kf_set(k, rc, "enable.auto.commit", "false", 0)) < 0
        || (ret = kf_set(k, rc, "enable.auto.offset.store", "false", 0)) < 0
        || (ret = kf_set(k, rc, "enable.partition.eof", "false", 0)) < 0)
        return ret;
    if ((v = json_string_value(json_object_get(conf, "sasl_username"))) != NULL
        && (ret = kf_set(k, rc, "sasl.username", v, 0)) < 0)
        return ret;
    if ((v = json_string_value(json_object_get(conf, "sasl_password"))) != NULL
        && (ret = kf_set(k, rc, "sasl.password", v, 1)) < 0)
        return ret;
    return 0;
}

static int
kf_create(orderd_inst *inst, const orderd_host *h, const json_t *conf, void **state)
{
    struct kf       *k;
    rd_kafka_conf_t *rc = NULL;
    const char      *group = json_string_value(json_object_get(conf, "group_id"));
    const char      *idf = json_string_value(json_object_get(conf, "message_id"));
    const char      *idh = json_string_value(json_object_get(conf, "message_id_header"));
    json_int_t       mif = json_integer_value(json_object_get(conf, "max_in_flight"));
    json_t          *topics = json_object_get(conf, "topics"), *e;
    char             err[512];
    size_t           i;
    int              ret;

    if (mif < 1 || mif > 1000000) {
        h->log(inst, ORDERD_LOG_ERR, "kafka: max_in_flight must be 1-1000000, not %lld",
               (long long) mif);
        return -EINVAL;
    }
    if (json_array_size(topics) == 0) {
        h->log(inst, ORDERD_LOG_ERR, "kafka: topics: name at least one topic");
        return -EINVAL;
    }
    if (group == NULL || group[0] == '\0')
        group = h->pipeline_name(inst);

    k = calloc(1, sizeof(*k));
    if (k == NULL)
        return -ENOMEM;
    k->inst = inst;
    k->h = h;
    pthread_mutex_init(&k->lock, NULL);
    k->max_in_flight = (size_t) mif;
    k->poll_ms = (int) json_integer_value(json_object_get(conf, "poll_timeout"));
    if (k->poll_ms < 1)
        k->poll_ms = 1;
    k->commit_ms = json_integer_value(json_object_get(conf, "commit_interval"));
    k->id_from = idf != NULL && strcmp(idf, "key") == 0 ? KF_ID_KEY
               : idf != NULL && strcmp(idf, "header") == 0 ? KF_ID_HEADER : KF_ID_OFFSET;
    k->id_header = strdup(idh != NULL ? idh : "message-id");
    k->group = strdup(group != NULL ? group : "orderd");
    k->topics = rd_kafka_topic_partition_list_new((int) json_array_size(topics));
    if (k->id_header == NULL || k->group == NULL || k->topics == NULL) {
        ret = -ENOMEM;
        goto fail;
    }
    json_array_foreach(topics, i, e)
        rd_kafka_topic_partition_list_add(k->topics, json_string_value(e), RD_KAFKA_PARTITION_UA);

    rc = rd_kafka_conf_new();
    if (rc == NULL) {
        ret = -ENOMEM;
        goto fail;
    }
    ret = kf_configure(k, conf, rc);
    if (ret < 0)
        goto fail;
    rd_kafka_conf_set_opaque(rc, k);
    rd_kafka_conf_set_log_cb(rc, kf_log_cb);
    rd_kafka_conf_set_error_cb(rc, kf_error_cb);
    rd_kafka_conf_set_rebalance_cb(rc, kf_rebalance_cb);
    rd_kafka_conf_set_offset_commit_cb(rc, kf_commit_cb);

    k->rk = rd_kafka_new(RD_KAFKA_CONSUMER, rc, err, sizeof(err));
    if (k->rk == NULL) {
        h->log(inst, ORDERD_LOG_ERR, "kafka: cannot create the consumer: %s", err);
        ret = -EINVAL;
        goto fail;
    }
    rc = NULL;  /* the handle owns it now */
    /* the consumer queue carries the callbacks too, so one poll loop serves all */
    rd_kafka_poll_set_consumer(k->rk);
    *state = k;
    return 0;

fail:
    if (rc != NULL)
        rd_kafka_conf_destroy(rc);
    kf_destroy(k);
    return ret;
}

static void
kf_destroy(void *state)
{
    struct kf      *k = state;
    struct kf_part *p;

    if (k == NULL)
        return;
    kf_stop(k);
    if (k->rk != NULL) {
        /* acks that arrived after stop() still count */
        kf_commit(k, NULL, 1);
        /* leaves the group now (revoke: commit, drop) instead of after session.timeout.ms */
        rd_kafka_consumer_close(k->rk);
        rd_kafka_destroy(k->rk);
    }
    while ((p = k->parts) != NULL) {
        k->parts = p->next;
        kf_part_free(p);
    }
    while ((p = k->retired) != NULL) {
        k->retired = p->next;
        kf_part_free(p);
    }
    if (k->topics != NULL)
        rd_kafka_topic_partition_list_destroy(k->topics);
    pthread_mutex_destroy(&k->lock);
    free(k->id_header);
    free(k->group);
    free(k);
}

static const orderd_stage kf_input = ORDERD_STAGE(
    .kind = ORDERD_INPUT,
    .description = "consumer-group member of Kafka topics; commits offsets of completed records",
    .options = kf_options,
    .create = kf_create,
    .start = kf_start,
    .stop = kf_stop,
    .ack = kf_ack,
    .destroy = kf_destroy);

static const orderd_stage *const kf_stages[] = { &kf_input, NULL };

ORDERD_PLUGIN(
    .name = "kafka",
    .version = "1.0",
    .description = "Kafka input: consumer group, offsets committed after the pipeline completed",
    .maintainer = "orderd developers",
    .stages = kf_stages);
