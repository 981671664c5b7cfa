/*
 * The error table's lookup functions. The table itself lives in err.h as an X-macro so that
 * the enum, the names and the texts cannot drift apart.
 */
#include "parley/err.h"

#include <stddef.h>

struct err_row {
    int code;
    const char *name;
    const char *wire;
    const char *text;
};

static const struct err_row rows[] = {
#define ROW(name, val, wire, text) {(val), "PL_ERR_" #name, (wire), (text)},
    PL_ERRNO_MAP(ROW)
#undef ROW
};

static const struct err_row *find(int err)
{
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        if (rows[i].code == err) {
            return &rows[i];
        }
    }
    return NULL;
}

const char *pl_strerror(int err)
{
    const struct err_row *r = find(err);
    return r ? r->text : "unknown error";
}

const char *pl_errname(int err)
{
    const struct err_row *r = find(err);
    return r ? r->name : "PL_ERR_UNKNOWN";
}

const char *pl_errcode(int err)
{
    const struct err_row *r = find(err);
    return r ? r->wire : "internal";
}
