/*
 * libFuzzer driver for the WebSocket opening handshake and the identifiers taken from request
 * lines: pl_ws_check_request, pl_ws_accept, pl_ws_origin_allowed, and the username and
 * conversation id rules the REST paths rely on. The input is NUL-separated fields. Asserts
 * that an accepted key is the base64 of 16 bytes and that a parsed conversation id is the one
 * pl_conv_id makes from its members.
 */
#include "parley/err.h"
#include "parley/proto.h"
#include "parley/ws.h"
#include "store.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define NFIELDS 8

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 16384) {
        return -1; /* libmicrohttpd caps request headers far below this */
    }
    char *buf = malloc(size + 1);
    if (buf == NULL) {
        return 0;
    }
    memcpy(buf, data, size);
    buf[size] = '\0';
    const char *field[NFIELDS] = {NULL};
    char *p = buf;
    for (int i = 0; i < NFIELDS && p <= buf + size; i++) {
        field[i] = p;
        p += strlen(p) + 1;
    }
    const char *why = NULL;
    if (pl_ws_check_request(field[0], field[1], field[2], field[3], field[4], &why) == PL_OK) {
        if (field[4] == NULL || strlen(field[4]) != 24) {
            abort(); /* base64 of 16 bytes is 24 characters */
        }
        char accept[29];
        pl_ws_accept(field[4], accept);
        if (strlen(accept) != 28) {
            abort();
        }
    } else if (why == NULL) {
        abort();
    }
    (void)pl_ws_origin_allowed(field[5], field[6]);
    char a[PL_USERNAME_MAX + 1], b[PL_USERNAME_MAX + 1], conv[PL_CONV_ID_LEN];
    if (field[7] != NULL && st_conv_parse(field[7], a, b)) {
        /* A parsed id is canonical: built again from its members, it is the same. */
        if (strncmp(field[7], "u:", 2) == 0) {
            pl_user_conv(a, conv);
        } else {
            pl_conv_id(a, b, conv);
        }
        if (strcmp(conv, field[7]) != 0 || (conv[0] == 'u' && strcmp(a, b) != 0)) {
            abort();
        }
    }
    (void)st_query_num(field[7], 0);
    free(buf);
    return 0;
}
