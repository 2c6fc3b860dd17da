/* sb_input.c - the receiving side of the servicebus input: deliveries
 * become orderd messages (handed to the submitter thread, because
 * host->submit() may block and the proactor thread must not), acks become
 * dispositions, and the locks of messages in flight are renewed through
 * <entity>/$management (com.microsoft:renew-lock, lock token = delivery
 * tag).  Everything but sb_submitter() and sb_client_ack() runs on the
 * proactor thread. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <proton/terminus.h>

#include "sb_client.h"

void
sb_topup_credit(struct sb_client *c)
{
    int want, have, receiving;

    if (c->conf->kind != ORDERD_INPUT || c->link == NULL || !c->authed)
        return;
    pthread_mutex_lock(&c->mu);
    receiving = c->receiving;
    pthread_mutex_unlock(&c->mu);
    if (!receiving)
        return;
    want = c->conf->concurrency - c->n_inflight;
    if (want > c->conf->prefetch)
        want = c->conf->prefetch;
    have = pn_link_credit(c->link);
    if (want > have)
        pn_link_flow(c->link, want - have);
    sb_gauge(c, "servicebus_in_flight", c->n_inflight);
}

static void
sb_dispose(struct sb_client *c, pn_delivery_t *d, orderd_outcome o, const char *reason)
{
    pn_disposition_t *disp = pn_delivery_local(d);

    switch ((int) o) {
    case ORDERD_OK:
    case ORDERD_DROP:
        pn_delivery_update(d, PN_ACCEPTED);
        sb_metric(c, "servicebus_completed", 1);
        break;
    case ORDERD_REJECT: {
        pn_condition_t *cond = pn_disposition_condition(disp);
        pn_data_t *info;
        char desc[1024], rsn[129];

        snprintf(rsn, sizeof(rsn), "%s", reason ?: "rejected");
        snprintf(desc, sizeof(desc), "orderd pipeline %s: %s", c->h->pipeline_name(c->inst),
                 reason ?: "rejected");
        pn_condition_set_name(cond, SB_DEADLETTER);
        pn_condition_set_description(cond, desc);
        info = pn_condition_info(cond);
        pn_data_put_map(info);
        pn_data_enter(info);
        pn_data_put_symbol(info, pn_bytes(16, "DeadLetterReason"));
        pn_data_put_string(info, pn_bytes(strlen(rsn), rsn));
        pn_data_put_symbol(info, pn_bytes(26, "DeadLetterErrorDescription"));
        pn_data_put_string(info, pn_bytes(strlen(desc), desc));
        pn_data_exit(info);
        pn_delivery_update(d, PN_REJECTED);
        sb_metric(c, "servicebus_deadlettered", 1);
        break;
    }
    case ORDERD_RETRY:
        if (c->conf->abandon_modified) {
            pn_disposition_set_failed(disp, true);
            pn_disposition_set_undeliverable(disp, false);
            pn_delivery_update(d, PN_MODIFIED);
        } else {
            pn_delivery_update(d, PN_RELEASED);
        }
        sb_metric(c, "servicebus_abandoned", 1);
        break;
    default:   /* SB_GIVE_BACK: never processed, so no delivery attempt is counted */
        pn_delivery_update(d, PN_RELEASED);
        break;
    }
    pn_delivery_settle(d);
}

static void
sb_inflight_unlink(struct sb_client *c, struct sb_inflight *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        c->inflight = e->next;
    if (e->next)
        e->next->prev = e->prev;
    c->n_inflight--;
}

void
sb_drain_acks(struct sb_client *c)
{
    struct sb_inflight *e, *list;

    pthread_mutex_lock(&c->mu);
    list = c->ackq;
    c->ackq = c->ackq_tail = NULL;
    pthread_mutex_unlock(&c->mu);
    while ((e = list) != NULL) {
        list = e->qnext;
        sb_inflight_unlink(c, e);
        if (e->d != NULL && e->epoch == c->epoch && c->conn != NULL) {
            sb_dispose(c, e->d, e->outcome, e->reason);
        } else if (e->outcome != SB_GIVE_BACK) {
            /* its connection is gone; the broker redelivers it */
            sb_metric(c, "servicebus_acks_lost", 1);
            c->h->log(c->inst, ORDERD_LOG_INFO, "ack of a message received on a lost connection dropped "
                      "(the broker redelivers it)");
        }
        free(e->reason);
        free(e);
    }
    sb_topup_credit(c);
}

void
sb_on_incoming(struct sb_client *c, pn_link_t *l, pn_delivery_t *d)
{
    size_t n = pn_delivery_pending(d);
    pn_message_t *msg = NULL;
    pn_delivery_tag_t tag;
    struct sb_inflight *e;
    orderd_msg *m;
    char err[256];
    int receiving;

    if (pn_delivery_partial(d) || !pn_delivery_readable(d))
        return;
    if (n + 1 > c->rcap) {
        char *nb = realloc(c->rbuf, n + 1);

        if (nb == NULL) {
            pn_delivery_update(d, PN_RELEASED);
            pn_delivery_settle(d);
            return;
        }
        c->rbuf = nb;
        c->rcap = n + 1;
    }
    pn_link_recv(l, c->rbuf, n);
    pn_link_advance(l);
    pthread_mutex_lock(&c->mu);
    receiving = c->receiving;
    pthread_mutex_unlock(&c->mu);
    if (!receiving) {
        /* prefetched after stop(): give it back untouched */
        pn_delivery_update(d, PN_RELEASED);
        pn_delivery_settle(d);
        return;
    }
    sb_metric(c, "servicebus_received", 1);
    msg = pn_message();
    if (msg == NULL || pn_message_decode(msg, c->rbuf, n) != 0) {
        snprintf(err, sizeof(err), "not an AMQP message");
        m = NULL;
    } else {
        m = sb_msg_from_amqp(c->h, c->inst, msg, err, sizeof(err));
    }
    pn_message_free(msg);
    if (m == NULL) {
        /* it can never enter the pipeline: straight to the broker's DLQ */
        c->h->log(c->inst, ORDERD_LOG_WARN, "dead-lettering a received message: %s", err);
        sb_dispose(c, d, ORDERD_REJECT, err);
        return;
    }
    e = calloc(1, sizeof(*e));
    if (e == NULL) {
        c->h->msg_free(m);
        pn_delivery_update(d, PN_RELEASED);
        pn_delivery_settle(d);
        return;
    }
    e->d = d;
    e->epoch = c->epoch;
    e->m = m;
    e->received_ms = sb_now_ms();
    e->next_renew_ms = e->received_ms + c->conf->lock_renewal_ms;
    tag = pn_delivery_tag(d);
    if (tag.size == 16) {
        memcpy(e->token, tag.start, 16);
        e->has_token = 1;
    }
    c->h->msg_set_input_data(m, e, e->epoch);
    e->next = c->inflight;
    if (c->inflight)
        c->inflight->prev = e;
    c->inflight = e;
    c->n_inflight++;
    pthread_mutex_lock(&c->mu);
    if (c->subq_tail)
        c->subq_tail->qnext = e;
    else
        c->subq = e;
    c->subq_tail = e;
    pthread_cond_signal(&c->sub_cv);
    pthread_mutex_unlock(&c->mu);
    sb_topup_credit(c);
}

/* Submitter thread: host->submit() may block; the proactor must not. */
void *
sb_submitter(void *arg)
{
    struct sb_client *c = arg;
    struct sb_inflight *e;
    orderd_msg *m;
    int rc;

    pthread_mutex_lock(&c->mu);
    for (;;) {
        while (c->subq == NULL && !c->sub_quit)
            pthread_cond_wait(&c->sub_cv, &c->mu);
        if (c->sub_quit)
            break;
        e = c->subq;
        c->subq = e->qnext;
        if (c->subq == NULL)
            c->subq_tail = NULL;
        e->qnext = NULL;
        m = e->m;
        e->m = NULL;
        pthread_mutex_unlock(&c->mu);
        rc = c->h->submit(c->inst, m, 0);
        pthread_mutex_lock(&c->mu);
        if (rc < 0) {
            /* submit consumed m and no ack will come: give the delivery back */
            if (rc != -ESHUTDOWN)
                c->h->log(c->inst, ORDERD_LOG_WARN, "submit failed: %s; releasing the message",
                          strerror(-rc));
            e->outcome = SB_GIVE_BACK;
            if (c->ackq_tail)
                c->ackq_tail->qnext = e;
            else
                c->ackq = e;
            c->ackq_tail = e;
            pthread_mutex_unlock(&c->mu);
            sb_wake(c);
            pthread_mutex_lock(&c->mu);
        }
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

static void
sb_attach_mgmt(struct sb_client *c)
{
    char addr[1024];

    snprintf(addr, sizeof(addr), "%s/$management", c->conf->address);
    c->mgmt_snd = pn_sender(c->ssn, "orderd-mgmt-sender");
    pn_terminus_set_address(pn_link_target(c->mgmt_snd), addr);
    pn_link_set_snd_settle_mode(c->mgmt_snd, PN_SND_SETTLED);
    pn_link_open(c->mgmt_snd);
    c->mgmt_rcv = pn_receiver(c->ssn, "orderd-mgmt-receiver");
    pn_terminus_set_address(pn_link_source(c->mgmt_rcv), addr);
    pn_terminus_set_address(pn_link_target(c->mgmt_rcv), SB_MGMT_REPLY);
    pn_link_open(c->mgmt_rcv);
    pn_link_flow(c->mgmt_rcv, 10);
}

/* Renew the locks of messages still in flight, in one $management request. */
void
sb_renew_locks(struct sb_client *c, int64_t now)
{
    struct sb_inflight *e;
    pn_message_t *msg;
    pn_data_t *p, *b;
    pn_atom_t id;
    int n = 0;

    if (c->conf->lock_renewal_ms <= 0 || !c->link_ready || c->mgmt_broken || c->renew_req != 0)
        return;
    for (e = c->inflight; e != NULL; e = e->next) {
        if (e->d == NULL || !e->has_token || e->renew_off || now < e->next_renew_ms)
            continue;
        if (now - e->received_ms >= c->conf->lock_renewal_max_ms) {
            e->renew_off = 1;
            c->h->log(c->inst, ORDERD_LOG_WARN, "message in flight for over lock_renewal_max: "
                      "no longer renewing its lock");
            continue;
        }
        n++;
    }
    if (n == 0)
        return;
    if (c->mgmt_snd == NULL)
        sb_attach_mgmt(c);
    msg = pn_message();
    if (msg == NULL)
        return;
    id.type = PN_ULONG;
    id.u.as_ulong = ++c->req_id;
    pn_message_set_id(msg, id);
    pn_message_set_reply_to(msg, SB_MGMT_REPLY);
    p = pn_message_properties(msg);
    pn_data_put_map(p);
    pn_data_enter(p);
    sb_put_string_pair(p, "operation", "com.microsoft:renew-lock");
    pn_data_exit(p);
    b = pn_message_body(msg);
    pn_data_put_map(b);
    pn_data_enter(b);
    pn_data_put_string(b, pn_bytes(11, "lock-tokens"));
    pn_data_put_array(b, false, PN_UUID);
    pn_data_enter(b);
    n = 0;
    for (e = c->inflight; e != NULL && n < SB_RENEW_BATCH; e = e->next) {
        pn_uuid_t u;

        if (e->d == NULL || !e->has_token || e->renew_off || now < e->next_renew_ms)
            continue;
        memcpy(u.bytes, e->token, 16);
        pn_data_put_uuid(b, u);
        e->renew_req = c->req_id;
        n++;
    }
    pn_data_exit(b);
    pn_data_exit(b);
    if (sb_send_request(c, c->mgmt_snd, msg) == 0) {
        c->renew_req = c->req_id;
        c->renew_sent_ms = now;
    }
    pn_message_free(msg);
}

void
sb_renew_done(struct sb_client *c, uint64_t req, int ok, const char *why)
{
    struct sb_inflight *e;
    int64_t now = sb_now_ms();
    int n = 0;

    for (e = c->inflight; e != NULL; e = e->next) {
        if (e->renew_req != req)
            continue;
        e->renew_req = 0;
        n++;
        if (ok) {
            e->next_renew_ms = now + c->conf->lock_renewal_ms;
        } else {
            e->renew_off = 1;
        }
    }
    if (ok) {
        sb_metric(c, "servicebus_lock_renewals", n);
    } else {
        sb_metric(c, "servicebus_locks_lost", n);
        c->h->log(c->inst, ORDERD_LOG_WARN, "lock renewal of %d message(s) failed (%s): "
                  "the broker will redeliver them; their outcome may be lost", n, why);
    }
    c->renew_req = 0;
}

/* The connection is gone: its deliveries can no longer be settled. */
void
sb_in_conn_lost(struct sb_client *c)
{
    struct sb_inflight *e;

    for (e = c->inflight; e != NULL; e = e->next)
        e->d = NULL;
}

/* After the proactor thread ended: free what is left. */
void
sb_in_free(struct sb_client *c)
{
    struct sb_inflight *e;

    /* acks that raced with the close: their deliveries are gone */
    while ((e = c->ackq) != NULL) {
        c->ackq = e->qnext;
        sb_inflight_unlink(c, e);
        free(e->reason);
        free(e);
    }
    /* never submitted */
    for (e = c->subq; e != NULL; e = e->qnext) {
        if (e->m)
            c->h->msg_free(e->m);
        e->m = NULL;
    }
    c->subq = c->subq_tail = NULL;
    while ((e = c->inflight) != NULL) {
        c->inflight = e->next;
        free(e->reason);
        free(e);
    }
}

void
sb_client_ack(struct sb_client *c, orderd_msg *m, orderd_outcome o, const char *reason)
{
    uint64_t epoch;
    struct sb_inflight *e = c->h->msg_input_data(m, &epoch);

    if (e == NULL)
        return;
    pthread_mutex_lock(&c->mu);
    e->outcome = o;
    e->reason = reason ? strdup(reason) : NULL;
    if (c->ackq_tail)
        c->ackq_tail->qnext = e;
    else
        c->ackq = e;
    c->ackq_tail = e;
    pthread_mutex_unlock(&c->mu);
    sb_wake(c);
}
