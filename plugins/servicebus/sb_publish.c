/* sb_publish.c - the sending side of the servicebus publish stage:
 * process() encodes on the worker thread and queues; the proactor thread
 * sends within link credit and settles each message with the broker's
 * disposition, or RETRY on connection loss or send_timeout. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sb_client.h"

static void
sb_settle_msg(struct sb_client *c, orderd_msg *m, orderd_outcome o, const char *reason)
{
    orderd_result r = { .outcome = o, .retry_after_ms = 0, .reason = reason, .reserved = NULL };

    if (o != ORDERD_OK)
        sb_metric(c, "servicebus_send_failures", 1);
    else
        sb_metric(c, "servicebus_sent", 1);
    c->h->settle(m, &r);
}

static void
sb_send_free(struct sb_send *s)
{
    free(s->buf);
    free(s);
}

void
sb_flush_sends(struct sb_client *c)
{
    struct sb_send *s;

    pthread_mutex_lock(&c->mu);
    if (c->sendq != NULL) {
        if (c->pending_tail)
            c->pending_tail->next = c->sendq;
        else
            c->pending = c->sendq;
        c->pending_tail = c->sendq_tail;
        c->sendq = c->sendq_tail = NULL;
    }
    pthread_mutex_unlock(&c->mu);
    if (!c->link_ready || c->link == NULL)
        return;
    while (c->pending != NULL && pn_link_credit(c->link) > 0) {
        uint64_t tag = ++c->next_tag;

        s = c->pending;
        c->pending = s->next;
        if (c->pending == NULL)
            c->pending_tail = NULL;
        s->d = pn_delivery(c->link, pn_dtag((const char *) &tag, sizeof(tag)));
        pn_link_send(c->link, s->buf, s->len);
        pn_link_advance(c->link);
        free(s->buf);
        s->buf = NULL;
        s->next = c->unsettled;
        c->unsettled = s;
    }
}

/* Dispositions the broker may lift by itself later: worth a retry. */
static int
sb_transient(const char *cond)
{
    return cond != NULL && (strcmp(cond, "com.microsoft:server-busy") == 0
                            || strcmp(cond, "amqp:resource-limit-exceeded") == 0
                            || strcmp(cond, "com.microsoft:timeout") == 0
                            || strcmp(cond, "amqp:internal-error") == 0);
}

void
sb_on_outcome(struct sb_client *c, pn_delivery_t *d)
{
    struct sb_send **pp, *s;
    uint64_t state = pn_delivery_remote_state(d);
    char buf[512];

    if (state == 0 && !pn_delivery_settled(d))
        return;
    for (pp = &c->unsettled; *pp != NULL && (*pp)->d != d; pp = &(*pp)->next)
        ;
    if ((s = *pp) == NULL) {
        pn_delivery_settle(d);
        return;
    }
    *pp = s->next;
    if (state == PN_ACCEPTED) {
        sb_settle_msg(c, s->m, ORDERD_OK, NULL);
    } else if (state == PN_REJECTED) {
        pn_condition_t *cond = pn_disposition_condition(pn_delivery_remote(d));
        const char *name = pn_condition_is_set(cond) ? pn_condition_get_name(cond) : NULL;
        char reason[600];

        snprintf(reason, sizeof(reason), "broker rejected the message: %s",
                 sb_cond_text(cond, buf, sizeof(buf))[0] ? buf : "no reason given");
        sb_settle_msg(c, s->m, sb_transient(name) ? ORDERD_RETRY : ORDERD_REJECT, reason);
    } else if (state == PN_RELEASED || state == PN_MODIFIED) {
        sb_settle_msg(c, s->m, ORDERD_RETRY, state == PN_RELEASED ? "broker released the message"
                                                                 : "broker returned the message (modified)");
    } else {
        sb_settle_msg(c, s->m, ORDERD_RETRY, "broker settled the message without an outcome");
    }
    pn_delivery_settle(d);
    free(s);
}

void
sb_expire_sends(struct sb_client *c, int64_t now, int all)
{
    struct sb_send **pp, *s;

    for (pp = &c->pending; (s = *pp) != NULL;) {
        if (all || now >= s->deadline_ms) {
            *pp = s->next;
            sb_settle_msg(c, s->m, ORDERD_RETRY, all ? "stage stopping"
                          : "not sent within send_timeout (broker unreachable?)");
            sb_send_free(s);
        } else {
            pp = &s->next;
        }
    }
    c->pending_tail = NULL;
    for (s = c->pending; s != NULL; s = s->next)
        c->pending_tail = s;
    for (pp = &c->unsettled; (s = *pp) != NULL;) {
        if (all || now >= s->deadline_ms) {
            *pp = s->next;
            if (s->d)
                pn_delivery_settle(s->d);
            sb_settle_msg(c, s->m, ORDERD_RETRY, "broker did not confirm within send_timeout");
            sb_send_free(s);
        } else {
            pp = &s->next;
        }
    }
}

/* The connection is gone: what it carried unconfirmed must be resent. */
void
sb_pub_conn_lost(struct sb_client *c)
{
    struct sb_send *s;

    while ((s = c->unsettled) != NULL) {
        c->unsettled = s->next;
        sb_settle_msg(c, s->m, ORDERD_RETRY, "connection to the broker lost before it confirmed the message");
        sb_send_free(s);
    }
}

/* After the proactor thread ended: nothing can be sent any more. */
void
sb_pub_free(struct sb_client *c)
{
    struct sb_send *s;

    while ((s = c->sendq) != NULL) {
        c->sendq = s->next;
        sb_settle_msg(c, s->m, ORDERD_RETRY, "stage stopping");
        sb_send_free(s);
    }
    sb_expire_sends(c, 0, 1);
}

orderd_outcome
sb_client_publish(struct sb_client *c, orderd_msg *m)
{
    pn_message_t *msg = pn_message();
    struct sb_send *s = NULL;
    int rc, stopping;

    if (msg == NULL)
        return c->h->retry(m, 0, "out of memory");
    s = calloc(1, sizeof(*s));
    rc = s ? sb_msg_to_amqp(c->h, m, c->conf->session_from_key, msg) : -ENOMEM;
    if (rc == 0)
        rc = sb_encode(msg, &s->buf, &s->len);
    pn_message_free(msg);
    if (rc < 0) {
        free(s);
        if (rc == -EMSGSIZE)
            return c->h->reject(m, "message too large to encode");
        return c->h->retry(m, 0, "cannot encode the message: %s", strerror(-rc));
    }
    s->m = m;
    s->deadline_ms = sb_now_ms() + c->conf->send_timeout_ms;
    pthread_mutex_lock(&c->mu);
    stopping = c->stopping;
    if (!stopping) {
        if (c->sendq_tail)
            c->sendq_tail->next = s;
        else
            c->sendq = s;
        c->sendq_tail = s;
    }
    pthread_mutex_unlock(&c->mu);
    if (stopping) {
        sb_send_free(s);
        return c->h->retry(m, 0, "stage stopping");
    }
    sb_wake(c);
    return ORDERD_PENDING;
}
