/* eventgrid.c - the `eventgrid` publish stage: each message becomes one
 * event (Event Grid schema or CloudEvents 1.0) POSTed to an Event Grid
 * topic endpoint.
 *
 * A batch from the core goes out as few requests as possible: up to
 * batch_max events per request, never more than max_request_size bytes
 * (the service's 1 MB limit); a single event over that limit is rejected.
 * The event id is the message id, so a redelivered message republishes the
 * same event and subscribers can de-duplicate.  The service answers for a
 * whole request: on 400/413 for a request of several events each event is
 * sent alone, so one bad event does not dead-letter its neighbours.
 *
 *   2xx                       OK
 *   408, 429, 5xx, transport  RETRY (after Retry-After when given)
 *   400, 401, 403, 413, 4xx   REJECT with the service's error message
 *
 * Metrics (orderd_plugin_<name> on /metrics):
 *   eventgrid_events_published  counter  events the topic accepted
 *   eventgrid_requests          counter  publish requests sent
 *   eventgrid_request_failures  counter  requests not answered 2xx
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

#include "eventgrid.h"

#define EG_POOL_MAX   16        /* idle connections kept for reuse */
#define EG_RESP_MAX   8192      /* response bytes kept for the error reason */
#define EG_REASON_MAX 512

static const orderd_option eg_options[] = {
    { .key = "endpoint", .type = ORDERD_T_STRING, .flags = ORDERD_OPT_REQUIRED,
      .help = "Topic endpoint URL without query, e.g. https://<topic>.<region>-1.eventgrid.azure.net/api/events" },
    { .key = "schema", .type = ORDERD_T_STRING, .def = "cloudevents", .choices = "cloudevents|eventgrid",
      .help = "Event schema the topic accepts: CloudEvents 1.0 (structured JSON batches) or the Event Grid schema" },
    { .key = "api_version", .type = ORDERD_T_STRING, .def = "2018-01-01",
      .help = "Event Grid data-plane API version sent as ?api-version= (and signed into SAS tokens)" },
    { .key = "auth", .type = ORDERD_T_STRING, .def = "key", .choices = "key|sas|entra",
      .help = "Credential: the access key (aeg-sas-key header), a SAS token signed with it (aeg-sas-token), or an Entra ID bearer token" },
    { .key = "key", .type = ORDERD_T_STRING, .flags = ORDERD_OPT_SECRET,
      .help = "Topic access key (base64, as shown in the portal); required for auth = \"key\" and \"sas\"" },
    { .key = "sas_ttl", .type = ORDERD_T_DURATION, .def = "1h",
      .help = "Lifetime of generated SAS tokens; a new token is signed when a fifth of it is left" },
    { .key = "token_file", .type = ORDERD_T_PATH,
      .help = "auth = \"entra\": file holding the bearer token (or a JSON token response); re-read whenever it changes" },
    { .key = "token_url", .type = ORDERD_T_STRING,
      .help = "auth = \"entra\": token endpoint; with client_id and client_secret an OAuth2 client-credentials POST, else a managed-identity GET (e.g. http://169.254.169.254/metadata/identity/oauth2/token)" },
    { .key = "client_id", .type = ORDERD_T_STRING,
      .help = "auth = \"entra\": application (client) id, or the user-assigned managed identity's client id" },
    { .key = "client_secret", .type = ORDERD_T_STRING, .flags = ORDERD_OPT_SECRET,
      .help = "auth = \"entra\": client secret for the client-credentials grant" },
    { .key = "scope", .type = ORDERD_T_STRING, .def = "https://eventgrid.azure.net/.default",
      .help = "auth = \"entra\": token scope (managed identity uses it without \"/.default\" as the resource)" },
    { .key = "event_type", .type = ORDERD_T_STRING, .def = "{type|=orderd.event}",
      .help = "Template of eventType (CloudEvents type): {name} = message property or body field, {prop:x}, {body:a.b}, {msg:id}, {a|b|=default}" },
    { .key = "subject", .type = ORDERD_T_STRING, .def = "orders/{order_id|orderId|id|msg:id}",
      .help = "Template of the event subject (same syntax as event_type); CloudEvents omit an empty subject" },
    { .key = "source", .type = ORDERD_T_STRING, .def = "/orderd",
      .help = "Template of the CloudEvents source attribute (schema = \"cloudevents\")" },
    { .key = "data_version", .type = ORDERD_T_STRING, .def = "1.0",
      .help = "dataVersion of Event Grid schema events (schema = \"eventgrid\")" },
    { .key = "topic", .type = ORDERD_T_STRING,
      .help = "topic field of Event Grid schema events (needed for event domains; unset: the service fills it)" },
    { .key = "batch_max", .type = ORDERD_T_INT, .def = "100",
      .help = "Most events in one publish request" },
    { .key = "max_request_size", .type = ORDERD_T_SIZE, .def = "1MiB",
      .help = "Largest publish request body; batches are split below it and a bigger single event is rejected (Event Grid's limit is 1 MB)" },
    { .key = "timeout", .type = ORDERD_T_DURATION, .def = "10s",
      .help = "Give up one publish request after this long (the events are retried)" },
    { .key = "connect_timeout", .type = ORDERD_T_DURATION, .def = "5s",
      .help = "Give up connecting to the endpoint after this long (the events are retried)" },
    { .key = "ca_file", .type = ORDERD_T_PATH,
      .help = "PEM bundle of CAs trusted for the endpoint and token_url (default: the system's); verification is always on" },
    { .key = NULL }
};

struct eg {
    orderd_inst        *inst;
    const orderd_host  *h;
    char               *url;           /* endpoint?api-version=... */
    char               *ctype;         /* Content-Type header line */
    struct eg_fmt       fmt;
    char               *data_version;
    char               *topic;
    size_t              batch_max;
    size_t              max_bytes;
    long                timeout_ms;
    long                connect_timeout_ms;
    char               *ca_file;
    struct eg_auth      auth;
    int                 auth_ready;
    int                 curl_ready;

    pthread_mutex_t     pool_mu;       /* guards pool: idle easy handles */
    CURL               *pool[EG_POOL_MAX];
    size_t              npool;
};

/* What one request came back with. */
struct eg_reply {
    orderd_outcome  outcome;
    uint32_t        delay_ms;
    long            status;
    char            reason[EG_REASON_MAX];
};

struct eg_call {
    char      body[EG_RESP_MAX + 1];
    size_t    len;
    uint32_t  retry_after_ms;
};

static char *
eg_dupstr(const json_t *conf, const char *key)
{
    const char *s = json_string_value(json_object_get(conf, key));

    return s != NULL ? strdup(s) : NULL;
}

static size_t
eg_on_body(char *ptr, size_t size, size_t nmemb, void *ud)
{
    struct eg_call *c = ud;
    size_t n = size * nmemb, room = EG_RESP_MAX - c->len;

    /* Keep the head of the error body; the rest is not needed. */
    if (n < room)
        room = n;
    memcpy(c->body + c->len, ptr, room);
    c->len += room;
    c->body[c->len] = '\0';
    return n;
}

static size_t
eg_on_header(char *ptr, size_t size, size_t nmemb, void *ud)
{
    struct eg_call *c = ud;
    size_t n = size * nmemb;
    char line[256];

    if (n >= sizeof(line))
        return n;
    memcpy(line, ptr, n);
    line[n] = '\0';
    if (strncasecmp(line, "retry-after-ms:", 15) == 0) {
        c->retry_after_ms = (uint32_t) strtoul(line + 15, NULL, 10);
    } else if (strncasecmp(line, "retry-after:", 12) == 0 && c->retry_after_ms == 0) {
        char *v = line + 12, *end;
        unsigned long s;

        while (*v == ' ')
            v++;
        s = strtoul(v, &end, 10);
        if (end != v && (*end == '\r' || *end == '\n' || *end == '\0')) {
            c->retry_after_ms = s > 3600 ? 3600000u : (uint32_t) s * 1000u;
        } else {
            time_t when = curl_getdate(v, NULL), now = time(NULL);

            if (when > now)
                c->retry_after_ms = when - now > 3600 ? 3600000u : (uint32_t) (when - now) * 1000u;
        }
    }
    return n;
}

static CURL *
eg_handle_get(struct eg *eg)
{
    CURL *c = NULL;

    pthread_mutex_lock(&eg->pool_mu);
    if (eg->npool > 0)
        c = eg->pool[--eg->npool];
    pthread_mutex_unlock(&eg->pool_mu);
    if (c != NULL)
        return c;
    c = curl_easy_init();
    if (c == NULL)
        return NULL;
    curl_easy_setopt(c, CURLOPT_URL, eg->url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, eg->timeout_ms);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, eg->connect_timeout_ms);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "orderd-eventgrid/" PACKAGE_VERSION);
    /* No redirects: following one would hand the key to another host. */
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
#else
    curl_easy_setopt(c, CURLOPT_PROTOCOLS, (long) (CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, eg_on_body);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, eg_on_header);
    if (eg->ca_file != NULL)
        curl_easy_setopt(c, CURLOPT_CAINFO, eg->ca_file);
    return c;
}

/* Idle handles keep their connection open for the next request. */
static void
eg_handle_put(struct eg *eg, CURL *c)
{
    pthread_mutex_lock(&eg->pool_mu);
    if (eg->npool < EG_POOL_MAX) {
        eg->pool[eg->npool++] = c;
        c = NULL;
    }
    pthread_mutex_unlock(&eg->pool_mu);
    if (c != NULL)
        curl_easy_cleanup(c);
}

/* The service's words for a failed request: {"error":{"code","message"}}. */
static void
eg_error_text(const struct eg_call *call, long status, char *out, size_t len)
{
    json_t *j = call->len > 0 ? json_loads(call->body, 0, NULL) : NULL;
    json_t *e = json_object_get(j, "error");
    const char *code = json_string_value(json_object_get(e, "code"));
    const char *msg = json_string_value(json_object_get(e, "message"));

    if (msg != NULL)
        snprintf(out, len, "Event Grid answered %ld %s: %s", status, code ? code : "", msg);
    else if (call->len > 0 && j == NULL && strspn(call->body, " \r\n\t") < call->len)
        snprintf(out, len, "Event Grid answered %ld: %.200s", status, call->body);
    else
        snprintf(out, len, "Event Grid answered %ld", status);
    json_decref(j);
}

static struct curl_slist *
eg_headers(const char *a, const char *b, const char *c)
{
    const char *v[] = { a, b, c };
    struct curl_slist *l = NULL, *t;
    size_t i;

    for (i = 0; i < 3; i++) {
        if ((t = curl_slist_append(l, v[i])) == NULL) {
            curl_slist_free_all(l);
            return NULL;
        }
        l = t;
    }
    return l;
}

static void
eg_send(struct eg *eg, const char *body, size_t blen, struct eg_reply *rep)
{
    struct eg_call call = { .len = 0 };
    struct curl_slist *hdrs = NULL;
    char cerr[CURL_ERROR_SIZE] = "", *auth = NULL;
    int attempt;
    CURL *c = NULL;
    CURLcode cc;

    rep->outcome = ORDERD_RETRY;
    rep->delay_ms = 0;
    rep->status = 0;
    rep->reason[0] = '\0';

    for (attempt = 0; attempt < 2; attempt++) {
        auth = eg_auth_header(&eg->auth, rep->reason, sizeof(rep->reason));
        if (auth == NULL)
            goto out;   /* no credential yet: transient (token endpoint down) */
        curl_slist_free_all(hdrs);
        /* "Expect:" off: no 100-continue round trip before each body. */
        hdrs = eg_headers(eg->ctype, auth, "Expect:");
        if (hdrs == NULL) {
            snprintf(rep->reason, sizeof(rep->reason), "out of memory");
            goto out;
        }
        if (c == NULL && (c = eg_handle_get(eg)) == NULL) {
            snprintf(rep->reason, sizeof(rep->reason), "cannot create a curl handle");
            goto out;
        }
        call.len = 0;
        call.body[0] = '\0';
        call.retry_after_ms = 0;
        cerr[0] = '\0';
        curl_easy_setopt(c, CURLOPT_ERRORBUFFER, cerr);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, &call);
        curl_easy_setopt(c, CURLOPT_HEADERDATA, &call);
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) blen);
        eg->h->metric_add(eg->inst, "eventgrid_requests", 1);
        cc = curl_easy_perform(c);
        /* The handle goes back to the pool: it must not point at our stack. */
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, NULL);
        curl_easy_setopt(c, CURLOPT_ERRORBUFFER, NULL);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, NULL);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, NULL);
        curl_easy_setopt(c, CURLOPT_HEADERDATA, NULL);
        free(auth);
        auth = NULL;
        if (cc != CURLE_OK) {
            snprintf(rep->reason, sizeof(rep->reason), "publish to %s failed: %s", eg->url,
                     cerr[0] ? cerr : curl_easy_strerror(cc));
            eg->h->metric_add(eg->inst, "eventgrid_request_failures", 1);
            /* A failed transfer may leave the connection unusable. */
            curl_easy_cleanup(c);
            c = NULL;
            goto out;
        }
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &rep->status);
        /* An Entra token may be revoked or expire early: fetch a new one
         * and try once more before calling the credential bad. */
        if (rep->status == 401 && attempt == 0 && eg->auth.mode == EG_AUTH_ENTRA) {
            eg_auth_invalidate(&eg->auth);
            continue;
        }
        break;
    }
    if (rep->status >= 200 && rep->status < 300) {
        rep->outcome = ORDERD_OK;
        goto out;
    }
    eg->h->metric_add(eg->inst, "eventgrid_request_failures", 1);
    eg_error_text(&call, rep->status, rep->reason, sizeof(rep->reason));
    if (rep->status == 408 || rep->status == 429 || rep->status >= 500) {
        rep->outcome = ORDERD_RETRY;
        rep->delay_ms = call.retry_after_ms;
    } else {
        rep->outcome = ORDERD_REJECT;
    }

out:
    free(auth);
    curl_slist_free_all(hdrs);
    if (c != NULL)
        eg_handle_put(eg, c);
}

static void
eg_settle(struct eg *eg, orderd_msg *m, orderd_result *res, orderd_outcome o,
          uint32_t delay_ms, const char *reason)
{
    const orderd_host *h = eg->h;

    /* h->retry/reject keep the reason on the message, so it outlives this
     * call as the core requires. */
    if (o == ORDERD_RETRY)
        res->outcome = h->retry(m, delay_ms, "%s", reason);
    else if (o == ORDERD_REJECT)
        res->outcome = h->reject(m, "%s", reason);
    else
        res->outcome = o;
    res->retry_after_ms = o == ORDERD_RETRY ? delay_ms : 0;
    res->reason = o == ORDERD_OK ? NULL : h->msg_reason(m);
}

/* "[" + events joined by "," + "]".  Events are compact JSON already:
 * splice, don't re-encode.  RETURNS: malloc'ed body, or NULL. */
static char *
eg_join(char *const *evs, const size_t *lens, const size_t *idx, size_t k, size_t *blen)
{
    size_t total = 2, i, off = 0;
    char *body;

    for (i = 0; i < k; i++)
        total += lens[idx[i]] + 1;
    body = malloc(total + 1);
    if (body == NULL)
        return NULL;
    body[off++] = '[';
    for (i = 0; i < k; i++) {
        if (i > 0)
            body[off++] = ',';
        memcpy(body + off, evs[idx[i]], lens[idx[i]]);
        off += lens[idx[i]];
    }
    body[off++] = ']';
    body[off] = '\0';
    *blen = off;
    return body;
}

/* POST events idx[0..k) as one request; on 400/413 for several events,
 * each one alone, so a bad event does not take its neighbours with it. */
static void
eg_post_group(struct eg *eg, orderd_msg *const *msgs, char **evs, const size_t *lens,
              const size_t *idx, size_t k, orderd_result *out)
{
    struct eg_reply rep;
    size_t i, off = 0;
    char *body = eg_join(evs, lens, idx, k, &off);

    if (body == NULL) {
        for (i = 0; i < k; i++)
            eg_settle(eg, msgs[idx[i]], &out[idx[i]], ORDERD_RETRY, 0, "out of memory");
        return;
    }
    eg_send(eg, body, off, &rep);
    free(body);

    if (k > 1 && (rep.status == 400 || rep.status == 413)) {
        for (i = 0; i < k; i++)
            eg_post_group(eg, msgs, evs, lens, &idx[i], 1, out);
        return;
    }
    if (rep.outcome == ORDERD_OK)
        eg->h->metric_add(eg->inst, "eventgrid_events_published", (double) k);
    else
        eg->h->log(eg->inst, rep.outcome == ORDERD_REJECT ? ORDERD_LOG_ERR : ORDERD_LOG_WARN,
                   "%zu event(s) %s: %s", k, rep.outcome == ORDERD_REJECT ? "rejected" : "will be retried",
                   rep.reason);
    for (i = 0; i < k; i++)
        eg_settle(eg, msgs[idx[i]], &out[idx[i]], rep.outcome, rep.delay_ms, rep.reason);
}

static int
eg_process_batch(void *state, orderd_msg *const *msgs, size_t n, orderd_result *out)
{
    struct eg *eg = state;
    char **evs = calloc(n, sizeof(char *)), err[EG_REASON_MAX];
    size_t *lens = calloc(n, sizeof(size_t)), *idx = calloc(n, sizeof(size_t));
    size_t i, k = 0, bytes = 0;
    int rc = -ENOMEM;

    if (evs == NULL || lens == NULL || idx == NULL)
        goto out;
    for (i = 0; i < n; i++) {
        struct eg_src src = { eg->h, msgs[i] };

        err[0] = '\0';
        evs[i] = eg_format_event(&eg->fmt, &src, err, sizeof(err));
        if (evs[i] == NULL) {
            eg_settle(eg, msgs[i], &out[i], ORDERD_REJECT, 0, err);
            continue;
        }
        lens[i] = strlen(evs[i]);
        if (lens[i] + 2 > eg->max_bytes) {
            snprintf(err, sizeof(err), "event is %zu bytes, over the %zu-byte request limit "
                     "(max_request_size)", lens[i] + 2, eg->max_bytes);
            eg_settle(eg, msgs[i], &out[i], ORDERD_REJECT, 0, err);
            free(evs[i]);
            evs[i] = NULL;
            continue;
        }
        /* "[" + events joined by "," + "]" must stay within the limit. */
        if (k > 0 && (k == eg->batch_max || bytes + 1 + lens[i] + 1 > eg->max_bytes)) {
            eg_post_group(eg, msgs, evs, lens, idx, k, out);
            k = 0;
        }
        bytes = (k == 0 ? 1 : bytes + 1) + lens[i];
        idx[k++] = i;
    }
    if (k > 0)
        eg_post_group(eg, msgs, evs, lens, idx, k, out);
    rc = 0;

out:
    for (i = 0; evs != NULL && i < n; i++)
        free(evs[i]);
    free(evs);
    free(lens);
    free(idx);
    return rc;
}

static orderd_outcome
eg_process(void *state, orderd_msg *m)
{
    orderd_result res = { .outcome = ORDERD_OK };

    if (eg_process_batch(state, &m, 1, &res) < 0)
        return ((struct eg *) state)->h->retry(m, 0, "out of memory");
    return res.outcome;
}

static void
eg_destroy(void *state)
{
    struct eg *eg = state;
    size_t i;

    if (eg == NULL)
        return;
    for (i = 0; i < eg->npool; i++)
        curl_easy_cleanup(eg->pool[i]);
    pthread_mutex_destroy(&eg->pool_mu);
    if (eg->auth_ready)
        eg_auth_free(&eg->auth);
    if (eg->auth.key != NULL)
        memset(eg->auth.key, 0, strlen(eg->auth.key));
    if (eg->auth.client_secret != NULL)
        memset(eg->auth.client_secret, 0, strlen(eg->auth.client_secret));
    free(eg->auth.key);
    free(eg->auth.endpoint);
    free(eg->auth.api_version);
    free(eg->auth.token_file);
    free(eg->auth.token_url);
    free(eg->auth.client_id);
    free(eg->auth.client_secret);
    free(eg->auth.scope);
    eg_tmpl_free(eg->fmt.type);
    eg_tmpl_free(eg->fmt.subject);
    eg_tmpl_free(eg->fmt.source);
    free(eg->url);
    free(eg->ctype);
    free(eg->data_version);
    free(eg->topic);
    free(eg->ca_file);
    if (eg->curl_ready)
        curl_global_cleanup();
    free(eg);
}

static int
eg_create(orderd_inst *inst, const orderd_host *h, const json_t *conf, void **state)
{
    struct eg *eg = calloc(1, sizeof(*eg));
    const char *endpoint = json_string_value(json_object_get(conf, "endpoint"));
    const char *auth = json_string_value(json_object_get(conf, "auth"));
    const char *api = json_string_value(json_object_get(conf, "api_version"));
    json_int_t bmax = json_integer_value(json_object_get(conf, "batch_max"));
    json_int_t maxb = json_integer_value(json_object_get(conf, "max_request_size"));
    char err[512];
    size_t n;

    if (eg == NULL) {
        h->log(inst, ORDERD_LOG_ERR, "out of memory");
        return -ENOMEM;
    }
    eg->inst = inst;
    eg->h = h;
    pthread_mutex_init(&eg->pool_mu, NULL);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        h->log(inst, ORDERD_LOG_ERR, "cannot initialise libcurl");
        goto fail;
    }
    eg->curl_ready = 1;

    if (strncmp(endpoint, "https://", 8) != 0 && strncmp(endpoint, "http://", 7) != 0) {
        h->log(inst, ORDERD_LOG_ERR, "endpoint \"%s\" is not an https:// URL", endpoint);
        goto fail;
    }
    if (strchr(endpoint, '?') != NULL || strchr(endpoint, '#') != NULL) {
        h->log(inst, ORDERD_LOG_ERR, "endpoint \"%s\" must not carry a query (set api_version instead)",
               endpoint);
        goto fail;
    }
    if (strncmp(endpoint, "http://", 7) == 0)
        h->log(inst, ORDERD_LOG_WARN, "endpoint %s is plain http: credentials travel unencrypted",
               endpoint);
    if (bmax < 1 || bmax > 100000) {
        h->log(inst, ORDERD_LOG_ERR, "batch_max must be between 1 and 100000 (got %lld)",
               (long long) bmax);
        goto fail;
    }
    if (maxb < 1024) {
        h->log(inst, ORDERD_LOG_ERR, "max_request_size must be at least 1KiB (got %lld)",
               (long long) maxb);
        goto fail;
    }
    eg->batch_max = (size_t) bmax;
    eg->max_bytes = (size_t) maxb;
    eg->timeout_ms = (long) json_integer_value(json_object_get(conf, "timeout"));
    eg->connect_timeout_ms = (long) json_integer_value(json_object_get(conf, "connect_timeout"));
    eg->ca_file = eg_dupstr(conf, "ca_file");
    n = strlen(endpoint) + strlen(api) + sizeof("?api-version=");
    eg->url = malloc(n);
    if (eg->url == NULL)
        goto nomem;
    snprintf(eg->url, n, "%s?api-version=%s", endpoint, api);

    eg->fmt.schema = strcmp(json_string_value(json_object_get(conf, "schema")), "eventgrid") == 0
                     ? EG_SCHEMA_EVENTGRID : EG_SCHEMA_CLOUDEVENTS;
    eg->ctype = strdup(eg->fmt.schema == EG_SCHEMA_EVENTGRID
                       ? "Content-Type: application/json; charset=utf-8"
                       : "Content-Type: application/cloudevents-batch+json; charset=utf-8");
    eg->data_version = eg_dupstr(conf, "data_version");
    eg->topic = eg_dupstr(conf, "topic");
    if (eg->ctype == NULL || eg->data_version == NULL)
        goto nomem;
    eg->fmt.data_version = eg->data_version;
    eg->fmt.topic = eg->topic;
    if ((eg->fmt.type = eg_tmpl_parse(json_string_value(json_object_get(conf, "event_type")),
                                      err, sizeof(err))) == NULL
        || (eg->fmt.subject = eg_tmpl_parse(json_string_value(json_object_get(conf, "subject")),
                                            err, sizeof(err))) == NULL
        || (eg->fmt.source = eg_tmpl_parse(json_string_value(json_object_get(conf, "source")),
                                           err, sizeof(err))) == NULL) {
        h->log(inst, ORDERD_LOG_ERR, "%s", err);
        goto fail;
    }

    eg->auth.mode = strcmp(auth, "sas") == 0 ? EG_AUTH_SAS
                  : strcmp(auth, "entra") == 0 ? EG_AUTH_ENTRA : EG_AUTH_KEY;
    eg->auth.key = eg_dupstr(conf, "key");
    eg->auth.endpoint = strdup(endpoint);
    eg->auth.api_version = strdup(api);
    eg->auth.sas_ttl_ms = json_integer_value(json_object_get(conf, "sas_ttl"));
    eg->auth.token_file = eg_dupstr(conf, "token_file");
    eg->auth.token_url = eg_dupstr(conf, "token_url");
    eg->auth.client_id = eg_dupstr(conf, "client_id");
    eg->auth.client_secret = eg_dupstr(conf, "client_secret");
    eg->auth.scope = eg_dupstr(conf, "scope");
    eg->auth.ca_file = eg->ca_file;
    eg->auth.timeout_ms = eg->timeout_ms;
    if (eg->auth.endpoint == NULL || eg->auth.api_version == NULL || eg->auth.scope == NULL)
        goto nomem;
    pthread_mutex_init(&eg->auth.mu, NULL);
    eg->auth_ready = 1;
    if (eg->auth.mode != EG_AUTH_ENTRA) {
        char *probe;

        if (eg->auth.key == NULL || eg->auth.key[0] == '\0') {
            h->log(inst, ORDERD_LOG_ERR, "auth = \"%s\" needs key (or key_file / key_env)", auth);
            goto fail;
        }
        /* Sign once now so a key that is not base64 fails at start-up. */
        probe = eg->auth.mode == EG_AUTH_SAS
                ? eg_sas_token(endpoint, api, eg->auth.key, time(NULL) + 60) : NULL;
        if (eg->auth.mode == EG_AUTH_SAS && probe == NULL) {
            h->log(inst, ORDERD_LOG_ERR, "key is not valid base64: cannot sign SAS tokens");
            goto fail;
        }
        free(probe);
        if (eg->auth.sas_ttl_ms < 5000) {
            h->log(inst, ORDERD_LOG_ERR, "sas_ttl must be at least 5s");
            goto fail;
        }
    } else if (eg->auth.token_file == NULL && eg->auth.token_url == NULL) {
        h->log(inst, ORDERD_LOG_ERR, "auth = \"entra\" needs token_file or token_url");
        goto fail;
    } else if (eg->auth.client_secret != NULL && eg->auth.client_id == NULL) {
        h->log(inst, ORDERD_LOG_ERR, "client_secret needs client_id");
        goto fail;
    }
    h->log(inst, ORDERD_LOG_INFO, "publishing %s events to %s (auth %s, up to %zu events / %zu bytes per request)",
           eg->fmt.schema == EG_SCHEMA_EVENTGRID ? "Event Grid schema" : "CloudEvents 1.0",
           eg->url, auth, eg->batch_max, eg->max_bytes);
    *state = eg;
    return 0;

nomem:
    h->log(inst, ORDERD_LOG_ERR, "out of memory");
fail:
    eg_destroy(eg);
    return -EINVAL;
}

static const orderd_stage eg_publish = ORDERD_STAGE(
    .kind = ORDERD_PUBLISH,
    .description = "Publish events to an Azure Event Grid topic (CloudEvents 1.0 or Event Grid schema)",
    .options = eg_options,
    .create = eg_create,
    .process = eg_process,
    .process_batch = eg_process_batch,
    .destroy = eg_destroy);

static const orderd_stage *const eg_stages[] = { &eg_publish, NULL };

ORDERD_PLUGIN(.name = "eventgrid",
              .version = PACKAGE_VERSION,
              .description = "Azure Event Grid publisher: batching under the 1 MB limit, SAS key/token and Entra ID auth",
              .maintainer = "orderd developers",
              .stages = eg_stages);
