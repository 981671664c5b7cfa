/*
 * Configuration from PARLEY_* environment variables, one getter per type. Each getter falls
 * back to its default when the variable is unset or empty and reports a value that is set but
 * invalid, so a typo stops the service at start instead of running with a surprise. Not for
 * runtime reconfiguration. Call from the main thread before starting other threads.
 */
#ifndef PARLEY_CFG_H
#define PARLEY_CFG_H

#include <signal.h>
#include <stddef.h>

/* Returns the variable's value, or def when it is unset or empty. Borrowed from environ. */
const char *pl_cfg_str(const char *name, const char *def);

/*
 * Stores in *out the variable parsed as a base-10 integer within [min, max], or def when it is
 * unset or empty. Returns PL_OK, or PL_ERR_CONFIG for a malformed or out-of-range value
 * (*out is then def, and the error is logged).
 */
int pl_cfg_int(const char *name, long def, long min, long max, long *out);

/* Accepts 1/0, true/false, yes/no, on/off. Errors as pl_cfg_int(). */
int pl_cfg_bool(const char *name, int def, int *out);

/*
 * Reads a whole file of at most max bytes into a new NUL-terminated allocation that the caller
 * frees. Returns PL_OK, PL_ERR_NOTFOUND, PL_ERR_TOOBIG, PL_ERR_IO or PL_ERR_NOMEM.
 */
int pl_read_file(const char *path, size_t max, char **out, size_t *len);

/*
 * Blocks SIGTERM and SIGINT in the calling thread and ignores SIGPIPE; set holds the two.
 * Call first thing in main(), before any library starts a thread, so that every thread
 * inherits the mask and the signals reach only the service's own drain logic (sigwait,
 * sigtimedwait or a signalfd on set).
 */
void pl_block_signals(sigset_t *set);

#endif
