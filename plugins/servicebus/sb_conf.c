/* sb_conf.c - the servicebus stages' configuration schema and its
 * conversion into struct sb_conf (the core has already checked types,
 * choices and required keys; this adds the cross-key rules). */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sb.h"

#define SB_COMMON_OPTIONS                                                                  \
    { .key = "url", .type = ORDERD_T_STRING, .flags = ORDERD_OPT_REQUIRED,                 \
      .help = "Broker address: amqps://<namespace>.servicebus.windows.net (TLS, port 5671) or amqp://host[:port] (port 5672)" }, \
    { .key = "entity", .type = ORDERD_T_STRING, .flags = ORDERD_OPT_REQUIRED,              \
      .help = "Queue or topic name (for RabbitMQ an address such as /amq/queue/orders)" }, \
    { .key = "auth", .type = ORDERD_T_STRING, .def = "sas", .choices = "sas|entra|plain|anonymous", \
      .help = "sas: CBS put-token with a SAS key; entra: CBS with a managed identity token; plain/anonymous: SASL only (other AMQP 1.0 brokers)" }, \
    { .key = "sas_key_name", .type = ORDERD_T_STRING, .def = "RootManageSharedAccessKey",  \
      .help = "Shared access policy (key) name, the skn of auth = sas tokens" },          \
    { .key = "sas_key", .type = ORDERD_T_STRING, .flags = ORDERD_OPT_SECRET,               \
      .help = "Shared access key of that policy (as shown in the portal; used as text, not base64-decoded); required for auth = sas" }, \
    { .key = "username", .type = ORDERD_T_STRING,                                          \
      .help = "SASL PLAIN user name for auth = plain" },                                   \
    { .key = "password", .type = ORDERD_T_STRING, .flags = ORDERD_OPT_SECRET,              \
      .help = "SASL PLAIN password for auth = plain" },                                    \
    { .key = "audience", .type = ORDERD_T_STRING,                                          \
      .help = "Token audience for CBS put-token (default: sb://<host>/<entity>, plus /subscriptions/<name> for a subscription)" },        \
    { .key = "token_lifetime", .type = ORDERD_T_DURATION, .def = "1h",                     \
      .help = "Validity of each SAS token; a fresh one is put at 80% of it" },             \
    { .key = "entra_endpoint", .type = ORDERD_T_STRING,                                    \
      .def = "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01", \
      .help = "Managed identity token endpoint (plain http) for auth = entra; $IDENTITY_ENDPOINT/$IDENTITY_HEADER are used when set" }, \
    { .key = "entra_resource", .type = ORDERD_T_STRING, .def = "https://servicebus.azure.net/", \
      .help = "Resource asked of the managed identity endpoint for auth = entra" },        \
    { .key = "entra_client_id", .type = ORDERD_T_STRING,                                   \
      .help = "Client id of a user-assigned managed identity (default: the system-assigned one)" }, \
    { .key = "ca_file", .type = ORDERD_T_PATH,                                             \
      .help = "PEM file of CAs trusted for amqps:// (default: the system's); the server name is always verified" }, \
    { .key = "reconnect_delay", .type = ORDERD_T_DURATION, .def = "100ms",                 \
      .help = "First delay before reconnecting after the connection drops; doubles per failure, with jitter" }, \
    { .key = "reconnect_delay_max", .type = ORDERD_T_DURATION, .def = "30s",               \
      .help = "Longest delay between two connection attempts" }

const orderd_option sb_input_options[] = {
    SB_COMMON_OPTIONS,
    { .key = "subscription", .type = ORDERD_T_STRING,
      .help = "Receive from this subscription of topic `entity` instead of from queue `entity`" },
    { .key = "prefetch", .type = ORDERD_T_INT, .def = "10",
      .help = "Link credit: messages the broker may send ahead of processing (their locks already run)" },
    { .key = "concurrency", .type = ORDERD_T_INT, .def = "16",
      .help = "Most messages received and not yet completed/abandoned/dead-lettered at once" },
    { .key = "abandon_outcome", .type = ORDERD_T_STRING, .def = "modified", .choices = "modified|released",
      .help = "Disposition for abandoned messages: modified (Service Bus; delivery count grows) or released (RabbitMQ 3.x, which ends the session on modified)" },
    { .key = "lock_renewal", .type = ORDERD_T_DURATION, .def = "30s",
      .help = "Renew the lock of each message still in flight this often via $management renew-lock; 0 disables (brokers without $management)" },
    { .key = "lock_renewal_max", .type = ORDERD_T_DURATION, .def = "1h",
      .help = "Stop renewing a message's lock after this long in flight (it is then redelivered)" },
    { .key = NULL }
};

const orderd_option sb_publish_options[] = {
    SB_COMMON_OPTIONS,
    { .key = "session_from_partition_key", .type = ORDERD_T_BOOL, .def = "false",
      .help = "Set the session id (AMQP group-id) to the message's partition key, for FIFO per key on session-enabled entities" },
    { .key = "send_timeout", .type = ORDERD_T_DURATION, .def = "30s",
      .help = "Answer RETRY for a message the broker has not accepted this long after it was handed over" },
    { .key = NULL }
};

static char *
sb_dup(const json_t *j, const char *key)
{
    const char *s = json_string_value(json_object_get(j, key));

    return s ? strdup(s) : NULL;
}

static int64_t
sb_int(const json_t *j, const char *key)
{
    return json_integer_value(json_object_get(j, key));
}

/* Split "amqp[s]://host[:port][/]" into its parts. */
static int
sb_parse_url(struct sb_conf *c, const char *url, char *err, size_t errlen)
{
    const char *h, *colon, *end;

    if (strncmp(url, "amqps://", 8) == 0) {
        c->tls = 1;
        h = url + 8;
    } else if (strncmp(url, "amqp://", 7) == 0) {
        c->tls = 0;
        h = url + 7;
    } else {
        snprintf(err, errlen, "url \"%s\" must start with amqps:// or amqp://", url);
        return -EINVAL;
    }
    end = h + strcspn(h, "/");
    if (*end == '/' && end[1] != '\0') {
        snprintf(err, errlen, "url \"%s\": give the queue or topic in `entity`, not in the url", url);
        return -EINVAL;
    }
    colon = memchr(h, ':', (size_t) (end - h));
    if (colon == h || end == h) {
        snprintf(err, errlen, "url \"%s\" has no host", url);
        return -EINVAL;
    }
    c->host = strndup(h, (size_t) ((colon ? colon : end) - h));
    if (colon) {
        c->port = strndup(colon + 1, (size_t) (end - colon - 1));
        if (c->port != NULL && (c->port[0] == '\0' || strspn(c->port, "0123456789") != strlen(c->port))) {
            snprintf(err, errlen, "url \"%s\" has a bad port", url);
            return -EINVAL;
        }
    } else {
        c->port = strdup(c->tls ? "5671" : "5672");
    }
    return c->host && c->port ? 0 : -ENOMEM;
}

int
sb_conf_parse(struct sb_conf *c, orderd_kind kind, const json_t *j, char *err, size_t errlen)
{
    const char *auth = json_string_value(json_object_get(j, "auth"));
    const char *sub;
    int rc;

    memset(c, 0, sizeof(*c));
    c->kind = kind;
    rc = sb_parse_url(c, json_string_value(json_object_get(j, "url")), err, errlen);
    if (rc < 0)
        return rc;
    c->entity = sb_dup(j, "entity");
    c->sas_key_name = sb_dup(j, "sas_key_name");
    c->sas_key = sb_dup(j, "sas_key");
    c->username = sb_dup(j, "username");
    c->password = sb_dup(j, "password");
    c->audience = sb_dup(j, "audience");
    c->entra_endpoint = sb_dup(j, "entra_endpoint");
    c->entra_resource = sb_dup(j, "entra_resource");
    c->entra_client_id = sb_dup(j, "entra_client_id");
    c->ca_file = sb_dup(j, "ca_file");
    c->token_lifetime_ms = sb_int(j, "token_lifetime");
    c->reconnect_min_ms = sb_int(j, "reconnect_delay");
    c->reconnect_max_ms = sb_int(j, "reconnect_delay_max");
    if (c->entity == NULL || c->entity[0] == '\0') {
        snprintf(err, errlen, "entity must not be empty");
        return -EINVAL;
    }
    if (strcmp(auth, "sas") == 0)
        c->auth = SB_AUTH_SAS;
    else if (strcmp(auth, "entra") == 0)
        c->auth = SB_AUTH_ENTRA;
    else if (strcmp(auth, "plain") == 0)
        c->auth = SB_AUTH_PLAIN;
    else
        c->auth = SB_AUTH_ANONYMOUS;
    if (c->auth == SB_AUTH_SAS && (c->sas_key == NULL || c->sas_key[0] == '\0'
                                   || c->sas_key_name == NULL || c->sas_key_name[0] == '\0')) {
        snprintf(err, errlen, "auth = \"sas\" needs sas_key (or sas_key_file / sas_key_env) and sas_key_name");
        return -EINVAL;
    }
    if (c->auth == SB_AUTH_PLAIN && (c->username == NULL || c->password == NULL)) {
        snprintf(err, errlen, "auth = \"plain\" needs username and password");
        return -EINVAL;
    }
    if (c->token_lifetime_ms < 60000) {
        snprintf(err, errlen, "token_lifetime must be at least 1m");
        return -EINVAL;
    }
    if (c->reconnect_min_ms < 1 || c->reconnect_max_ms < c->reconnect_min_ms) {
        snprintf(err, errlen, "reconnect_delay must be > 0 and <= reconnect_delay_max");
        return -EINVAL;
    }
    if (kind == ORDERD_INPUT) {
        c->prefetch = (int) sb_int(j, "prefetch");
        c->concurrency = (int) sb_int(j, "concurrency");
        c->abandon_modified = strcmp(json_string_value(json_object_get(j, "abandon_outcome")), "modified") == 0;
        c->lock_renewal_ms = sb_int(j, "lock_renewal");
        c->lock_renewal_max_ms = sb_int(j, "lock_renewal_max");
        if (c->prefetch < 1 || c->prefetch > 10000 || c->concurrency < 1 || c->concurrency > 100000) {
            snprintf(err, errlen, "prefetch must be 1..10000 and concurrency 1..100000");
            return -EINVAL;
        }
        sub = json_string_value(json_object_get(j, "subscription"));
        if (sub != NULL && sub[0] != '\0') {
            if (asprintf(&c->address, "%s/subscriptions/%s", c->entity, sub) < 0)
                c->address = NULL;
        } else {
            c->address = strdup(c->entity);
        }
    } else {
        c->session_from_key = json_is_true(json_object_get(j, "session_from_partition_key"));
        c->send_timeout_ms = sb_int(j, "send_timeout");
        if (c->send_timeout_ms < 1) {
            snprintf(err, errlen, "send_timeout must be positive");
            return -EINVAL;
        }
        c->address = strdup(c->entity);
    }
    if (c->address == NULL)
        return -ENOMEM;
    if (c->audience == NULL && asprintf(&c->audience, "sb://%s/%s", c->host, c->address) < 0) {
        c->audience = NULL;
        return -ENOMEM;
    }
    return 0;
}

void
sb_conf_free(struct sb_conf *c)
{
    free(c->host);
    free(c->port);
    free(c->entity);
    free(c->address);
    free(c->sas_key_name);
    free(c->sas_key);
    free(c->username);
    free(c->password);
    free(c->audience);
    free(c->entra_endpoint);
    free(c->entra_resource);
    free(c->entra_client_id);
    free(c->ca_file);
    memset(c, 0, sizeof(*c));
}
