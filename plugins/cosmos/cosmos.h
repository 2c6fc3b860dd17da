/* cosmos.h - shared pieces of the Cosmos DB plugin (store + change-feed input).
 *
 * cos_auth.c   master-key signature (HMAC-SHA256) and Entra ID tokens
 * cos_http.c   the REST client: a pool of curl handles sharing DNS/TLS state
 * cos_store.c  the store stage (append / upsert) and lookup()
 * cos_feed.c   the change-feed input stage
 * cosmos.c     option tables and the plugin descriptor
 */
#ifndef COSMOS_H
#define COSMOS_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <orderd/plugin.h>

/* ---- auth ------------------------------------------------------------------ */

/* COS_SIGN - the master-key Authorization header value (URL-encoded, as
 * @azure/cosmos writes it) for verb/type/link at date (RFC 1123).
 * key_b64 is the account key as shown in the portal (base64).
 * RETURNS: 0, -EINVAL for a key that is not base64, -ENOMEM. */
int cos_sign(const char *key_b64, const char *verb, const char *type, const char *link,
             const char *date, char *out, size_t outlen);

/* COS_DATE - x-ms-date for t, "Thu, 27 Apr 2017 00:51:12 GMT" (always C locale). */
void cos_date(time_t t, char *out, size_t outlen);

/* COS_RESOURCE - split a request path (no leading slash, no query) into the
 * resource type and link the signature covers, per the REST docs:
 * "dbs/d/colls/c/docs" -> "docs", "dbs/d/colls/c"; ".../docs/x" -> "docs", whole path. */
void cos_resource(const char *path, char *type, size_t tlen, char *link, size_t llen);

/* Entra ID tokens, fetched from a managed-identity endpoint or read from a
 * file, cached until shortly before expiry. */
struct cos_token {
    pthread_mutex_t mu;
    char           *url;         /* managed identity endpoint (full URL with resource), or NULL */
    char           *file;        /* token file, or NULL */
    char           *ca_file;
    char           *token;       /* current token */
    int64_t         expires_ms;  /* wall clock; 0 = unknown */
    int64_t         fetched_ms;  /* monotonic */
    time_t          file_mtime;
};

/* COS_TOKEN_GET - a copy of a valid bearer token (caller frees) or NULL with err filled. */
char *cos_token_get(struct cos_token *t, char *err, size_t errlen);
void  cos_token_free(struct cos_token *t);

/* ---- REST client ------------------------------------------------------------ */

struct cos_client {
    char               *endpoint;   /* "https://acct.documents.azure.com:443", no trailing slash */
    char               *key;        /* master key (base64), or NULL with token auth */
    struct cos_token   *token;      /* or NULL with key auth */
    char               *ca_file;
    char               *api_version;
    long                timeout_ms;
    long                connect_timeout_ms;
    int                 verify_tls;

    void               *share;      /* CURLSH: DNS cache + TLS sessions across handles */
    pthread_mutex_t     share_mu[4];
    pthread_mutex_t     pool_mu;    /* idle easy handles, reused (and their connections) */
    void              **pool;
    size_t              npool, cpool;
};

/* One response.  body is NUL-terminated (may be empty). */
struct cos_resp {
    long     status;          /* HTTP status, or 0 when the transfer failed */
    int      timed_out;
    char     err[256];        /* transport error text when status == 0 */
    char    *body;
    size_t   len, cap;
    char     etag[256];
    char     continuation[1024];
    double   charge;          /* x-ms-request-charge */
    long     retry_after_ms;  /* x-ms-retry-after-ms, -1 when absent */
    int      truncated;
};

/* One request: extra headers are "Name: value" strings, NULL-terminated. */
struct cos_req {
    const char        *verb;      /* GET, POST, PUT */
    const char        *path;      /* resource path, no leading slash ("dbs/d/colls/c/docs") */
    const char *const *headers;
    const char        *body;      /* NULL for none */
    size_t             blen;
    size_t             max_body;  /* response bytes kept (0: 16 MiB) */
};

int  cos_client_init(struct cos_client *c, const char *endpoint, char *err, size_t errlen);
void cos_client_fini(struct cos_client *c);
/* COS_REQUEST - perform r, signing it.  RETURNS: 0 (r->status set, any status), or
 * -ENOMEM / -EIO when it could not even be attempted (err in resp->err). */
int  cos_request(struct cos_client *c, const struct cos_req *r, struct cos_resp *resp);
void cos_resp_free(struct cos_resp *resp);

/* The service's message from an error body ({"code","message"}), or the body. */
const char *cos_resp_message(const struct cos_resp *resp, char *buf, size_t len);

/* COS_PK_HEADER - "x-ms-documentdb-partitionkey: [<value>]" for the value at
 * JSON-pointer-like path (/a/b) in doc.  RETURNS: 0, -ENOENT when absent, -ENOMEM. */
int cos_pk_header(const json_t *doc, const char *path, char **header, char **value);

/* COS_PATH_GET - the value at "/a/b" in doc (borrowed) or NULL. */
json_t *cos_path_get(const json_t *doc, const char *path);

/* Percent-encode a path segment (ids may hold spaces or unicode). */
char *cos_escape(const char *s);

/* Options shared by store and input (endpoint, auth, TLS). */
extern const orderd_option cos_store_options[];
extern const orderd_option cos_feed_options[];

/* COS_CLIENT_FROM_CONF - build the client from the common keys. */
int cos_client_from_conf(struct cos_client *c, orderd_inst *inst, const orderd_host *h,
                         const json_t *conf);

int64_t cos_wall_ms(void);

extern const orderd_stage cos_store_stage;
extern const orderd_stage cos_feed_stage;

#endif
