/* harness.h - drive one real plugin .so from a unit test with a fake host.
 *
 * The harness dlopen()s the built plugin exactly as the daemon does, checks
 * the stage's configuration with the daemon's own validator (so defaults,
 * durations and sizes arrive as in production), and hands the plugin a host
 * table whose message functions are the daemon's and whose engine functions
 * (submit, settle, lookup, metrics) record what the plugin did.
 *
 *   struct th_stage *s = th_stage_new("file", ORDERD_PUBLISH, "path = \"out.ndjson\";");
 *   orderd_msg *m = th_msg("{\"id\":\"a\"}");
 *   ck_assert_int_eq(th_process(s, m), ORDERD_OK);
 *   th_msg_free(m);
 *   th_stage_free(s);
 */
#ifndef TH_HARNESS_H
#define TH_HARNESS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <orderd/plugin.h>

struct th_stage;

/* A peer server for a test (an HTTP receiver, a broker stand-in): a child
 * process that dies with the test and writes the port it listens on to a
 * file. */
struct th_peer {
    pid_t pid;      /* 0: not running */
    int   port;
};

/* TH_PEER_START - run argv (argv[0] searched in PATH) with the NAME=value
 * settings of env added to the environment (env may be NULL), stdout to
 * /dev/null, and wait up to wait_ms for a port number in portfile.
 * RETURNS: 0 with p set; -ECHILD (it exited), -ETIMEDOUT (it was then
 * stopped) or -errno, with p->pid 0. */
int  th_peer_start(struct th_peer *p, const char *const *argv, const char *const *env,
                   const char *portfile, int wait_ms);
/* TH_PEER_STOP - SIGTERM and reap; does nothing when it is not running. */
void th_peer_stop(struct th_peer *p);

/* TH_RM_TREE - remove path and everything under it (errors ignored). */
void th_rm_tree(const char *path);

int64_t th_mono_ms(void);
void    th_nap_ms(int ms);

/* Directory used for relative state paths; created fresh per process
 * (under $TMPDIR), removed by th_cleanup(). */
const char *th_state_dir(void);
void th_cleanup(void);

/* Load plugin `name` (searched in $ORDERD_PLUGIN_PATH, colon-separated, as
 * `name`.so) and create its stage of `kind` from libconfig text holding the
 * stage's keys.  Aborts the test (ck_abort) on any error, printing it. */
struct th_stage *th_stage_new(const char *name, orderd_kind kind, const char *conf_text);
/* Same but returns NULL and fills err on a config or create() error. */
struct th_stage *th_stage_try(const char *name, orderd_kind kind, const char *conf_text,
                              char *err, size_t errlen);
void th_stage_free(struct th_stage *s);           /* stop() + destroy() */

int            th_start(struct th_stage *s);      /* inputs */
void           th_stop(struct th_stage *s);
orderd_outcome th_process(struct th_stage *s, orderd_msg *m);
int            th_process_batch(struct th_stage *s, orderd_msg *const *msgs, size_t n,
                                orderd_result *out);
int            th_lookup(struct th_stage *s, const char *key, json_t **out);
void           th_ack(struct th_stage *s, orderd_msg *m, orderd_outcome o, const char *reason);
const orderd_host *th_host(void);
void          *th_state(struct th_stage *s);

/* Messages. */
orderd_msg *th_msg(const char *json_body);   /* body parsed; aborts on bad JSON */
void        th_msg_free(orderd_msg *m);

/* What inputs submitted: th_submitted(s) messages so far; th_take(s, i) hands
 * ownership of the i'th to the caller (NULL if taken).  th_wait_submitted
 * waits up to ms for at least n.  th_set_submit_result(s, rc) makes the
 * next submits fail with rc (0 again to succeed). */
size_t      th_submitted(struct th_stage *s);
orderd_msg *th_take(struct th_stage *s, size_t i);
/* th_wait_* return 1 when the count was reached in time, 0 otherwise. */
int         th_wait_submitted(struct th_stage *s, size_t n, int ms);
void        th_set_submit_result(struct th_stage *s, int rc);

/* What PENDING stages settled: count, and the i'th result (outcome, reason). */
size_t      th_settled(struct th_stage *s);
int         th_wait_settled(struct th_stage *s, size_t n, int ms);
orderd_outcome th_settled_outcome(struct th_stage *s, size_t i, const char **reason,
                                  orderd_msg **m);

/* What inputs dead-lettered with host->dead_letter(): count, and the i'th
 * (message still owned by the harness; reason borrowed). */
size_t      th_dead_letters(struct th_stage *s);
const orderd_msg *th_dead_letter(struct th_stage *s, size_t i, const char **reason);

/* Documents returned by host->lookup(): th_set_lookup(key, json) (NULL removes). */
void        th_set_lookup(const char *key, const char *json);
/* Plugin metric by name (0 if never touched). */
double      th_metric(struct th_stage *s, const char *name);

#endif
