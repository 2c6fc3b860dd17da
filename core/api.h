/* api.h - the admin JSON API under /api (status, dead letters) used by orderctl. */
#ifndef OD_API_H
#define OD_API_H

struct od_admin;

/* Serve /api on a.  ready() answers the "ready" field.  0 or negative errno. */
int  od_api_register(struct od_admin *a, const char *state_dir, int (*ready)(void *));
/* After a reload: where the dead-letter files now are. */
void od_api_set_state_dir(const char *state_dir);

#endif
