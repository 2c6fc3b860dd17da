/* sb_entra.c - Entra ID (managed identity) access tokens for CBS.
 *
 * The managed identity endpoints are plain HTTP on a link-local or
 * loopback address (IMDS: 169.254.169.254 with "Metadata: true"; App
 * Service: $IDENTITY_ENDPOINT with "X-IDENTITY-HEADER"), so one small
 * blocking GET with a 5 s budget is all it takes; no HTTP library needed. */
#include "config.h"

#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "sb.h"

#define SB_HTTP_TIMEOUT_MS 5000
#define SB_HTTP_MAX        65536

static int
sb_http_get(const char *url, const char *hdr, char **body, int *status, char *err, size_t errlen)
{
    char host[256], port[8] = "80", *req = NULL, *buf = NULL;
    const char *h = url + 7, *path, *colon;
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *ai = NULL;
    size_t len = 0;
    int fd = -1, rc = -EIO, n;
    int64_t deadline = sb_now_ms() + SB_HTTP_TIMEOUT_MS;

    if (strncmp(url, "http://", 7) != 0) {
        snprintf(err, errlen, "endpoint %s is not http://", url);
        return -EINVAL;
    }
    path = h + strcspn(h, "/?");
    colon = memchr(h, ':', (size_t) (path - h));
    snprintf(host, sizeof(host), "%.*s", (int) ((colon ? colon : path) - h), h);
    if (colon)
        snprintf(port, sizeof(port), "%.*s", (int) (path - colon - 1), colon + 1);
    if (getaddrinfo(host, port, &hints, &ai) != 0 || ai == NULL) {
        snprintf(err, errlen, "cannot resolve %s", host);
        return -EHOSTUNREACH;
    }
    fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        snprintf(err, errlen, "cannot connect to %s:%s: %s", host, port, strerror(errno));
        rc = -ECONNREFUSED;
        goto out;
    }
    n = asprintf(&req, "GET %s%s HTTP/1.0\r\nHost: %s\r\n%s\r\nAccept: application/json\r\n\r\n",
                 path[0] == '/' ? "" : "/", path, host, hdr);
    if (n < 0 || send(fd, req, (size_t) n, MSG_NOSIGNAL) != n) {
        snprintf(err, errlen, "cannot send the token request");
        goto out;
    }
    buf = malloc(SB_HTTP_MAX + 1);
    if (buf == NULL) {
        rc = -ENOMEM;
        goto out;
    }
    for (;;) {
        struct pollfd pfd = { .fd = fd, .events = POLLIN };
        int64_t left = deadline - sb_now_ms();
        ssize_t r;

        if (left <= 0 || poll(&pfd, 1, (int) left) <= 0) {
            snprintf(err, errlen, "token endpoint timed out");
            rc = -ETIMEDOUT;
            goto out;
        }
        r = recv(fd, buf + len, SB_HTTP_MAX - len, 0);
        if (r < 0) {
            snprintf(err, errlen, "reading the token answer: %s", strerror(errno));
            goto out;
        }
        if (r == 0 || (len += (size_t) r) >= SB_HTTP_MAX)
            break;
    }
    buf[len] = '\0';
    if (sscanf(buf, "HTTP/%*d.%*d %d", status) != 1 || strstr(buf, "\r\n\r\n") == NULL) {
        snprintf(err, errlen, "bad HTTP answer from the token endpoint");
        goto out;
    }
    *body = strdup(strstr(buf, "\r\n\r\n") + 4);
    rc = *body ? 0 : -ENOMEM;
out:
    if (fd >= 0)
        close(fd);
    freeaddrinfo(ai);
    free(req);
    free(buf);
    return rc;
}

int
sb_entra_token(const struct sb_conf *c, char **token, int64_t *expires_at, char *err, size_t errlen)
{
    const char *ep = getenv("IDENTITY_ENDPOINT"), *secret = getenv("IDENTITY_HEADER");
    char *res = sb_urlencode(c->entra_resource), *cid = NULL, *url = NULL, *hdr = NULL, *body = NULL;
    json_t *j = NULL, *v;
    int status = 0, rc = -ENOMEM;

    if (res == NULL)
        goto out;
    if (c->entra_client_id && (cid = sb_urlencode(c->entra_client_id)) == NULL)
        goto out;
    if (ep != NULL && secret != NULL) {
        if (asprintf(&url, "%s?api-version=2019-08-01&resource=%s%s%s", ep, res,
                     cid ? "&client_id=" : "", cid ?: "") < 0
            || asprintf(&hdr, "X-IDENTITY-HEADER: %s", secret) < 0)
            goto out;
    } else {
        if (asprintf(&url, "%s%sresource=%s%s%s", c->entra_endpoint,
                     strchr(c->entra_endpoint, '?') ? "&" : "?", res,
                     cid ? "&client_id=" : "", cid ?: "") < 0
            || (hdr = strdup("Metadata: true")) == NULL)
            goto out;
    }
    rc = sb_http_get(url, hdr, &body, &status, err, errlen);
    if (rc < 0)
        goto out;
    rc = -EACCES;
    j = json_loads(body, 0, NULL);
    if (status != 200 || j == NULL || !json_is_string(json_object_get(j, "access_token"))) {
        snprintf(err, errlen, "token endpoint answered %d: %.200s", status, body);
        goto out;
    }
    *expires_at = 0;
    v = json_object_get(j, "expires_on");
    if (json_is_string(v))
        *expires_at = strtoll(json_string_value(v), NULL, 10);
    else if (json_is_integer(v))
        *expires_at = json_integer_value(v);
    if (*expires_at <= 0) {
        v = json_object_get(j, "expires_in");
        *expires_at = time(NULL) + (json_is_string(v) ? strtoll(json_string_value(v), NULL, 10)
                                    : json_is_integer(v) ? json_integer_value(v) : 3600);
    }
    *token = strdup(json_string_value(json_object_get(j, "access_token")));
    rc = *token ? 0 : -ENOMEM;
out:
    json_decref(j);
    free(res);
    free(cid);
    free(url);
    free(hdr);
    free(body);
    return rc;
}
