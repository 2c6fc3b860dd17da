/* cosmos.c - the Cosmos DB plugin: option tables and the descriptor.
 *
 * Both stages share the connection keys (endpoint, database, container,
 * auth, TLS); the store adds how documents are written and looked up, the
 * input how the change feed is read and checkpointed.
 */
#include "config.h"

#include <stddef.h>

#include "cosmos.h"

/* The connection keys, repeated in both tables (the option arrays are data). */
#define COS_COMMON_OPTIONS                                                                       \
    { .key = "endpoint", .type = ORDERD_T_STRING, .flags = ORDERD_OPT_REQUIRED,                  \
      .help = "account endpoint URL, e.g. https://myaccount.documents.azure.com:443/" },          \
    { .key = "database", .type = ORDERD_T_STRING, .flags = ORDERD_OPT_REQUIRED,                  \
      .help = "database id" },                                                                   \
    { .key = "container", .type = ORDERD_T_STRING, .flags = ORDERD_OPT_REQUIRED,                 \
      .help = "container (collection) id" },                                                     \
    { .key = "auth", .type = ORDERD_T_STRING, .def = "key", .choices = "key|token",              \
      .help = "key: master-key HMAC signature; token: Entra ID bearer token (token_url or token_file)" }, \
    { .key = "key", .type = ORDERD_T_STRING, .flags = ORDERD_OPT_SECRET,                         \
      .help = "account master key (base64, as shown in the portal); with auth = \"key\"" },      \
    { .key = "token_url", .type = ORDERD_T_STRING,                                               \
      .help = "managed-identity token endpoint, full URL incl. resource=https://cosmos.azure.com (auth = \"token\")" }, \
    { .key = "token_file", .type = ORDERD_T_PATH,                                                \
      .help = "file holding an Entra ID access token kept fresh by another agent, re-read when it changes (auth = \"token\")" }, \
    { .key = "ca_file", .type = ORDERD_T_PATH,                                                   \
      .help = "PEM CA bundle used to verify the endpoint's certificate (default: the system store)" }, \
    { .key = "tls_verify", .type = ORDERD_T_BOOL, .def = "true",                                 \
      .help = "verify the endpoint's TLS certificate and host name (turn off only for tests)" }, \
    { .key = "api_version", .type = ORDERD_T_STRING, .def = "2018-12-31",                        \
      .help = "x-ms-version REST API version sent with every request" },                         \
    { .key = "timeout", .type = ORDERD_T_DURATION, .def = "10s",                                 \
      .help = "whole-request timeout; a timed-out write is retried" },                           \
    { .key = "connect_timeout", .type = ORDERD_T_DURATION, .def = "5s",                          \
      .help = "TCP + TLS connect timeout" }

const orderd_option cos_store_options[] = {
    COS_COMMON_OPTIONS,
    { .key = "mode", .type = ORDERD_T_STRING, .def = "append", .choices = "append|upsert",
      .help = "append: create, a 409 duplicate id counts as stored; upsert: create or replace, If-Match when the ETag is known" },
    { .key = "document", .type = ORDERD_T_STRING, .def = "body", .choices = "body|snapshot",
      .help = "what is written: the message body, or the body's \"snapshot\" object (order snapshots)" },
    { .key = "partition_key", .type = ORDERD_T_STRING, .def = "/id",
      .help = "path of the partition key in the written document, as in the container definition (e.g. /orderId)" },
    { .key = "lookup", .type = ORDERD_T_STRING, .def = "auto", .choices = "auto|point|query",
      .help = "lookup by id: point = GET with the id as partition key (needs partition_key = /id), query = cross-partition query; auto picks" },
    { .key = "events_container", .type = ORDERD_T_STRING,
      .help = "container queried for \"event:<id>\" lookups (default: this container in append mode)" },
    { .key = "etag_cache", .type = ORDERD_T_INT, .def = "10000",
      .help = "ETags remembered for If-Match in upsert mode (0 disables optimistic concurrency)" },
    { .key = NULL }
};

const orderd_option cos_feed_options[] = {
    COS_COMMON_OPTIONS,
    { .key = "partition_key", .type = ORDERD_T_STRING, .def = "/id",
      .help = "path of the value used as each message's partition key (e.g. /orderId)" },
    { .key = "start", .type = ORDERD_T_STRING, .def = "beginning", .choices = "beginning|now",
      .help = "where a feed without a checkpoint starts: all documents, or only changes from now on" },
    { .key = "poll_interval", .type = ORDERD_T_DURATION, .def = "1s",
      .help = "how long to wait before asking again when every range answered 304 (nothing new)" },
    { .key = "max_items", .type = ORDERD_T_INT, .def = "100",
      .help = "documents per change-feed page (x-ms-max-item-count, 1-10000); a page is checkpointed once all of it completed" },
    { .key = "checkpoint", .type = ORDERD_T_PATH, .flags = ORDERD_OPT_STATE,
      .help = "continuation file (default: cosmos-feed-<pipeline>-<stage>.json in the state directory)" },
    { .key = NULL }
};

static const orderd_stage *const cos_stages[] = { &cos_store_stage, &cos_feed_stage, NULL };

ORDERD_PLUGIN(.name = "cosmos", .version = "1.0",
              .description = "Azure Cosmos DB (SQL API) store with lookups, and change-feed input",
              .maintainer = "orderd developers",
              .stages = cos_stages);
