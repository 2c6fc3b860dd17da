/* admin.c - the admin HTTP listener (libmicrohttpd): /metrics, /healthz,
 * /readyz and the routes the core adds for orderctl.
 *
 * We bind the listening socket ourselves and hand it to MHD: that is the only
 * way to report the exact errno (EADDRINUSE vs EACCES vs EADDRNOTAVAIL) and
 * to learn the port picked for "port 0" without racing anyone.
 *
 * One thread per connection: admin traffic is a scrape every few seconds and
 * an occasional orderctl call, and a handler (a DLQ replay) may block for a
 * while without stalling /metrics.
 */
#include "config.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#include <jansson.h>
#include <microhttpd.h>

#include "admin.h"
#include "log.h"
#include "metrics.h"

/* enum MHD_Result appeared in 0.9.71; configure accepts 0.9.60. */
#if MHD_VERSION >= 0x00097002
typedef enum MHD_Result ad_result;
#else
typedef int ad_result;
#endif

#define AD_CONN_LIMIT      64u
#define AD_CONN_TIMEOUT_S  30u
#define AD_BACKLOG         64

struct ad_route {
    char             *prefix;
    size_t            len;
    od_admin_handler  fn;
    void             *arg;
};

struct od_admin {
    struct MHD_Daemon *mhd;
    int                port;
    int              (*ready)(void *arg);
    void              *ready_arg;
    pthread_rwlock_t   lock;    /* routes; read-held while a handler runs */
    struct ad_route   *routes;
    size_t             nroutes;
};

/* Per-request state: the body as it arrives. */
struct ad_req {
    char   *body;
    size_t  len, cap;
    int     too_large;
    int     oom;
};

static const char *const ad_builtin[] = { "/metrics", "/healthz", "/readyz" };

#define AD_METRICS_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* ---- listen address --------------------------------------------------- */

/* Split "HOST:PORT" / "[V6]:PORT".  0 or -EINVAL. */
static int ad_split_listen(const char *addr, char *host, size_t hostlen, char *port,
                           size_t portlen, int *bracketed)
{
    const char *colon, *end;
    size_t n;
    unsigned long v;

    *bracketed = 0;
    if (addr == NULL || *addr == '\0')
        return -EINVAL;
    if (addr[0] == '[') {
        if ((end = strchr(addr, ']')) == NULL || end[1] != ':')
            return -EINVAL;
        *bracketed = 1;
        n = (size_t)(end - addr - 1);
        colon = end + 1;
        addr++;
    } else {
        if ((colon = strrchr(addr, ':')) == NULL)
            return -EINVAL;
        n = (size_t)(colon - addr);
        /* A bare IPv6 address is ambiguous ("::1:80"); insist on brackets. */
        if (memchr(addr, ':', n) != NULL)
            return -EINVAL;
    }
    if (n == 0 || n >= hostlen)
        return -EINVAL;
    memcpy(host, addr, n);
    host[n] = '\0';
    colon++;
    n = strlen(colon);
    if (n == 0 || n >= portlen || strspn(colon, "0123456789") != n)
        return -EINVAL;
    errno = 0;
    v = strtoul(colon, NULL, 10);
    if (errno != 0 || v > 65535)
        return -EINVAL;
    memcpy(port, colon, n + 1);
    return 0;
}

/* Bind and listen on the first address listen resolves to.  fd or -errno. */
static int ad_bind(const char *addr, int *port)
{
    char host[256], portstr[8];
    struct addrinfo hints, *res = NULL, *ai;
    struct sockaddr_storage ss;
    socklen_t sslen = sizeof(ss);
    int bracketed, fd = -1, one = 1, rc, err = EADDRNOTAVAIL;

    if (ad_split_listen(addr, host, sizeof(host), portstr, sizeof(portstr), &bracketed) < 0) {
        od_err("admin: invalid listen address '%s' (expected HOST:PORT or [IPV6]:PORT)",
               addr ? addr : "(null)");
        return -EINVAL;
    }
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = bracketed ? AF_INET6 : AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV | (bracketed ? AI_NUMERICHOST : 0);
    if ((rc = getaddrinfo(host, portstr, &hints, &res)) != 0) {
        od_err("admin: invalid listen address '%s': %s", addr, gai_strerror(rc));
        return rc == EAI_MEMORY ? -ENOMEM : -EINVAL;
    }
    for (ai = res; ai != NULL; ai = ai->ai_next) {
        if ((fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol)) < 0) {
            err = errno;
            continue;
        }
        /* Restarting the daemon must not wait out TIME_WAIT; this does not let
         * two live listeners share the port on Linux. */
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        /* "[::]:9464" should mean IPv6 only, as written. */
        if (ai->ai_family == AF_INET6)
            setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, AD_BACKLOG) == 0)
            break;
        err = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        od_err("admin: cannot listen on %s: %s", addr, strerror(err));
        return -err;
    }
    if (getsockname(fd, (struct sockaddr *)&ss, &sslen) < 0) {
        err = errno;
        od_err("admin: getsockname for %s: %s", addr, strerror(err));
        close(fd);
        return -err;
    }
    *port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                           : ((struct sockaddr_in *)&ss)->sin_port);
    return fd;
}

/* ---- responses -------------------------------------------------------- */

/* Queue status with body (malloc'd, stolen; NULL for none). */
static ad_result ad_respond(struct MHD_Connection *c, unsigned status, const char *ctype,
                                  char *body, size_t len, const char *allow)
{
    struct MHD_Response *resp;
    ad_result ret;

    if (body == NULL || len == 0) {
        free(body);
        resp = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    } else {
        resp = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
        if (resp == NULL)
            free(body);
    }
    if (resp == NULL)
        return MHD_NO;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    /* Admin answers are live state; a proxy must never serve a stale one. */
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    if (allow != NULL)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allow);
    ret = MHD_queue_response(c, status, resp);
    MHD_destroy_response(resp);
    return ret;
}

static ad_result ad_respond_str(struct MHD_Connection *c, unsigned status, const char *ctype,
                                      const char *text)
{
    char *copy = strdup(text);

    if (copy == NULL)
        return MHD_NO;
    return ad_respond(c, status, ctype, copy, strlen(copy), NULL);
}

/* An RFC 9457 problem document.  detail may quote the request path, which
 * can hold any byte after percent-decoding: keep it printable ASCII so the
 * JSON stays valid. */
static ad_result ad_problem(struct MHD_Connection *c, unsigned status, const char *title,
                                  const char *allow, const char *fmt, ...) ORDERD_PRINTF(5, 6);
static ad_result ad_problem(struct MHD_Connection *c, unsigned status, const char *title,
                                  const char *allow, const char *fmt, ...)
{
    char detail[512];
    json_t *j;
    char *text;
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    for (char *p = detail; *p != '\0'; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e)
            *p = '?';
    j = json_pack("{s:s, s:s, s:i, s:s}", "type", "about:blank", "title", title,
                  "status", (int)status, "detail", detail);
    text = j != NULL ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (text == NULL)
        return MHD_NO;
    return ad_respond(c, status, "application/problem+json", text, strlen(text), allow);
}

/* ---- built-in routes -------------------------------------------------- */

static ad_result ad_builtin_route(struct od_admin *a, struct MHD_Connection *c,
                                        const char *url, const char *method)
{
    char *text;
    size_t len = 0;

    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
        return ad_problem(c, MHD_HTTP_METHOD_NOT_ALLOWED, "Method Not Allowed", "GET, HEAD",
                          "%s does not support %s", url, method);
    if (strcmp(url, "/metrics") == 0) {
        if ((text = od_metrics_render(&len)) == NULL)
            return ad_problem(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "Internal Server Error", NULL,
                              "could not render metrics");
        return ad_respond(c, MHD_HTTP_OK, AD_METRICS_TYPE, text, len, NULL);
    }
    if (strcmp(url, "/healthz") == 0)
        return ad_respond_str(c, MHD_HTTP_OK, "application/json", "{\"status\":\"ok\"}");
    if (a->ready == NULL || a->ready(a->ready_arg) != 0)
        return ad_respond_str(c, MHD_HTTP_OK, "application/json", "{\"status\":\"ready\"}");
    return ad_respond_str(c, MHD_HTTP_SERVICE_UNAVAILABLE, "application/json",
                          "{\"status\":\"not ready\"}");
}

static int ad_is_builtin(const char *path)
{
    for (size_t i = 0; i < sizeof(ad_builtin) / sizeof(ad_builtin[0]); i++)
        if (strcmp(path, ad_builtin[i]) == 0)
            return 1;
    return 0;
}

/* ---- routes ----------------------------------------------------------- */

/* Query text for handlers.  MHD hands us the arguments already decoded, so
 * re-encode them; a handler then parses one well-formed spelling. */
struct ad_qbuf {
    char   *p;
    size_t  len, cap;
    int     oom;
};

static void ad_qput(struct ad_qbuf *q, const char *s, int encode)
{
    static const char hex[] = "0123456789ABCDEF";

    for (; s != NULL && *s != '\0'; s++) {
        unsigned char ch = (unsigned char)*s;
        int plain = !encode || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                    (ch >= '0' && ch <= '9') || ch == '-' || ch == '.' || ch == '_' || ch == '~';

        if (q->oom)
            return;
        if (q->len + 4 > q->cap) {
            size_t cap = q->cap ? q->cap * 2 : 128;
            char *p = realloc(q->p, cap);
            if (p == NULL) {
                q->oom = 1;
                return;
            }
            q->p = p;
            q->cap = cap;
        }
        if (plain) {
            q->p[q->len++] = (char)ch;
        } else {
            q->p[q->len++] = '%';
            q->p[q->len++] = hex[ch >> 4];
            q->p[q->len++] = hex[ch & 15];
        }
        q->p[q->len] = '\0';
    }
}

static ad_result ad_query_arg(void *cls, enum MHD_ValueKind kind, const char *key,
                                    const char *value)
{
    struct ad_qbuf *q = cls;

    if (q->len > 0)
        ad_qput(q, "&", 0);
    ad_qput(q, key, 1);
    if (value != NULL) {
        ad_qput(q, "=", 0);
        ad_qput(q, value, 1);
    }
    return MHD_YES;
}

static int ad_prefix_match(const struct ad_route *r, const char *path)
{
    if (strncmp(path, r->prefix, r->len) != 0)
        return 0;
    return path[r->len] == '\0' || path[r->len] == '/' || r->prefix[r->len - 1] == '/';
}

static ad_result ad_custom_route(struct od_admin *a, struct MHD_Connection *c,
                                       const char *url, const char *method, struct ad_req *rq)
{
    const struct ad_route *best = NULL;
    struct ad_qbuf q = { 0 };
    int status = MHD_HTTP_OK, rc;
    char *body = NULL;
    const char *ctype = "application/json";

    MHD_get_connection_values(c, MHD_GET_ARGUMENT_KIND, ad_query_arg, &q);
    if (q.oom) {
        free(q.p);
        return MHD_NO;
    }
    /* Held across the call so unroute() can promise fn has finished. */
    pthread_rwlock_rdlock(&a->lock);
    for (size_t i = 0; i < a->nroutes; i++)
        if (ad_prefix_match(&a->routes[i], url) && (best == NULL || a->routes[i].len > best->len))
            best = &a->routes[i];
    if (best == NULL) {
        pthread_rwlock_unlock(&a->lock);
        free(q.p);
        return ad_problem(c, MHD_HTTP_NOT_FOUND, "Not Found", NULL, "no resource at %s", url);
    }
    rc = best->fn(best->arg, method, url, q.p != NULL ? q.p : "", rq->body, rq->len, &status,
                  &body, &ctype);
    pthread_rwlock_unlock(&a->lock);
    free(q.p);
    if (rc < 0 || status < 100 || status > 599) {
        free(body);
        if (rc < 0)
            od_err("admin: handler for %s %s failed: %s", method, url, strerror(-rc));
        else
            od_err("admin: handler for %s %s returned status %d", method, url, status);
        return ad_problem(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "Internal Server Error", NULL,
                          "the handler for %s failed", url);
    }
    return ad_respond(c, (unsigned)status, ctype != NULL ? ctype : "application/json", body,
                      body != NULL ? strlen(body) : 0, NULL);
}

int od_admin_route(struct od_admin *a, const char *path_prefix, od_admin_handler fn, void *arg)
{
    struct ad_route *grown;
    char *copy;
    int rc = 0;

    if (a == NULL || fn == NULL || path_prefix == NULL || path_prefix[0] != '/')
        return -EINVAL;
    if (ad_is_builtin(path_prefix))
        return -EEXIST;
    if ((copy = strdup(path_prefix)) == NULL)
        return -ENOMEM;
    pthread_rwlock_wrlock(&a->lock);
    for (size_t i = 0; i < a->nroutes; i++)
        if (strcmp(a->routes[i].prefix, path_prefix) == 0) {
            rc = -EEXIST;
            goto out;
        }
    if ((grown = realloc(a->routes, (a->nroutes + 1) * sizeof(*grown))) == NULL) {
        rc = -ENOMEM;
        goto out;
    }
    a->routes = grown;
    a->routes[a->nroutes++] = (struct ad_route){ copy, strlen(copy), fn, arg };
    copy = NULL;
out:
    pthread_rwlock_unlock(&a->lock);
    free(copy);
    return rc;
}

void od_admin_unroute(struct od_admin *a, const char *path_prefix)
{
    if (a == NULL || path_prefix == NULL)
        return;
    pthread_rwlock_wrlock(&a->lock);
    for (size_t i = 0; i < a->nroutes; i++)
        if (strcmp(a->routes[i].prefix, path_prefix) == 0) {
            free(a->routes[i].prefix);
            a->routes[i] = a->routes[--a->nroutes];
            break;
        }
    pthread_rwlock_unlock(&a->lock);
}

/* ---- MHD callbacks ---------------------------------------------------- */

static ad_result ad_too_large(struct MHD_Connection *c)
{
    return ad_problem(c, 413 /* Content Too Large */, "Content Too Large", NULL,
                      "request bodies are limited to %d bytes", OD_ADMIN_MAX_BODY);
}

static ad_result ad_handle(void *cls, struct MHD_Connection *c, const char *url,
                                 const char *method, const char *version, const char *upload,
                                 size_t *upload_size, void **con_cls)
{
    struct od_admin *a = cls;
    struct ad_req *rq = *con_cls;
    const char *cl;

    if (rq == NULL) {
        if ((rq = calloc(1, sizeof(*rq))) == NULL)
            return MHD_NO;
        *con_cls = rq;
        /* Refuse a declared oversize body before reading it (and before MHD
         * sends "100 Continue"). */
        cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl != NULL && strtoull(cl, NULL, 10) > OD_ADMIN_MAX_BODY)
            return ad_too_large(c);
        return MHD_YES;
    }
    if (*upload_size > 0) {
        /* A chunked body has no declared length: keep reading, but drop it
         * once it passes the limit and answer 413 at the end. */
        if (!rq->too_large && !rq->oom && rq->len + *upload_size > OD_ADMIN_MAX_BODY) {
            rq->too_large = 1;
            free(rq->body);
            rq->body = NULL;
            rq->len = rq->cap = 0;
        }
        if (!rq->too_large && !rq->oom) {
            if (rq->len + *upload_size + 1 > rq->cap) {
                size_t cap = rq->cap ? rq->cap : 4096;
                char *p;
                while (cap < rq->len + *upload_size + 1)
                    cap *= 2;
                if ((p = realloc(rq->body, cap)) == NULL) {
                    rq->oom = 1;
                } else {
                    rq->body = p;
                    rq->cap = cap;
                }
            }
            if (!rq->oom) {
                memcpy(rq->body + rq->len, upload, *upload_size);
                rq->len += *upload_size;
                rq->body[rq->len] = '\0';
            }
        }
        *upload_size = 0;
        return MHD_YES;
    }
    if (rq->too_large)
        return ad_too_large(c);
    if (rq->oom)
        return ad_problem(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "Internal Server Error", NULL,
                          "out of memory reading the request body");
    if (ad_is_builtin(url))
        return ad_builtin_route(a, c, url, method);
    return ad_custom_route(a, c, url, method, rq);
}

static void ad_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct ad_req *rq = *con_cls;

    if (rq == NULL)
        return;
    free(rq->body);
    free(rq);
    *con_cls = NULL;
}

static void ad_mhd_log(void *cls, const char *fmt, va_list ap)
{
    char line[512];
    size_t n;

    vsnprintf(line, sizeof(line), fmt, ap);
    n = strlen(line);
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = '\0';
    od_logf(ORDERD_LOG_WARN, NULL, NULL, NULL, "admin: %s", line);
}

/* ---- lifecycle -------------------------------------------------------- */

int od_admin_start(const char *listen, int (*ready)(void *arg), void *arg, struct od_admin **out)
{
    struct od_admin *a;
    int fd, rc;

    *out = NULL;
    if ((a = calloc(1, sizeof(*a))) == NULL)
        return -ENOMEM;
    if ((rc = pthread_rwlock_init(&a->lock, NULL)) != 0) {
        free(a);
        return -rc;
    }
    a->ready = ready;
    a->ready_arg = arg;
    if ((fd = ad_bind(listen, &a->port)) < 0) {
        rc = fd;
        goto fail;
    }
    a->mhd = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION |
                              MHD_USE_AUTO | MHD_USE_ERROR_LOG,
                              0, NULL, NULL, ad_handle, a,
                              /* first, so MHD's own option parsing logs through us */
                              MHD_OPTION_EXTERNAL_LOGGER, ad_mhd_log, a,
                              MHD_OPTION_LISTEN_SOCKET, (MHD_socket)fd,
                              MHD_OPTION_NOTIFY_COMPLETED, ad_completed, a,
                              MHD_OPTION_CONNECTION_LIMIT, AD_CONN_LIMIT,
                              MHD_OPTION_CONNECTION_TIMEOUT, AD_CONN_TIMEOUT_S,
                              MHD_OPTION_END);
    if (a->mhd == NULL) {
        /* MHD closes a given listen socket on some of its failure paths and
         * not on others; leaking one fd on a failed start is safer than
         * closing a number another thread may have been handed since. */
        od_err("admin: cannot start the HTTP listener on %s", listen);
        rc = -EIO;
        goto fail;
    }
    od_info("admin: listening on %s (port %d)", listen, a->port);
    *out = a;
    return 0;

fail:
    pthread_rwlock_destroy(&a->lock);
    free(a);
    return rc;
}

int od_admin_port(const struct od_admin *a)
{
    return a != NULL ? a->port : -1;
}

void od_admin_stop(struct od_admin *a)
{
    if (a == NULL)
        return;
    /* Closes the listen socket and joins every connection thread, so no
     * handler runs after this. */
    MHD_stop_daemon(a->mhd);
    for (size_t i = 0; i < a->nroutes; i++)
        free(a->routes[i].prefix);
    free(a->routes);
    pthread_rwlock_destroy(&a->lock);
    free(a);
}
