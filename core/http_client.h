/* http_client.h - a tiny blocking HTTP/1.1 client over plain sockets, for orderctl.
 *
 * One connection per struct hc_conn, kept alive between requests and
 * reopened when the server closed it.  Bodies are read with Content-Length,
 * chunked transfer coding, or up to EOF.  No TLS, no redirects, no proxies:
 * orderctl only talks to orderd's loopback admin listener and the Order API.
 * Not thread-safe per connection; use one connection per thread.
 */
#ifndef OD_HTTP_CLIENT_H
#define OD_HTTP_CLIENT_H

#include <stddef.h>

/* Largest response body accepted (the admin API pages dead letters). */
#define HC_MAX_BODY (64 * 1024 * 1024)

struct hc_conn {
    char    host[256];
    char    port[16];
    int     fd;             /* -1 when not connected */
    int     timeout_ms;     /* connect, send and each receive */
    char   *buf;            /* bytes received but not yet consumed */
    size_t  blen;
    size_t  bcap;
};

struct hc_response {
    int     status;
    char   *content_type;   /* malloc'd, "" when absent */
    char   *body;           /* malloc'd, NUL-terminated */
    size_t  len;
};

/*
 * HC_PARSE_HOSTPORT - split "HOST:PORT", "[V6]:PORT" (an optional leading
 * "http://" and trailing "/" are allowed).
 * RETURNS: 0; -EINVAL when malformed or too long.
 */
int  hc_parse_hostport(const char *s, char *host, size_t hostsz, char *port, size_t portsz);

/*
 * HC_PARSE_URL - split "http://HOST[:PORT][/PREFIX]" (port defaults to 80);
 * prefix gets the path without a trailing '/', "" when there is none.
 * RETURNS: 0; -EPROTONOSUPPORT for another scheme; -EINVAL when malformed.
 */
int  hc_parse_url(const char *url, char *host, size_t hostsz, char *port, size_t portsz,
                  char *prefix, size_t prefixsz);

/* HC_INIT - set up c (not yet connected).  RETURNS: 0 or -EINVAL (host/port too long). */
int  hc_init(struct hc_conn *c, const char *host, const char *port, int timeout_ms);

/*
 * HC_REQUEST - send one request and read the whole answer into *r.
 * ARGS: headers is NULL or a NULL-terminated list of "Name: value" strings
 *       (borrowed); body may be NULL when len is 0.  Content-Length, Host
 *       and Connection are added here.
 * A request on a reused connection that the server had already closed is
 * sent again once on a new connection (nothing was answered, so nothing
 * was processed: servers close idle keep-alive connections only between
 * requests).
 * RETURNS: 0 and *r filled (any status); negative errno on transport
 *          failure (-ECONNREFUSED, -ETIMEDOUT, -EPROTO for a malformed
 *          answer, -EMSGSIZE for a body over HC_MAX_BODY...); *r is then
 *          empty.  Free *r with hc_response_free() either way.
 */
int  hc_request(struct hc_conn *c, const char *method, const char *path, const char *const *headers,
                const char *body, size_t len, struct hc_response *r);

void hc_response_free(struct hc_response *r);

/* HC_CLOSE - close the connection and free its buffer; c may be reused with hc_request(). */
void hc_close(struct hc_conn *c);

/* HC_STRERROR - text for a negative errno from hc_request(); "bad answer" for -EPROTO. */
const char *hc_strerror(int err);

#endif
