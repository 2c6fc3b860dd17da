/* sb.h - shared declarations of the servicebus plugin (AMQP 1.0, Qpid
 * Proton-C proactor): configuration, SAS tokens, message mapping and the
 * connection engine shared by the input and publish stages. */
#ifndef SB_H
#define SB_H

#include <stddef.h>
#include <stdint.h>

#include <proton/message.h>

#include <orderd/plugin.h>

enum sb_auth { SB_AUTH_SAS, SB_AUTH_ENTRA, SB_AUTH_PLAIN, SB_AUTH_ANONYMOUS };

/* One stage's settings, copied out of the JSON create() receives. */
struct sb_conf {
    orderd_kind   kind;
    int           tls;
    char         *host;          /* from url */
    char         *port;
    char         *entity;        /* queue or topic */
    char         *address;       /* link address: entity, or entity/subscriptions/sub */
    enum sb_auth  auth;
    char         *sas_key_name;
    char         *sas_key;
    char         *username;
    char         *password;
    char         *audience;
    char         *entra_endpoint;
    char         *entra_resource;
    char         *entra_client_id;
    char         *ca_file;
    int64_t       token_lifetime_ms;
    int64_t       reconnect_min_ms;
    int64_t       reconnect_max_ms;
    /* input */
    int           prefetch;
    int           concurrency;
    int           abandon_modified;   /* 1: modified, 0: released */
    int64_t       lock_renewal_ms;    /* 0: off */
    int64_t       lock_renewal_max_ms;
    /* publish */
    int           session_from_key;
    int64_t       send_timeout_ms;
};

extern const orderd_option sb_input_options[];
extern const orderd_option sb_publish_options[];

/* sb_conf.c */
int  sb_conf_parse(struct sb_conf *c, orderd_kind kind, const json_t *j, char *err, size_t errlen);
void sb_conf_free(struct sb_conf *c);

/* sb_sas.c - SB_URLENCODE: percent-encode everything but RFC 3986
 * unreserved characters, as the Azure SDKs do (encodeURIComponent minus
 * its extra marks).  RETURNS: a new string, or NULL when out of memory. */
char *sb_urlencode(const char *s);
/* SB_SAS_TOKEN - "SharedAccessSignature sr=..&sig=..&se=..&skn=.." for
 * audience, signed with the key's UTF-8 bytes (not base64-decoded), valid
 * until expiry (Unix seconds).  RETURNS: a new string, or NULL. */
char *sb_sas_token(const char *audience, const char *key_name, const char *key, int64_t expiry);

/* sb_msg.c - SB_MSG_TO_AMQP: fill msg (fresh) from m: message-id = the
 * orderd message id, body = JSON as a data section, content-type,
 * application properties = message properties, group-id (session id) =
 * partition key when session_from_key.  RETURNS: 0 or negative errno. */
int sb_msg_to_amqp(const orderd_host *h, orderd_msg *m, int session_from_key, pn_message_t *msg);
/* SB_MSG_FROM_AMQP - make an orderd message from a received one.
 * RETURNS: the message, or NULL with a reason in err (not JSON, no memory). */
orderd_msg *sb_msg_from_amqp(const orderd_host *h, orderd_inst *inst, pn_message_t *msg,
                             char *err, size_t errlen);
/* SB_ENCODE - encode msg into a malloc'ed buffer.  RETURNS: 0 or -errno. */
int sb_encode(pn_message_t *msg, char **out, size_t *len);

/* sb_entra.c - SB_ENTRA_TOKEN: fetch an access token from a managed
 * identity endpoint (plain HTTP, IMDS or App Service style).  RETURNS: 0
 * with *token (malloc'ed) and *expires_at (Unix seconds), or -errno with
 * a reason in err. */
int sb_entra_token(const struct sb_conf *c, char **token, int64_t *expires_at,
                   char *err, size_t errlen);

/* sb_client.c - the connection engine. */
struct sb_client;
int  sb_client_new(orderd_inst *inst, const orderd_host *h, struct sb_conf *conf,
                   struct sb_client **out);
int  sb_client_start(struct sb_client *c);
void sb_client_stop_receiving(struct sb_client *c);
void sb_client_free(struct sb_client *c);
orderd_outcome sb_client_publish(struct sb_client *c, orderd_msg *m);
void sb_client_ack(struct sb_client *c, orderd_msg *m, orderd_outcome o, const char *reason);

int64_t sb_now_ms(void);

#endif
