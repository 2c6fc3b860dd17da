/* http.c - the Order API: an input stage that accepts orders and lifecycle
 * commands over HTTP (libmicrohttpd) and submits them as command messages.
 *
 *   POST /orders                    create  -> 202 {"id","status":"accepted"}
 *   POST /orders/{id}/{command}     command -> 202 {"id","command","status":"accepted"}
 *   GET  /orders/{id}               the store's snapshot, or "accepted, not yet processed"
 *   GET  /healthz                   liveness (no API key needed)
 *
 * What 202 means is the `acknowledge` option: "accepted" (the order is
 * durable in the spool, or admitted when the pipeline has none) or
 * "processed" (every stage has finished it; 422 if it was dead-lettered,
 * 503 if it did not finish, 504 after acknowledge_timeout).
 *
 * Event-driven (threads > 0 and a core with submit_async, ABI 1.1): each of
 * `threads` event loops runs its own MHD daemon (external epoll mode, one
 * SO_REUSEPORT listening socket each, so the kernel spreads connections).
 * A turn of a loop: wait for events, let MHD read what arrived; the handler
 * hands each order to host->submit_async() and leaves the request
 * unanswered.  The spool's writer thread writes whatever is queued as one
 * group commit while the loops go on reading, so every order that arrives
 * during a group's fdatasync joins the next group.  done() marks the ticket
 * ready and pokes the loop (one eventfd write per loop until it looks), and
 * the next turn's MHD_run() calls the handler again, which answers.  No
 * suspend/resume and no thread hand-over per request, and a loop never
 * blocks on the disk.  MHD keeps an unanswered request on its ready list
 * (it asks for a zero timeout), so while the loop has requests waiting it
 * sleeps until an event or a poke instead.  With acknowledge = "processed"
 * the answer waits for the pipeline, so the connection is suspended and
 * done() resumes it.  Otherwise (threads = 0, or a host without
 * submit_async, like the unit-test harness) each request blocks its thread
 * in host->submit().
 *
 * Ticket lifetime: a ticket has two references, the request's (dropped when
 * MHD completes the request) and the core's (dropped by done(), or at once
 * when submit_async() fails).  Its state, WAITING then READY, changes once,
 * under tk_lock, by whoever decides the answer first: done(), the timeout
 * reaper, or stop().  Only that one resumes the connection, after unlocking,
 * and touches neither ticket nor request afterwards.  Errors are RFC 9457
 * problem+json.
 */
#define _GNU_SOURCE   /* asprintf */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>
#include <jansson.h>
#include <orderd/plugin.h>

#include "../common/deadline.h"
#include "../common/jsondec.h"
#include "../common/jsonenc.h"
#include "idem.h"
#include "../validate/jsonschema.h"

#if MHD_VERSION >= 0x00097002
typedef enum MHD_Result hp_ret;
#else
typedef int hp_ret;
#endif

#define HP_ID_MAX      128
#define HP_CMD_MAX     64
#define HP_IDEM_MAX    255

/* How long stop() lets waiting requests get their real answer, and then
 * lets MHD send the 503s it gave the rest, before closing connections. */
#define HP_STOP_GRACE_MS  2000
#define HP_FLUSH_MS       1000

/* Recently accepted order ids, so GET can say "accepted, not processed yet"
 * instead of 404 while the pipeline catches up.  Bounded: oldest evicted. */
struct hp_pend {
    struct hp_pend  *hnext;
    struct hp_pend **hpp;            /* the pointer to this one in its chain */
    struct hp_pend  *prev, *next;   /* insertion order, oldest first */
    uint64_t         hash;
    char             id[];
};

/* One submit_async() in flight for a suspended request.  See the top comment. */
enum hp_tk_state { HP_TK_WAITING, HP_TK_READY };
enum hp_tk_why {
    HP_TK_DONE,       /* done() (or a failed submit_async) decided: rc, outcome, reason */
    HP_TK_TIMEOUT,    /* acknowledge_timeout passed first: 504 */
    HP_TK_SHUTDOWN,   /* stop() answered before the core did: 503 */
    HP_TK_ABANDONED   /* the request ended while still waiting (never expected) */
};

struct hp_ticket {
    struct hp              *h;
    struct MHD_Connection  *conn;
    struct hp_loop         *loop;            /* async, not suspended: woken when decided */
    /* under h->tk_lock */
    enum hp_tk_state        state;
    bool                    suspended;       /* whoever decides it must resume conn */
    unsigned                refs;
    int64_t                 deadline_ms;     /* processed mode: monotonic */
    struct hp_ticket       *prev, *next;     /* h->tk_head list while WAITING */
    /* set once, with state READY */
    enum hp_tk_why          why;
    int                     rc;
    orderd_outcome          outcome;
    uint32_t                retry_after_ms;
    char                   *reason;
};

struct hp {
    orderd_inst        *inst;
    const orderd_host  *host;

    /* configuration */
    char               *listen_host;     /* NULL: any address */
    char               *listen_port;
    unsigned            threads;         /* 0: one thread per connection */
    unsigned            max_connections;
    size_t              max_header;
    size_t              max_body;
    unsigned            timeout_s;
    unsigned            retry_after_s;
    char               *store_pipeline;
    size_t              pending_max;
    char              **api_keys;
    size_t              n_api_keys;
    char               *tls_cert, *tls_key;
    jsonschema         *schema;
    struct http_idem   *idem;
    bool                processed;       /* acknowledge = "processed" */
    int64_t             ack_timeout_ms;
    bool                async;           /* event loops and submit_async */
    bool                text_bodies;     /* orders go on as text (msg_set_body_json, ABI 1.6) */

    /* runtime */
    struct MHD_Daemon  *mhd;             /* threads = 0 or blocking: MHD's own threads */
    int                 listen_fd;
    atomic_bool         stopping;
    struct hp_loop     *loops;           /* async: one per thread */
    unsigned            nloops;
    atomic_int          loop_cmd;        /* enum hp_loop_cmd */
    atomic_uint         conns;           /* connections open on all the loops */
    unsigned            loops_quiesced;  /* under tk_lock */

    pthread_mutex_t     pend_lock;
    struct hp_pend    **pend_buckets;
    size_t              pend_nbuckets;   /* power of two */
    size_t              pend_count;
    struct hp_pend     *pend_oldest, *pend_newest;

    /* Suspended requests (async only).  tk_cond signals: a ticket left the
     * list, resuming or tk_requests reached 0, the reaper must look again. */
    pthread_mutex_t     tk_lock;
    pthread_cond_t      tk_cond;         /* CLOCK_MONOTONIC */
    struct hp_ticket   *tk_head, *tk_tail;   /* WAITING, oldest (earliest deadline) first */
    bool                tk_closed;       /* stop(): no new tickets */
    unsigned            tk_resuming;     /* MHD_resume_connection() calls under way */
    unsigned            tk_requests;     /* requests holding a ticket (not yet completed) */
    bool                reaper_quit;
    bool                reaper_running;
    pthread_t           reaper;
};

enum hp_route { HP_R_ORDERS = 1, HP_R_ORDER, HP_R_COMMAND };

/* MHD's per-connection memory beyond max_header (see hp_start). */
#define HP_POOL_HEADROOM 4096

/* The event loop this thread runs (async mode), or NULL. */
static __thread struct hp_loop *hp_tl_loop;

/* Statuses a loop counts per turn before it reports them (hp_count). */
#define HP_LOOP_COUNTS 8

/* One event loop (async mode): its own daemon, listening socket and epoll. */
enum hp_loop_cmd { HP_LOOP_RUN, HP_LOOP_QUIESCE, HP_LOOP_QUIT };
struct hp_loop {
    struct hp          *h;
    struct MHD_Daemon  *mhd;
    int                 listen_fd;
    int                 ep;              /* MHD's epoll fd and wake_fd */
    int                 wake_fd;         /* eventfd: loop_cmd changed, or a ticket decided */
    atomic_bool         woken;           /* wake_fd written since the loop last looked */
    /* loop thread only */
    unsigned            unanswered;      /* requests waiting for their ticket */
    struct { unsigned status, n; } counts[HP_LOOP_COUNTS];   /* hp_count() since the turn began */
    unsigned            ncounts;
    pthread_t           thread;
    bool                running;
};

/* One request, alive from its headers to MHD's completion callback. */
struct hp_req {
    enum hp_route  route;
    char           order_id[HP_ID_MAX + 1];
    char           command[HP_CMD_MAX + 1];
    bool           answered;     /* a response was queued on the header call */
    bool           too_large;
    bool           json_ct;      /* Content-Type is JSON */
    char          *buf;
    size_t         len, cap;
    size_t         expect;       /* Content-Length when given (<= max_body), else 0 */
    /* async: what the answer after resuming needs */
    struct hp_ticket *ticket;    /* one reference, dropped in hp_completed */
    char          *reply;        /* the 202 body */
    char          *idem_key;     /* reserved Idempotency-Key, or NULL */
    bool           resumed;      /* the answer from the ticket was queued */
};

static const orderd_option hp_options[] = {
    { .key = "listen", .type = ORDERD_T_STRING, .def = "127.0.0.1:8080",
      .help = "Address and port to listen on: \"host:port\", \"[ipv6]:port\" or \"*:port\" for all addresses (port 0 picks a free one)" },
    { .key = "threads", .type = ORDERD_T_INT, .def = "2",
      .help = "Event loops serving all connections, each with its own listening socket on the same port (SO_REUSEPORT; the kernel spreads new connections); a request waits for the spool without holding a thread, and orders arriving while a group commit is being synced share the next one; 0 = one thread per connection, each request blocking it" },
    { .key = "max_connections", .type = ORDERD_T_INT, .def = "1024",
      .help = "Maximum number of concurrent client connections, all event loops together (further connections are accepted and closed at once)" },
    { .key = "max_header", .type = ORDERD_T_SIZE, .def = "8KiB",
      .help = "Largest request line plus headers accepted; larger requests get 431 with a problem body (a request over 1.5 times this exhausts the connection's memory first and gets libmicrohttpd's own 431, whose body is HTML)" },
    { .key = "max_body", .type = ORDERD_T_SIZE, .def = "1MiB",
      .help = "Largest request body accepted; larger bodies get 413 Payload Too Large" },
    { .key = "request_timeout", .type = ORDERD_T_DURATION, .def = "30s",
      .help = "Close a connection that has been idle (or sends nothing) for this long" },
    { .key = "retry_after", .type = ORDERD_T_DURATION, .def = "1s",
      .help = "Retry-After sent with 503 when the pipeline's spool is full, or when an order did not finish (acknowledge = \"processed\")" },
    { .key = "acknowledge", .type = ORDERD_T_STRING, .def = "accepted", .choices = "accepted|processed",
      .help = "When POST answers 202: \"accepted\" once the order is durable in the spool (admitted when the pipeline has no spool); \"processed\" once every stage has finished it (422 if it was dead-lettered, 503 if it did not finish); needs threads > 0" },
    { .key = "acknowledge_timeout", .type = ORDERD_T_DURATION, .def = "30s",
      .help = "With acknowledge = \"processed\": answer 504 when the pipeline has not finished an order by then (it may still be processed; retrying with the same id or Idempotency-Key is safe)" },
    { .key = "store_pipeline", .type = ORDERD_T_STRING,
      .help = "Pipeline whose store answers GET /orders/{id} (default: this pipeline)" },
    { .key = "pending_max", .type = ORDERD_T_INT, .def = "100000",
      .help = "How many accepted but not yet stored order ids GET remembers as \"accepted\"" },
    { .key = "idempotency_file", .type = ORDERD_T_PATH, .flags = ORDERD_OPT_STATE,
      .help = "File of Idempotency-Key records (default: http/<pipeline>.<stage>.idempotency in the state directory)" },
    { .key = "idempotency_ttl", .type = ORDERD_T_DURATION, .def = "24h",
      .help = "How long a request with an Idempotency-Key is remembered and replayed" },
    { .key = "schema", .type = ORDERD_T_PATH,
      .help = "JSON Schema that POST /orders bodies must satisfy (422 otherwise); unset: no check at the edge" },
    { .key = "api_keys_file", .type = ORDERD_T_PATH,
      .help = "File of accepted API keys, one per line ('#' comments); when set every request needs \"Authorization: Bearer <key>\" or \"X-API-Key: <key>\"" },
    { .key = "tls_cert", .type = ORDERD_T_PATH,
      .help = "PEM certificate (chain) for HTTPS; set together with tls_key" },
    { .key = "tls_key", .type = ORDERD_T_PATH,
      .help = "PEM private key for HTTPS; set together with tls_cert" },
    { .key = NULL }
};

/* ---- small helpers ---------------------------------------------------- */

static bool hp_valid_id(const char *s)
{
    size_t n = 0;

    for (; s[n]; n++) {
        char c = s[n];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == ':' || c == '-'))
            return false;
    }
    return n >= 1 && n <= HP_ID_MAX;
}

static bool hp_valid_command(const char *s, size_t n)
{
    if (n < 1 || n > HP_CMD_MAX || !(s[0] >= 'a' && s[0] <= 'z'))
        return false;
    for (size_t i = 1; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return false;
    }
    return true;
}

static bool hp_valid_idem_key(const char *s)
{
    size_t n = 0;

    for (; s[n]; n++)
        if ((unsigned char)s[n] < 0x20 || (unsigned char)s[n] > 0x7e)
            return false;
    return n >= 1 && n <= HP_IDEM_MAX;
}

/* application/json, or any application/...+json, parameters ignored. */
static bool hp_json_media_type(const char *ct)
{
    size_t n;

    if (ct == NULL)
        return false;
    n = strcspn(ct, ";");
    while (n > 0 && (ct[n - 1] == ' ' || ct[n - 1] == '\t'))
        n--;
    if (n < 12 || strncasecmp(ct, "application/", 12) != 0)
        return false;
    if (n == 16 && strncasecmp(ct + 12, "json", 4) == 0)
        return true;
    return n > 17 && memchr(ct + 12, '/', n - 12) == NULL && strncasecmp(ct + n - 5, "+json", 5) == 0;
}

/* Constant time in the length of the stored key, whatever the candidate. */
static bool hp_key_equal(const char *given, size_t glen, const char *key)
{
    size_t klen = strlen(key);
    unsigned char diff = (unsigned char)(glen != klen);

    for (size_t i = 0; i < klen; i++)
        diff |= (unsigned char)((i < glen ? (unsigned char)given[i] : 0) ^ (unsigned char)key[i]);
    return diff == 0;
}

static void hp_uuid_format(char out[37], const uint8_t b[16])
{
    static const char digits[] = "0123456789abcdef";
    char *p = out;

    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            *p++ = '-';
        *p++ = digits[b[i] >> 4];
        *p++ = digits[b[i] & 15];
    }
    *p = '\0';
}

/* A random (version 4) UUID. */
static int hp_uuid_random(char out[37])
{
    uint8_t b[16];
    size_t got = 0;

    while (got < sizeof b) {
        ssize_t n = getrandom(b + got, sizeof b - got, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        got += (size_t)n;
    }
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40);
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);
    hp_uuid_format(out, b);
    return 0;
}

/* A UUID derived from a hash (version 8, "custom"), for ids that must come
 * out the same when a client retries with the same Idempotency-Key. */
static void hp_uuid_from_hash(char out[37], const uint8_t h[16])
{
    uint8_t b[16];

    memcpy(b, h, 16);
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x80);
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);
    hp_uuid_format(out, b);
}

static void hp_hex128(char out[33], const uint8_t h[16])
{
    static const char digits[] = "0123456789abcdef";

    for (int i = 0; i < 16; i++) {
        out[2 * i] = digits[h[i] >> 4];
        out[2 * i + 1] = digits[h[i] & 15];
    }
    out[32] = '\0';
}

static char *hp_read_file(const char *path, size_t max, size_t *len_out, char *err, size_t errlen)
{
    FILE *f = fopen(path, "re");
    char *buf = NULL;
    size_t len = 0;

    if (f == NULL) {
        snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    buf = malloc(max + 1);
    if (buf == NULL) {
        snprintf(err, errlen, "out of memory reading %s", path);
        goto out;
    }
    len = fread(buf, 1, max + 1, f);
    if (ferror(f) || len > max) {
        snprintf(err, errlen, "cannot read %s: %s", path, ferror(f) ? strerror(errno) : "too large");
        free(buf);
        buf = NULL;
        goto out;
    }
    buf[len] = '\0';
    if (len_out)
        *len_out = len;
out:
    fclose(f);
    return buf;
}

/* ---- pending set ------------------------------------------------------ */

static uint64_t hp_strhash(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ULL;

    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 0x100000001b3ULL;
    }
    return h;
}

static struct hp_pend **hp_pend_slot(struct hp *h, const char *id, uint64_t hash)
{
    struct hp_pend **pp = &h->pend_buckets[hash & (h->pend_nbuckets - 1)];

    while (*pp != NULL && ((*pp)->hash != hash || strcmp((*pp)->id, id) != 0))
        pp = &(*pp)->hnext;
    return pp;
}

/* Out of its chain (no walk from the bucket: the oldest is evicted on
 * every add once the table is full) and of the age list, and freed. */
static void hp_pend_unlink(struct hp *h, struct hp_pend *e)
{
    *e->hpp = e->hnext;
    if (e->hnext != NULL)
        e->hnext->hpp = e->hpp;
    if (e->prev) e->prev->next = e->next; else h->pend_oldest = e->next;
    if (e->next) e->next->prev = e->prev; else h->pend_newest = e->prev;
    h->pend_count--;
    free(e);
}

static void hp_pend_add(struct hp *h, const char *id)
{
    if (h->pending_max == 0)
        return;
    size_t n = strlen(id) + 1;
    struct hp_pend *e = malloc(sizeof *e + n);

    if (e == NULL)
        return;   /* only costs a 404 instead of "accepted" for this id */
    e->hnext = NULL;
    e->next = NULL;
    e->hash = hp_strhash(id);
    memcpy(e->id, id, n);

    pthread_mutex_lock(&h->pend_lock);
    struct hp_pend **slot = hp_pend_slot(h, id, e->hash);
    if (*slot != NULL) {
        pthread_mutex_unlock(&h->pend_lock);
        free(e);
        return;
    }
    if (h->pend_count >= h->pending_max) {
        hp_pend_unlink(h, h->pend_oldest);
        slot = hp_pend_slot(h, id, e->hash);
    }
    *slot = e;
    e->hpp = slot;
    e->prev = h->pend_newest;
    if (h->pend_newest) h->pend_newest->next = e; else h->pend_oldest = e;
    h->pend_newest = e;
    h->pend_count++;
    pthread_mutex_unlock(&h->pend_lock);
}

/* RETURNS: whether id was pending; removes it when remove is set. */
static bool hp_pend_check(struct hp *h, const char *id, bool remove)
{
    bool found;

    uint64_t hash = hp_strhash(id);

    pthread_mutex_lock(&h->pend_lock);
    struct hp_pend **slot = hp_pend_slot(h, id, hash);
    found = *slot != NULL;
    if (found && remove)
        hp_pend_unlink(h, *slot);
    pthread_mutex_unlock(&h->pend_lock);
    return found;
}

/* ---- responses -------------------------------------------------------- */

/* Concatenates the NULL-terminated strings after dst into dst (cap bytes,
 * truncating).  The per-request replies are built with this: printf
 * formatting was a few percent of a request's CPU. */
static void hp_cat(char *dst, size_t cap, ...)
{
    size_t len = 0;
    const char *p;
    va_list ap;

    va_start(ap, cap);
    while ((p = va_arg(ap, const char *)) != NULL) {
        size_t n = strlen(p);
        if (n > cap - 1 - len)
            n = cap - 1 - len;
        memcpy(dst + len, p, n);
        len += n;
    }
    va_end(ap);
    dst[len] = '\0';
}

static void hp_count_add(struct hp *h, unsigned status, unsigned n)
{
    char name[32];

    snprintf(name, sizeof name, "http_requests_%u", status);
    h->host->metric_add(h->inst, name, n);
}

/* Counts a response by status.  An event loop adds them up over its turn
 * and reports each status once at the end (hp_counts_flush): a metric
 * update takes the registry's lock. */
static void hp_count(struct hp *h, unsigned status)
{
    struct hp_loop *l = hp_tl_loop;

    if (l != NULL) {
        for (unsigned i = 0; i < l->ncounts; i++)
            if (l->counts[i].status == status) {
                l->counts[i].n++;
                return;
            }
        if (l->ncounts < HP_LOOP_COUNTS) {
            l->counts[l->ncounts].status = status;
            l->counts[l->ncounts++].n = 1;
            return;
        }
    }
    hp_count_add(h, status, 1);
}

static void hp_counts_flush(struct hp *h, struct hp_loop *l)
{
    for (unsigned i = 0; i < l->ncounts; i++)
        hp_count_add(h, l->counts[i].status, l->counts[i].n);
    l->ncounts = 0;
}

/* Takes body (malloc'd, may be NULL for an empty body). */
static struct MHD_Response *hp_resp(char *body, const char *ctype)
{
    struct MHD_Response *resp;

    if (body == NULL)
        return MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    resp = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    if (resp == NULL) {
        free(body);
        return NULL;
    }
    if (ctype != NULL)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    return resp;
}

/* Queues and releases resp (NULL = out of memory: drop the connection). */
static hp_ret hp_queue(struct hp *h, struct MHD_Connection *c, unsigned status,
                       struct MHD_Response *resp)
{
    hp_ret ret;

    if (resp == NULL)
        return MHD_NO;
    hp_count(h, status);
    ret = MHD_queue_response(c, status, resp);
    MHD_destroy_response(resp);
    return ret;
}

/* A problem+json response; extra (stolen, may be NULL) adds members. */
static struct MHD_Response *hp_problem_resp(unsigned status, const char *type, const char *title,
                                            const char *detail, json_t *extra)
{
    json_t *p = json_pack("{s:s, s:s, s:i, s:s?}", "type", type ? type : "about:blank",
                          "title", title, "status", (int)status, "detail", detail);
    char *body;

    if (p == NULL) {
        json_decref(extra);
        return NULL;
    }
    if (extra != NULL)
        json_object_update(p, extra);
    json_decref(extra);
    body = json_dumps(p, JSON_COMPACT);
    json_decref(p);
    return body ? hp_resp(body, "application/problem+json") : NULL;
}

static hp_ret hp_problem(struct hp *h, struct MHD_Connection *c, unsigned status,
                         const char *type, const char *title, const char *detail, json_t *extra)
{
    return hp_queue(h, c, status, hp_problem_resp(status, type, title, detail, extra));
}

static hp_ret hp_not_allowed(struct hp *h, struct MHD_Connection *c, const char *method,
                             const char *allow)
{
    char detail[128];
    struct MHD_Response *resp;

    snprintf(detail, sizeof detail, "%.32s is not allowed here; use %s", method, allow);
    resp = hp_problem_resp(405, NULL, "Method Not Allowed", detail, NULL);
    if (resp != NULL)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allow);
    return hp_queue(h, c, 405, resp);
}

static hp_ret hp_options_reply(struct hp *h, struct MHD_Connection *c, const char *allow)
{
    struct MHD_Response *resp = hp_resp(NULL, NULL);

    if (resp != NULL)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allow);
    return hp_queue(h, c, 204, resp);
}

static hp_ret hp_json_reply(struct hp *h, struct MHD_Connection *c, unsigned status, json_t *doc)
{
    char *body = doc ? json_dumps(doc, JSON_COMPACT | JSON_REAL_PRECISION(15)) : NULL;

    json_decref(doc);
    if (body == NULL)
        return hp_problem(h, c, 500, NULL, "Internal Server Error", "out of memory", NULL);
    return hp_queue(h, c, status, hp_resp(body, "application/json"));
}

/* An accepted (or replayed) answer; takes body. */
static hp_ret hp_accepted_reply(struct hp *h, struct MHD_Connection *c, unsigned status,
                                char *body, const char *location, bool replayed)
{
    struct MHD_Response *resp = hp_resp(body, "application/json");

    if (resp != NULL && location != NULL)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_LOCATION, location);
    if (resp != NULL && replayed)
        MHD_add_response_header(resp, "Idempotent-Replayed", "true");
    return hp_queue(h, c, status, resp);
}

/* ---- authentication --------------------------------------------------- */

static bool hp_authorized(struct hp *h, struct MHD_Connection *c)
{
    const char *v;
    size_t len;
    bool ok = false;

    if (h->n_api_keys == 0)
        return true;
    v = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-API-Key");
    if (v == NULL) {
        v = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
        if (v == NULL || strncasecmp(v, "Bearer ", 7) != 0)
            return false;
        v += 7;
        while (*v == ' ')
            v++;
    }
    len = strlen(v);
    /* Compare with every key, without stopping early, so timing says nothing. */
    for (size_t i = 0; i < h->n_api_keys; i++)
        ok |= hp_key_equal(v, len, h->api_keys[i]);
    return ok;
}

static hp_ret hp_unauthorized(struct hp *h, struct MHD_Connection *c)
{
    struct MHD_Response *resp = hp_problem_resp(401, NULL, "Unauthorized",
        "a valid API key is required (Authorization: Bearer <key> or X-API-Key: <key>)", NULL);

    if (resp != NULL)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer realm=\"orderd\"");
    return hp_queue(h, c, 401, resp);
}

/* ---- GET /orders/{id} ------------------------------------------------- */

static hp_ret hp_get_order(struct hp *h, struct MHD_Connection *c, const char *id)
{
    json_t *doc = NULL;
    int rc = h->host->lookup(h->inst, h->store_pipeline, id, &doc);

    if (rc == 0) {
        hp_pend_check(h, id, true);
        return hp_json_reply(h, c, 200, doc);
    }
    if (rc == -ENOENT) {
        if (hp_pend_check(h, id, false))
            return hp_json_reply(h, c, 200, json_pack("{s:s, s:s, s:b}", "id", id,
                                                      "status", "accepted", "processed", 0));
        return hp_problem(h, c, 404, NULL, "Not Found", "no such order", json_pack("{s:s}", "id", id));
    }
    if (rc == -ENOTSUP)
        return hp_problem(h, c, 501, NULL, "Not Implemented", "no store configured", NULL);
    h->host->log(h->inst, ORDERD_LOG_WARN, "lookup of order %s failed: %s", id, strerror(-rc));
    return hp_problem(h, c, 503, NULL, "Service Unavailable", "the order store cannot be read right now", NULL);
}

/* ---- POST: answers ----------------------------------------------------- */

static hp_ret hp_retry_later(struct hp *h, struct MHD_Connection *c, unsigned status,
                             const char *title, const char *detail, json_t *extra,
                             uint32_t retry_after_ms)
{
    char ra[16];
    unsigned secs = retry_after_ms > 0 ? (retry_after_ms + 999) / 1000 : h->retry_after_s;
    struct MHD_Response *resp = hp_problem_resp(status, NULL, title, detail, extra);

    snprintf(ra, sizeof ra, "%u", secs);
    if (resp != NULL)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, ra);
    return hp_queue(h, c, status, resp);
}

/* How a submit ended, from whichever path learnt it. */
struct hp_result {
    enum hp_tk_why  why;
    int             rc;
    orderd_outcome  outcome;
    uint32_t        retry_after_ms;
    const char     *reason;
};

/* Answers a submitted POST: 202 (recording the pending id and committing
 * the Idempotency-Key) or the error, aborting the key so a retry can run.
 * reply (the 202 body) is stolen. */
static hp_ret hp_answer(struct hp *h, struct MHD_Connection *c, enum hp_route route,
                        const char *cmd, const char *order_id, const char *idem_key,
                        char *reply, const struct hp_result *res)
{
    static const char maybe[] = "; the order may still be processed: retrying with the same id "
                                "or Idempotency-Key is safe";
    char location[sizeof "/orders/" + HP_ID_MAX];
    char detail[512];

    hp_cat(location, sizeof location, "/orders/", order_id, (char *)NULL);
    if (res->why == HP_TK_DONE && res->rc == 0 && res->outcome != ORDERD_REJECT &&
        res->outcome != ORDERD_RETRY) {
        if (route == HP_R_ORDERS)
            hp_pend_add(h, order_id);
        if (idem_key != NULL) {
            int rc = http_idem_commit(h->idem, idem_key, 202, reply, location);
            /* The command is accepted and its id is derived from the key, so a
             * retry after a lost record is deduplicated downstream anyway. */
            if (rc != 0)
                h->host->log(h->inst, ORDERD_LOG_WARN, "cannot record an Idempotency-Key: %s",
                             strerror(-rc));
        }
        return hp_accepted_reply(h, c, 202, reply, location, false);
    }

    free(reply);
    if (idem_key != NULL)
        http_idem_abort(h->idem, idem_key);
    json_t *id = json_pack("{s:s}", "id", order_id);
    switch (res->why) {
    case HP_TK_TIMEOUT:
        snprintf(detail, sizeof detail, "the pipeline did not finish the order within %lld ms%s",
                 (long long)h->ack_timeout_ms, maybe);
        return hp_problem(h, c, 504, NULL, "Gateway Timeout", detail, id);
    case HP_TK_SHUTDOWN:
    case HP_TK_ABANDONED:
        snprintf(detail, sizeof detail, "the service is shutting down%s", maybe);
        return hp_problem(h, c, 503, NULL, "Service Unavailable", detail, id);
    case HP_TK_DONE:
        break;
    }
    if (res->rc == 0 && res->outcome == ORDERD_REJECT)
        return hp_problem(h, c, 422, "urn:orderd:problem:order-rejected", "Unprocessable Content",
                          res->reason ? res->reason : "the order was rejected", id);
    if (res->rc == 0) {
        snprintf(detail, sizeof detail, "the order did not finish (%.256s)%s",
                 res->reason ? res->reason : "no reason given", maybe);
        return hp_retry_later(h, c, 503, "Service Unavailable", detail, id, res->retry_after_ms);
    }
    json_decref(id);
    if (res->rc == -ENOSPC || res->rc == -EAGAIN)
        return hp_retry_later(h, c, 503, "Service Unavailable", "the order spool is full; retry later",
                              NULL, 0);
    if (res->rc == -ESHUTDOWN)
        return hp_problem(h, c, 503, NULL, "Service Unavailable", "the service is shutting down", NULL);
    h->host->log(h->inst, ORDERD_LOG_ERR, "cannot submit %s for order %s: %s",
                 route == HP_R_COMMAND ? cmd : "create", order_id, strerror(-res->rc));
    return hp_problem(h, c, 500, NULL, "Internal Server Error", "the order was not accepted", NULL);
}

/* ---- POST: asynchronous submits (tickets) ------------------------------ */

static void hp_timedwait(struct hp *h, int64_t until_ms)
{
    struct timespec ts = { .tv_sec = until_ms / 1000, .tv_nsec = (until_ms % 1000) * 1000000 };

    pthread_cond_timedwait(&h->tk_cond, &h->tk_lock, &ts);
}

static void hp_ticket_free(struct hp_ticket *t)
{
    free(t->reason);
    free(t);
}

/* Wakes loop l out of its epoll_wait. */
static void hp_loop_wake(struct hp_loop *l)
{
    uint64_t one = 1;

    if (l->wake_fd >= 0 && write(l->wake_fd, &one, sizeof one) < 0) {
        /* an eventfd only refuses at 2^64-2 unread wake-ups */
    }
}

/* The same, at most once until the loop next looks (a ticket decided). */
static void hp_loop_poke(struct hp_loop *l)
{
    if (!atomic_exchange(&l->woken, true))
        hp_loop_wake(l);
}

/* Decides t's answer (tk_lock held, t WAITING): takes it off the waiting
 * list and, when its connection is suspended, counts a resume under way;
 * otherwise pokes its loop, whose next turn calls the handler, which
 * answers.  Under tk_lock, so that stop() (which frees the loops once no
 * ticket is WAITING) never races a poke.  reason is copied (NULL on ENOMEM
 * only costs the detail).  RETURNS: the connection the caller must
 * hp_resume() once it has unlocked, or NULL when there is none. */
static struct MHD_Connection *hp_ticket_decide(struct hp *h, struct hp_ticket *t,
                                               const struct hp_result *res)
{
    t->state = HP_TK_READY;
    t->why = res->why;
    t->rc = res->rc;
    t->outcome = res->outcome;
    t->retry_after_ms = res->retry_after_ms;
    t->reason = res->reason ? strdup(res->reason) : NULL;
    if (t->prev) t->prev->next = t->next; else h->tk_head = t->next;
    if (t->next) t->next->prev = t->prev; else h->tk_tail = t->prev;
    t->prev = t->next = NULL;
    pthread_cond_broadcast(&h->tk_cond);
    if (!t->suspended) {
        if (t->loop != NULL)
            hp_loop_poke(t->loop);
        return NULL;
    }
    h->tk_resuming++;
    return t->conn;
}

/* Resumes conn and wakes its loop: in external epoll mode MHD's own wake-up
 * does not reach the loop's epoll_wait (0.9.75), so the resumed request
 * would wait for the next event or timeout.  Then tells stop(), which waits
 * for resumes under way before stopping MHD. */
static void hp_resume(struct hp *h, struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_DAEMON);
    struct hp_loop *loop = NULL;

    for (unsigned i = 0; ci != NULL && i < h->nloops; i++)
        if (h->loops[i].mhd == ci->daemon)
            loop = &h->loops[i];
    MHD_resume_connection(conn);
    if (loop != NULL)
        hp_loop_wake(loop);
    pthread_mutex_lock(&h->tk_lock);
    if (--h->tk_resuming == 0)
        pthread_cond_broadcast(&h->tk_cond);
    pthread_mutex_unlock(&h->tk_lock);
}

/* The core's side: decide t if nobody has, then drop the core's reference. */
static void hp_ticket_settle(struct hp_ticket *t, const struct hp_result *res)
{
    struct hp *h = t->h;
    struct MHD_Connection *conn = NULL;
    bool last;

    pthread_mutex_lock(&h->tk_lock);
    if (t->state == HP_TK_WAITING)
        conn = hp_ticket_decide(h, t, res);
    last = --t->refs == 0;
    pthread_mutex_unlock(&h->tk_lock);
    if (last)
        hp_ticket_free(t);   /* answered by timeout or stop, request gone: nothing to resume */
    else if (conn != NULL)
        hp_resume(h, conn);  /* t and its request may be freed from here on */
}

/* orderd_submit_done: on a host thread, perhaps inside submit_async(). */
static void hp_done(void *arg, int rc, const orderd_result *res)
{
    struct hp_result r = { .why = HP_TK_DONE, .rc = rc, .outcome = res->outcome,
                           .retry_after_ms = res->retry_after_ms, .reason = res->reason };

    hp_ticket_settle(arg, &r);
}

/* The request's side, from hp_completed: drop its reference. */
static void hp_ticket_release(struct hp *h, struct hp_ticket *t)
{
    bool last;

    pthread_mutex_lock(&h->tk_lock);
    if (t->state == HP_TK_WAITING) {
        /* MHD never completes a suspended request; if it ever did, make
         * sure nobody resumes a connection that is gone. */
        struct hp_result r = { .why = HP_TK_ABANDONED };
        if (hp_ticket_decide(h, t, &r) != NULL)
            h->tk_resuming--;
    }
    last = --t->refs == 0;
    if (--h->tk_requests == 0)
        pthread_cond_broadcast(&h->tk_cond);
    pthread_mutex_unlock(&h->tk_lock);
    if (last)
        hp_ticket_free(t);
}

/* Processed mode: answers 504 to requests whose acknowledge_timeout passed.
 * Waiting tickets are in deadline order (one timeout, appended in time
 * order), so only the oldest needs watching. */
static void *hp_reaper(void *arg)
{
    struct hp *h = arg;

    pthread_mutex_lock(&h->tk_lock);
    while (!h->reaper_quit) {
        struct hp_ticket *t = h->tk_head;
        if (t == NULL) {
            pthread_cond_wait(&h->tk_cond, &h->tk_lock);
            continue;
        }
        if (t->deadline_ms > mono_ms()) {
            hp_timedwait(h, t->deadline_ms);
            continue;
        }
        struct hp_result r = { .why = HP_TK_TIMEOUT };
        struct MHD_Connection *conn = hp_ticket_decide(h, t, &r);
        if (conn == NULL)
            continue;
        pthread_mutex_unlock(&h->tk_lock);
        hp_resume(h, conn);
        pthread_mutex_lock(&h->tk_lock);
    }
    pthread_mutex_unlock(&h->tk_lock);
    return NULL;
}

static hp_ret hp_resumed(struct hp *h, struct MHD_Connection *c, struct hp_req *r);

/* Hands m to submit_async(): the spool's writer thread writes it with the
 * next group commit, done() pokes this loop, and the handler's next call
 * answers from the ticket (hp_resumed).  Waiting for the pipeline
 * (processed), the connection is suspended first, as done() may come from
 * any thread and resumes it.  Takes m and r->reply. */
static hp_ret hp_submit_async(struct hp *h, struct MHD_Connection *c, struct hp_req *r,
                              orderd_msg *m)
{
    unsigned flags = ORDERD_SUBMIT_NOWAIT | (h->processed ? ORDERD_SUBMIT_OUTCOME : 0);
    struct hp_ticket *t = calloc(1, sizeof *t);
    struct hp_result res = { .why = HP_TK_DONE, .rc = -ENOMEM };
    int rc;

    if (t == NULL)
        goto fail;
    t->h = h;
    t->conn = c;
    t->refs = 2;
    pthread_mutex_lock(&h->tk_lock);
    if (h->tk_closed) {
        pthread_mutex_unlock(&h->tk_lock);
        free(t);
        res.rc = -ESHUTDOWN;
        goto fail;
    }
    if (h->processed) {
        t->deadline_ms = mono_ms() + h->ack_timeout_ms;
        /* Suspend first: done() may resume before submit_async() returns. */
        t->suspended = true;
        MHD_suspend_connection(c);
    } else {
        t->loop = hp_tl_loop;
        hp_tl_loop->unanswered++;
    }
    t->prev = h->tk_tail;
    if (h->tk_tail) h->tk_tail->next = t; else h->tk_head = t;
    h->tk_tail = t;
    h->tk_requests++;
    if (t->prev == NULL)
        pthread_cond_broadcast(&h->tk_cond);   /* the reaper has a deadline to watch */
    pthread_mutex_unlock(&h->tk_lock);
    r->ticket = t;

    rc = h->host->submit_async(h->inst, m, flags, hp_done, t);
    if (rc != 0) {
        /* done() will not be called: settle in its place. */
        res.rc = rc;
        hp_ticket_settle(t, &res);
    }
    if (h->processed)
        return MHD_YES;   /* suspended: neither t nor r may be touched any more */
    /* Not suspended, so r and our reference to t stay ours; already
     * decided (no spool, or a failed submit), it is answered now. */
    return hp_resumed(h, c, r);

fail:
    h->host->msg_free(m);
    char *reply = r->reply;
    r->reply = NULL;
    return hp_answer(h, c, r->route, r->command, r->order_id, r->idem_key, reply, &res);
}

/* The handler's call after a resume: answer from the ticket. */
static hp_ret hp_resumed(struct hp *h, struct MHD_Connection *c, struct hp_req *r)
{
    struct hp_ticket *t = r->ticket;
    struct hp_result res;
    char *reason, *reply;
    hp_ret ret;

    pthread_mutex_lock(&h->tk_lock);
    if (t->state != HP_TK_READY) {
        /* Not durable yet, or (suspended) waiting for the pipeline: MHD
         * calls us again on the loop's next turn. */
        pthread_mutex_unlock(&h->tk_lock);
        return MHD_YES;
    }
    if (t->loop != NULL)
        t->loop->unanswered--;
    reason = t->reason;
    t->reason = NULL;
    res = (struct hp_result){ .why = t->why, .rc = t->rc, .outcome = t->outcome,
                              .retry_after_ms = t->retry_after_ms, .reason = reason };
    pthread_mutex_unlock(&h->tk_lock);
    reply = r->reply;
    r->reply = NULL;
    r->resumed = true;
    ret = hp_answer(h, c, r->route, r->command, r->order_id, r->idem_key, reply, &res);
    free(reason);
    return ret;
}

/* ---- POST: submit a command ------------------------------------------- */

/* The part of a POST that is the same for create and lifecycle commands:
 * build the message, submit, answer.  The Idempotency-Key is reserved.
 * The body is a tree, or JSON text (tlen bytes) when body is NULL; either
 * is stolen. */
static hp_ret hp_submit(struct hp *h, struct MHD_Connection *c, struct hp_req *r,
                        const char *idem_key, json_t *body, char *text, size_t tlen,
                        const char *order_id, const char *cmd_id)
{
    const char *status = h->processed ? "processed" : "accepted";
    struct hp_result res = { .why = HP_TK_DONE };
    char *out = NULL;
    orderd_msg *m;

    /* Formatted directly: ids and commands were checked against
     * [A-Za-z0-9._:-] and [a-z0-9_-], so nothing needs JSON escaping, and
     * building a jansson tree to dump it cost a dozen allocations. */
    size_t cap = sizeof "{'id':'','command':'','status':'processed'}" + strlen(order_id) +
                 strlen(r->command);
    if ((out = malloc(cap)) != NULL) {
        if (r->route == HP_R_COMMAND)
            hp_cat(out, cap, "{\"id\":\"", order_id, "\",\"command\":\"", r->command,
                   "\",\"status\":\"", status, "\"}", (char *)NULL);
        else
            hp_cat(out, cap, "{\"id\":\"", order_id, "\",\"status\":\"", status, "\"}",
                   (char *)NULL);
    }
    m = out ? h->host->msg_new(h->inst, body) : (json_decref(body), NULL);
    if (m != NULL && text != NULL && h->host->msg_set_body_json(m, text, tlen) != 0) {
        h->host->msg_free(m);
        m = NULL;
    }
    free(text);
    if (m == NULL) {
        res.rc = -ENOMEM;
        goto answer;
    }
    if ((cmd_id && h->host->msg_set_id(m, cmd_id) != 0) ||
        h->host->msg_set_prop(m, "command", r->route == HP_R_COMMAND ? r->command : "create") != 0 ||
        h->host->msg_set_prop(m, "order_id", order_id) != 0 ||
        h->host->msg_set_partition_key(m, order_id) != 0) {
        h->host->msg_free(m);
        res.rc = -ENOMEM;
        goto answer;
    }
    if (h->async) {
        /* Kept for the answer after the connection resumes. */
        hp_cat(r->order_id, sizeof r->order_id, order_id, (char *)NULL);
        r->reply = out;
        if (idem_key != NULL && (r->idem_key = strdup(idem_key)) == NULL) {
            h->host->msg_free(m);
            r->reply = NULL;
            res.rc = -ENOMEM;
            goto answer;
        }
        return hp_submit_async(h, c, r, m);
    }
    res.rc = h->host->submit(h->inst, m, 0);
answer:
    return hp_answer(h, c, r->route, r->command, order_id, idem_key, out, &res);
}

/* Room after an order's text for the "id" member hp_post may add. */
#define HP_ID_ROOM (sizeof ",\"id\":\"\"" + HP_ID_MAX)

/* A new order that the schema passes on its text alone (the common case)
 * goes on as text: compact, with HP_ID_ROOM bytes to spare, no tree built,
 * checked or freed.  Its "id", when it has one, is copied into id ("" when
 * it has none).
 * RETURNS: the text (malloc'd, *len bytes), or NULL: take the tree path,
 * which also words whatever is wrong with the body. */
static char *hp_order_text(const struct hp *h, const struct hp_req *r, size_t *len,
                           char id[HP_ID_MAX + 1])
{
    const char *p, *end, *v;
    char *out, *o;
    bool in_str = false;
    size_t vlen;
    int rc;

    if (!h->text_bodies || r->len == 0 || !jsonschema_check_text(h->schema, r->buf, r->len))
        return NULL;
    if ((out = malloc(r->len + HP_ID_ROOM)) == NULL)
        return NULL;
    /* The text is JSON whose strings have no escapes: a quote always
     * opens or closes one, and white space outside them can go. */
    for (p = r->buf, end = r->buf + r->len, o = out; p < end; p++) {
        if (*p == '"')
            in_str = !in_str;
        if (in_str || *p == '"' || (*p != ' ' && *p != '\n' && *p != '\r' && *p != '\t'))
            *o++ = *p;
    }
    *len = (size_t)(o - out);
    id[0] = '\0';
    if (out[0] != '{')
        goto tree;
    rc = jenc_member_str(out, *len, "id", &v, &vlen);
    if (rc == 0 && vlen <= HP_ID_MAX) {
        memcpy(id, v, vlen);
        id[vlen] = '\0';
        if (!hp_valid_id(id))
            goto tree;
    } else if (rc != -ENOENT) {
        goto tree;
    }
    return out;
tree:
    id[0] = '\0';
    free(out);
    return NULL;
}

/* Add "id" to an order's text from hp_order_text(), last as the tree path
 * adds it.  RETURNS: the new length. */
static size_t hp_text_add_id(char *text, size_t len, const char *id)
{
    size_t n = len - 1;     /* over the closing brace */

    if (n > 1)
        text[n++] = ',';
    memcpy(text + n, "\"id\":\"", 6);
    n += 6;
    memcpy(text + n, id, strlen(id));
    n += strlen(id);
    memcpy(text + n, "\"}", 2);
    return n + 2;
}

/* The body as a tree for the paths the text does not take: decoded,
 * checked against the schema (creates), every error answered.  A create's
 * "id", when it has one, is copied into id ("" when it has none), as
 * hp_order_text() does.
 * RETURNS: the tree, or NULL with *ret the answer given. */
static json_t *hp_body_tree(struct hp *h, struct MHD_Connection *c, struct hp_req *r,
                            char id[HP_ID_MAX + 1], hp_ret *ret)
{
    json_error_t jerr;
    json_t *body, *jid;

    if (r->len == 0 && r->route == HP_R_COMMAND) {
        if ((body = json_object()) == NULL)
            *ret = hp_problem(h, c, 500, NULL, "Internal Server Error", "out of memory", NULL);
        return body;
    }
    /* jdec: json_loadb's result and errors, about twice as fast. */
    body = jdec_loadb_flags(r->buf ? r->buf : "", r->len, JSON_REJECT_DUPLICATES, &jerr);
    if (body == NULL) {
        *ret = hp_problem(h, c, 400, NULL, "Bad Request", jerr.text,
                          json_pack("{s:{s:i, s:i, s:I}}", "position", "line", jerr.line,
                                    "column", jerr.column, "offset", (json_int_t)jerr.position));
        return NULL;
    }
    if (!json_is_object(body)) {
        json_decref(body);
        *ret = hp_problem(h, c, 400, NULL, "Bad Request", "the body must be a JSON object", NULL);
        return NULL;
    }
    if (r->route == HP_R_COMMAND)
        return body;

    jid = json_object_get(body, "id");
    if (jid != NULL && (!json_is_string(jid) || !hp_valid_id(json_string_value(jid)))) {
        json_decref(body);
        *ret = hp_problem(h, c, 422, NULL, "Unprocessable Content",
                          "id must be a string of 1 to 128 characters from A-Z a-z 0-9 . _ : -",
                          json_pack("{s:s}", "field", "/id"));
        return NULL;
    }
    if (h->schema != NULL) {
        char err[512];
        int vrc = jsonschema_validate(h->schema, body, err, sizeof err);

        if (vrc != 0) {
            json_decref(body);
            if (vrc < 0) {
                *ret = hp_problem(h, c, 500, NULL, "Internal Server Error", "out of memory", NULL);
                return NULL;
            }
            /* "<pointer>: <rule>" -> field and detail */
            char *sep = strstr(err, ": ");
            const char *field = "/", *detail = err;
            if (sep != NULL && err[0] == '/') {
                *sep = '\0';
                field = err;
                detail = sep + 2;
            }
            *ret = hp_problem(h, c, 422, NULL, "Unprocessable Content", detail,
                              json_pack("{s:s}", "field", field));
            return NULL;
        }
    }
    hp_cat(id, HP_ID_MAX + 1, jid != NULL ? json_string_value(jid) : "", (char *)NULL);
    return body;
}

static hp_ret hp_post(struct hp *h, struct MHD_Connection *c, struct hp_req *r,
                      const char *method, const char *url)
{
    const char *idem_key = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Idempotency-Key");
    char order_id[HP_ID_MAX + 1] = "";
    char cmd_id[sizeof "idem-" + 32];
    uint8_t rhash[16], khash[16];
    json_t *body = NULL;
    char *text = NULL;      /* a new order's compact text, when it needs no tree */
    size_t tlen = 0;
    bool has_id;
    hp_ret ret;

    if (r->too_large) {
        char detail[96];
        snprintf(detail, sizeof detail, "the body is larger than %zu bytes", h->max_body);
        return hp_problem(h, c, 413, NULL, "Payload Too Large", detail, NULL);
    }
    if (r->len > 0 && !r->json_ct)
        return hp_problem(h, c, 415, NULL, "Unsupported Media Type",
                          "send the body as application/json", NULL);

    if (r->route == HP_R_ORDERS)
        text = hp_order_text(h, r, &tlen, order_id);
    if (text == NULL && (body = hp_body_tree(h, c, r, order_id, &ret)) == NULL)
        return ret;
    if (r->route == HP_R_COMMAND)
        snprintf(order_id, sizeof order_id, "%s", r->order_id);
    has_id = order_id[0] != '\0';   /* a valid id is never empty */

    if (idem_key != NULL) {
        const void *kb[] = { "order", idem_key };
        const size_t kl[] = { 5, strlen(idem_key) };
        const void *rb[] = { method, url, r->buf ? r->buf : "" };
        const size_t rl[] = { strlen(method), strlen(url), r->len };
        int status = 0;
        char *stored = NULL, *location = NULL;

        http_hash128(rhash, rb, rl, 3);
        switch (http_idem_begin(h->idem, idem_key, rhash, &status, &stored, &location)) {
        case HTTP_IDEM_NEW:
            break;
        case HTTP_IDEM_REPLAY:
            ret = hp_accepted_reply(h, c, (unsigned)status, stored, location, true);
            free(location);
            goto done;
        case HTTP_IDEM_MISMATCH:
            ret = hp_problem(h, c, 422, "urn:orderd:problem:idempotency-key-reused",
                             "Idempotency-Key reused with a different request",
                             "this key was already used for a request with another method, path or body",
                             NULL);
            goto done;
        case HTTP_IDEM_BUSY:
            ret = hp_problem(h, c, 409, "urn:orderd:problem:idempotency-key-in-use", "Conflict",
                             "a request with this Idempotency-Key is still being processed", NULL);
            goto done;
        default:
            ret = hp_problem(h, c, 500, NULL, "Internal Server Error", "out of memory", NULL);
            goto done;
        }
        /* Deterministic ids: a retry after a crash between spool and record
         * yields the same command (and order), which downstream dedups. */
        const void *cb[] = { "command", url, idem_key };
        const size_t cl[] = { 7, strlen(url), strlen(idem_key) };
        char hex[33];
        http_hash128(khash, cb, cl, 3);
        hp_hex128(hex, khash);
        snprintf(cmd_id, sizeof cmd_id, "idem-%s", hex);
        if (!has_id) {
            http_hash128(khash, kb, kl, 2);
            hp_uuid_from_hash(order_id, khash);
        }
    } else if (!has_id && hp_uuid_random(order_id) != 0) {
        ret = hp_problem(h, c, 500, NULL, "Internal Server Error", "no randomness for an id", NULL);
        goto done;
    }
    if (!has_id) {
        if (text != NULL) {
            tlen = hp_text_add_id(text, tlen, order_id);
        } else if (json_object_set_new(body, "id", json_string(order_id)) != 0) {
            if (idem_key != NULL)
                http_idem_abort(h->idem, idem_key);
            ret = hp_problem(h, c, 500, NULL, "Internal Server Error", "out of memory", NULL);
            goto done;
        }
    }
    return hp_submit(h, c, r, idem_key, body, text, tlen, order_id, idem_key ? cmd_id : NULL);

done:
    json_decref(body);
    free(text);
    return ret;
}

/* ---- routing ---------------------------------------------------------- */

/* Parses url into r; returns the Allow list of the resource, or NULL (404). */
static const char *hp_route(struct hp_req *r, const char *url)
{
    const char *p, *slash;
    size_t n;

    if (strncmp(url, "/orders", 7) != 0)
        return NULL;
    p = url + 7;
    if (*p == '\0') {
        r->route = HP_R_ORDERS;
        return "POST, OPTIONS";
    }
    if (*p++ != '/')
        return NULL;
    slash = strchr(p, '/');
    n = slash ? (size_t)(slash - p) : strlen(p);
    if (n < 1 || n > HP_ID_MAX)
        return NULL;
    memcpy(r->order_id, p, n);
    r->order_id[n] = '\0';
    if (!hp_valid_id(r->order_id))
        return NULL;
    if (slash == NULL) {
        r->route = HP_R_ORDER;
        return "GET, HEAD, OPTIONS";
    }
    p = slash + 1;
    n = strlen(p);
    if (!hp_valid_command(p, n))
        return NULL;
    memcpy(r->command, p, n + 1);
    r->route = HP_R_COMMAND;
    return "POST, OPTIONS";
}

static enum MHD_Result hp_count_field(void *cls, enum MHD_ValueKind kind, const char *key,
                                      size_t key_size, const char *value, size_t value_size)
{
    size_t *n = cls;

    (void)kind;
    (void)key;
    (void)value;
    *n += key_size + value_size + 4;   /* "key: value\r\n", or "key=value&" in the query */
    return MHD_YES;
}

/* The request line and headers as they came, give or take a byte per field. */
static size_t hp_header_bytes(struct MHD_Connection *c, const char *url, const char *method,
                              const char *version)
{
    size_t n = strlen(method) + strlen(url) + strlen(version) + 4;

    MHD_get_connection_values_n(c, MHD_HEADER_KIND | MHD_GET_ARGUMENT_KIND, hp_count_field, &n);
    return n;
}

/* The first call for a request: headers are in, the body is not.  Answers
 * whatever can be answered without the body, so oversized or unwanted
 * bodies are never read. */
static hp_ret hp_begin(struct hp *h, struct MHD_Connection *c, struct hp_req *r,
                       const char *url, const char *method, const char *version)
{
    const char *allow;

    if (hp_header_bytes(c, url, method, version) > h->max_header) {
        char detail[96];

        r->answered = true;
        snprintf(detail, sizeof detail, "the request line and headers are larger than %zu bytes",
                 h->max_header);
        return hp_problem(h, c, 431, NULL, "Request Header Fields Too Large", detail, NULL);
    }
    if (strcmp(url, "/healthz") == 0) {
        if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
            return (r->answered = true, hp_not_allowed(h, c, method, "GET, HEAD"));
        r->answered = true;
        return hp_queue(h, c, 200, hp_resp(strdup("{\"status\":\"ok\"}"), "application/json"));
    }
    r->answered = true;   /* every branch below answers, except a POST that reads its body */
    if (!hp_authorized(h, c))
        return hp_unauthorized(h, c);
    allow = hp_route(r, url);
    if (allow == NULL)
        return hp_problem(h, c, 404, NULL, "Not Found", "no such resource", NULL);
    if (strcmp(method, "OPTIONS") == 0)
        return hp_options_reply(h, c, allow);
    if (atomic_load(&h->stopping))
        return hp_problem(h, c, 503, NULL, "Service Unavailable", "the service is shutting down", NULL);

    if (r->route == HP_R_ORDER) {
        if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
            return hp_not_allowed(h, c, method, allow);
        return hp_get_order(h, c, r->order_id);
    }
    if (strcmp(method, "POST") != 0)
        return hp_not_allowed(h, c, method, allow);

    const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
    r->json_ct = hp_json_media_type(ct);
    if ((ct != NULL || r->route == HP_R_ORDERS) && !r->json_ct)
        return hp_problem(h, c, 415, NULL, "Unsupported Media Type",
                          "send the body as application/json", NULL);
    const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl != NULL) {
        unsigned long long want = strtoull(cl, NULL, 10);
        if (want > h->max_body) {
            char detail[96];
            snprintf(detail, sizeof detail, "the body is larger than %zu bytes", h->max_body);
            return hp_problem(h, c, 413, NULL, "Payload Too Large", detail, NULL);
        }
        r->expect = (size_t)want;
    }
    const char *key = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Idempotency-Key");
    if (key != NULL && !hp_valid_idem_key(key))
        return hp_problem(h, c, 400, NULL, "Bad Request",
                          "Idempotency-Key must be 1 to 255 printable ASCII characters", NULL);
    r->answered = false;
    return MHD_YES;
}

static hp_ret hp_handler(void *cls, struct MHD_Connection *c, const char *url,
                         const char *method, const char *version, const char *upload,
                         size_t *upload_size, void **con_cls)
{
    struct hp *h = cls;
    struct hp_req *r = *con_cls;

    if (r == NULL) {
        r = calloc(1, sizeof *r);
        if (r == NULL)
            return MHD_NO;
        *con_cls = r;
        return hp_begin(h, c, r, url, method, version);
    }
    if (*upload_size > 0) {
        size_t n = *upload_size;
        *upload_size = 0;
        if (r->answered || r->too_large)
            return MHD_YES;
        if (r->len + n > h->max_body) {
            /* Chunked bodies have no Content-Length to refuse up front:
             * drop what was read and discard the rest. */
            r->too_large = true;
            free(r->buf);
            r->buf = NULL;
            r->len = r->cap = 0;
            return MHD_YES;
        }
        if (r->len + n > r->cap) {
            /* Sized from Content-Length when we have it: a typical order is
             * well under 1 KiB, and a fixed 4 KiB buffer per request made
             * glibc consolidate its fastbins on every request (large-bin
             * allocation), about 5 % of the intake CPU. */
            size_t cap = r->cap ? r->cap : (r->expect >= r->len + n ? r->expect : 512);
            while (cap < r->len + n)
                cap *= 2;
            char *nb = realloc(r->buf, cap);
            if (nb == NULL)
                return MHD_NO;
            r->buf = nb;
            r->cap = cap;
        }
        memcpy(r->buf + r->len, upload, n);
        r->len += n;
        return MHD_YES;
    }
    if (r->ticket != NULL)
        return r->resumed ? MHD_YES : hp_resumed(h, c, r);
    if (r->answered)
        return MHD_YES;
    r->answered = true;
    return hp_post(h, c, r, method, url);
}

static void hp_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct hp *h = cls;
    struct hp_req *r = *con_cls;

    (void)c;
    (void)toe;
    if (r != NULL) {
        if (r->ticket != NULL && !r->resumed && r->ticket->loop != NULL)
            r->ticket->loop->unanswered--;
        if (r->ticket != NULL)
            hp_ticket_release(h, r->ticket);
        free(r->reply);
        free(r->idem_key);
        free(r->buf);
        free(r);
        *con_cls = NULL;
    }
}

static void hp_mhd_log(void *cls, const char *fmt, va_list ap)
{
    struct hp *h = cls;

    h->host->vlog(h->inst, ORDERD_LOG_WARN, fmt, ap);
}

/* ---- lifecycle -------------------------------------------------------- */

static int hp_parse_listen(struct hp *h, const char *s)
{
    const char *colon, *host_end, *host = s;

    if (s[0] == '[') {
        host_end = strchr(s, ']');
        if (host_end == NULL || host_end[1] != ':')
            return -EINVAL;
        host = s + 1;
        colon = host_end + 1;
    } else {
        colon = strrchr(s, ':');
        if (colon == NULL)
            return -EINVAL;
        host_end = colon;
    }
    char *end;
    unsigned long port = strtoul(colon + 1, &end, 10);
    if (colon[1] == '\0' || *end != '\0' || port > 65535)
        return -EINVAL;
    h->listen_port = strdup(colon + 1);
    if (host_end > host && !(host_end - host == 1 && host[0] == '*'))
        h->listen_host = strndup(host, (size_t)(host_end - host));
    if (h->listen_port == NULL || (host_end > host && host[0] != '*' && h->listen_host == NULL))
        return -ENOMEM;
    return 0;
}

static int hp_load_api_keys(struct hp *h, const char *path)
{
    char err[256];
    char *text = hp_read_file(path, 1 << 20, NULL, err, sizeof err), *save = NULL;
    int rc = 0;

    if (text == NULL) {
        h->host->log(h->inst, ORDERD_LOG_ERR, "api_keys_file: %s", err);
        return -EINVAL;
    }
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        while (*line == ' ' || *line == '\t')
            line++;
        size_t n = strlen(line);
        while (n > 0 && (line[n - 1] == ' ' || line[n - 1] == '\t' || line[n - 1] == '\r'))
            line[--n] = '\0';
        if (n == 0 || line[0] == '#')
            continue;
        char **nk = realloc(h->api_keys, (h->n_api_keys + 1) * sizeof *nk);
        if (nk == NULL || (nk[h->n_api_keys] = strdup(line)) == NULL) {
            if (nk != NULL)
                h->api_keys = nk;
            rc = -ENOMEM;
            goto out;
        }
        h->api_keys = nk;
        h->n_api_keys++;
    }
    if (h->n_api_keys == 0) {
        /* An empty file would silently lock every client out. */
        h->host->log(h->inst, ORDERD_LOG_ERR, "api_keys_file %s holds no keys", path);
        rc = -EINVAL;
    }
out:
    explicit_bzero(text, strlen(text));
    free(text);
    return rc;
}

static int hp_load_schema(struct hp *h, const char *path)
{
    json_error_t jerr;
    char err[512];
    json_t *doc = json_load_file(path, 0, &jerr);

    if (doc == NULL) {
        h->host->log(h->inst, ORDERD_LOG_ERR, "schema %s:%d:%d: %s", path, jerr.line, jerr.column, jerr.text);
        return -EINVAL;
    }
    h->schema = jsonschema_compile(doc, err, sizeof err);
    json_decref(doc);
    if (h->schema == NULL) {
        h->host->log(h->inst, ORDERD_LOG_ERR, "schema %s: %s", path, err);
        return -EINVAL;
    }
    return 0;
}

static int hp_open_idem(struct hp *h, const json_t *conf)
{
    const char *path = json_string_value(json_object_get(conf, "idempotency_file"));
    char *own = NULL, err[512];
    size_t loaded, skipped;
    int rc;

    if (path == NULL) {
        const char *dir = h->host->state_dir();
        const char *p = h->host->pipeline_name(h->inst), *s = h->host->stage_name(h->inst);
        if (asprintf(&own, "%s/http/%s.%s.idempotency", dir ? dir : ".", p ? p : "main", s ? s : "http") < 0)
            return -ENOMEM;
        /* Names come from the config; keep them inside the directory. */
        for (char *q = own + strlen(dir ? dir : ".") + 6; *q; q++)
            if (*q == '/')
                *q = '_';
        path = own;
    }
    json_int_t ttl = json_integer_value(json_object_get(conf, "idempotency_ttl"));
    rc = http_idem_open(&h->idem, path, ttl, &loaded, &skipped, err, sizeof err);
    if (rc < 0)
        h->host->log(h->inst, ORDERD_LOG_ERR, "idempotency_file: %s", err);
    else if (skipped > 0)
        h->host->log(h->inst, ORDERD_LOG_WARN, "%s: skipped %zu unreadable records", path, skipped);
    free(own);
    return rc;
}

static void hp_destroy(void *state);

static int hp_create(orderd_inst *inst, const orderd_host *host, const json_t *conf, void **state)
{
    struct hp *h = calloc(1, sizeof *h);
    const char *s;
    char err[256];
    int rc = -EINVAL;

    if (h == NULL)
        return -ENOMEM;
    h->inst = inst;
    h->host = host;
    h->listen_fd = -1;
    pthread_mutex_init(&h->pend_lock, NULL);
    pthread_mutex_init(&h->tk_lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&h->tk_cond, &ca);
    pthread_condattr_destroy(&ca);

    s = json_string_value(json_object_get(conf, "listen"));
    if (s == NULL || (rc = hp_parse_listen(h, s)) != 0) {
        host->log(inst, ORDERD_LOG_ERR, "listen \"%s\": expected host:port, [ipv6]:port or *:port",
                  s ? s : "");
        rc = rc ? rc : -EINVAL;
        goto fail;
    }
    json_int_t threads = json_integer_value(json_object_get(conf, "threads"));
    json_int_t maxc = json_integer_value(json_object_get(conf, "max_connections"));
    json_int_t pmax = json_integer_value(json_object_get(conf, "pending_max"));
    json_int_t timeout = json_integer_value(json_object_get(conf, "request_timeout"));
    json_int_t retry = json_integer_value(json_object_get(conf, "retry_after"));
    json_int_t mh = json_integer_value(json_object_get(conf, "max_header"));
    json_int_t mb = json_integer_value(json_object_get(conf, "max_body"));
    rc = -EINVAL;
    if (threads < 0 || threads > 1024) {
        host->log(inst, ORDERD_LOG_ERR, "threads must be 0 to 1024");
        goto fail;
    }
    if (maxc < 1 || maxc > 1000000 || pmax < 0 || mh < 1024 || mb < 1 || timeout < 0 || retry < 0) {
        host->log(inst, ORDERD_LOG_ERR, "max_connections, pending_max, max_header (>= 1KiB), max_body, "
                  "request_timeout and retry_after must be positive");
        goto fail;
    }
    h->threads = (unsigned)threads;
    h->max_connections = (unsigned)maxc;
    h->pending_max = (size_t)pmax;
    h->timeout_s = (unsigned)((timeout + 999) / 1000);
    h->retry_after_s = retry > 0 ? (unsigned)((retry + 999) / 1000) : 1;
    h->max_header = (size_t)mh;
    h->max_body = (size_t)mb;

    s = json_string_value(json_object_get(conf, "acknowledge"));
    h->processed = s != NULL && strcmp(s, "processed") == 0;
    h->ack_timeout_ms = json_integer_value(json_object_get(conf, "acknowledge_timeout"));
    h->async = h->threads > 0 && ORDERD_HOST_HAS(host, submit_async);
    h->text_bodies = ORDERD_HOST_HAS(host, msg_set_body_json);
    if (h->processed && !h->async) {
        host->log(inst, ORDERD_LOG_ERR, "acknowledge = \"processed\" needs threads > 0 and a core "
                  "providing submit_async (plugin ABI 1.1)");
        goto fail;
    }
    if (h->processed && h->ack_timeout_ms < 1) {
        host->log(inst, ORDERD_LOG_ERR, "acknowledge_timeout must be positive");
        goto fail;
    }

    s = json_string_value(json_object_get(conf, "store_pipeline"));
    if (s != NULL && (h->store_pipeline = strdup(s)) == NULL)
        goto nomem;

    /* Sized once for pending_max so no rehashing happens under the lock. */
    h->pend_nbuckets = 1024;
    while (h->pend_nbuckets < h->pending_max && h->pend_nbuckets < (1u << 20))
        h->pend_nbuckets *= 2;
    h->pend_buckets = calloc(h->pend_nbuckets, sizeof *h->pend_buckets);
    if (h->pend_buckets == NULL)
        goto nomem;

    s = json_string_value(json_object_get(conf, "api_keys_file"));
    if (s != NULL && (rc = hp_load_api_keys(h, s)) != 0)
        goto fail;
    s = json_string_value(json_object_get(conf, "schema"));
    if (s != NULL && (rc = hp_load_schema(h, s)) != 0)
        goto fail;

    const char *cert = json_string_value(json_object_get(conf, "tls_cert"));
    const char *key = json_string_value(json_object_get(conf, "tls_key"));
    if ((cert == NULL) != (key == NULL)) {
        host->log(inst, ORDERD_LOG_ERR, "tls_cert and tls_key go together: set both or neither");
        rc = -EINVAL;
        goto fail;
    }
    if (cert != NULL) {
        if (MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES) {
            host->log(inst, ORDERD_LOG_ERR, "this libmicrohttpd was built without TLS support");
            rc = -ENOTSUP;
            goto fail;
        }
        h->tls_cert = hp_read_file(cert, 1 << 20, NULL, err, sizeof err);
        if (h->tls_cert == NULL) {
            host->log(inst, ORDERD_LOG_ERR, "tls_cert: %s", err);
            rc = -EINVAL;
            goto fail;
        }
        h->tls_key = hp_read_file(key, 1 << 20, NULL, err, sizeof err);
        if (h->tls_key == NULL) {
            host->log(inst, ORDERD_LOG_ERR, "tls_key: %s", err);
            rc = -EINVAL;
            goto fail;
        }
    }
    rc = hp_open_idem(h, conf);
    if (rc != 0)
        goto fail;
    *state = h;
    return 0;

nomem:
    host->log(inst, ORDERD_LOG_ERR, "out of memory");
    rc = -ENOMEM;
fail:
    hp_destroy(h);
    return rc;
}

/* Binds the listening socket (h->listen_fd) ourselves: the bound port is
 * then known for any MHD version (port 0 in tests), and bind errors are
 * reported clearly.  With reuseport, SO_REUSEPORT is set so that more
 * sockets can share the port (hp_bind_more). */
static int hp_bind(struct hp *h, bool reuseport)
{
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
    struct addrinfo *res = NULL, *ai;
    int rc, fd = -1, one = 1, err = 0;

    rc = getaddrinfo(h->listen_host, h->listen_port, &hints, &res);
    if (rc != 0) {
        h->host->log(h->inst, ORDERD_LOG_ERR, "listen %s: %s", h->listen_host ? h->listen_host : "*",
                     gai_strerror(rc));
        return -EINVAL;
    }
    /* Without a host, prefer IPv6 dual-stack so one socket takes both families. */
    for (int pass = 0; pass < 2 && fd < 0; pass++) {
        for (ai = res; ai != NULL; ai = ai->ai_next) {
            if (h->listen_host == NULL && pass == 0 && ai->ai_family != AF_INET6)
                continue;
            fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
            if (fd < 0) {
                err = errno;
                continue;
            }
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
            if (reuseport)
                setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
            if (ai->ai_family == AF_INET6) {
                int v6only = h->listen_host != NULL;
                setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof v6only);
            }
            if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 1024) == 0)
                break;
            err = errno;
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    if (fd < 0) {
        h->host->log(h->inst, ORDERD_LOG_ERR, "cannot listen on %s:%s: %s",
                     h->listen_host ? h->listen_host : "*", h->listen_port, strerror(err));
        return err ? -err : -EADDRNOTAVAIL;
    }
    h->listen_fd = fd;
    return 0;
}

/* Another listening socket on h->listen_fd's address and port (picked by
 * the kernel when the configuration said 0).  RETURNS: the fd, or -errno. */
static int hp_bind_more(struct hp *h)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    int fd, one = 1, v6only = 0, err;

    if (getsockname(h->listen_fd, (struct sockaddr *)&ss, &sl) != 0)
        return -errno;
    fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -errno;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    if (ss.ss_family == AF_INET6) {
        socklen_t vl = sizeof v6only;
        getsockopt(h->listen_fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, &vl);
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof v6only);
    }
    if (bind(fd, (struct sockaddr *)&ss, sl) != 0 || listen(fd, 1024) != 0) {
        err = errno;
        close(fd);
        return -err;
    }
    return fd;
}

static int hp_bound_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;

    if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
        return -1;
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static void hp_stop(void *state);

static void hp_loops_cmd(struct hp *h, enum hp_loop_cmd cmd)
{
    atomic_store(&h->loop_cmd, cmd);
    for (unsigned i = 0; i < h->nloops; i++)
        hp_loop_wake(&h->loops[i]);
}

/* One event loop; see the top comment. */
static void *hp_loop_main(void *arg)
{
    struct hp_loop *l = arg;
    struct hp *h = l->h;
    bool quiesced = false;

    hp_tl_loop = l;
    for (;;) {
        enum hp_loop_cmd cmd = atomic_load(&h->loop_cmd);
        if (cmd != HP_LOOP_RUN && !quiesced) {
            /* No new connections; stop() closes the socket. */
            MHD_quiesce_daemon(l->mhd);
            quiesced = true;
            pthread_mutex_lock(&h->tk_lock);
            h->loops_quiesced++;
            pthread_cond_broadcast(&h->tk_cond);
            pthread_mutex_unlock(&h->tk_lock);
        }
        if (cmd == HP_LOOP_QUIT)
            break;

        MHD_UNSIGNED_LONG_LONG to;
        int timeout = -1;
        if (MHD_get_timeout(l->mhd, &to) == MHD_YES)
            timeout = to > INT_MAX ? INT_MAX : (int)to;
        /* MHD keeps a request left unanswered on its ready list and would
         * have us call it again at once: those wait for their tickets,
         * which wake us when decided. */
        if (timeout == 0 && l->unanswered > 0)
            timeout = -1;
        struct epoll_event ev[2];
        int n = epoll_wait(l->ep, ev, 2, timeout);
        for (int i = 0; i < n; i++) {
            uint64_t v;
            if (ev[i].data.fd == l->wake_fd) {
                if (read(l->wake_fd, &v, sizeof v) < 0) {
                    /* EAGAIN: another turn already took it */
                }
                /* After the read: a poke from now on writes again. */
                atomic_store(&l->woken, false);
            }
        }
        MHD_run(l->mhd);
        hp_counts_flush(h, l);
    }
    return NULL;
}

/* max_connections across the loops: any loop may hold all of them (the
 * kernel's SO_REUSEPORT hash need not spread connections evenly), the
 * total is checked when a loop accepts.  Two loops accepting at the same
 * moment may overshoot by one each. */
static enum MHD_Result hp_accept_policy(void *cls, const struct sockaddr *addr, socklen_t len)
{
    struct hp *h = cls;

    (void)addr;
    (void)len;
    return atomic_load(&h->conns) < h->max_connections ? MHD_YES : MHD_NO;
}

static void hp_conn_notify(void *cls, struct MHD_Connection *c, void **socket_context,
                           enum MHD_ConnectionNotificationCode toe)
{
    struct hp *h = cls;

    (void)c;
    (void)socket_context;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED)
        atomic_fetch_add(&h->conns, 1);
    else
        atomic_fetch_sub(&h->conns, 1);
}

/* Ends the loops' threads, then frees their daemons, sockets and fds. */
static void hp_loops_free(struct hp *h)
{
    hp_loops_cmd(h, HP_LOOP_QUIT);
    for (unsigned i = 0; i < h->nloops; i++)
        if (h->loops[i].running)
            pthread_join(h->loops[i].thread, NULL);
    for (unsigned i = 0; i < h->nloops; i++) {
        struct hp_loop *l = &h->loops[i];
        if (l->mhd != NULL) {
            MHD_stop_daemon(l->mhd);
            l->listen_fd = -1;  /* MHD closed it, unless quiesced: then stop() did */
        }
        if (l->listen_fd >= 0)
            close(l->listen_fd);
        if (l->ep >= 0)
            close(l->ep);
        if (l->wake_fd >= 0)
            close(l->wake_fd);
    }
    free(h->loops);
    h->loops = NULL;
    h->nloops = 0;
    h->listen_fd = -1;
}

/* Starts h->threads loops on h->listen_fd (loop 0's) plus a socket each for
 * the others.  opts: the options every daemon shares, ending in END. */
static int hp_loops_start(struct hp *h, unsigned flags, const struct MHD_OptionItem *opts)
{
    unsigned n = h->threads;
    int rc = 0;

    h->loops = calloc(n, sizeof *h->loops);
    if (h->loops == NULL)
        return -ENOMEM;
    h->nloops = n;
    h->loops_quiesced = 0;
    atomic_store(&h->loop_cmd, HP_LOOP_RUN);
    for (unsigned i = 0; i < n; i++)
        h->loops[i] = (struct hp_loop){ .h = h, .listen_fd = -1, .ep = -1, .wake_fd = -1 };
    for (unsigned i = 0; i < n && rc == 0; i++) {
        struct hp_loop *l = &h->loops[i];
        const union MHD_DaemonInfo *info;
        struct epoll_event ev = { .events = EPOLLIN };

        l->listen_fd = i == 0 ? h->listen_fd : hp_bind_more(h);
        if (l->listen_fd < 0) {
            rc = l->listen_fd;
            h->host->log(h->inst, ORDERD_LOG_ERR, "cannot open listening socket %u: %s", i + 1,
                         strerror(-rc));
            break;
        }
        l->mhd = MHD_start_daemon(flags, 0, hp_accept_policy, h, hp_handler, h,
                                  MHD_OPTION_EXTERNAL_LOGGER, hp_mhd_log, h,
                                  MHD_OPTION_NOTIFY_COMPLETED, hp_completed, h,
                                  MHD_OPTION_NOTIFY_CONNECTION, hp_conn_notify, h,
                                  MHD_OPTION_LISTEN_SOCKET, l->listen_fd,
                                  MHD_OPTION_CONNECTION_LIMIT, h->max_connections,
                                  MHD_OPTION_ARRAY, opts,
                                  MHD_OPTION_END);
        info = l->mhd ? MHD_get_daemon_info(l->mhd, MHD_DAEMON_INFO_EPOLL_FD) : NULL;
        l->ep = epoll_create1(EPOLL_CLOEXEC);
        l->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (info == NULL || l->ep < 0 || l->wake_fd < 0) {
            h->host->log(h->inst, ORDERD_LOG_ERR, "cannot start the HTTP server");
            rc = -EIO;
            break;
        }
        ev.data.fd = info->epoll_fd;
        if (epoll_ctl(l->ep, EPOLL_CTL_ADD, info->epoll_fd, &ev) != 0) {
            rc = -errno;
            break;
        }
        ev.data.fd = l->wake_fd;
        if (epoll_ctl(l->ep, EPOLL_CTL_ADD, l->wake_fd, &ev) != 0) {
            rc = -errno;
            break;
        }
    }
    for (unsigned i = 0; i < n && rc == 0; i++) {
        rc = -pthread_create(&h->loops[i].thread, NULL, hp_loop_main, &h->loops[i]);
        if (rc == 0)
            h->loops[i].running = true;
        else
            h->host->log(h->inst, ORDERD_LOG_ERR, "cannot start an event thread: %s", strerror(-rc));
    }
    if (rc != 0)
        hp_loops_free(h);
    return rc;
}

static int hp_start(void *state)
{
    struct hp *h = state;
    struct MHD_OptionItem opts[16];
    unsigned flags = MHD_USE_ERROR_LOG | MHD_USE_ITC;
    size_t n = 0;
    int rc;

    atomic_store(&h->stopping, false);
    h->tk_closed = false;
    h->reaper_quit = false;
    rc = hp_bind(h, h->async && h->threads > 1);
    if (rc != 0)
        return rc;
    if (h->threads == 0) {
        flags |= MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL;
    } else if (h->async) {
        flags |= MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME;   /* our loops run it */
    } else {
        flags |= MHD_USE_AUTO_INTERNAL_THREAD;
        if (h->threads > 1)
            opts[n++] = (struct MHD_OptionItem){ MHD_OPTION_THREAD_POOL_SIZE, h->threads, NULL };
    }
    if (h->tls_cert != NULL) {
        flags |= MHD_USE_TLS;
        opts[n++] = (struct MHD_OptionItem){ MHD_OPTION_HTTPS_MEM_CERT, 0, h->tls_cert };
        opts[n++] = (struct MHD_OptionItem){ MHD_OPTION_HTTPS_MEM_KEY, 0, h->tls_key };
    }
    /* The per-connection pool holds the request line and headers, a read
     * buffer for the body (which the handler copies out as it comes) and
     * the response headers.  hp_begin() refuses headers over max_header
     * with a problem body; the pool has room for half as much again, so
     * only a request far over the limit meets MHD's own 431 (plain HTML)
     * when its pool runs out.  No more than that: MHD 0.9.x zeroes the
     * whole pool for every request on a kept-alive connection. */
    opts[n++] = (struct MHD_OptionItem){ MHD_OPTION_CONNECTION_MEMORY_LIMIT,
                                         (intptr_t)(h->max_header + h->max_header / 2 +
                                                    HP_POOL_HEADROOM), NULL };
    opts[n++] = (struct MHD_OptionItem){ MHD_OPTION_CONNECTION_TIMEOUT, h->timeout_s, NULL };
    int port = hp_bound_port(h->listen_fd);
    if (h->async) {
        opts[n++] = (struct MHD_OptionItem){ MHD_OPTION_END, 0, NULL };
        rc = hp_loops_start(h, flags, opts);
        if (rc != 0)
            return rc;
    } else {
        opts[n++] = (struct MHD_OptionItem){ MHD_OPTION_CONNECTION_LIMIT, h->max_connections, NULL };
        opts[n++] = (struct MHD_OptionItem){ MHD_OPTION_LISTEN_SOCKET, h->listen_fd, NULL };
        opts[n++] = (struct MHD_OptionItem){ MHD_OPTION_END, 0, NULL };
        h->mhd = MHD_start_daemon(flags, 0, NULL, NULL, hp_handler, h,
                                  MHD_OPTION_EXTERNAL_LOGGER, hp_mhd_log, h,
                                  MHD_OPTION_NOTIFY_COMPLETED, hp_completed, h,
                                  MHD_OPTION_ARRAY, opts,
                                  MHD_OPTION_END);
        if (h->mhd == NULL) {
            h->host->log(h->inst, ORDERD_LOG_ERR, "cannot start the HTTP server");
            close(h->listen_fd);
            h->listen_fd = -1;
            return -EIO;
        }
    }
    if (h->processed) {
        rc = pthread_create(&h->reaper, NULL, hp_reaper, h);
        if (rc != 0) {
            h->host->log(h->inst, ORDERD_LOG_ERR, "cannot start the timeout thread: %s", strerror(rc));
            hp_stop(h);
            return -rc;
        }
        h->reaper_running = true;
    }
    h->host->log(h->inst, ORDERD_LOG_INFO, "Order API listening on %s%s%s:%d%s",
                 h->listen_host && strchr(h->listen_host, ':') ? "[" : "",
                 h->listen_host ? h->listen_host : "*",
                 h->listen_host && strchr(h->listen_host, ':') ? "]" : "",
                 port, h->tls_cert ? " (TLS)" : "");
    h->host->metric_set(h->inst, "http_port", port);
    return 0;
}

/* Async: give waiting requests HP_STOP_GRACE_MS to get their real answer,
 * answer the rest 503 (the core still owns their messages; its done() will
 * only free the ticket), and let MHD send those answers.  MHD_stop_daemon()
 * panics on a connection still suspended (0.9.75 close_all_connections());
 * MHD_resume_connection() before it is enough, as stopping first moves
 * resumed connections off the suspended list.  Hence: no new tickets, none
 * WAITING, and no resume call still under way when this returns. */
static void hp_stop_tickets(struct hp *h)
{
    int64_t until = mono_ms() + HP_STOP_GRACE_MS;
    unsigned answered = 0;

    pthread_mutex_lock(&h->tk_lock);
    h->tk_closed = true;
    while (h->tk_head != NULL && mono_ms() < until)
        hp_timedwait(h, until);
    while (h->tk_head != NULL) {
        struct hp_result r = { .why = HP_TK_SHUTDOWN };
        struct MHD_Connection *conn = hp_ticket_decide(h, h->tk_head, &r);
        answered++;
        if (conn == NULL)
            continue;
        pthread_mutex_unlock(&h->tk_lock);
        hp_resume(h, conn);
        pthread_mutex_lock(&h->tk_lock);
    }
    while (h->tk_resuming > 0)
        pthread_cond_wait(&h->tk_cond, &h->tk_lock);
    until = mono_ms() + HP_FLUSH_MS;
    while (h->tk_requests > 0 && mono_ms() < until)
        hp_timedwait(h, until);
    h->reaper_quit = true;
    pthread_cond_broadcast(&h->tk_cond);
    pthread_mutex_unlock(&h->tk_lock);
    if (h->reaper_running) {
        pthread_join(h->reaper, NULL);
        h->reaper_running = false;
    }
    if (answered > 0)
        h->host->log(h->inst, ORDERD_LOG_WARN, "stopping: answered %u waiting request%s 503",
                     answered, answered == 1 ? "" : "s");
}

static void hp_stop(void *state)
{
    struct hp *h = state;

    if (h->loops != NULL) {
        /* As below, with each loop quiescing its own daemon (MHD calls in
         * external mode belong to the loop's thread), and the loops kept
         * turning until the waiting requests have their answers sent. */
        atomic_store(&h->stopping, true);
        hp_loops_cmd(h, HP_LOOP_QUIESCE);
        pthread_mutex_lock(&h->tk_lock);
        while (h->loops_quiesced < h->nloops)
            pthread_cond_wait(&h->tk_cond, &h->tk_lock);
        pthread_mutex_unlock(&h->tk_lock);
        for (unsigned i = 0; i < h->nloops; i++) {
            close(h->loops[i].listen_fd);
            h->loops[i].listen_fd = -1;
        }
        hp_stop_tickets(h);
        hp_loops_free(h);
        return;
    }
    if (h->mhd == NULL)
        return;
    /* New requests on open connections get 503; stop accepting connections
     * first, then let MHD finish the requests it is running and close. */
    atomic_store(&h->stopping, true);
    MHD_socket fd = MHD_quiesce_daemon(h->mhd);
    if (fd != MHD_INVALID_SOCKET)
        close(fd);
    MHD_stop_daemon(h->mhd);
    h->mhd = NULL;
    h->listen_fd = -1;
}

static void hp_destroy(void *state)
{
    struct hp *h = state;

    if (h == NULL)
        return;
    hp_stop(h);
    struct hp_pend *e = h->pend_oldest, *next;
    for (; e != NULL; e = next) {
        next = e->next;
        free(e);
    }
    free(h->pend_buckets);
    for (size_t i = 0; i < h->n_api_keys; i++) {
        explicit_bzero(h->api_keys[i], strlen(h->api_keys[i]));
        free(h->api_keys[i]);
    }
    free(h->api_keys);
    if (h->tls_key != NULL)
        explicit_bzero(h->tls_key, strlen(h->tls_key));
    free(h->tls_key);
    free(h->tls_cert);
    jsonschema_free(h->schema);
    http_idem_close(h->idem);
    free(h->store_pipeline);
    free(h->listen_host);
    free(h->listen_port);
    pthread_mutex_destroy(&h->pend_lock);
    pthread_cond_destroy(&h->tk_cond);
    pthread_mutex_destroy(&h->tk_lock);
    free(h);
}

static const orderd_stage hp_input = ORDERD_STAGE(
    .kind = ORDERD_INPUT,
    .description = "Order API over HTTP: POST /orders, POST /orders/{id}/{command}, GET /orders/{id}",
    .options = hp_options,
    .create = hp_create,
    .start = hp_start,
    .stop = hp_stop,
    .destroy = hp_destroy);

static const orderd_stage *const hp_stages[] = { &hp_input, NULL };

ORDERD_PLUGIN(.name = "http", .version = "1.0",
              .description = "Order API input (libmicrohttpd)",
              .maintainer = "orderd developers",
              .stages = hp_stages);
