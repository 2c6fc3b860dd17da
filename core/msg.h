/* msg.h - the message envelope and the host function table plugins get. */
#ifndef OD_MSG_H
#define OD_MSG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <orderd/plugin.h>

struct od_pipe;

struct od_prop {
    char *key;
    char *value;
};

struct orderd_msg {
    char            *id;
    json_t          *body;           /* NULL: only body_text, decoded when asked */
    char            *body_text;      /* msg_body_text(): body encoded, or NULL */
    size_t           body_text_len;
    struct od_prop  *props;
    size_t           nprops;
    char            *content_type;
    char            *partition_key;
    int64_t          enqueued_ms;
    uint32_t         delivery_count;
    void            *input_ptr;
    uint64_t         input_u64;

    /* outcome details recorded by retry()/reject()/settle() */
    char            *reason;
    uint32_t         retry_after_ms;

    /* engine bookkeeping */
    struct orderd_inst *origin;      /* the input that submitted it */
    size_t           stage;          /* index of the next stage to run */
    uint32_t         attempts;       /* failed tries of the current stage */
    int64_t          due_ms;         /* retry heap: when to run again */
    int64_t          start_ns;       /* when the current stage started */
    uint64_t         spool_seq;      /* record in the pipeline's spool, 0 if none */
    int              has_spool;
    int              keyed;          /* holds its partition key's turn */
    uint64_t         key_hash;
    struct orderd_msg *next;         /* ready-queue link */
    struct orderd_msg *all_prev;     /* every message in flight, so shutdown */
    struct orderd_msg *all_next;     /* can find the ones a plugin still holds */
    /* submit_async with ORDERD_SUBMIT_OUTCOME, no spool: who hears the end */
    orderd_submit_done done;
    void            *done_arg;
};

/* The full table plugins get (host.c), and where host->state_dir() points. */
const orderd_host *od_host_table(void);
void od_host_set_state_dir(const char *dir);
extern const orderd_host od_msg_host_part; /* message members only (msg.c) */

orderd_msg *od_msg_new(json_t *body);
void        od_msg_free(orderd_msg *m);
int         od_msg_set_reason(orderd_msg *m, const char *reason);

/* Envelope <-> JSON object (for the spool and the dead-letter area):
 * {"id","body","properties":{},"content_type","partition_key","enqueued_ms","delivery_count"} */
json_t     *od_msg_to_json(const orderd_msg *m);
/* The same envelope as text, jenc_dumps(od_msg_to_json(m)) byte for byte,
 * written directly (and with the body's cached text when it has one).
 * RETURNS: malloc'd text of *len bytes, or NULL out of memory. */
char       *od_msg_record(const orderd_msg *m, size_t *len);
/* The same; *exact says whether od_msg_from_json() of the record gives m
 * back as it is (false when jansson's rules left something out, or a real
 * number does not survive its 15 digits).  When it does, the body's part
 * of the record is kept as m's msg_body_text(). */
char       *od_msg_record_exact(orderd_msg *m, size_t *len, bool *exact);
orderd_msg *od_msg_from_json(const json_t *j);

#endif
