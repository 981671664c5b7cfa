/*
 * Envelope parsing and building. Every limit that protects the gateway from a client (depth,
 * sizes, field types) is enforced here, before any other code sees the data.
 */
#include "parley/proto.h"
#include "parley/enc.h"
#include "parley/err.h"

#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int pl_username_normalize(const char *in, char *out)
{
    size_t n = in ? strnlen(in, PL_USERNAME_MAX + 1) : 0;
    if (n < 3 || n > PL_USERNAME_MAX) {
        return PL_ERR_INVAL;
    }
    for (size_t i = 0; i < n; i++) {
        char c = in[i];
        if (c >= 'A' && c <= 'Z') {
            c = (char)(c - 'A' + 'a');
        }
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
              c == '-')) {
            return PL_ERR_INVAL;
        }
        out[i] = c;
    }
    out[n] = '\0';
    return PL_OK;
}

void pl_conv_id(const char *a, const char *b, char out[PL_CONV_ID_LEN])
{
    if (strcmp(a, b) <= 0) {
        snprintf(out, 72, "d:%s:%s", a, b);
    } else {
        snprintf(out, 72, "d:%s:%s", b, a);
    }
}

void pl_user_conv(const char *user, char out[PL_CONV_ID_LEN])
{
    snprintf(out, PL_CONV_ID_LEN, "u:%s", user);
}

#define GROUP_ID_DIGITS 26
static const char crockford[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

static int group_id_ok(const char *id)
{
    size_t n = strlen(id);
    for (size_t i = 0; i < n; i++) {
        if (strchr(crockford, id[i]) == NULL || id[i] == '\0') {
            return 0;
        }
    }
    return n == GROUP_ID_DIGITS;
}

int pl_conv_kind(const char *conv)
{
    char a[PL_USERNAME_LEN], b[PL_USERNAME_LEN];
    if (conv == NULL || strnlen(conv, PL_CONV_ID_LEN) >= PL_CONV_ID_LEN) {
        return 0;
    }
    if (strncmp(conv, "g:", 2) == 0) {
        return group_id_ok(conv + 2) ? 'g' : 0;
    }
    if (strncmp(conv, "u:", 2) == 0) {
        return pl_username_normalize(conv + 2, a) == PL_OK && strcmp(a, conv + 2) == 0 ? 'u' : 0;
    }
    const char *colon = strncmp(conv, "d:", 2) == 0 ? strchr(conv + 2, ':') : NULL;
    if (colon == NULL || (size_t)(colon - conv - 2) > PL_USERNAME_MAX) {
        return 0;
    }
    char first[PL_USERNAME_LEN];
    memcpy(first, conv + 2, (size_t)(colon - conv - 2));
    first[colon - conv - 2] = '\0';
    if (pl_username_normalize(first, a) != PL_OK || strcmp(a, first) != 0 ||
        pl_username_normalize(colon + 1, b) != PL_OK || strcmp(b, colon + 1) != 0 ||
        strcmp(a, b) >= 0) {
        return 0;
    }
    return 'd';
}

void pl_group_conv(const char *owner, const char *client_id, char out[PL_CONV_ID_LEN])
{
    unsigned char h[SHA256_DIGEST_LENGTH];
    char in[PL_USERNAME_MAX + 1 + PL_MAX_CLIENT_ID + 8];
    int n = snprintf(in, sizeof(in), "group\n%s\n%s", owner, client_id);
    SHA256((const unsigned char *)in, (size_t)n < sizeof(in) ? (size_t)n : sizeof(in) - 1, h);
    out[0] = 'g';
    out[1] = ':';
    /* 26 digits of 5 bits each: the first 130 bits of the hash. */
    for (int i = 0; i < GROUP_ID_DIGITS; i++) {
        int bit = i * 5;
        unsigned v = ((unsigned)h[bit / 8] << 8 | h[bit / 8 + 1]) >> (11 - bit % 8);
        out[2 + i] = crockford[v & 31];
    }
    out[2 + GROUP_ID_DIGITS] = '\0';
}

int pl_policy_allows(const pl_policy_facts_t *f)
{
    if (f->receiver_missing) {
        return 1; /* existence is the gateway's question; nothing to protect here */
    }
    return !f->blocked && (f->accepted || !f->contacts_only);
}

void pl_msg_id(const char *sender, const char *client_id, char out[PL_MSG_ID_LEN])
{
    unsigned char h[SHA256_DIGEST_LENGTH];
    char in[PL_USERNAME_MAX + 1 + PL_MAX_CLIENT_ID + 1];
    /* A separator that cannot occur in a username keeps ("ab","c") apart from ("a","bc"). */
    int n = snprintf(in, sizeof(in), "%s\n%s", sender, client_id);
    SHA256((const unsigned char *)in, (size_t)n < sizeof(in) ? (size_t)n : sizeof(in) - 1, h);
    pl_hex_encode(h, 16, out);
}

int pl_json_depth_ok(const char *p, size_t len, int max)
{
    int depth = 0;
    int in_str = 0;
    for (size_t i = 0; i < len; i++) {
        char c = p[i];
        if (in_str) {
            if (c == '\\') {
                i++;
            } else if (c == '"') {
                in_str = 0;
            }
        } else if (c == '"') {
            in_str = 1;
        } else if (c == '[' || c == '{') {
            if (++depth > max) {
                return 0;
            }
        } else if (c == ']' || c == '}') {
            depth--;
        }
    }
    return 1;
}

int pl_utf8_valid(const unsigned char *p, size_t len)
{
    size_t i = 0;
    while (i < len) {
        unsigned char c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t n;
        unsigned cp;
        if (c >= 0xc2 && c <= 0xdf) {
            n = 1;
            cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            n = 2;
            cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 3;
            cp = c & 0x07;
        } else {
            return 0;
        }
        if (len - i <= n) {
            return 0;
        }
        for (size_t k = 1; k <= n; k++) {
            if ((p[i + k] & 0xc0) != 0x80) {
                return 0;
            }
            cp = cp << 6 | (p[i + k] & 0x3f);
        }
        if ((n == 2 && cp < 0x800) || (n == 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
            (cp >= 0xd800 && cp <= 0xdfff)) {
            return 0;
        }
        i += n + 1;
    }
    return 1;
}

static int client_id_ok(const char *s, size_t len)
{
    if (len == 0 || len > PL_MAX_CLIENT_ID ||
        strncmp(s, PL_SYSTEM_CLIENT_ID_PREFIX, sizeof(PL_SYSTEM_CLIENT_ID_PREFIX) - 1) == 0) {
        return 0;
    }
    for (size_t i = 0; i < len; i++) {
        if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e) {
            return 0;
        }
    }
    return 1;
}

void pl_frame_clear(pl_frame_t *f)
{
    json_decref(f->root);
    memset(f, 0, sizeof(*f));
}

/* The kind of a frame's "conv" (pl_conv_kind), 0 when it is not a string without NULs. */
static int conv_field_kind(json_t *conv)
{
    return json_is_string(conv) && json_string_length(conv) == strlen(json_string_value(conv))
               ? pl_conv_kind(json_string_value(conv))
               : 0;
}

/* The fields of a read or delivered frame: NULL when good, else why not. */
static const char *parse_cursor(pl_frame_t *f)
{
    json_t *conv = json_object_get(f->root, "conv");
    json_t *seq = json_object_get(f->root, "seq");
    int kind = conv_field_kind(conv);
    if (kind == 0) {
        return "\"conv\" must be a conversation id";
    }
    if (!json_is_integer(seq) || json_integer_value(seq) < 1 ||
        json_integer_value(seq) > PL_SEQ_MAX) {
        return "\"seq\" must be a positive integer";
    }
    memcpy(f->conv, json_string_value(conv), json_string_length(conv) + 1);
    f->seq = (long long)json_integer_value(seq);
    return NULL;
}

/* The fields of a typing frame: NULL when good, else why not. */
static const char *parse_typing(pl_frame_t *f)
{
    json_t *conv = json_object_get(f->root, "conv");
    const char *state = json_string_value(json_object_get(f->root, "state"));
    int kind = conv_field_kind(conv);
    if (kind != 'd' && kind != 'g') {
        return "\"conv\" must be a d: or g: conversation id";
    }
    if (state == NULL || (strcmp(state, "start") != 0 && strcmp(state, "stop") != 0)) {
        return "\"state\" must be \"start\" or \"stop\"";
    }
    memcpy(f->conv, json_string_value(conv), json_string_length(conv) + 1);
    f->typing = strcmp(state, "start") == 0;
    return NULL;
}

/* A frame's client_id into f: PL_OK, or PL_ERR_INVAL with *why. */
static int parse_client_id(pl_frame_t *f, const char **why)
{
    json_t *cid = json_object_get(f->root, "client_id");
    if (!json_is_string(cid) || !client_id_ok(json_string_value(cid), json_string_length(cid))) {
        *why = "client_id must be 1 to 64 printable ASCII characters, not starting with "
               "\"" PL_SYSTEM_CLIENT_ID_PREFIX "\"";
        return PL_ERR_INVAL;
    }
    memcpy(f->client_id, json_string_value(cid), json_string_length(cid) + 1);
    return PL_OK;
}

/* A frame's content into f: PL_OK, or PL_ERR_INVAL / PL_ERR_TOOBIG with *why. */
static int parse_content(pl_frame_t *f, const char **why)
{
    json_t *content = json_object_get(f->root, "content");
    if (!json_is_string(content) || json_string_length(content) == 0) {
        *why = "content must be a non-empty string";
        return PL_ERR_INVAL;
    }
    if (json_string_length(content) > PL_MAX_CONTENT) {
        *why = "content is larger than 60 KiB";
        return PL_ERR_TOOBIG;
    }
    f->content = json_string_value(content);
    f->content_len = json_string_length(content);
    return PL_OK;
}

/* The fields of an edit (with content) or a recall frame. */
static int parse_change(pl_frame_t *f, int edit, const char **why)
{
    int rc = parse_client_id(f, why);
    json_t *conv = json_object_get(f->root, "conv");
    json_t *target = json_object_get(f->root, "target_seq");
    int kind = conv_field_kind(conv);
    if (rc != PL_OK) {
        return rc;
    }
    if (kind != 'd' && kind != 'g') {
        *why = "\"conv\" must be a d: or g: conversation id";
        return PL_ERR_INVAL;
    }
    if (!json_is_integer(target) || json_integer_value(target) < 1 ||
        json_integer_value(target) > PL_SEQ_MAX) {
        *why = "\"target_seq\" must be a positive integer";
        return PL_ERR_INVAL;
    }
    memcpy(f->conv, json_string_value(conv), json_string_length(conv) + 1);
    f->target_seq = (long long)json_integer_value(target);
    return edit ? parse_content(f, why) : PL_OK;
}

/* The fields of a send frame: PL_OK, or PL_ERR_INVAL / PL_ERR_TOOBIG with *why. */
static int parse_send(pl_frame_t *f, const char **why)
{
    json_t *to = json_object_get(f->root, "to");
    json_t *conv = json_object_get(f->root, "conv");
    if (parse_client_id(f, why) != PL_OK) {
        return PL_ERR_INVAL;
    }
    if ((to == NULL) == (conv == NULL)) {
        *why = "a send names either \"to\" (a username) or \"conv\" (a conversation id)";
        return PL_ERR_INVAL;
    }
    if (conv != NULL) {
        int kind = conv_field_kind(conv);
        if (kind != 'd' && kind != 'g') {
            *why = "\"conv\" must be a d: or g: conversation id";
            return PL_ERR_INVAL;
        }
        memcpy(f->conv, json_string_value(conv), json_string_length(conv) + 1);
    } else if (!json_is_string(to) || json_string_length(to) != strlen(json_string_value(to)) ||
               pl_username_normalize(json_string_value(to), f->to) != PL_OK) {
        *why = "\"to\" must be a username";
        return PL_ERR_INVAL;
    }
    return parse_content(f, why);
}

int pl_frame_parse(const char *data, size_t len, pl_frame_t *f, const char **why)
{
    memset(f, 0, sizeof(*f));
    *why = NULL;
    if (len > PL_MAX_FRAME) {
        *why = "frame is larger than 64 KiB";
        return PL_ERR_TOOBIG;
    }
    if (!pl_json_depth_ok(data, len, PL_MAX_JSON_DEPTH)) {
        *why = "JSON nests too deeply";
        return PL_ERR_INVAL;
    }
    int rc = PL_ERR_INVAL;
    f->root = json_loadb(data, len, JSON_REJECT_DUPLICATES, NULL);
    const char *type = json_string_value(json_object_get(f->root, "type"));
    if (!json_is_object(f->root)) {
        *why = "frame is not a JSON object";
    } else if (type == NULL) {
        *why = "frame has no \"type\"";
    } else if (strcmp(type, "auth") == 0) {
        f->type = PL_FRAME_AUTH;
        f->token = json_string_value(json_object_get(f->root, "token"));
        if (f->token == NULL || *f->token == '\0') {
            *why = "auth frame needs a \"token\" string";
        } else {
            rc = PL_OK;
        }
    } else if (strcmp(type, PL_CURSOR_READ) == 0 || strcmp(type, PL_CURSOR_DELIVERED) == 0) {
        f->type = strcmp(type, PL_CURSOR_READ) == 0 ? PL_FRAME_READ : PL_FRAME_DELIVERED;
        rc = (*why = parse_cursor(f)) == NULL ? PL_OK : PL_ERR_INVAL;
    } else if (strcmp(type, "typing") == 0) {
        f->type = PL_FRAME_TYPING;
        rc = (*why = parse_typing(f)) == NULL ? PL_OK : PL_ERR_INVAL;
    } else if (strcmp(type, "send") == 0) {
        f->type = PL_FRAME_SEND;
        rc = parse_send(f, why);
    } else if (strcmp(type, PL_KIND_EDIT) == 0 || strcmp(type, PL_KIND_RECALL) == 0) {
        f->type = strcmp(type, PL_KIND_EDIT) == 0 ? PL_FRAME_EDIT : PL_FRAME_RECALL;
        rc = parse_change(f, f->type == PL_FRAME_EDIT, why);
    } else {
        *why = "unknown frame type";
    }
    if (rc != PL_OK) {
        json_decref(f->root);
        memset(f, 0, sizeof(*f));
    }
    return rc;
}

static int copy_field(json_t *o, const char *key, char *dst, size_t cap, int required)
{
    json_t *v = json_object_get(o, key);
    if (v == NULL && !required) {
        dst[0] = '\0';
        return 1;
    }
    if (!json_is_string(v) || json_string_length(v) >= cap ||
        json_string_length(v) != strlen(json_string_value(v))) {
        return 0;
    }
    memcpy(dst, json_string_value(v), json_string_length(v) + 1);
    return 1;
}

void pl_msg_clear(pl_msg_t *m)
{
    json_decref(m->root);
    memset(m, 0, sizeof(*m));
}

/* kind (absent: text), event (system items only, an object) and refused. 0 when malformed. */
static int kind_from_json(json_t *o, pl_msg_t *m)
{
    json_t *event = json_object_get(o, "event");
    if (!copy_field(o, "kind", m->kind, sizeof(m->kind), 0) ||
        !copy_field(o, "refused", m->refused, sizeof(m->refused), 0)) {
        return 0;
    }
    m->replay = json_is_true(json_object_get(o, "replay"));
    if (m->kind[0] == '\0') {
        memcpy(m->kind, PL_KIND_TEXT, sizeof(PL_KIND_TEXT));
    }
    if (strcmp(m->kind, PL_KIND_SYSTEM) == 0) {
        m->event = event;
        return json_is_object(event);
    }
    if (strcmp(m->kind, PL_KIND_EDIT) == 0 || strcmp(m->kind, PL_KIND_RECALL) == 0) {
        json_t *target = json_object_get(o, "target_seq");
        m->target_seq = json_is_integer(target) ? (long long)json_integer_value(target) : 0;
        return m->target_seq > 0 && event == NULL;
    }
    return strcmp(m->kind, PL_KIND_TEXT) == 0 && event == NULL;
}

int pl_msg_from_json(json_t *o, pl_msg_t *m)
{
    memset(m, 0, sizeof(*m));
    json_t *content = json_object_get(o, "content");
    json_t *ts = json_object_get(o, "timestamp");
    json_t *seq = json_object_get(o, "seq");
    json_t *origin = json_object_get(o, "origin");
    if (!json_is_object(o) || !copy_field(o, "msg_id", m->msg_id, sizeof(m->msg_id), 1) ||
        !copy_field(o, "conv", m->conv, sizeof(m->conv), 1) ||
        !copy_field(o, "sender", m->sender, sizeof(m->sender), 1) ||
        !copy_field(o, "receiver", m->receiver, sizeof(m->receiver), 1) ||
        !copy_field(o, "client_id", m->client_id, sizeof(m->client_id), 1) ||
        !json_is_string(content) || !json_is_integer(ts) ||
        (seq != NULL && !json_is_integer(seq))) {
        memset(m, 0, sizeof(*m));
        return PL_ERR_INVAL;
    }
    m->content = json_string_value(content);
    m->content_len = json_string_length(content);
    m->ts_ms = (long long)json_integer_value(ts);
    m->seq = seq ? (long long)json_integer_value(seq) : 0;
    if (!kind_from_json(o, m)) {
        memset(m, 0, sizeof(*m));
        return PL_ERR_INVAL;
    }
    if (json_is_object(origin)) {
        copy_field(origin, "gateway", m->origin_gw, sizeof(m->origin_gw), 0);
        json_t *conn = json_object_get(origin, "conn");
        m->origin_conn = json_is_integer(conn) ? (unsigned long long)json_integer_value(conn) : 0;
    }
    json_t *mver = json_object_get(o, "mver");
    json_t *pmver = json_object_get(o, "pmver");
    m->mver = json_is_integer(mver) ? (long long)json_integer_value(mver) : 0;
    m->pmver = json_is_integer(pmver) ? (long long)json_integer_value(pmver) : 0;
    return PL_OK;
}

int pl_msg_parse(const char *data, size_t len, pl_msg_t *m)
{
    memset(m, 0, sizeof(*m));
    if (!pl_json_depth_ok(data, len, PL_MAX_JSON_DEPTH)) {
        return PL_ERR_INVAL;
    }
    json_t *root = json_loadb(data, len, JSON_REJECT_DUPLICATES, NULL);
    if (pl_msg_from_json(root, m) != PL_OK) {
        json_decref(root);
        return PL_ERR_INVAL;
    }
    m->root = root;
    return PL_OK;
}

/* Adds m's kind (text when unset) and its event to o (NULL accepted). */
static void add_kind(json_t *o, const pl_msg_t *m)
{
    if (o == NULL) {
        return;
    }
    json_object_set_new(o, "kind", json_string(m->kind[0] ? m->kind : PL_KIND_TEXT));
    if (m->event != NULL) {
        json_object_set(o, "event", m->event);
    }
}

char *pl_msg_record(const pl_msg_t *m)
{
    json_t *o =
        json_pack("{s:s,s:s,s:s,s:s,s:s%,s:s,s:I,s:{s:s,s:I}}", "msg_id", m->msg_id, "conv",
                  m->conv, "sender", m->sender, "receiver", m->receiver, "content", m->content,
                  m->content_len, "client_id", m->client_id, "timestamp", (json_int_t)m->ts_ms,
                  "origin", "gateway", m->origin_gw, "conn", (json_int_t)m->origin_conn);
    if (o != NULL && m->seq > 0) {
        json_object_set_new(o, "seq", json_integer((json_int_t)m->seq));
    }
    add_kind(o, m);
    if (o != NULL && m->target_seq > 0) {
        json_object_set_new(o, "target_seq", json_integer((json_int_t)m->target_seq));
    }
    if (o != NULL && m->mver > 0) {
        json_object_set_new(o, "mver", json_integer((json_int_t)m->mver));
    }
    if (o != NULL && m->pmver > 0) {
        json_object_set_new(o, "pmver", json_integer((json_int_t)m->pmver));
    }
    if (o != NULL && m->refused[0]) {
        json_object_set_new(o, "refused", json_string(m->refused));
    }
    if (o != NULL && m->replay) {
        json_object_set_new(o, "replay", json_true());
    }
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return s;
}

char *pl_msg_frame_text(const pl_msg_t *m)
{
    json_t *frame = pl_msg_json(m, 1);
    char *text = frame ? json_dumps(frame, JSON_COMPACT) : NULL;
    json_decref(frame);
    return text;
}

json_t *pl_msg_json(const pl_msg_t *m, int frame)
{
    char when[32];
    pl_iso8601_ms(m->ts_ms, when);
    json_t *o =
        json_pack("{s:s,s:s,s:I,s:s,s:s,s:s%,s:s,s:s}", "msg_id", m->msg_id, "conv", m->conv, "seq",
                  (json_int_t)m->seq, "sender", m->sender, "receiver", m->receiver, "content",
                  m->content, m->content_len, "timestamp", when, "client_id", m->client_id);
    add_kind(o, m);
    if (o != NULL && m->target_seq > 0) {
        json_object_set_new(o, "target_seq", json_integer((json_int_t)m->target_seq));
    }
    if (o != NULL && m->edited_at_ms > 0) {
        pl_iso8601_ms(m->edited_at_ms, when);
        json_object_set_new(o, "edited_at", json_string(when));
    }
    if (o != NULL && m->recalled) {
        json_object_set_new(o, "recalled", json_true());
    }
    if (o != NULL && frame) {
        json_object_set_new(o, "type", json_string("msg"));
    }
    return o;
}

char *pl_frame_ack(const char *client_id, const char *msg_id, const char *conv, long long seq)
{
    json_t *o = json_pack("{s:s,s:s,s:s}", "type", "ack", "client_id", client_id, "msg_id", msg_id);
    if (o != NULL && conv != NULL && seq > 0) {
        json_object_set_new(o, "conv", json_string(conv));
        json_object_set_new(o, "seq", json_integer((json_int_t)seq));
    }
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return s;
}

char *pl_frame_cursor_ack(const char *kind, const char *conv, long long seq)
{
    json_t *o = json_pack("{s:s,s:s,s:s,s:I}", "type", "ack", "cursor", kind, "conv", conv, "seq",
                          (json_int_t)seq);
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return s;
}

char *pl_frame_typing(const char *conv, const char *user, int start)
{
    json_t *o = json_pack("{s:s,s:s,s:s,s:s}", "type", "typing", "conv", conv, "user", user,
                          "state", start ? "start" : "stop");
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return s;
}

char *pl_frame_receipt(const char *conv, const char *user, const char *kind, long long seq)
{
    json_t *o = json_pack("{s:s,s:s,s:s,s:s,s:I}", "type", "receipt", "conv", conv, "user", user,
                          "kind", kind, "seq", (json_int_t)seq);
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return s;
}

char *pl_cursor_record(const pl_cursor_t *c)
{
    json_t *o =
        json_pack("{s:s,s:s,s:s,s:I,s:I,s:{s:s,s:I}}", "kind", c->kind, "conv", c->conv, "user",
                  c->user, "seq", (json_int_t)c->seq, "timestamp", (json_int_t)c->ts_ms, "origin",
                  "gateway", c->origin_gw, "conn", (json_int_t)c->origin_conn);
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return s;
}

int pl_cursor_parse(const char *data, size_t len, pl_cursor_t *c)
{
    memset(c, 0, sizeof(*c));
    json_t *o = pl_json_depth_ok(data, len, PL_MAX_JSON_DEPTH)
                    ? json_loadb(data, len, JSON_REJECT_DUPLICATES, NULL)
                    : NULL;
    json_t *seq = json_object_get(o, "seq"), *ts = json_object_get(o, "timestamp");
    json_t *origin = json_object_get(o, "origin");
    int ok = json_is_object(o) && copy_field(o, "kind", c->kind, sizeof(c->kind), 1) &&
             copy_field(o, "conv", c->conv, sizeof(c->conv), 1) &&
             copy_field(o, "user", c->user, sizeof(c->user), 1) && json_is_integer(seq) &&
             json_integer_value(seq) > 0 && json_is_integer(ts) &&
             (strcmp(c->kind, PL_CURSOR_READ) == 0 || strcmp(c->kind, PL_CURSOR_DELIVERED) == 0) &&
             pl_conv_kind(c->conv) != 0;
    if (ok) {
        c->seq = (long long)json_integer_value(seq);
        c->ts_ms = (long long)json_integer_value(ts);
        copy_field(origin, "gateway", c->origin_gw, sizeof(c->origin_gw), 0);
        json_t *conn = json_object_get(origin, "conn");
        c->origin_conn = json_is_integer(conn) ? (unsigned long long)json_integer_value(conn) : 0;
    }
    json_decref(o);
    if (!ok) {
        memset(c, 0, sizeof(*c));
        return PL_ERR_INVAL;
    }
    return PL_OK;
}

char *pl_frame_error(const char *code, const char *message, const char *client_id,
                     long retry_after_ms)
{
    json_t *o = json_pack("{s:s,s:s,s:s}", "type", "error", "code", code, "message", message);
    if (o == NULL) {
        return NULL;
    }
    if (client_id != NULL && *client_id) {
        json_object_set_new(o, "client_id", json_string(client_id));
    }
    if (retry_after_ms > 0) {
        json_object_set_new(o, "retry_after_ms", json_integer(retry_after_ms));
    }
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return s;
}
