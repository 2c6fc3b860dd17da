/* sb_client.c - one AMQP 1.0 connection per stage, driven by one Proton
 * proactor thread.
 *
 * Every Proton object is touched only by that thread.  Other threads
 * (workers calling ack() and process(), the submitter) hand it work through
 * mutex-protected queues and pn_proactor_interrupt().  A 100 ms tick drives
 * reconnection, token refresh, lock renewal and send timeouts.
 *
 * Input: deliveries are decoded, tracked in `inflight` and handed to a
 * submitter thread, because host->submit() may block while the pipeline is
 * full and the proactor thread must keep the connection alive meanwhile
 * (heartbeats, lock renewal).  Credit is kept at
 * min(prefetch, concurrency - in flight), so the number of locked messages
 * never exceeds concurrency: prefetched messages count as in flight.
 * When the connection drops, in-flight deliveries cannot be settled any
 * more: the broker redelivers them, and their later acks are counted as
 * `servicebus_acks_lost`.
 *
 * Publish: process() encodes the message on the worker thread, queues it
 * and answers PENDING; the message is settled only on the broker's
 * disposition (accepted -> OK), or RETRY when the connection drops first or
 * send_timeout passes.
 *
 * sb_input.c holds the receiving side, sb_publish.c the sending side.
 *
 * Metrics (orderd_plugin_<name>):
 *   servicebus_received, servicebus_completed, servicebus_abandoned,
 *   servicebus_deadlettered, servicebus_acks_lost, servicebus_lock_renewals,
 *   servicebus_locks_lost, servicebus_sent, servicebus_send_failures,
 *   servicebus_reconnects, servicebus_auth_failures     (counters)
 *   servicebus_connected, servicebus_in_flight           (gauges)
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <proton/sasl.h>
#include <proton/ssl.h>
#include <proton/terminus.h>
#include <proton/transport.h>

#include "sb_client.h"

void
sb_metric(struct sb_client *c, const char *name, double d)
{
    if (c->h->metric_add != NULL)
        c->h->metric_add(c->inst, name, d);
}

void
sb_gauge(struct sb_client *c, const char *name, double v)
{
    if (c->h->metric_set != NULL)
        c->h->metric_set(c->inst, name, v);
}

void
sb_wake(struct sb_client *c)
{
    pn_proactor_interrupt(c->pro);
}

/* A printable condition, "name: description", or "" when none. */
const char *
sb_cond_text(pn_condition_t *cond, char *buf, size_t len)
{
    if (cond == NULL || !pn_condition_is_set(cond)) {
        buf[0] = '\0';
        return buf;
    }
    snprintf(buf, len, "%s: %s", pn_condition_get_name(cond) ?: "?",
             pn_condition_get_description(cond) ?: "");
    return buf;
}

/* --- requests on $cbs and $management ------------------------------------ */

int
sb_send_request(struct sb_client *c, pn_link_t *snd, pn_message_t *msg)
{
    pn_delivery_t *d;
    char *buf = NULL;
    size_t len = 0;
    uint64_t tag = ++c->next_tag;
    int rc;

    rc = sb_encode(msg, &buf, &len);
    if (rc < 0)
        return rc;
    d = pn_delivery(snd, pn_dtag((const char *) &tag, sizeof(tag)));
    pn_link_send(snd, buf, len);
    pn_link_advance(snd);
    /* requests are sent pre-settled: the reply is the acknowledgement */
    pn_delivery_settle(d);
    free(buf);
    return 0;
}

void
sb_put_string_pair(pn_data_t *d, const char *k, const char *v)
{
    pn_data_put_string(d, pn_bytes(strlen(k), k));
    pn_data_put_string(d, pn_bytes(strlen(v), v));
}

/* CBS put-token: authorize this connection for the audience. */
static void
sb_cbs_put(struct sb_client *c)
{
    const struct sb_conf *cf = c->conf;
    char *token = NULL, err[256] = "";
    int64_t now = sb_now_ms(), expires_s;
    pn_message_t *msg = NULL;
    pn_data_t *p;
    pn_atom_t id;
    int rc;

    if (cf->auth == SB_AUTH_SAS) {
        expires_s = (now + cf->token_lifetime_ms) / 1000;
        token = sb_sas_token(cf->audience, cf->sas_key_name, cf->sas_key, expires_s);
        if (token == NULL) {
            snprintf(err, sizeof(err), "out of memory");
            rc = -ENOMEM;
        } else {
            rc = 0;
        }
        c->token_refresh_ms = now + cf->token_lifetime_ms * 4 / 5;
    } else {
        rc = sb_entra_token(cf, &token, &expires_s, err, sizeof(err));
        if (rc == 0) {
            int64_t life = expires_s * 1000 - now;

            /* refresh at 80% of the remaining life, at least a minute from now */
            c->token_refresh_ms = now + (life > 75000 ? life * 4 / 5 : 60000);
        }
    }
    if (rc < 0) {
        c->h->log(c->inst, ORDERD_LOG_ERR, "cannot make a %s token: %s",
                  cf->auth == SB_AUTH_SAS ? "SAS" : "Entra ID", err);
        sb_metric(c, "servicebus_auth_failures", 1);
        sb_close_conn(c, "no token");
        return;
    }
    msg = pn_message();
    if (msg == NULL)
        goto fail;
    id.type = PN_ULONG;
    id.u.as_ulong = ++c->req_id;
    pn_message_set_id(msg, id);
    pn_message_set_reply_to(msg, SB_CBS_REPLY);
    p = pn_message_properties(msg);
    pn_data_put_map(p);
    pn_data_enter(p);
    sb_put_string_pair(p, "operation", "put-token");
    sb_put_string_pair(p, "type", cf->auth == SB_AUTH_SAS ? "servicebus.windows.net:sastoken" : "jwt");
    sb_put_string_pair(p, "name", cf->audience);
    pn_data_exit(p);
    pn_data_put_string(pn_message_body(msg), pn_bytes(strlen(token), token));
    if (sb_send_request(c, c->cbs_snd, msg) < 0)
        goto fail;
    c->cbs_req = c->req_id;
    c->cbs_sent_ms = now;
    pn_message_free(msg);
    free(token);
    return;
fail:
    pn_message_free(msg);
    free(token);
    c->h->log(c->inst, ORDERD_LOG_ERR, "cannot send the CBS put-token request");
    sb_close_conn(c, "put-token failed");
}

static void
sb_attach_entity(struct sb_client *c)
{
    const struct sb_conf *cf = c->conf;

    if (c->link != NULL)
        return;
    if (cf->kind == ORDERD_INPUT) {
        c->link = pn_receiver(c->ssn, "orderd-receiver");
        pn_terminus_set_address(pn_link_source(c->link), cf->address);
        pn_link_set_rcv_settle_mode(c->link, PN_RCV_FIRST);
    } else {
        c->link = pn_sender(c->ssn, "orderd-sender");
        pn_terminus_set_address(pn_link_target(c->link), cf->address);
    }
    pn_link_set_snd_settle_mode(c->link, PN_SND_UNSETTLED);
    pn_link_open(c->link);
}

/* --- connection ------------------------------------------------------------ */

static void
sb_connect(struct sb_client *c)
{
    const struct sb_conf *cf = c->conf;
    pn_transport_t *t;
    pn_sasl_t *sasl;
    char addr[512], container[256];

    c->conn = pn_connection();
    t = pn_transport();
    if (c->conn == NULL || t == NULL) {
        if (c->conn)
            pn_connection_free(c->conn);
        if (t)
            pn_transport_free(t);
        c->conn = NULL;
        c->next_connect_ms = sb_now_ms() + c->backoff_ms;
        return;
    }
    snprintf(container, sizeof(container), "orderd-%s-%s-%ld", c->h->pipeline_name(c->inst),
             c->h->stage_name(c->inst), (long) getpid());
    pn_connection_set_container(c->conn, container);
    pn_connection_set_hostname(c->conn, cf->host);
    sasl = pn_sasl(t);
    if (cf->auth == SB_AUTH_PLAIN) {
        pn_connection_set_user(c->conn, cf->username);
        pn_connection_set_password(c->conn, cf->password);
        pn_sasl_allowed_mechs(sasl, "PLAIN");
        /* PLAIN over plain TCP: only ever configured on purpose (amqp://) */
        pn_sasl_set_allow_insecure_mechs(sasl, true);
    } else {
        /* CBS needs ANONYMOUS at the SASL layer; the token comes on $cbs */
        pn_sasl_allowed_mechs(sasl, "ANONYMOUS");
    }
    if (cf->tls) {
        pn_ssl_domain_t *dom = pn_ssl_domain(PN_SSL_MODE_CLIENT);
        const char *ca = cf->ca_file;

        if (ca == NULL && access("/etc/ssl/certs/ca-certificates.crt", R_OK) == 0)
            ca = "/etc/ssl/certs/ca-certificates.crt";
        if (dom == NULL || (ca != NULL && pn_ssl_domain_set_trusted_ca_db(dom, ca) != 0)
            || pn_ssl_domain_set_peer_authentication(dom, PN_SSL_VERIFY_PEER_NAME, NULL) != 0
            || pn_ssl_init(pn_ssl(t), dom, NULL) != 0) {
            c->h->log(c->inst, ORDERD_LOG_ERR, "TLS setup failed (ca_file %s)", ca ?: "-");
        } else {
            pn_ssl_set_peer_hostname(pn_ssl(t), cf->host);
        }
        if (dom)
            pn_ssl_domain_free(dom);
    }
    pn_connection_open(c->conn);
    c->ssn = pn_session(c->conn);
    pn_session_open(c->ssn);
    c->epoch++;
    c->authed = 0;
    c->link_ready = 0;
    c->mgmt_broken = 0;
    c->cbs_req = 0;
    c->renew_req = 0;
    if (cf->auth == SB_AUTH_SAS || cf->auth == SB_AUTH_ENTRA) {
        c->cbs_snd = pn_sender(c->ssn, "orderd-cbs-sender");
        pn_terminus_set_address(pn_link_target(c->cbs_snd), "$cbs");
        pn_link_set_snd_settle_mode(c->cbs_snd, PN_SND_SETTLED);
        pn_link_open(c->cbs_snd);
        c->cbs_rcv = pn_receiver(c->ssn, "orderd-cbs-receiver");
        pn_terminus_set_address(pn_link_source(c->cbs_rcv), "$cbs");
        pn_terminus_set_address(pn_link_target(c->cbs_rcv), SB_CBS_REPLY);
        pn_link_open(c->cbs_rcv);
        pn_link_flow(c->cbs_rcv, 10);
    } else {
        c->authed = 1;
        sb_attach_entity(c);
    }
    snprintf(addr, sizeof(addr), "%s:%s", cf->host, cf->port);
    pn_proactor_connect2(c->pro, c->conn, t, addr);
}

void
sb_close_conn(struct sb_client *c, const char *why)
{
    if (c->conn == NULL)
        return;
    if (!(pn_connection_state(c->conn) & PN_LOCAL_CLOSED)) {
        c->h->log(c->inst, ORDERD_LOG_DEBUG, "closing connection: %s", why);
        if (c->ssn != NULL)
            pn_session_close(c->ssn);
        pn_connection_close(c->conn);
    }
    if (c->close_deadline_ms == 0)
        c->close_deadline_ms = sb_now_ms() + SB_CLOSE_GRACE_MS;
}

/* The connection is gone: nothing on it can be settled any more. */
static void
sb_conn_lost(struct sb_client *c)
{
    int64_t jitter;

    if (c->conf->kind == ORDERD_INPUT)
        sb_in_conn_lost(c);
    else
        sb_pub_conn_lost(c);
    c->conn = NULL;
    c->ssn = NULL;
    c->link = c->cbs_snd = c->cbs_rcv = c->mgmt_snd = c->mgmt_rcv = NULL;
    c->link_ready = 0;
    c->authed = 0;
    c->cbs_req = 0;
    c->renew_req = 0;
    c->close_deadline_ms = 0;
    sb_gauge(c, "servicebus_connected", 0);
    jitter = c->backoff_ms / 2 + (int64_t) (rand_r(&c->rand_state) % (unsigned) (c->backoff_ms / 2 + 1));
    c->next_connect_ms = sb_now_ms() + jitter;
    c->backoff_ms = c->backoff_ms * 2 > c->conf->reconnect_max_ms ? c->conf->reconnect_max_ms
                                                                  : c->backoff_ms * 2;
}

/* --- replies on $cbs / $management ------------------------------------------ */

static int64_t
sb_prop_int(pn_message_t *msg, const char *k1, const char *k2, char *desc, size_t dlen)
{
    pn_data_t *p = pn_message_properties(msg);
    int64_t v = -1;

    desc[0] = '\0';
    pn_data_rewind(p);
    if (!pn_data_next(p) || pn_data_type(p) != PN_MAP)
        return -1;
    pn_data_enter(p);
    while (pn_data_next(p)) {
        pn_bytes_t k = { 0, NULL };
        int is_code, is_desc;

        if (pn_data_type(p) == PN_STRING)
            k = pn_data_get_string(p);
        else if (pn_data_type(p) == PN_SYMBOL)
            k = pn_data_get_symbol(p);
        is_code = (k.size == strlen(k1) && memcmp(k.start, k1, k.size) == 0)
               || (k.size == strlen(k2) && memcmp(k.start, k2, k.size) == 0);
        is_desc = (k.size == 18 && memcmp(k.start, "status-description", 18) == 0)
               || (k.size == 17 && memcmp(k.start, "statusDescription", 17) == 0);
        if (!pn_data_next(p))
            break;
        if (is_code) {
            switch (pn_data_type(p)) {
            case PN_INT:   v = pn_data_get_int(p); break;
            case PN_UINT:  v = pn_data_get_uint(p); break;
            case PN_LONG:  v = pn_data_get_long(p); break;
            case PN_ULONG: v = (int64_t) pn_data_get_ulong(p); break;
            case PN_SHORT: v = pn_data_get_short(p); break;
            default: break;
            }
        } else if (is_desc && pn_data_type(p) == PN_STRING) {
            pn_bytes_t b = pn_data_get_string(p);
            snprintf(desc, dlen, "%.*s", (int) b.size, b.start);
        }
    }
    pn_data_exit(p);
    return v;
}

static void
sb_on_reply(struct sb_client *c, pn_link_t *l, pn_delivery_t *d)
{
    size_t n = pn_delivery_pending(d);
    pn_message_t *msg;
    pn_atom_t corr;
    char desc[256];
    char *buf;
    int64_t code;

    if (pn_delivery_partial(d) || !pn_delivery_readable(d))
        return;
    buf = malloc(n + 1);
    msg = pn_message();
    if (buf == NULL || msg == NULL) {
        free(buf);
        pn_message_free(msg);
        pn_link_advance(l);
        pn_delivery_settle(d);
        return;
    }
    pn_link_recv(l, buf, n);
    pn_link_advance(l);
    pn_delivery_update(d, PN_ACCEPTED);
    pn_delivery_settle(d);
    pn_link_flow(l, 1);
    if (pn_message_decode(msg, buf, n) != 0)
        goto out;
    corr = pn_message_get_correlation_id(msg);
    if (corr.type != PN_ULONG)
        goto out;
    code = sb_prop_int(msg, "status-code", "statusCode", desc, sizeof(desc));
    if (l == c->cbs_rcv && corr.u.as_ulong == c->cbs_req) {
        c->cbs_req = 0;
        if (code == 200 || code == 202) {
            if (!c->authed)
                c->h->log(c->inst, ORDERD_LOG_INFO, "CBS token accepted for %s", c->conf->audience);
            c->authed = 1;
            sb_attach_entity(c);
        } else {
            c->h->log(c->inst, ORDERD_LOG_ERR, "CBS put-token refused for %s: status %lld %s",
                      c->conf->audience, (long long) code, desc);
            sb_metric(c, "servicebus_auth_failures", 1);
            sb_close_conn(c, "token refused");
        }
    } else if (l == c->mgmt_rcv && corr.u.as_ulong == c->renew_req) {
        char why[300];

        snprintf(why, sizeof(why), "status %lld %s", (long long) code, desc);
        sb_renew_done(c, c->renew_req, code == 200, why);
    }
out:
    pn_message_free(msg);
    free(buf);
}

/* --- event loop ------------------------------------------------------------- */

static void
sb_tick(struct sb_client *c)
{
    int64_t now = sb_now_ms();
    int stopping;

    pthread_mutex_lock(&c->mu);
    stopping = c->stopping;
    pthread_mutex_unlock(&c->mu);
    if (stopping) {
        if (c->conn == NULL) {
            c->done = 1;
            return;
        }
        sb_close_conn(c, "stopping");
        if (now >= c->close_deadline_ms)
            pn_proactor_disconnect(c->pro, NULL);
        return;
    }
    if (c->conn == NULL && now >= c->next_connect_ms)
        sb_connect(c);
    if (c->conn != NULL && c->close_deadline_ms != 0 && now >= c->close_deadline_ms)
        pn_proactor_disconnect(c->pro, NULL);
    if (c->conn != NULL && c->cbs_req != 0 && now - c->cbs_sent_ms > SB_CBS_TIMEOUT_MS) {
        c->h->log(c->inst, ORDERD_LOG_ERR, "no answer to CBS put-token within %d s (is this broker "
                  "Service Bus? use auth = plain for others)", SB_CBS_TIMEOUT_MS / 1000);
        sb_metric(c, "servicebus_auth_failures", 1);
        c->cbs_req = 0;
        sb_close_conn(c, "put-token timeout");
    }
    if (c->conn != NULL && c->authed && c->cbs_snd != NULL && c->cbs_req == 0
        && now >= c->token_refresh_ms)
        sb_cbs_put(c);
    if (c->renew_req != 0 && now - c->renew_sent_ms > SB_MGMT_TIMEOUT_MS)
        sb_renew_done(c, c->renew_req, 0, "no answer from $management");
    if (c->conf->kind == ORDERD_INPUT)
        sb_renew_locks(c, now);
    else
        sb_expire_sends(c, now, 0);
}

static void
sb_on_link_gone(struct sb_client *c, pn_link_t *l)
{
    char buf[512];

    if (l == c->mgmt_snd || l == c->mgmt_rcv) {
        if (!c->mgmt_broken)
            c->h->log(c->inst, ORDERD_LOG_WARN, "$management link refused (%s): lock renewal "
                      "disabled on this connection", sb_cond_text(pn_link_remote_condition(l), buf, sizeof(buf)));
        c->mgmt_broken = 1;
        if (c->renew_req)
            sb_renew_done(c, c->renew_req, 0, "$management link closed");
        return;
    }
    if (l != c->link && l != c->cbs_snd && l != c->cbs_rcv)
        return;
    if (!(pn_link_state(l) & PN_LOCAL_CLOSED))
        c->h->log(c->inst, ORDERD_LOG_WARN, "link %s detached by the broker: %s", pn_link_name(l),
                  sb_cond_text(pn_link_remote_condition(l), buf, sizeof(buf)));
    /* links cannot be recovered (Service Bus): start over on a new connection */
    sb_close_conn(c, "link detached");
}

static void
sb_handle(struct sb_client *c, pn_event_t *ev)
{
    char buf[512];

    switch (pn_event_type(ev)) {
    case PN_PROACTOR_TIMEOUT:
        sb_tick(c);
        if (!c->done)
            pn_proactor_set_timeout(c->pro, SB_TICK_MS);
        /* work done outside the connection's own batch is only written
         * out when the connection is woken */
        if (c->conn != NULL)
            pn_connection_wake(c->conn);
        break;
    case PN_PROACTOR_INTERRUPT:
        if (c->conf->kind == ORDERD_INPUT)
            sb_drain_acks(c);
        else
            sb_flush_sends(c);
        sb_tick(c);
        if (c->conn != NULL)
            pn_connection_wake(c->conn);
        break;
    case PN_CONNECTION_REMOTE_OPEN:
        if (pn_event_connection(ev) != c->conn)
            break;
        c->h->log(c->inst, ORDERD_LOG_INFO, "connected to %s:%s", c->conf->host, c->conf->port);
        sb_gauge(c, "servicebus_connected", 1);
        if (c->cbs_snd != NULL)
            sb_cbs_put(c);
        break;
    case PN_CONNECTION_REMOTE_CLOSE:
        if (pn_event_connection(ev) != c->conn)
            break;
        if (!(pn_connection_state(c->conn) & PN_LOCAL_CLOSED) && pn_condition_is_set(pn_connection_remote_condition(c->conn)))
            c->h->log(c->inst, ORDERD_LOG_WARN, "broker closed the connection: %s",
                      sb_cond_text(pn_connection_remote_condition(c->conn), buf, sizeof(buf)));
        sb_close_conn(c, "closed by broker");
        break;
    case PN_SESSION_REMOTE_CLOSE:
        if (pn_event_session(ev) != c->ssn || (pn_session_state(c->ssn) & PN_LOCAL_CLOSED))
            break;
        c->h->log(c->inst, ORDERD_LOG_WARN, "broker ended the session: %s",
                  sb_cond_text(pn_session_remote_condition(c->ssn), buf, sizeof(buf)));
        sb_close_conn(c, "session ended");
        break;
    case PN_LINK_REMOTE_OPEN: {
        pn_link_t *l = pn_event_link(ev);

        /* a refused attach comes as an attach without terminus, then a detach */
        if (l == c->link && !c->link_ready
            && pn_terminus_get_type(c->conf->kind == ORDERD_INPUT ? pn_link_remote_source(l)
                                                                 : pn_link_remote_target(l)) != PN_UNSPECIFIED) {
            c->link_ready = 1;
            c->backoff_ms = c->conf->reconnect_min_ms;
            c->h->log(c->inst, ORDERD_LOG_INFO, "attached to %s", c->conf->address);
            if (c->conf->kind == ORDERD_INPUT)
                sb_topup_credit(c);
            else
                sb_flush_sends(c);
        }
        break;
    }
    case PN_LINK_REMOTE_CLOSE:
    case PN_LINK_REMOTE_DETACH:
        sb_on_link_gone(c, pn_event_link(ev));
        break;
    case PN_LINK_FLOW:
        if (pn_event_link(ev) == c->link && c->conf->kind == ORDERD_PUBLISH)
            sb_flush_sends(c);
        break;
    case PN_DELIVERY: {
        pn_link_t *l = pn_event_link(ev);
        pn_delivery_t *d = pn_event_delivery(ev);

        if (l == c->link && c->conf->kind == ORDERD_INPUT)
            sb_on_incoming(c, l, d);
        else if (l == c->link)
            sb_on_outcome(c, d);
        else if (l == c->cbs_rcv || l == c->mgmt_rcv)
            sb_on_reply(c, l, d);
        else if (pn_link_is_receiver(l)) {
            pn_link_advance(l);
            pn_delivery_settle(d);
        }
        break;
    }
    case PN_TRANSPORT_CLOSED: {
        pn_transport_t *t = pn_event_transport(ev);
        int stopping;

        if (pn_event_connection(ev) != c->conn && c->conn != NULL)
            break;
        pthread_mutex_lock(&c->mu);
        stopping = c->stopping;
        pthread_mutex_unlock(&c->mu);
        if (!stopping) {
            sb_cond_text(pn_transport_condition(t), buf, sizeof(buf));
            c->h->log(c->inst, ORDERD_LOG_WARN, "connection to %s:%s lost%s%s; reconnecting",
                      c->conf->host, c->conf->port, buf[0] ? ": " : "", buf);
            sb_metric(c, "servicebus_reconnects", 1);
        }
        sb_conn_lost(c);
        if (stopping)
            c->done = 1;
        break;
    }
    default:
        break;
    }
}

static void *
sb_loop(void *arg)
{
    struct sb_client *c = arg;

    pn_proactor_set_timeout(c->pro, 0);
    while (!c->done) {
        pn_event_batch_t *b = pn_proactor_wait(c->pro);
        pn_event_t *ev;

        while ((ev = pn_event_batch_next(b)) != NULL)
            sb_handle(c, ev);
        pn_proactor_done(c->pro, b);
    }
    return NULL;
}

/* --- API ---------------------------------------------------------------------- */

int
sb_client_new(orderd_inst *inst, const orderd_host *h, struct sb_conf *conf, struct sb_client **out)
{
    struct sb_client *c = calloc(1, sizeof(*c));

    if (c == NULL)
        return -ENOMEM;
    c->inst = inst;
    c->h = h;
    c->conf = conf;
    c->backoff_ms = conf->reconnect_min_ms;
    c->rand_state = (unsigned) sb_now_ms() ^ (unsigned) getpid();
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->sub_cv, NULL);
    c->pro = pn_proactor();
    if (c->pro == NULL) {
        pthread_cond_destroy(&c->sub_cv);
        pthread_mutex_destroy(&c->mu);
        free(c);
        return -ENOMEM;
    }
    *out = c;
    return 0;
}

int
sb_client_start(struct sb_client *c)
{
    int rc;

    pthread_mutex_lock(&c->mu);
    c->receiving = c->conf->kind == ORDERD_INPUT;
    pthread_mutex_unlock(&c->mu);
    if (c->conf->kind == ORDERD_INPUT && !c->sub_started) {
        rc = pthread_create(&c->sub_thr, NULL, sb_submitter, c);
        if (rc != 0)
            return -rc;
        c->sub_started = 1;
    }
    if (!c->thr_started) {
        rc = pthread_create(&c->thr, NULL, sb_loop, c);
        if (rc != 0)
            return -rc;
        c->thr_started = 1;
    }
    return 0;
}

void
sb_client_stop_receiving(struct sb_client *c)
{
    pthread_mutex_lock(&c->mu);
    c->receiving = 0;
    c->sub_quit = 1;
    pthread_cond_broadcast(&c->sub_cv);
    pthread_mutex_unlock(&c->mu);
    if (c->sub_started) {
        pthread_join(c->sub_thr, NULL);
        c->sub_started = 0;
    }
    if (c->thr_started)
        sb_wake(c);
}

void
sb_client_free(struct sb_client *c)
{
    if (c == NULL)
        return;
    sb_client_stop_receiving(c);
    pthread_mutex_lock(&c->mu);
    c->stopping = 1;
    pthread_mutex_unlock(&c->mu);
    if (c->thr_started) {
        sb_wake(c);
        pthread_join(c->thr, NULL);
    }
    sb_in_free(c);
    sb_pub_free(c);
    pn_proactor_free(c->pro);
    pthread_cond_destroy(&c->sub_cv);
    pthread_mutex_destroy(&c->mu);
    free(c->rbuf);
    free(c);
}
