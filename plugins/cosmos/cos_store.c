/* cos_store.c - the Cosmos DB store stage and its lookup().
 *
 * append: POST the document; 409 Conflict means a document with that id is
 *         already there, i.e. this message was stored before: OK.  That is
 *         what makes a redelivered event stream idempotent.
 * upsert: POST with x-ms-documentdb-is-upsert.  When the plugin knows the
 *         document's ETag (from a lookup() the orders transform made, or from
 *         its own last write) it sends If-Match, so a snapshot computed from
 *         state that someone else changed meanwhile is not written blindly.
 *         On 412 it reads the document again: if the stored `version` is
 *         already >= ours, ours is stale or a duplicate: OK; otherwise it
 *         keeps the fresh ETag and answers RETRY, so the next try writes
 *         over the state it has now seen.
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cosmos.h"

struct cos_store {
    orderd_inst        *inst;
    const orderd_host  *h;
    struct cos_client   cli;
    char               *db, *coll, *events_coll;
    char               *pk_path;
    int                 upsert;       /* mode = upsert */
    int                 snapshot;     /* document = snapshot */
    int                 point_lookup; /* lookups by id are GETs with the id as partition key */
    size_t              etag_max;
    pthread_mutex_t     etag_mu;
    json_t             *etags;        /* id -> last known _etag */
};

/* Cosmos system properties: not part of the document an order pipeline sees. */
static void
cos_strip_system(json_t *doc)
{
    static const char *const sys[] = { "_rid", "_self", "_etag", "_attachments", "_ts", "_lsn" };
    size_t i;

    for (i = 0; i < sizeof(sys) / sizeof(sys[0]); i++)
        json_object_del(doc, sys[i]);
}

static void
cos_etag_put(struct cos_store *s, const char *id, const char *etag)
{
    if (s->etag_max == 0 || id == NULL)
        return;
    pthread_mutex_lock(&s->etag_mu);
    /* bounded by dropping everything: the cache is an optimisation, a miss
     * only means one write without If-Match */
    if (json_object_size(s->etags) >= s->etag_max)
        json_object_clear(s->etags);
    if (etag != NULL && etag[0] != '\0')
        json_object_set_new(s->etags, id, json_string(etag));
    else
        json_object_del(s->etags, id);
    pthread_mutex_unlock(&s->etag_mu);
}

static char *
cos_etag_get(struct cos_store *s, const char *id)
{
    const char *v;
    char *copy = NULL;

    pthread_mutex_lock(&s->etag_mu);
    v = json_string_value(json_object_get(s->etags, id));
    if (v != NULL)
        copy = strdup(v);
    pthread_mutex_unlock(&s->etag_mu);
    return copy;
}

static void
cos_charge(struct cos_store *s, const struct cos_resp *r)
{
    if (r->charge > 0)
        s->h->metric_add(s->inst, "cosmos_request_units", r->charge);
}

/* A transient status: throttled, timed out, or the service's own trouble. */
static int
cos_transient(const struct cos_resp *r)
{
    return r->status == 0 || r->status == 408 || r->status == 429 || r->status == 449 ||
           r->status >= 500;
}

/* GET one document by id with the partition key header given. */
static int
cos_get_doc(struct cos_store *s, const char *coll, const char *id, const char *pkhdr,
            json_t **out, struct cos_resp *resp)
{
    /* enablecrosspartition on a point read is what @azure/cosmos sends too;
     * it is harmless for the service and the test server needs it */
    const char *hdrs[3] = { pkhdr, "x-ms-documentdb-query-enablecrosspartition: True", NULL };
    struct cos_req rq = { .verb = "GET", .headers = hdrs };
    char *path;
    size_t n = strlen(s->db) + strlen(coll) + strlen(id) + 32;
    int rc;

    *out = NULL;
    path = malloc(n);
    if (path == NULL)
        return -ENOMEM;
    snprintf(path, n, "dbs/%s/colls/%s/docs/%s", s->db, coll, id);
    rq.path = path;
    rc = cos_request(&s->cli, &rq, resp);
    free(path);
    if (rc < 0)
        return rc;
    cos_charge(s, resp);
    if (resp->status == 404)
        return -ENOENT;
    if (resp->status != 200) {
        char msg[512];

        s->h->log(s->inst, ORDERD_LOG_WARN, "cosmos: reading %s/%s: %s", coll, id,
                  cos_resp_message(resp, msg, sizeof(msg)));
        return cos_transient(resp) ? -EAGAIN : -EIO;
    }
    *out = json_loads(resp->body, 0, NULL);
    return json_is_object(*out) ? 0 : -EIO;
}

/* Cross-partition query by id, following continuations. */
static int
cos_query_id(struct cos_store *s, const char *coll, const char *id, json_t **out)
{
    char path[1024], cont[1100] = "", *body = NULL;
    const char *hdrs[6];
    struct cos_req rq = { .verb = "POST", .path = path, .headers = hdrs };
    struct cos_resp resp;
    int rc = -ENOENT, page;

    *out = NULL;
    snprintf(path, sizeof(path), "dbs/%s/colls/%s/docs", s->db, coll);
    {
        json_t *q = json_pack("{s:s s:[{s:s s:s}]}", "query", "SELECT * FROM c WHERE c.id = @id",
                              "parameters", "name", "@id", "value", id);

        body = q ? json_dumps(q, JSON_COMPACT) : NULL;
        json_decref(q);
    }
    if (body == NULL)
        return -ENOMEM;
    rq.body = body;
    rq.blen = strlen(body);
    for (page = 0; page < 1000; page++) {
        json_t *j, *docs;
        size_t k = 0;

        hdrs[k++] = "x-ms-documentdb-isquery: True";
        hdrs[k++] = "Content-Type: application/query+json";
        hdrs[k++] = "x-ms-documentdb-query-enablecrosspartition: True";
        if (cont[0] != '\0')
            hdrs[k++] = cont;
        hdrs[k] = NULL;
        if ((rc = cos_request(&s->cli, &rq, &resp)) < 0)
            break;
        cos_charge(s, &resp);
        if (resp.status != 200) {
            rc = resp.status == 404 ? -ENOENT : cos_transient(&resp) ? -EAGAIN : -EIO;
            cos_resp_free(&resp);
            break;
        }
        j = json_loads(resp.body, 0, NULL);
        docs = json_object_get(j, "Documents");
        if (json_array_size(docs) > 0 && json_is_object(json_array_get(docs, 0))) {
            *out = json_incref(json_array_get(docs, 0));
            json_decref(j);
            cos_resp_free(&resp);
            rc = 0;
            break;
        }
        json_decref(j);
        rc = -ENOENT;
        if (resp.continuation[0] == '\0') {
            cos_resp_free(&resp);
            break;
        }
        snprintf(cont, sizeof(cont), "x-ms-continuation: %s", resp.continuation);
        cos_resp_free(&resp);
    }
    free(body);
    return rc;
}

static int
cos_lookup(void *state, const char *key, json_t **out)
{
    struct cos_store *s = state;
    struct cos_resp resp = { 0 };
    json_t *doc = NULL;
    const char *etag;
    int rc;

    *out = NULL;
    if (strncmp(key, "event:", 6) == 0) {
        /* "event:<id>" or "event:<order id>/<id>" (event ids hold no '/'):
         * queried by id across partitions either way */
        const char *coll = s->events_coll ? s->events_coll : (!s->upsert ? s->coll : NULL);
        const char *slash = strrchr(key + 6, '/');

        if (coll == NULL)
            return -ENOENT;
        rc = cos_query_id(s, coll, slash ? slash + 1 : key + 6, &doc);
    } else if (s->point_lookup) {
        json_t *k = json_pack("{s:s}", "id", key);
        char *pkhdr = NULL;

        rc = k ? cos_pk_header(k, "/id", &pkhdr, NULL) : -ENOMEM;
        json_decref(k);
        if (rc == 0)
            rc = cos_get_doc(s, s->coll, key, pkhdr, &doc, &resp);
        free(pkhdr);
        cos_resp_free(&resp);
    } else {
        rc = cos_query_id(s, s->coll, key, &doc);
    }
    if (rc < 0) {
        if (rc != -ENOENT)
            s->h->log(s->inst, ORDERD_LOG_WARN, "cosmos: lookup of %s failed: %s", key, strerror(-rc));
        json_decref(doc);
        return rc;
    }
    if (strncmp(key, "event:", 6) != 0) {
        etag = json_string_value(json_object_get(doc, "_etag"));
        cos_etag_put(s, key, etag);
    }
    cos_strip_system(doc);
    *out = doc;
    return 0;
}

/* After 412: is the stored document already at (or past) our version? */
static int
cos_stored_is_newer(struct cos_store *s, const char *id, const char *pkhdr, const json_t *doc)
{
    struct cos_resp resp = { 0 };
    json_t *cur = NULL, *ours = json_object_get(doc, "version");
    int newer = 0;

    if (cos_get_doc(s, s->coll, id, pkhdr, &cur, &resp) == 0) {
        json_t *theirs = json_object_get(cur, "version");

        cos_etag_put(s, id, json_string_value(json_object_get(cur, "_etag")));
        newer = json_is_number(ours) && json_is_number(theirs) &&
                json_number_value(theirs) >= json_number_value(ours);
    } else {
        cos_etag_put(s, id, NULL);
    }
    json_decref(cur);
    cos_resp_free(&resp);
    return newer;
}

static orderd_outcome
cos_process(void *state, orderd_msg *m)
{
    struct cos_store *s = state;
    const orderd_host *h = s->h;
    json_t *body = h->msg_body(m), *doc = body, *own = NULL;
    char *pkhdr = NULL, *etag = NULL, *data = NULL, path[1024], ifm[300], msg[512];
    const char *hdrs[5], *id;
    struct cos_req rq = { .verb = "POST", .path = path, .headers = hdrs };
    struct cos_resp resp = { 0 };
    orderd_outcome o;
    size_t k = 0;
    int rc;

    if (s->snapshot) {
        doc = json_object_get(body, "snapshot");
        if (!json_is_object(doc)) {
            o = h->reject(m, "cosmos: document = \"snapshot\" but the message has no \"snapshot\" object");
            goto out;
        }
    }
    if (!json_is_object(doc)) {
        o = h->reject(m, "cosmos: the document must be a JSON object");
        goto out;
    }
    if (!json_is_string(json_object_get(doc, "id"))) {
        /* Cosmos needs a string id: take the message id, on a copy */
        if (json_object_get(doc, "id") != NULL) {
            o = h->reject(m, "cosmos: the document's \"id\" must be a string");
            goto out;
        }
        own = json_copy(doc);
        if (own == NULL || json_object_set_new(own, "id", json_string(h->msg_id(m))) != 0) {
            o = h->retry(m, 0, "cosmos: out of memory");
            goto out;
        }
        doc = own;
    }
    id = json_string_value(json_object_get(doc, "id"));
    rc = cos_pk_header(doc, s->pk_path, &pkhdr, NULL);
    if (rc == -ENOENT) {
        o = h->reject(m, "cosmos: the document has no partition key value at %s", s->pk_path);
        goto out;
    } else if (rc < 0) {
        o = h->retry(m, 0, "cosmos: out of memory");
        goto out;
    }
    data = json_dumps(doc, JSON_COMPACT);
    if (data == NULL) {
        o = h->retry(m, 0, "cosmos: out of memory");
        goto out;
    }
    snprintf(path, sizeof(path), "dbs/%s/colls/%s/docs", s->db, s->coll);
    hdrs[k++] = "Content-Type: application/json";
    hdrs[k++] = pkhdr;
    if (s->upsert) {
        hdrs[k++] = "x-ms-documentdb-is-upsert: True";
        etag = cos_etag_get(s, id);
        if (etag != NULL) {
            snprintf(ifm, sizeof(ifm), "If-Match: %s", etag);
            hdrs[k++] = ifm;
        }
    }
    hdrs[k] = NULL;
    rq.body = data;
    rq.blen = strlen(data);
    if (cos_request(&s->cli, &rq, &resp) < 0) {
        o = h->retry(m, 0, "cosmos: %s", resp.err);
        goto out;
    }
    cos_charge(s, &resp);
    cos_resp_message(&resp, msg, sizeof(msg));
    switch (resp.status) {
    case 200:
    case 201:
        if (s->upsert)
            cos_etag_put(s, id, resp.etag);
        o = ORDERD_OK;
        break;
    case 409:
        if (!s->upsert) {
            /* same id already stored: this message was stored before */
            h->metric_add(s->inst, "cosmos_duplicates", 1);
            o = ORDERD_OK;
        } else {
            o = h->reject(m, "cosmos: %s", msg);
        }
        break;
    case 412:
        h->metric_add(s->inst, "cosmos_precondition_failed", 1);
        if (cos_stored_is_newer(s, id, pkhdr, doc)) {
            h->log(s->inst, ORDERD_LOG_INFO,
                   "cosmos: %s changed meanwhile and is already at version >= ours: not overwritten", id);
            o = ORDERD_OK;
        } else {
            o = h->retry(m, 0, "cosmos: document %s changed since it was read (412); retrying with fresh state", id);
        }
        break;
    default:
        if (resp.status == 429) {
            h->metric_add(s->inst, "cosmos_throttled", 1);
            o = h->retry(m, resp.retry_after_ms > 0 ? (uint32_t) resp.retry_after_ms : 0,
                         "cosmos: throttled (%s)", msg);
        } else if (cos_transient(&resp)) {
            o = h->retry(m, 0, "cosmos: %s%s", resp.timed_out ? "timed out: " : "", msg);
        } else {
            o = h->reject(m, "cosmos: %s", msg);
        }
        break;
    }
out:
    cos_resp_free(&resp);
    free(etag);
    free(data);
    free(pkhdr);
    json_decref(own);
    return o;
}

static void cos_store_destroy(void *state);

static int
cos_store_create(orderd_inst *inst, const orderd_host *host, const json_t *conf, void **state)
{
    struct cos_store *s = calloc(1, sizeof(*s));
    const char *ev = json_string_value(json_object_get(conf, "events_container"));
    const char *lk = json_string_value(json_object_get(conf, "lookup"));
    int rc;

    if (s == NULL)
        return -ENOMEM;
    s->inst = inst;
    s->h = host;
    pthread_mutex_init(&s->etag_mu, NULL);
    s->etags = json_object();
    s->db = strdup(json_string_value(json_object_get(conf, "database")));
    s->coll = strdup(json_string_value(json_object_get(conf, "container")));
    s->pk_path = strdup(json_string_value(json_object_get(conf, "partition_key")));
    s->events_coll = ev ? strdup(ev) : NULL;
    s->upsert = strcmp(json_string_value(json_object_get(conf, "mode")), "upsert") == 0;
    s->snapshot = strcmp(json_string_value(json_object_get(conf, "document")), "snapshot") == 0;
    s->etag_max = (size_t) json_integer_value(json_object_get(conf, "etag_cache"));
    if (s->etags == NULL || s->db == NULL || s->coll == NULL || s->pk_path == NULL ||
        (ev != NULL && s->events_coll == NULL)) {
        rc = -ENOMEM;
        goto fail;
    }
    if (s->pk_path[0] != '/') {
        host->log(inst, ORDERD_LOG_ERR, "cosmos: partition_key must be a path such as \"/orderId\"");
        rc = -EINVAL;
        goto fail;
    }
    s->point_lookup = strcmp(lk, "point") == 0 || (strcmp(lk, "auto") == 0 && strcmp(s->pk_path, "/id") == 0);
    rc = cos_client_from_conf(&s->cli, inst, host, conf);
    if (rc < 0)
        goto fail;
    *state = s;
    return 0;
fail:
    if (rc == -ENOMEM)
        host->log(inst, ORDERD_LOG_ERR, "cosmos: out of memory");
    cos_store_destroy(s);
    return rc;
}

static void
cos_store_destroy(void *state)
{
    struct cos_store *s = state;

    if (s == NULL)
        return;
    cos_client_fini(&s->cli);
    json_decref(s->etags);
    pthread_mutex_destroy(&s->etag_mu);
    free(s->db);
    free(s->coll);
    free(s->events_coll);
    free(s->pk_path);
    free(s);
}

const orderd_stage cos_store_stage = ORDERD_STAGE(
    .kind = ORDERD_STORE,
    .description = "write documents to an Azure Cosmos DB container (append or upsert) and look them up",
    .options = cos_store_options,
    .create = cos_store_create,
    .process = cos_process,
    .lookup = cos_lookup,
    .destroy = cos_store_destroy);
