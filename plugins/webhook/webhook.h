/* webhook.h - internals shared by the webhook plugin's files (not installed).
 *
 * webhook.c    the stage: configuration, process_batch(), lifecycle
 * wh_format.c  event -> payload bytes (Event Grid / CloudEvents), no I/O
 * wh_queue.c   one subscriber's durable queue: append-only log + offset file
 * wh_deliver.c one delivery thread per subscriber: POST, retry, dead-letter
 *
 * Everything here has hidden visibility; the plugin exports only its
 * descriptor.
 */
#ifndef WH_WEBHOOK_H
#define WH_WEBHOOK_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <orderd/plugin.h>

typedef enum {
    WH_FMT_CLOUDEVENTS = 0,
    WH_FMT_EVENTGRID   = 1
} wh_format;

/* ---- wh_format.c ---- */

/* The fields of one event, borrowed from the message. */
struct wh_event_in {
    const char   *id;
    const char   *type;
    const char   *subject;   /* "orders/<orderId>", or NULL */
    const char   *time;      /* RFC 3339, or NULL (then now) */
    const json_t *data;      /* the event body */
    const char   *data_text; /* data already encoded (compact), or NULL */
    size_t        data_len;
};

/* WH_FORMAT_EVENT - the JSON object for one event in format fmt, serialised
 * compactly (no raw newline can appear in it).  source is the CloudEvents
 * source.  RETURNS: malloc'd NUL-terminated text, or NULL on ENOMEM. */
char *wh_format_event(wh_format fmt, const char *source, const struct wh_event_in *ev);

/* WH_FORMAT_BODY - the HTTP body for n already-serialised events (as
 * wh_format_event made them; ev[i] has len[i] bytes).  Event Grid is always
 * an array; CloudEvents is an object for one event and an array (batch mode)
 * when batch is set.  *ctype gets the static Content-Type.
 * RETURNS: malloc'd body (length in *blen), or NULL on ENOMEM. */
char *wh_format_body(wh_format fmt, int batch, const char *const *ev, const size_t *len,
                     size_t n, size_t *blen, const char **ctype);

/* WH_SIGN - "sha256=" + lower-hex HMAC-SHA256(secret, body) into out (72 bytes).
 * RETURNS: 0, or -EIO if OpenSSL failed. */
int wh_sign(const char *secret, const char *body, size_t blen, char out[72]);

/* ---- wh_queue.c ---- */

/* Longest time a committed delivery offset stays unsynced.  Syncing it after
 * every POST cost one fdatasync per event (with batch_max = 1) and capped
 * delivery at the disk's sync rate; an unsynced offset lost to a power cut
 * only makes those events go out again, which receivers dedupe by id. */
#define WH_OFFSET_SYNC_MS 100

/* One record as read back: "<enqueue_ms> <event json>\n" on disk. */
struct wh_rec {
    int64_t     enq_ms;
    const char *ev;      /* points into the reader's buffer, not NUL-terminated */
    size_t      len;
    uint64_t    end;     /* file offset just past this record */
};

struct wh_queue {
    int             fd;          /* the log, O_RDWR */
    int             offfd;       /* the offset file */
    char           *path;        /* <dir>/<name>.queue */
    char           *offpath;     /* <dir>/<name>.offset */
    uint64_t        done;        /* delivered (or dead-lettered) up to here; written,
                                  * durable within WH_OFFSET_SYNC_MS (see wh_queue.c) */
    uint64_t        end;         /* durable end of the log */
    uint64_t        pending;     /* records between done and end */
    char           *buf;         /* reader's buffer */
    size_t          cap;
    int             off_dirty;   /* offset written but not yet fdatasync()ed */
    int64_t         off_sync_ms; /* when the offset file was last fdatasync()ed */
};

/* Open (creating) the queue of subscriber name in dir, recover the durable
 * offset and cut a torn tail.  RETURNS: 0 or negative errno. */
int  wh_queue_open(struct wh_queue *q, const char *dir, const char *name);
void wh_queue_close(struct wh_queue *q);
/* Append len bytes of whole records (count of them: nrec) and fdatasync.
 * On failure the log is cut back so no partial record stays.  Caller holds
 * the subscriber's lock.  RETURNS: 0 or negative errno. */
int  wh_queue_append(struct wh_queue *q, const char *data, size_t len, size_t nrec);
/* Read up to max records starting at done, up to end (snapshot given),
 * stopping before the events' bytes (plus one separator each and two for
 * the brackets) would pass max_bytes; the first record is always taken, so
 * a record bigger than max_bytes comes alone.  Records point into q->buf
 * until the next read.  RETURNS: count, or negative errno. */
int  wh_queue_read(struct wh_queue *q, uint64_t end, struct wh_rec *out, int max,
                   size_t max_bytes);
/* Mark everything before off delivered; truncates the log when it is all
 * delivered.  The offset is written at once but fdatasync()ed at most every
 * WH_OFFSET_SYNC_MS (always when the log is compacted): a power loss can only
 * make the last deliveries go out again.  Caller holds the subscriber's
 * lock.  RETURNS: 0 or negative errno. */
int  wh_queue_commit(struct wh_queue *q, uint64_t off, size_t nrec);
/* fdatasync() the offset file if a commit left it unsynced.  Caller holds
 * the subscriber's lock.  RETURNS: 0 or negative errno. */
int  wh_queue_sync_offset(struct wh_queue *q);

/* ---- wh_deliver.c / webhook.c ---- */

struct wh_plugin;

/* Property naming the one subscriber a replayed dead letter is for. */
#define WH_SUBSCRIBER_PROP "webhook.subscriber"

struct wh_sub {
    struct wh_plugin  *wp;
    char              *name;
    char              *url;
    char             **types;        /* NULL-terminated; NULL = every type */
    char             **headers;      /* NULL-terminated "Name: value" */
    char              *secret;       /* NULL = unsigned */
    char              *sig_header;
    wh_format          fmt;
    int64_t            timeout_ms;
    int64_t            max_attempts;
    int64_t            ttl_ms;
    int                batch_max;
    size_t             max_bytes;    /* max_request_size: a batch's body stays within it */
    char              *metric_backlog; /* "webhook_backlog_<name>" sanitised */
    char              *dlq_path;

    pthread_mutex_t    lock;         /* queue appends/commits, wakeups */
    pthread_cond_t     cond;         /* CLOCK_MONOTONIC */
    struct wh_queue    q;
    pthread_t          thread;
    int                running;
};

struct wh_plugin {
    orderd_inst        *inst;
    const orderd_host  *host;
    char               *source;
    char               *queue_dir;
    char               *ca_file;
    int64_t             retry_base_ms;
    int64_t             retry_cap_ms;
    struct wh_sub      *subs;
    size_t              nsubs;
    int                 curl_ready;  /* curl_global_init() to balance */
    atomic_int          stopping;
    pthread_mutex_t     mlock;       /* orders backlog gauge updates */
    int64_t             backlog;     /* all subscribers' pending records; mlock */
};

/* Publish s's backlog gauges after its pending count moved by delta.
 * Called with s->lock held, so the last value set is the true one. */
void wh_backlog_changed(struct wh_sub *s, int64_t delta);

int  wh_deliver_start(struct wh_sub *s);
void wh_deliver_stop(struct wh_sub *s);   /* joins; call after setting wp->stopping */

int64_t wh_now_ms(void);

#endif
