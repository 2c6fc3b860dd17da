/* sb_client.h - private to sb_client.c, sb_input.c and sb_publish.c: the
 * state of one stage's AMQP connection and the functions they share.  All of
 * it is touched by the proactor thread only, except the fields guarded by
 * `mu` and the sb_client_* entry points declared in sb.h. */
#ifndef SB_CLIENT_H
#define SB_CLIENT_H

#include <pthread.h>

#include <proton/condition.h>
#include <proton/connection.h>
#include <proton/delivery.h>
#include <proton/disposition.h>
#include <proton/event.h>
#include <proton/link.h>
#include <proton/proactor.h>
#include <proton/session.h>

#include "sb.h"

#define SB_TICK_MS          100
#define SB_CBS_TIMEOUT_MS   20000   /* Service Bus drops a connection without a token after 20 s */
#define SB_MGMT_TIMEOUT_MS  30000
#define SB_CLOSE_GRACE_MS   2000
#define SB_RENEW_BATCH      100
#define SB_CBS_REPLY        "orderd-cbs-reply"
#define SB_MGMT_REPLY       "orderd-mgmt-reply"
#define SB_DEADLETTER       "com.microsoft:dead-letter"
/* internal ack outcome: give back a message that never entered the pipeline */
#define SB_GIVE_BACK        ((orderd_outcome) 100)

/* One received message, from delivery to settlement. */
struct sb_inflight {
    struct sb_inflight *prev, *next;   /* c->inflight (proactor thread) */
    struct sb_inflight *qnext;         /* submit or ack queue (c->mu) */
    pn_delivery_t      *d;             /* NULL once its connection is gone */
    uint64_t            epoch;
    orderd_msg         *m;             /* until submitted */
    unsigned char       token[16];     /* lock token = delivery tag */
    int                 has_token;
    int                 renew_off;     /* lock lost or renewal_max reached */
    uint64_t            renew_req;
    int64_t             received_ms;
    int64_t             next_renew_ms;
    orderd_outcome      outcome;
    char               *reason;
};

/* One message being published. */
struct sb_send {
    struct sb_send *next;
    orderd_msg     *m;
    char           *buf;
    size_t          len;
    int64_t         deadline_ms;
    pn_delivery_t  *d;
};

struct sb_client {
    orderd_inst        *inst;
    const orderd_host  *h;
    struct sb_conf     *conf;
    pn_proactor_t      *pro;
    pthread_t           thr, sub_thr;
    int                 thr_started, sub_started;

    pthread_mutex_t     mu;             /* guards the fields up to the next blank line */
    pthread_cond_t      sub_cv;
    int                 stopping;
    int                 receiving;
    int                 sub_quit;
    struct sb_inflight *ackq, *ackq_tail;
    struct sb_inflight *subq, *subq_tail;
    struct sb_send     *sendq, *sendq_tail;

    /* proactor thread only */
    int                 done;
    pn_connection_t    *conn;
    pn_session_t       *ssn;
    pn_link_t          *link;          /* the entity's receiver or sender */
    pn_link_t          *cbs_snd, *cbs_rcv;
    pn_link_t          *mgmt_snd, *mgmt_rcv;
    int                 mgmt_broken;
    uint64_t            epoch;
    int                 link_ready;
    int                 authed;
    uint64_t            req_id;
    uint64_t            cbs_req;        /* outstanding put-token, 0 none */
    int64_t             cbs_sent_ms;
    int64_t             token_refresh_ms;
    uint64_t            renew_req;      /* outstanding renew-lock, 0 none */
    int64_t             renew_sent_ms;
    int64_t             next_connect_ms;
    int64_t             backoff_ms;
    int64_t             close_deadline_ms;
    struct sb_inflight *inflight;
    int                 n_inflight;
    struct sb_send     *pending, *pending_tail;   /* waiting for link credit */
    struct sb_send     *unsettled;                /* sent, waiting for a disposition */
    uint64_t            next_tag;
    char               *rbuf;
    size_t              rcap;
    unsigned            rand_state;
};

/* sb_client.c */
void        sb_metric(struct sb_client *c, const char *name, double d);
void        sb_gauge(struct sb_client *c, const char *name, double v);
void        sb_wake(struct sb_client *c);
const char *sb_cond_text(pn_condition_t *cond, char *buf, size_t len);
int         sb_send_request(struct sb_client *c, pn_link_t *snd, pn_message_t *msg);
void        sb_put_string_pair(pn_data_t *d, const char *k, const char *v);
void        sb_close_conn(struct sb_client *c, const char *why);

/* sb_input.c - receive, settle, renew locks */
void  sb_topup_credit(struct sb_client *c);
void  sb_drain_acks(struct sb_client *c);
void  sb_on_incoming(struct sb_client *c, pn_link_t *l, pn_delivery_t *d);
void *sb_submitter(void *arg);
void  sb_renew_locks(struct sb_client *c, int64_t now);
void  sb_renew_done(struct sb_client *c, uint64_t req, int ok, const char *why);
void  sb_in_conn_lost(struct sb_client *c);
void  sb_in_free(struct sb_client *c);

/* sb_publish.c - send and track dispositions */
void sb_flush_sends(struct sb_client *c);
void sb_on_outcome(struct sb_client *c, pn_delivery_t *d);
void sb_expire_sends(struct sb_client *c, int64_t now, int all);
void sb_pub_conn_lost(struct sb_client *c);
void sb_pub_free(struct sb_client *c);

#endif
