/*
 * Environment-variable configuration getters and a bounded whole-file reader for key files.
 */
#include "parley/cfg.h"
#include "parley/buf.h"
#include "parley/err.h"
#include "parley/log.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

const char *pl_cfg_str(const char *name, const char *def)
{
    const char *v = getenv(name);
    return (v == NULL || *v == '\0') ? def : v;
}

int pl_cfg_int(const char *name, long def, long min, long max, long *out)
{
    const char *v = pl_cfg_str(name, NULL);
    *out = def;
    if (v == NULL) {
        return PL_OK;
    }
    char *end = NULL;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (errno != 0 || end == v || *end != '\0' || n < min || n > max) {
        pl_log_error("config_invalid", "%s must be an integer in [%ld, %ld]", name, min, max);
        return PL_ERR_CONFIG;
    }
    *out = n;
    return PL_OK;
}

int pl_cfg_bool(const char *name, int def, int *out)
{
    static const char *const yes[] = {"1", "true", "yes", "on"};
    static const char *const no[] = {"0", "false", "no", "off"};
    const char *v = pl_cfg_str(name, NULL);
    *out = def;
    if (v == NULL) {
        return PL_OK;
    }
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(v, yes[i]) == 0) {
            *out = 1;
            return PL_OK;
        }
        if (strcasecmp(v, no[i]) == 0) {
            *out = 0;
            return PL_OK;
        }
    }
    pl_log_error("config_invalid", "%s must be a boolean (1/0, true/false)", name);
    return PL_ERR_CONFIG;
}

int pl_read_file(const char *path, size_t max, char **out, size_t *len)
{
    int rc = PL_OK;
    pl_buf_t b;
    pl_buf_init(&b, max);
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        return errno == ENOENT ? PL_ERR_NOTFOUND : PL_ERR_IO;
    }
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
        rc = pl_buf_append(&b, chunk, n);
        if (rc != PL_OK) {
            goto out;
        }
    }
    if (ferror(f)) {
        rc = PL_ERR_IO;
        goto out;
    }
    if (len != NULL) {
        *len = b.len;
    }
    *out = pl_buf_detach(&b);
    rc = *out ? PL_OK : PL_ERR_NOMEM;
out:
    fclose(f);
    pl_buf_free(&b);
    return rc;
}

void pl_block_signals(sigset_t *set)
{
    sigemptyset(set);
    sigaddset(set, SIGTERM);
    sigaddset(set, SIGINT);
    pthread_sigmask(SIG_BLOCK, set, NULL);
    signal(SIGPIPE, SIG_IGN);
}
