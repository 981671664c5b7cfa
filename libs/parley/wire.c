/*
 * The Redis key builders of wire.h: the only place that spells the "parley:" prefix out.
 */
#include "parley/wire.h"
#include "parley/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define PREFIX_DELIVER "parley:deliver:"

static int build(char *out, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, PL_KEY_LEN, fmt, ap);
    va_end(ap);
    if (n < 0 || n >= PL_KEY_LEN) {
        out[0] = '\0';
        return PL_ERR_TOOBIG;
    }
    return PL_OK;
}

int pl_key_presence(char *out, const char *user)
{
    return build(out, "parley:presence:%s", user);
}

int pl_key_pstate(char *out, const char *user)
{
    return build(out, "parley:pstate:%s", user);
}

int pl_key_gwusers(char *out, const char *gw_id)
{
    return build(out, "parley:gwusers:%s", gw_id);
}

int pl_key_reap(char *out, const char *gw_id)
{
    return build(out, "parley:reap:%s", gw_id);
}

int pl_key_gateway(char *out, const char *gw_id)
{
    return build(out, "parley:gw:%s", gw_id);
}

int pl_key_deliver(char *out, const char *gw_id)
{
    return build(out, PREFIX_DELIVER "%s", gw_id);
}

int pl_key_revoked(char *out, const char *sid)
{
    return build(out, "parley:revoked:%s", sid);
}

int pl_key_ratelimit(char *out, const char *what, const char *who)
{
    return build(out, "parley:rl:%s:%s", what, who);
}

int pl_key_policy(char *out, const char *user)
{
    return build(out, "parley:policy:%s", user);
}

int pl_key_convgw(char *out, const char *conv)
{
    return build(out, "parley:convgw:%s", conv);
}

int pl_key_intent(char *out, int partition)
{
    return build(out, PL_TOPIC_MESSAGES "/%d", partition);
}

int pl_is_deliver_channel(const char *channel)
{
    return strncmp(channel, PREFIX_DELIVER, sizeof(PREFIX_DELIVER) - 1) == 0;
}
