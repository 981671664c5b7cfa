/*
 * Groups in the store (DESIGN 7.4): who may post to a group and how its membership changes,
 * decided by the single writer of the group's stream, in stream order, before anything takes a
 * seq. A text item from a non-member (or from a member when only admins post, or over the
 * group's slow-mode rate) is refused; a membership change (a `system` item made by parley-auth)
 * is checked against the group as it stands at that point of the stream and applied: its seq
 * becomes the added members' joined_seq or the removed member's left_seq, so membership and
 * messages order together. The module keeps each group it met in memory (settings and current
 * members, loaded once from MongoDB) and writes the `members`, `group_lists` and `groups`
 * documents. Not for
 * 1:1 permissions (st_policy.h). Consumer thread only.
 */
#ifndef PARLEY_ST_GROUP_H
#define PARLEY_ST_GROUP_H

#include "parley/mongo.h"
#include "st_seq.h"

#include <jansson.h>
#include <stddef.h>

/* Collections (DESIGN 7.1). members: _id "<conv>|<user>". group_lists: _id <user>, groups
 * {<conv>: {joined_seq, left_seq}}, every group the user is or was in: what the members
 * documents say of one user, read by _id (FerretDB on SQLite pushes down no other filter, so
 * asking `members` by user scans them all). */
#define ST_GROUPS      "groups"
#define ST_MEMBERS     "members"
#define ST_GROUP_LISTS "group_lists"

typedef struct st_group_cfg_s {
    long member_limit; /* members of one group, at most */
    double rate;       /* slow mode: text items per second per group */
    double burst;      /* and the bucket they are taken from */
    size_t max_cached; /* members held in memory over every group, at most (then evicted) */
} st_group_cfg_t;

typedef struct st_group_s st_group_t;

/* Creates the module over mg (borrowed). NULL when out of memory. */
st_group_t *st_group_new(pl_mongo_t *mg, const st_group_cfg_t *cfg);
void st_group_free(st_group_t **g);

/*
 * Decides every first record of recs in a g: conversation, in order: a refused one gets
 * refused = 1 and refuse_code (PL_ERR_FORBIDDEN, PL_ERR_RATELIMIT) and first = 0; a record
 * already stored (a replay) is kept whatever the group says now. Membership changes are applied
 * to the in-memory groups. Returns PL_OK, or PL_ERR_UNAVAIL when MongoDB does not answer (call
 * st_group_abort and retry the batch).
 */
int st_group_check(st_group_t *g, st_rec_t *recs, size_t n);

/*
 * After the records are numbered: sets mver and pmver on every group record, writes the
 * members and groups documents of the batch's membership changes, and appends to uitems (a
 * JSON array) the records of the `system` items for the added and removed users' own streams,
 * as parley.messages record objects. Returns PL_OK or the database's error (abort and retry).
 */
int st_group_commit(st_group_t *g, st_rec_t *recs, size_t n, json_t *uitems);

/* The batch failed after st_group_check: forgets the groups it touched (they are read again). */
void st_group_abort(st_group_t *g);

/* Creates the members collection's indexes. PL_OK when they exist. */
int st_group_indexes(pl_mongo_t *mg);

#endif
