/*
 * Edits and recalls (DESIGN 7.5), decided by the store in stream order like any item: an edit
 * is allowed to the target's author within the edit window, a recall to its author within the
 * recall window or to a group's admin; the target must be a text item of the same
 * conversation, not recalled. Allowed ones take a seq as new items (kind edit or recall,
 * target_seq); then the target document itself is changed: an edit sets its content and
 * edited_at (the latest edit by seq wins), a recall erases its content, and the content of
 * every edit of it, and sets recalled. Windows are timed by the records' own timestamps, so a
 * replay decides the same. Consumer thread only.
 */
#ifndef PARLEY_ST_EDIT_H
#define PARLEY_ST_EDIT_H

#include "parley/mongo.h"
#include "st_seq.h"

typedef struct st_edit_cfg_s {
    long long edit_window_ms;   /* 48 h by default */
    long long recall_window_ms; /* 24 h by default */
} st_edit_cfg_t;

/*
 * Before numbering (after st_group_check, which sets by_admin): refuses (forbidden) every first
 * edit or recall record that may not change its target, unless it is stored already (a replay
 * keeps its place); fills target_id of the others. PL_OK or the database's error.
 */
int st_edit_check(pl_mongo_t *mg, const st_edit_cfg_t *cfg, st_rec_t *recs, size_t n);

/* After numbering: changes the target of every first edit or recall record, new or replayed,
 * in seq order (idempotent). PL_OK or the database's error (retry the batch). */
int st_edit_apply(pl_mongo_t *mg, const st_rec_t *recs, size_t n);

#endif
