/* http_client.c - a tiny blocking HTTP/1.1 client over plain sockets (see http_client.h).
 *
 * orderctl must build with libc and jansson only, so this replaces libcurl
 * for the two things it needs: JSON requests to the admin API and many small
 * POSTs to the Order API over keep-alive connections.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "http_client.h"

#define HC_MAX_HEADER (64 * 1024)

static int hc_copy(char *dst, size_t dstsz, const char *src, size_t n)
{
    if (n == 0 || n >= dstsz)
        return -EINVAL;
    memcpy(dst, src, n);
    dst[n] = '\0';
    return 0;
}

static int hc_valid_port(const char *p)
{
    long v;
    char *end;

    if (*p == '\0' || strspn(p, "0123456789") != strlen(p))
        return 0;
    v = strtol(p, &end, 10);
    return v > 0 && v <= 65535;
}

/* Splits "HOST[:PORT]" (no scheme, no path) with def_port when PORT is absent. */
static int hc_split_authority(const char *s, size_t n, const char *def_port, char *host, size_t hostsz,
                              char *port, size_t portsz)
{
    const char *colon = NULL, *hs = s;
    size_t hn;

    if (n > 0 && s[0] == '[') {
        const char *close = memchr(s, ']', n);

        if (close == NULL)
            return -EINVAL;
        hs = s + 1;
        hn = (size_t)(close - hs);
        if (close + 1 < s + n) {
            if (close[1] != ':')
                return -EINVAL;
            colon = close + 1;
        }
    } else {
        colon = memchr(s, ':', n);
        hn = colon ? (size_t)(colon - s) : n;
    }
    if (hc_copy(host, hostsz, hs, hn) < 0)
        return -EINVAL;
    if (colon == NULL) {
        if (def_port == NULL)
            return -EINVAL;
        if (hc_copy(port, portsz, def_port, strlen(def_port)) < 0)
            return -EINVAL;
    } else if (hc_copy(port, portsz, colon + 1, (size_t)(s + n - colon - 1)) < 0) {
        return -EINVAL;
    }
    return hc_valid_port(port) ? 0 : -EINVAL;
}

int hc_parse_hostport(const char *s, char *host, size_t hostsz, char *port, size_t portsz)
{
    size_t n;

    if (s == NULL)
        return -EINVAL;
    if (strncasecmp(s, "http://", 7) == 0)
        s += 7;
    n = strlen(s);
    if (n > 0 && s[n - 1] == '/')
        n--;
    return hc_split_authority(s, n, NULL, host, hostsz, port, portsz);
}

int hc_parse_url(const char *url, char *host, size_t hostsz, char *port, size_t portsz,
                 char *prefix, size_t prefixsz)
{
    const char *auth, *slash;
    size_t plen;

    if (url == NULL)
        return -EINVAL;
    if (strncasecmp(url, "http://", 7) != 0)
        return strstr(url, "://") ? -EPROTONOSUPPORT : -EINVAL;
    auth = url + 7;
    slash = strchr(auth, '/');
    if (hc_split_authority(auth, slash ? (size_t)(slash - auth) : strlen(auth), "80",
                           host, hostsz, port, portsz) < 0)
        return -EINVAL;
    plen = slash ? strlen(slash) : 0;
    while (plen > 0 && slash[plen - 1] == '/')
        plen--;
    if (plen >= prefixsz)
        return -EINVAL;
    if (plen > 0)
        memcpy(prefix, slash, plen);
    prefix[plen] = '\0';
    return 0;
}

int hc_init(struct hc_conn *c, const char *host, const char *port, int timeout_ms)
{
    memset(c, 0, sizeof(*c));
    c->fd = -1;
    c->timeout_ms = timeout_ms > 0 ? timeout_ms : 30000;
    if (hc_copy(c->host, sizeof(c->host), host, strlen(host)) < 0 ||
        hc_copy(c->port, sizeof(c->port), port, strlen(port)) < 0)
        return -EINVAL;
    return 0;
}

void hc_close(struct hc_conn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    free(c->buf);
    c->buf = NULL;
    c->blen = c->bcap = 0;
}

void hc_response_free(struct hc_response *r)
{
    free(r->content_type);
    free(r->body);
    memset(r, 0, sizeof(*r));
}

const char *hc_strerror(int err)
{
    if (err == -EPROTO)
        return "malformed HTTP answer";
    if (err == -EMSGSIZE)
        return "answer too large";
    return strerror(-err);
}

/* Connects to one address, waiting at most timeout_ms (a refused or
 * unroutable address must fail fast, a black-holed one must not hang). */
static int hc_connect_one(const struct addrinfo *ai, int timeout_ms)
{
    struct pollfd pfd;
    struct timeval tv = { timeout_ms / 1000, (timeout_ms % 1000) * 1000 };
    int fd, flags, err = 0, one = 1, rc;
    socklen_t elen = sizeof(err);

    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0)
        return -errno;
    flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
        goto fail_errno;
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
        if (errno != EINPROGRESS)
            goto fail_errno;
        pfd = (struct pollfd){ .fd = fd, .events = POLLOUT };
        do
            rc = poll(&pfd, 1, timeout_ms);
        while (rc < 0 && errno == EINTR);
        if (rc == 0) {
            err = ETIMEDOUT;
            goto fail;
        }
        if (rc < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) < 0)
            goto fail_errno;
        if (err != 0)
            goto fail;
    }
    if (fcntl(fd, F_SETFL, flags) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0)
        goto fail_errno;
    /* Small request/answer exchanges: do not wait for Nagle. */
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;

fail_errno:
    err = errno;
fail:
    close(fd);
    return -err;
}

static int hc_connect(struct hc_conn *c)
{
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM };
    struct addrinfo *res = NULL;
    int rc, fd = -ECONNREFUSED;

    rc = getaddrinfo(c->host, c->port, &hints, &res);
    if (rc != 0)
        return rc == EAI_SYSTEM ? -errno : -EHOSTUNREACH;
    for (const struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next)
        if ((fd = hc_connect_one(ai, c->timeout_ms)) >= 0)
            break;
    freeaddrinfo(res);
    if (fd < 0)
        return fd;
    c->fd = fd;
    c->blen = 0;
    return 0;
}

static int hc_send_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);

        if (w < 0) {
            if (errno == EINTR)
                continue;
            return (errno == EAGAIN || errno == EWOULDBLOCK) ? -ETIMEDOUT : -errno;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Reads more bytes into c->buf.  RETURNS: bytes read, 0 at EOF, negative errno. */
static ssize_t hc_fill(struct hc_conn *c)
{
    ssize_t n;

    if (c->bcap - c->blen < 16384) {
        size_t ncap = c->bcap ? c->bcap * 2 : 32768;
        char *nb;

        if (ncap > HC_MAX_BODY + HC_MAX_HEADER + 65536)
            return -EMSGSIZE;
        if ((nb = realloc(c->buf, ncap)) == NULL)
            return -ENOMEM;
        c->buf = nb;
        c->bcap = ncap;
    }
    do
        n = recv(c->fd, c->buf + c->blen, c->bcap - c->blen - 1, 0);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return (errno == EAGAIN || errno == EWOULDBLOCK) ? -ETIMEDOUT : -errno;
    c->blen += (size_t)n;
    c->buf[c->blen] = '\0';
    return n;
}

static void hc_consume(struct hc_conn *c, size_t n)
{
    if (c->buf == NULL)
        return;
    memmove(c->buf, c->buf + n, c->blen - n);
    c->blen -= n;
    c->buf[c->blen] = '\0';
}

/* Makes at least n bytes available.  RETURNS: 0, -EPROTO at an early EOF, negative errno. */
static int hc_need(struct hc_conn *c, size_t n)
{
    while (c->blen < n) {
        ssize_t r = hc_fill(c);

        if (r == 0)
            return -EPROTO;
        if (r < 0)
            return (int)r;
    }
    return 0;
}

/* Finds the end of a CRLF-terminated line at the start of the buffer.
 * RETURNS: the line length (without CRLF), or negative errno. */
static ssize_t hc_line(struct hc_conn *c)
{
    for (;;) {
        char *crlf = c->buf ? strstr(c->buf, "\r\n") : NULL;
        ssize_t r;

        if (crlf != NULL)
            return crlf - c->buf;
        if (c->blen > HC_MAX_HEADER)
            return -EPROTO;
        if ((r = hc_fill(c)) == 0)
            return -EPROTO;
        if (r < 0)
            return r;
    }
}

static int hc_append(struct hc_response *r, const char *p, size_t n)
{
    char *nb;

    if (r->len + n > HC_MAX_BODY)
        return -EMSGSIZE;
    if ((nb = realloc(r->body, r->len + n + 1)) == NULL)
        return -ENOMEM;
    if (n > 0)
        memcpy(nb + r->len, p, n);
    r->body = nb;
    r->len += n;
    r->body[r->len] = '\0';
    return 0;
}

static int hc_read_chunked(struct hc_conn *c, struct hc_response *r)
{
    for (;;) {
        ssize_t ll = hc_line(c);
        unsigned long long size;
        char *end;
        int rc;

        if (ll < 0)
            return (int)ll;
        errno = 0;
        size = strtoull(c->buf, &end, 16);
        if (end == c->buf || errno != 0 || size > HC_MAX_BODY)
            return -EPROTO;
        hc_consume(c, (size_t)ll + 2);
        if (size == 0)
            break;
        if ((rc = hc_need(c, (size_t)size + 2)) < 0)
            return rc;
        if ((rc = hc_append(r, c->buf, (size_t)size)) < 0)
            return rc;
        hc_consume(c, (size_t)size + 2);
    }
    for (;;) {  /* trailers, up to the empty line */
        ssize_t ll = hc_line(c);

        if (ll < 0)
            return (int)ll;
        hc_consume(c, (size_t)ll + 2);
        if (ll == 0)
            return 0;
    }
}

/* Reads one answer.  *got_any tells whether any byte arrived (a stale
 * keep-alive connection fails before that). */
static int hc_read_response(struct hc_conn *c, const char *method, struct hc_response *r, int *got_any,
                            int *must_close)
{
    long long clen;
    int chunked, rc, minor;

    for (;;) {
        char *hdr_end;
        size_t hlen;

        while ((hdr_end = c->buf ? strstr(c->buf, "\r\n\r\n") : NULL) == NULL) {
            ssize_t n;

            if (c->blen > HC_MAX_HEADER)
                return -EPROTO;
            n = hc_fill(c);
            if (n == 0)
                return c->blen == 0 && !*got_any ? -ECONNRESET : -EPROTO;
            if (n < 0)
                return (int)n;
            *got_any = 1;
        }
        hlen = (size_t)(hdr_end - c->buf) + 4;
        *hdr_end = '\0';
        if (sscanf(c->buf, "HTTP/1.%d %3d", &minor, &r->status) != 2 || r->status < 100)
            return -EPROTO;
        clen = -1;
        chunked = 0;
        *must_close = minor == 0;
        for (char *line = strstr(c->buf, "\r\n"); line != NULL; line = strstr(line, "\r\n")) {
            char *name = line + 2, *colon, *val, *eol;

            eol = strstr(name, "\r\n");
            if (eol)
                *eol = '\0';
            colon = strchr(name, ':');
            line = eol;
            if (colon == NULL)
                goto next;
            *colon = '\0';
            val = colon + 1;
            val += strspn(val, " \t");
            if (strcasecmp(name, "Content-Length") == 0) {
                char *end;

                errno = 0;
                clen = strtoll(val, &end, 10);
                if (errno != 0 || end == val || clen < 0)
                    return -EPROTO;
            } else if (strcasecmp(name, "Transfer-Encoding") == 0) {
                chunked = strcasestr(val, "chunked") != NULL;
            } else if (strcasecmp(name, "Connection") == 0) {
                if (strcasestr(val, "close"))
                    *must_close = 1;
                else if (strcasestr(val, "keep-alive"))
                    *must_close = 0;
            } else if (strcasecmp(name, "Content-Type") == 0 && r->content_type == NULL) {
                if ((r->content_type = strdup(val)) == NULL)
                    return -ENOMEM;
            }
next:
            if (eol == NULL)
                break;
            *eol = '\r';    /* restore so strstr finds the next line */
        }
        hc_consume(c, hlen);
        if (r->status >= 200)
            break;
        free(r->content_type);  /* 1xx interim answer: the real one follows */
        r->content_type = NULL;
    }
    if (r->content_type == NULL && (r->content_type = strdup("")) == NULL)
        return -ENOMEM;
    if ((rc = hc_append(r, "", 0)) < 0)
        return rc;
    if (strcmp(method, "HEAD") == 0 || r->status == 204 || r->status == 304)
        return 0;
    if (chunked)
        return hc_read_chunked(c, r);
    if (clen >= 0) {
        if (clen > HC_MAX_BODY)
            return -EMSGSIZE;
        if ((rc = hc_need(c, (size_t)clen)) < 0)
            return rc;
        if ((rc = hc_append(r, c->buf, (size_t)clen)) < 0)
            return rc;
        hc_consume(c, (size_t)clen);
        return 0;
    }
    *must_close = 1;    /* delimited by EOF */
    for (;;) {
        ssize_t n;

        if ((rc = hc_append(r, c->buf, c->blen)) < 0)
            return rc;
        hc_consume(c, c->blen);
        if ((n = hc_fill(c)) == 0)
            return 0;
        if (n < 0)
            return (int)n;
    }
}

int hc_request(struct hc_conn *c, const char *method, const char *path, const char *const *headers,
               const char *body, size_t len, struct hc_response *r)
{
    char *head = NULL;
    size_t hsize = 0;
    FILE *f;
    int rc = 0;

    memset(r, 0, sizeof(*r));
    if ((f = open_memstream(&head, &hsize)) == NULL)
        return -ENOMEM;
    fprintf(f, "%s %s HTTP/1.1\r\nHost: %s%s%s:%s\r\nUser-Agent: orderctl/" PACKAGE_VERSION "\r\n",
            method, path, strchr(c->host, ':') ? "[" : "", c->host, strchr(c->host, ':') ? "]" : "", c->port);
    for (size_t i = 0; headers != NULL && headers[i] != NULL; i++)
        fprintf(f, "%s\r\n", headers[i]);
    if (len > 0 || strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0)
        fprintf(f, "Content-Length: %zu\r\n", len);
    fputs("\r\n", f);
    /* One write for head and body: no small segment left waiting for an ACK. */
    if (len > 0)
        fwrite(body, 1, len, f);
    if (fclose(f) != 0) {
        free(head);
        return -ENOMEM;
    }

    for (int attempt = 0; attempt < 2; attempt++) {
        int reused = c->fd >= 0, got_any = 0, must_close = 0;

        if (!reused && (rc = hc_connect(c)) < 0)
            break;
        rc = hc_send_all(c->fd, head, hsize);
        if (rc == 0)
            rc = hc_read_response(c, method, r, &got_any, &must_close);
        if (rc == 0) {
            if (must_close) {
                close(c->fd);
                c->fd = -1;
            }
            break;
        }
        hc_response_free(r);
        close(c->fd);
        c->fd = -1;
        c->blen = 0;
        /* Only a connection the server closed while idle is worth a retry. */
        if (!reused || got_any || (rc != -ECONNRESET && rc != -EPIPE))
            break;
    }
    free(head);
    return rc;
}
