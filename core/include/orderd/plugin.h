/*
 * orderd/plugin.h - the one header an orderd plugin needs.
 *
 * A plugin is a shared object that exports exactly one symbol, the const
 * descriptor `orderd_plugin_v1` (use ORDERD_PLUGIN()).  The daemon dlopen()s
 * it with RTLD_NOW | RTLD_LOCAL, checks the ABI numbers below, validates the
 * administrator's configuration against the option tables the plugin
 * declares, and then drives the plugin only through the callbacks in
 * orderd_stage.  The plugin reaches the daemon only through the function
 * table orderd_host handed to create(); it never links against the daemon.
 *
 * ABI policy
 *   A plugin built against ABI M.m loads into a daemon providing M'.m' when
 *   M == M' and m <= m'.  Members are only ever appended to orderd_host,
 *   orderd_stage and orderd_plugin; each such addition bumps the minor
 *   number.  orderd_option and orderd_result appear in arrays, so their
 *   layout is frozen for a whole major.  libjansson (soname 4) is part of
 *   major 1: message bodies and configuration are json_t values.
 *
 * Changelog
 *   1.0  initial ABI.
 *   1.1  host->submit_async() and ORDERD_SUBMIT_OUTCOME: an input hands over
 *        a message without blocking and hears back when it is durable, or
 *        when the pipeline is finished with it.  ORDERD_HOST_HAS().
 *   1.2  ORDERD_SUBMIT_DEFER and host->submit_flush(): an event loop's
 *        submits of one turn are written by the loop's own thread, in one
 *        group commit, instead of being handed to the spool's writer thread.
 *   1.3  host->msg_body_text() and msg_body_peek(): the body's JSON text is
 *        made once per message and shared by the stages that need it.
 *   1.4  host->msg_set_body_text(): an input that holds JSON text hands it
 *        over as text; no tree is built unless a stage asks for one.
 *   1.5  host->msg_set_body_encoded(): a stage that builds a body out of
 *        parts it already has as text sets the tree and that text together,
 *        so nobody encodes the tree again.
 *   1.6  host->msg_set_body_json(): msg_set_body_text() for text that is
 *        known to be JSON (another message's msg_body_text()), unchecked.
 *
 * Ownership, in one rule: the host owns every orderd_msg; a plugin borrows
 * it for the duration of a callback (or, for PENDING, until it calls
 * settle()), except that submit() takes it from an input for good.
 */
#ifndef ORDERD_PLUGIN_H
#define ORDERD_PLUGIN_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ORDERD_ABI_MAJOR 1u
#define ORDERD_ABI_MINOR 6u

/* Name of the one symbol a plugin exports. */
#define ORDERD_PLUGIN_SYMBOL "orderd_plugin_v1"

#if defined(__GNUC__) || defined(__clang__)
#define ORDERD_PRINTF(f, a) __attribute__((format(printf, f, a)))
#define ORDERD_EXPORT       __attribute__((visibility("default")))
#else
#define ORDERD_PRINTF(f, a)
#define ORDERD_EXPORT
#endif

/* Stage kinds.  One plugin may provide several (one orderd_stage each). */
typedef enum {
    ORDERD_INPUT     = 1,
    ORDERD_TRANSFORM = 2,
    ORDERD_STORE     = 3,
    ORDERD_PUBLISH   = 4
} orderd_kind;

/*
 * What a stage says about one message.
 *   OK       go on; after the last stage the input completes the message.
 *   RETRY    transient failure: the core retries this stage with exponential
 *            backoff and full jitter (or after the delay the plugin gave),
 *            up to the pipeline's retry limit, then abandons the message to
 *            its input, which redelivers it.
 *   REJECT   permanent failure: the message is dead-lettered with a reason.
 *   DROP     filtered out on purpose: completed without further stages.
 *   PENDING  the plugin will report the outcome later with host->settle();
 *            only from process()/process_batch() of stages that set
 *            ORDERD_SF_ASYNC_SETTLE.
 */
typedef enum {
    ORDERD_OK      = 0,
    ORDERD_RETRY   = 1,
    ORDERD_REJECT  = 2,
    ORDERD_DROP    = 3,
    ORDERD_PENDING = 4
} orderd_outcome;

/* Log levels, numbered as syslog's. */
enum {
    ORDERD_LOG_ERR   = 3,
    ORDERD_LOG_WARN  = 4,
    ORDERD_LOG_INFO  = 6,
    ORDERD_LOG_DEBUG = 7
};

/*
 * Configuration schema.  Plugins never parse configuration: they declare
 * their keys, the core checks the administrator's file against them (unknown
 * key, wrong type, missing required key, bad duration or size, all with
 * file:line) and hands create() a JSON object with every key present
 * (defaults applied), converted as the type says:
 *
 *   ORDERD_T_STRING    JSON string
 *   ORDERD_T_INT       JSON integer
 *   ORDERD_T_BOOL      JSON boolean
 *   ORDERD_T_DOUBLE    JSON real
 *   ORDERD_T_DURATION  JSON integer, milliseconds ("250ms", "30s", "5m", "2h", "1d")
 *   ORDERD_T_SIZE      JSON integer, bytes ("512", "64KiB", "16MiB", "1GiB", "10MB")
 *   ORDERD_T_PATH      JSON string, absolute: a relative path resolves against the
 *                      directory of the file it was written in, or against the
 *                      state directory when ORDERD_OPT_STATE is set
 *   ORDERD_T_STRLIST   JSON array of strings
 *   ORDERD_T_GROUP     JSON object checked against .sub
 *   ORDERD_T_GROUPLIST JSON array of objects, each checked against .sub
 *
 * An option that is absent, not required and has no default is JSON null.
 * A key flagged ORDERD_OPT_SECRET may instead be given as `<key>_file`
 * (the file's contents, trailing newline removed) or `<key>_env` (an
 * environment variable's value); the value is redacted in every dump and log
 * line.  `choices` ("a|b|c") restricts a string.  The stage keys `plugin` and
 * `name` belong to the core and may not be declared by a plugin.
 */
typedef enum {
    ORDERD_T_STRING = 1,
    ORDERD_T_INT,
    ORDERD_T_BOOL,
    ORDERD_T_DOUBLE,
    ORDERD_T_DURATION,
    ORDERD_T_SIZE,
    ORDERD_T_PATH,
    ORDERD_T_STRLIST,
    ORDERD_T_GROUP,
    ORDERD_T_GROUPLIST
} orderd_type;

enum {
    ORDERD_OPT_REQUIRED = 1u << 0,
    ORDERD_OPT_SECRET   = 1u << 1,
    ORDERD_OPT_STATE    = 1u << 2  /* relative ORDERD_T_PATH resolves in the state dir */
};

/* Frozen for major 1.  An array of these ends with an entry whose key is NULL. */
typedef struct orderd_option {
    const char                   *key;
    orderd_type                   type;
    unsigned                      flags;
    const char                   *def;      /* default, written as in the config, or NULL */
    const char                   *choices;  /* "a|b|c" for strings, or NULL */
    const char                   *help;     /* one line, for --help-plugin and man pages */
    const struct orderd_option   *sub;      /* keys of a GROUP / GROUPLIST */
    void                         *reserved[2];
} orderd_option;

/* One message's outcome in a batch.  Frozen for major 1. */
typedef struct orderd_result {
    orderd_outcome  outcome;
    uint32_t        retry_after_ms;  /* RETRY: wait at least this long (0: core's backoff) */
    const char     *reason;          /* RETRY/REJECT: copied by the host before the call returns */
    void           *reserved;
} orderd_result;

typedef struct orderd_msg  orderd_msg;   /* envelope; always owned by the host */
typedef struct orderd_inst orderd_inst;  /* the host's handle for one configured stage */

/* submit() and submit_async() flags */
enum {
    ORDERD_SUBMIT_NOWAIT  = 1u << 0, /* return -EAGAIN instead of blocking when full */
    ORDERD_SUBMIT_OUTCOME = 1u << 1, /* submit_async (1.1): report when the pipeline is
                                      * finished with the message, not when it is accepted */
    ORDERD_SUBMIT_DEFER   = 1u << 2  /* submit_async (1.2): the caller calls submit_flush()
                                      * before it next waits; see submit_flush */
};

/*
 * Completion of submit_async() (ABI 1.1).  Called exactly once per message
 * submit_async() accepted, on a host thread (possibly before submit_async()
 * returns); it must not block.  rc is 0 or a negative errno as submit()
 * would have returned.  res is never NULL and is valid only during the call.
 * Without ORDERD_SUBMIT_OUTCOME, rc == 0 means accepted (durable when the
 * pipeline has a spool) and res->outcome is ORDERD_OK.  With it, rc == 0
 * and res->outcome tells how the pipeline finished the message:
 *   ORDERD_OK      every stage succeeded (or one dropped it);
 *   ORDERD_REJECT  it was dead-lettered; res->reason says why;
 *   ORDERD_RETRY   it did not finish (the pipeline stopped, or gave it back
 *                  to its source); res->reason says why.  With a spool it
 *                  stays in the spool and is processed after a restart.
 */
typedef void (*orderd_submit_done)(void *arg, int rc, const orderd_result *res);

/*
 * The host's function table.  create() receives it; keep the pointer in your
 * state.  Every function may be called from any thread unless it says so.
 * Members after the ABI 1.0 block exist only when .size covers them.
 */
typedef struct orderd_host {
    uint32_t size;          /* sizeof(orderd_host) as the host was built */
    uint16_t abi_major;
    uint16_t abi_minor;

    /* LOG - write a log line prefixed with the pipeline, stage and plugin names.
     * ARGS: level is ORDERD_LOG_*; fmt is printf-style. */
    void (*log)(orderd_inst *inst, int level, const char *fmt, ...) ORDERD_PRINTF(3, 4);
    void (*vlog)(orderd_inst *inst, int level, const char *fmt, va_list ap) ORDERD_PRINTF(3, 0);

    /* HAS_FEATURE - ask for an optional core service by name.
     * RETURNS: 1 if the running core provides it, else 0. */
    int (*has_feature)(const char *name);

    /* MSG_NEW - make a message for submit().  body is stolen (even on failure).
     * A fresh unique id is assigned; override it with msg_set_id().
     * RETURNS: the message, or NULL when out of memory. */
    orderd_msg *(*msg_new)(orderd_inst *inst, json_t *body);

    /* MSG_FREE - free a message that was never submitted. */
    void (*msg_free)(orderd_msg *m);

    /* Accessors.  Returned strings and JSON are borrowed: valid while the
     * caller holds the message, and until the next setter on the same field.
     * Setters copy their string arguments; msg_set_body steals body.
     * Setters return 0 or -ENOMEM. */
    const char *(*msg_id)(const orderd_msg *m);
    int         (*msg_set_id)(orderd_msg *m, const char *id);
    json_t     *(*msg_body)(orderd_msg *m);          /* transforms may modify it in place */
    void        (*msg_set_body)(orderd_msg *m, json_t *body);
    const char *(*msg_prop)(const orderd_msg *m, const char *key);  /* NULL if absent */
    int         (*msg_set_prop)(orderd_msg *m, const char *key, const char *value);
    /* MSG_PROPS - iterate properties: returns the idx'th key (and *value), or NULL past the end. */
    const char *(*msg_prop_at)(const orderd_msg *m, size_t idx, const char **value);
    const char *(*msg_content_type)(const orderd_msg *m);       /* default "application/json" */
    int         (*msg_set_content_type)(orderd_msg *m, const char *type);
    const char *(*msg_partition_key)(const orderd_msg *m);      /* NULL if none */
    int         (*msg_set_partition_key)(orderd_msg *m, const char *key);
    int64_t     (*msg_enqueued_ms)(const orderd_msg *m);        /* Unix epoch milliseconds */
    void        (*msg_set_enqueued_ms)(orderd_msg *m, int64_t ms);
    uint32_t    (*msg_delivery_count)(const orderd_msg *m);     /* 1 on first delivery */
    void        (*msg_set_delivery_count)(orderd_msg *m, uint32_t n);
    /* The input's own per-message data (a broker delivery tag, a file offset).
     * The host never looks at it; it is handed back in ack(). */
    void        (*msg_set_input_data)(orderd_msg *m, void *ptr, uint64_t u64);
    void       *(*msg_input_data)(const orderd_msg *m, uint64_t *u64);
    /* The reason given by the last RETRY or REJECT, or NULL. */
    const char *(*msg_reason)(const orderd_msg *m);

    /* RETRY / REJECT - record a reason (and a minimum delay) on the message and
     * return the outcome, so a stage can write `return h->reject(m, "...")`. */
    orderd_outcome (*retry)(orderd_msg *m, uint32_t delay_ms, const char *fmt, ...) ORDERD_PRINTF(3, 4);
    orderd_outcome (*reject)(orderd_msg *m, const char *fmt, ...) ORDERD_PRINTF(2, 3);

    /* SETTLE - report the outcome of a message a stage answered PENDING.
     * Call exactly once per PENDING message, from any thread; after it
     * returns the stage no longer owns the message.  res->reason is copied. */
    void (*settle)(orderd_msg *m, const orderd_result *res);

    /* SUBMIT - an input hands a message to its pipeline.  Always consumes m.
     * Blocks while the pipeline is full, unless flags has ORDERD_SUBMIT_NOWAIT.
     * When the pipeline has a spool, returns only after the message is
     * durably written (the moment an input may acknowledge its client).
     * RETURNS: 0; -EAGAIN full (NOWAIT); -ENOSPC spool full; -ESHUTDOWN the
     * pipeline is stopping; -EIO the spool could not write; -ENOMEM. */
    int (*submit)(orderd_inst *inst, orderd_msg *m, unsigned flags);

    /* DEAD_LETTER - an input dead-letters a message that cannot enter the
     * pipeline (e.g. a line that is not JSON), with a reason.  Always consumes m.
     * RETURNS: 0 once the dead letter is durable, or negative errno. */
    int (*dead_letter)(orderd_inst *inst, orderd_msg *m, const char *reason);

    /* LOOKUP - read the current document stored under key by a store stage:
     * this pipeline's when pipeline is NULL, else that named pipeline's.
     * Keys are the store's: by convention an order id gives its snapshot and
     * "event:<event id>" a stored event.
     * RETURNS: 0 and a new reference in *out; -ENOENT not found; -ENOTSUP
     * no such store or it cannot look up; other negative errno on failure. */
    int (*lookup)(orderd_inst *inst, const char *pipeline, const char *key, json_t **out);

    /* METRICS - plugin-defined metrics, exported on /metrics as
     * orderd_plugin_<name>{pipeline,stage} (name: [a-z0-9_]). */
    void (*metric_add)(orderd_inst *inst, const char *name, double delta);  /* counter */
    void (*metric_set)(orderd_inst *inst, const char *name, double value);  /* gauge */

    /* Names, for the plugin's own messages.  Valid for the life of the stage. */
    const char *(*pipeline_name)(const orderd_inst *inst);
    const char *(*stage_name)(const orderd_inst *inst);
    const char *(*state_dir)(void);

    /* ---- ABI 1.1 (test with ORDERD_HOST_HAS(host, submit_async)) ---- */

    /* SUBMIT_ASYNC - submit() without waiting for the spool or the pipeline:
     * done(arg, ...) reports the result later (see orderd_submit_done), so
     * an event-driven input keeps serving other clients meanwhile.  flags:
     * ORDERD_SUBMIT_NOWAIT as for submit(), ORDERD_SUBMIT_OUTCOME.  Always
     * consumes m.
     * RETURNS: 0 when accepted (done will be called), or a negative errno as
     * submit() returns (done will not be called). */
    int (*submit_async)(orderd_inst *inst, orderd_msg *m, unsigned flags,
                        orderd_submit_done done, void *arg);

    /* ---- ABI 1.2 (test with ORDERD_HOST_HAS(host, submit_flush)) ---- */

    /* SUBMIT_FLUSH - write the records of this thread's submit_async(...,
     * ORDERD_SUBMIT_DEFER) calls.  A deferred submit is queued for the
     * spool's next group commit without waking the spool's writer thread;
     * an event loop submits what one turn read, then calls this once, and
     * the loop's own thread writes the group (one fdatasync) and calls the
     * done() of every record in it (without ORDERD_SUBMIT_OUTCOME) before
     * this returns.  So an input need not wait for a wake-up from another
     * thread to answer.  It may block for a disk write.  Another caller's
     * group may take a deferred record along (its done() then comes from
     * there, still before this returns).  Without a spool, deferred submits
     * are admitted at once and this returns at once.
     * RETURNS: 0. */
    int (*submit_flush)(orderd_inst *inst);

    /* ---- ABI 1.3 (test with ORDERD_HOST_HAS(host, msg_body_text)) ---- */

    /* MSG_BODY_TEXT - the body as compact JSON text: members in the tree's
     * order, the bytes json_dumps(body, JSON_COMPACT | JSON_REAL_PRECISION(15))
     * gives (or, after msg_set_body_text(), the text as set).  Made once and
     * kept with the message, so the stages that each need the encoded body
     * (a store, a publisher) share one encoding.  msg_set_body() drops it,
     * and so does msg_body(), which hands the tree out for changing: read
     * the tree with msg_body_peek() to keep it.  Do not change a tree you
     * got from msg_body() earlier after calling this.
     * RETURNS: NUL-terminated text of *len bytes, borrowed like msg_body();
     * NULL when out of memory or the body cannot be encoded. */
    const char   *(*msg_body_text)(orderd_msg *m, size_t *len);

    /* MSG_BODY_PEEK - the body, for reading only; keeps msg_body_text's text. */
    const json_t *(*msg_body_peek)(const orderd_msg *m);

    /* ---- ABI 1.4 (test with ORDERD_HOST_HAS(host, msg_set_body_text)) ---- */

    /* MSG_SET_BODY_TEXT - set the body from len bytes of JSON text (any
     * value at the top; UTF-8; no NUL needed at the end).  The text is
     * checked and copied, and msg_body_text() then returns it as given; the
     * tree is decoded only if a stage asks for it (msg_body, msg_body_peek),
     * so an input whose messages go on as text (a store's feed into a
     * publisher) never builds one.  Duplicate keys are kept in the text,
     * while the tree keeps the last.  Running out of memory while decoding
     * such a tree later ends the daemon (a message never goes on without
     * its body).
     * RETURNS: 0, -EINVAL (not JSON: the body is unchanged), or -ENOMEM. */
    int (*msg_set_body_text)(orderd_msg *m, const char *text, size_t len);

    /* ---- ABI 1.5 (test with ORDERD_HOST_HAS(host, msg_set_body_encoded)) ---- */

    /* MSG_SET_BODY_ENCODED - msg_set_body(m, body), with text (len bytes)
     * as the body's msg_body_text(): it must be exactly the text that
     * msg_body_text() would make of body (compact, members in the tree's
     * order, reals with 15 significant digits), except that a part copied
     * from a text set with msg_set_body_text() stays as given there.  The
     * text is not checked against the tree; it is copied.  body is stolen,
     * also on failure.
     * RETURNS: 0, or -ENOMEM (the body is set, without the text). */
    int (*msg_set_body_encoded)(orderd_msg *m, json_t *body, const char *text, size_t len);

    /* ---- ABI 1.6 (test with ORDERD_HOST_HAS(host, msg_set_body_json)) ---- */

    /* MSG_SET_BODY_JSON - msg_set_body_text() without the check, for text
     * known to be JSON because msg_body_text() made it (of this or another
     * message; a store that kept it, say), or because the caller read it
     * already by the same rules (the http input checks an order on its text
     * against the schema, and hands that text on).  Anything else is a bug
     * in the caller: decoding it later, when a stage asks for the tree, ends
     * the daemon.
     * RETURNS: 0, -EINVAL (text is NULL) or -ENOMEM (the body is unchanged). */
    int (*msg_set_body_json)(orderd_msg *m, const char *text, size_t len);

    /* ABI 1.7+ members go below this line only. */
} orderd_host;

/* Does the running host provide this orderd_host member?  For members added
 * after 1.0: `if (ORDERD_HOST_HAS(host, submit_async)) ...` */
#define ORDERD_HOST_HAS(host, member)                                        \
    ((host)->size >= offsetof(orderd_host, member) + sizeof((host)->member) && \
     (host)->member != NULL)

/* Stage flags */
enum {
    /* process()/process_batch() may answer PENDING and settle later. */
    ORDERD_SF_ASYNC_SETTLE = 1u << 0,
    /* The core never calls process*() of this stage from two threads at once. */
    ORDERD_SF_SERIAL       = 1u << 1,
    /* Input: the source redelivers what ack() abandons (a broker).  Without it
     * the core redelivers abandoned messages itself. */
    ORDERD_SF_REDELIVERS   = 1u << 2,
    /* Input: the source has its own dead-letter queue; ack() gets REJECT.
     * Without it the core dead-letters, then acks OK. */
    ORDERD_SF_DEADLETTERS  = 1u << 3
};

/*
 * One stage kind a plugin provides.  The core calls, per configured stage:
 * create -> start -> (process* | submit from the input's threads) -> stop ->
 * destroy.  Optional callbacks may be NULL.
 */
typedef struct orderd_stage {
    uint32_t              size;      /* sizeof(orderd_stage), set by ORDERD_STAGE() */
    orderd_kind           kind;
    unsigned              flags;     /* ORDERD_SF_* */
    const char           *description;
    const orderd_option  *options;   /* this kind's keys; may be NULL */

    /* CREATE - make the stage's state.  conf is borrowed for this call: copy what
     * you keep.  inst identifies the stage in host calls; it outlives state.
     * RETURNS: 0, or negative errno after logging why (the stage does not start). */
    int  (*create)(orderd_inst *inst, const orderd_host *host, const json_t *conf, void **state);

    /* START - inputs begin submitting (usually from a thread of their own).
     * RETURNS: 0 or negative errno.  May be NULL. */
    int  (*start)(void *state);

    /* STOP - inputs stop submitting and return promptly; messages already
     * submitted are still acked after stop() returns.  May be NULL. */
    void (*stop)(void *state);

    /* PROCESS - transform, store or publish one message (borrowed). */
    orderd_outcome (*process)(void *state, orderd_msg *m);

    /* PROCESS_BATCH - same for n messages at once, one result each in out[]
     * (out[i].outcome preset to OK).  The core picks batch boundaries; a
     * batch of one must work; a batch may be partly OK.  May be NULL, in
     * which case the core calls process() for each. */
    int  (*process_batch)(void *state, orderd_msg *const *msgs, size_t n, orderd_result *out);

    /* ACK - inputs: the pipeline is done with m (when the pipeline has a
     * spool, the spool takes this role and ack is not called).  outcome is OK (complete it;
     * also after DROP, and after the core dead-lettered it), RETRY (abandon:
     * redeliver later; only with ORDERD_SF_REDELIVERS) or REJECT (dead-letter
     * with reason; only with ORDERD_SF_DEADLETTERS).  m is borrowed for the
     * call; the host frees it afterwards.  Called from any worker thread. */
    void (*ack)(void *state, orderd_msg *m, orderd_outcome outcome, const char *reason);

    /* LOOKUP - stores: the current document under key (see host->lookup).
     * RETURNS: 0 with a new reference in *out, -ENOENT, or negative errno. */
    int  (*lookup)(void *state, const char *key, json_t **out);

    /* DESTROY - free state.  Called once, after stop(). */
    void (*destroy)(void *state);

    void *reserved[4];
} orderd_stage;

typedef struct orderd_plugin {
    uint32_t              size;        /* sizeof(orderd_plugin) */
    uint16_t              abi_major;
    uint16_t              abi_minor;
    const char           *name;        /* must equal the file's name without ".so" */
    const char           *version;
    const char           *description;
    const char           *maintainer;
    const orderd_stage *const *stages; /* NULL-terminated, at most one per kind */
    void                 *reserved[4];
} orderd_plugin;

/* Declare a stage: `static const orderd_stage my_input = ORDERD_STAGE(.kind = ..., ...);` */
#define ORDERD_STAGE(...) { .size = sizeof(orderd_stage), __VA_ARGS__ }

/* Declare the plugin's one exported symbol:
 *   ORDERD_PLUGIN(.name = "file", .version = "1.0", .stages = file_stages);  */
#define ORDERD_PLUGIN(...)                                                    \
    ORDERD_EXPORT extern const orderd_plugin orderd_plugin_v1;               \
    ORDERD_EXPORT const orderd_plugin orderd_plugin_v1 = {                   \
        .size = sizeof(orderd_plugin),                                       \
        .abi_major = ORDERD_ABI_MAJOR, .abi_minor = ORDERD_ABI_MINOR,        \
        __VA_ARGS__ }

#ifdef __cplusplus
}
#endif

#endif /* ORDERD_PLUGIN_H */
