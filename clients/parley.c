/*
 * parley: the command-line client.
 *   parley register <user>        create an account (password from the terminal or stdin)
 *   parley login <user>           log in; the session is saved with mode 0600
 *   parley logout                 end the saved session everywhere
 *   parley send <user> <text…>    send one message and wait for its ack
 *   parley chat <user>            interactive: live messages in, typed lines out
 *   parley history <user> [n]     the last n messages with <user> (default 20)
 *   (send, chat and history take a group id, g:<id>, in place of <user>)
 *   parley recent [n]             your n most recent messages (default 20)
 *   parley contacts               your contacts and requests, and whom you blocked
 *   parley add <user>             ask <user> to be a contact (accepts if they asked you)
 *   parley accept <user>          accept <user>'s request
 *   parley remove <user>          remove a contact, or decline or cancel a request
 *   parley block|unblock <user>   stop or allow messages and presence between you
 *   parley group …                create, add, remove, leave, members, list (cli_groups.c)
 * The server is $PARLEY_URL (default http://127.0.0.1:8000); the session file lives in
 * $PARLEY_CONFIG_DIR, else $XDG_CONFIG_HOME/parley, else ~/.config/parley.
 */
#include "cli.h"
#include "client.h"
#include "parley/enc.h"
#include "parley/err.h"
#include "parley/proto.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

static char session_path[1024];
static json_t *session; /* {url, username, access_token, refresh_token, session_id} */

static void free_session(void)
{
    json_decref(session);
    session = NULL;
}

static void die(const char *msg)
{
    fprintf(stderr, "parley: %s\n", msg);
    exit(1);
}

static const char *server_url(void)
{
    const char *u = getenv("PARLEY_URL");
    return u && *u ? u : "http://127.0.0.1:8000";
}

static void config_path(void)
{
    const char *dir = getenv("PARLEY_CONFIG_DIR");
    char buf[900];
    if (dir == NULL || !*dir) {
        const char *xdg = getenv("XDG_CONFIG_HOME");
        const char *home = getenv("HOME");
        if (xdg && *xdg) {
            snprintf(buf, sizeof(buf), "%s/parley", xdg);
        } else {
            snprintf(buf, sizeof(buf), "%s/.config/parley", home ? home : ".");
        }
        dir = buf;
    }
    char parent[900];
    snprintf(parent, sizeof(parent), "%s", dir);
    char *slash = strrchr(parent, '/');
    if (slash != NULL && slash != parent) {
        *slash = '\0';
        mkdir(parent, 0700);
    }
    mkdir(dir, 0700);
    snprintf(session_path, sizeof(session_path), "%s/session.json", dir);
}

static void load_session(void)
{
    session = json_load_file(session_path, 0, NULL);
}

/* Written with mode 0600 from the start: the refresh token is a password. */
static void save_session(void)
{
    char tmp[1100];
    snprintf(tmp, sizeof(tmp), "%s.tmp", session_path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        die("cannot write the session file");
    }
    fchmod(fd, 0600);
    char *text = json_dumps(session, JSON_INDENT(2));
    ssize_t w = text ? write(fd, text, strlen(text)) : -1;
    free(text);
    close(fd);
    if (w < 0 || rename(tmp, session_path) != 0) {
        die("cannot write the session file");
    }
}

static const char *sget(const char *k)
{
    return json_string_value(json_object_get(session, k));
}

static void print_error(int status, json_t *resp)
{
    const char *msg = json_string_value(json_object_get(json_object_get(resp, "error"), "message"));
    if (status == 0) {
        fprintf(stderr, "parley: cannot reach %s\n", server_url());
    } else {
        fprintf(stderr, "parley: %s (HTTP %d)\n", msg ? msg : "request failed", status);
    }
}

static void read_password(char *buf, size_t cap, const char *prompt)
{
    struct termios old, noecho;
    int tty = isatty(STDIN_FILENO);
    if (tty) {
        fprintf(stderr, "%s", prompt);
        tcgetattr(STDIN_FILENO, &old);
        noecho = old;
        noecho.c_lflag &= ~(tcflag_t)ECHO;
        tcsetattr(STDIN_FILENO, TCSANOW, &noecho);
    }
    if (fgets(buf, (int)cap, stdin) == NULL) {
        buf[0] = '\0';
    }
    buf[strcspn(buf, "\r\n")] = '\0';
    if (tty) {
        tcsetattr(STDIN_FILENO, TCSANOW, &old);
        fprintf(stderr, "\n");
    }
}

/* A client with the saved token; refreshes it once when the server says it expired. */
static pc_client_t *client(int need_login)
{
    pc_client_t *c = pc_new(server_url());
    if (c == NULL) {
        die("PARLEY_URL must look like http://host:port");
    }
    if (need_login) {
        if (sget("access_token") == NULL) {
            die("not logged in: run 'parley login <user>' first");
        }
        pc_set_token(c, sget("access_token"));
    }
    return c;
}

static int refresh(pc_client_t *c)
{
    int status;
    json_t *resp = NULL;
    const char *rt = sget("refresh_token");
    if (rt == NULL) {
        return PL_ERR_UNAUTH;
    }
    pc_set_token(c, NULL);
    json_t *body = json_pack("{s:s}", "refresh_token", rt);
    int rc = pc_rest(c, "POST", "/v1/auth/refresh", body, &status, &resp);
    json_decref(body);
    if (rc != PL_OK || status != 200) {
        json_decref(resp);
        return PL_ERR_UNAUTH;
    }
    json_object_set(session, "access_token", json_object_get(resp, "access_token"));
    json_object_set(session, "refresh_token", json_object_get(resp, "refresh_token"));
    save_session();
    pc_set_token(c, sget("access_token"));
    json_decref(resp);
    return PL_OK;
}

/* A REST call that refreshes the access token once on a 401. */
static int rest(pc_client_t *c, const char *method, const char *path, json_t *body, int *status,
                json_t **out)
{
    int rc = pc_rest(c, method, path, body, status, out);
    if (rc == PL_OK && *status == 401 && refresh(c) == PL_OK) {
        json_decref(*out);
        rc = pc_rest(c, method, path, body, status, out);
    }
    return rc;
}

static int connect_ws(pc_client_t *c)
{
    int rc = pc_connect(c);
    if (rc == PL_ERR_UNAUTH && refresh(c) == PL_OK) {
        rc = pc_connect(c);
    }
    return rc;
}

static void fmt_time(const char *iso, char *out, size_t cap)
{
    struct tm tm;
    memset(&tm, 0, sizeof(tm));
    if (iso == NULL || strptime(iso, "%Y-%m-%dT%H:%M:%S", &tm) == NULL) {
        snprintf(out, cap, "?");
        return;
    }
    time_t t = timegm(&tm);
    struct tm local, today;
    time_t now = time(NULL);
    localtime_r(&t, &local);
    localtime_r(&now, &today);
    strftime(out, cap,
             local.tm_yday == today.tm_yday && local.tm_year == today.tm_year ? "%H:%M"
                                                                              : "%Y-%m-%d %H:%M",
             &local);
}

/* A group's system item in words (DESIGN 7.4), into out; 0 when ev is not one. by: who made
 * the change (the item's sender). */
static int describe_group_event(json_t *ev, const char *by, char *out, size_t cap)
{
    const char *type = json_string_value(json_object_get(ev, "type"));
    const char *user = json_string_value(json_object_get(ev, "user"));
    const char *name = json_string_value(json_object_get(ev, "name"));
    const char *conv = json_string_value(json_object_get(ev, "conv"));
    char *users =
        json_dumps(json_object_get(ev, json_object_get(ev, "users") ? "users" : "members"),
                   JSON_COMPACT | JSON_ENCODE_ANY);
    int known = 1;
    if (type == NULL) {
        known = 0;
    } else if (strcmp(type, "group_created") == 0) {
        snprintf(out, cap, "%s created the group \"%s\" with %s", by, name ? name : "",
                 users ? users : "?");
    } else if (strcmp(type, "members_added") == 0) {
        snprintf(out, cap, "%s added %s", by, users ? users : "?");
    } else if (strcmp(type, "member_removed") == 0 && user != NULL) {
        if (strcmp(user, by) == 0) {
            snprintf(out, cap, "%s left", user);
        } else {
            snprintf(out, cap, "%s removed %s", by, user);
        }
    } else if (strcmp(type, "group_updated") == 0) {
        const char *policy = json_string_value(json_object_get(ev, "post_policy"));
        snprintf(out, cap, "%s changed the group:%s%s%s%s", by, name ? " name \"" : "",
                 name ? name : "", name ? "\"" : "",
                 policy == NULL                  ? ""
                 : strcmp(policy, "admins") == 0 ? " only admins may post"
                                                 : " everyone may post");
    } else if (strcmp(type, "role_changed") == 0 && user != NULL) {
        snprintf(out, cap, "%s made %s %s", by, user,
                 json_string_value(json_object_get(ev, "role")) ?: "?");
    } else if (strcmp(type, "group_added") == 0) {
        const char *who = json_string_value(json_object_get(ev, "by"));
        snprintf(out, cap, "%s added you to \"%s\": parley chat %s", who ? who : "?",
                 name ? name : "", conv ? conv : "?");
    } else if (strcmp(type, "group_removed") == 0) {
        snprintf(out, cap, "you are no longer in \"%s\" (%s)", name ? name : "", conv ? conv : "?");
    } else {
        known = 0;
    }
    free(users);
    return known;
}

/* A system item in words, into out. */
static void describe_event(json_t *ev, const char *sender, char *out, size_t cap)
{
    if (describe_group_event(ev, sender ? sender : "?", out, cap)) {
        return;
    }
    const char *type = json_string_value(json_object_get(ev, "type"));
    const char *user = json_string_value(json_object_get(ev, "user"));
    const char *state = json_string_value(json_object_get(ev, "state"));
    const char *by = json_string_value(json_object_get(ev, "by"));
    user = user ? user : "?";
    if (type && strcmp(type, "contact") == 0 && state && strcmp(state, "incoming") == 0) {
        snprintf(out, cap, "%s asks to be your contact (parley accept %s)", user, user);
    } else if (type && strcmp(type, "contact") == 0 && state && strcmp(state, "outgoing") == 0) {
        snprintf(out, cap, "contact request sent to %s", user);
    } else if (type && strcmp(type, "contact") == 0 && state && strcmp(state, "accepted") == 0) {
        snprintf(out, cap, "%s is now a contact", user);
    } else if (type && strcmp(type, "contact") == 0) {
        snprintf(out, cap, "%s is no longer a contact (%s)", user,
                 by && strcmp(by, user) == 0 ? "by them" : "by you");
    } else if (type && strcmp(type, "block") == 0) {
        snprintf(out, cap, "you %s %s",
                 json_is_true(json_object_get(ev, "blocked")) ? "blocked" : "unblocked", user);
    } else if (type && strcmp(type, "settings") == 0) {
        char *text = json_dumps(json_object_get(ev, "settings"), JSON_COMPACT);
        snprintf(out, cap, "settings changed: %s", text ? text : "?");
        free(text);
    } else {
        snprintf(out, cap, "%s", type ? type : "change");
    }
}

/* What a chat follows besides the messages: the user's own last item (for /edit, /recall and
 * the receipts shown under it), how far the others have received and read it, the latest seq
 * shown (sent back as a read cursor), and who is typing. */
struct chat {
    const char *me;
    char conv[PL_CONV_ID_LEN];
    long long own, latest, read_sent, shown_delivered, shown_read;
    char typing[PL_USERNAME_MAX + 1];
};

/* What the frames of a send or a chat report to (the ud of print_msg and on_frame). */
struct send_wait {
    char cid[65];
    int done;
    int failed;
    const char *peer;  /* chat: whose presence to show */
    struct chat *chat; /* chat: receipts, typing, the user's last item */
};

static void print_msg(void *ud, json_t *m)
{
    struct send_wait *w = ud;
    struct chat *ch = w != NULL ? w->chat : NULL;
    char when[32];
    fmt_time(json_string_value(json_object_get(m, "timestamp")), when, sizeof(when));
    const char *kind = json_string_value(json_object_get(m, "kind"));
    const char *sender = json_string_value(json_object_get(m, "sender"));
    const char *content = json_string_value(json_object_get(m, "content"));
    long long seq = json_integer_value(json_object_get(m, "seq"));
    long long target = json_integer_value(json_object_get(m, "target_seq"));
    kind = kind ? kind : PL_KIND_TEXT;
    if (strcmp(kind, PL_KIND_SYSTEM) == 0) {
        char what[512];
        describe_event(json_object_get(m, "event"), sender, what, sizeof(what));
        printf("[%s] -- %s --\n", when, what);
    } else if (strcmp(kind, PL_KIND_EDIT) == 0) {
        printf("[%s] %s edited a message (#%lld): %s\n", when, sender, target, content);
    } else if (strcmp(kind, PL_KIND_RECALL) == 0) {
        printf("[%s] -- %s recalled a message (#%lld) --\n", when, sender, target);
    } else {
        int recalled = json_is_true(json_object_get(m, "recalled"));
        printf("[%s] %s: %s%s\n", when, sender, recalled ? "(recalled)" : content,
               json_object_get(m, "edited_at") && !recalled ? " (edited)" : "");
    }
    fflush(stdout);
    const char *conv = json_string_value(json_object_get(m, "conv"));
    if (ch != NULL && conv != NULL && strcmp(conv, ch->conv) == 0) {
        ch->latest = seq > ch->latest ? seq : ch->latest;
        if (sender != NULL && strcmp(sender, ch->me) == 0 && strcmp(kind, PL_KIND_TEXT) == 0) {
            ch->own = seq;
        }
        if (sender != NULL && strcmp(sender, ch->typing) == 0) {
            ch->typing[0] = '\0'; /* their message ends their typing */
        }
    }
}

/* A receipt or a typing frame of the chat's conversation, shown under the user's last item. */
static void chat_frame(struct chat *ch, json_t *f, const char *type)
{
    const char *user = json_string_value(json_object_get(f, "user"));
    const char *conv = json_string_value(json_object_get(f, "conv"));
    if (ch == NULL || user == NULL || conv == NULL || strcmp(conv, ch->conv) != 0 ||
        strcmp(user, ch->me) == 0) {
        return;
    }
    if (strcmp(type, "typing") == 0) {
        int start = strcmp(json_string_value(json_object_get(f, "state")) ?: "", "start") == 0;
        if (start && strcmp(ch->typing, user) != 0) {
            fprintf(stderr, "-- %s is typing… --\n", user);
        }
        snprintf(ch->typing, sizeof(ch->typing), "%s", start ? user : "");
        return;
    }
    const char *kind = json_string_value(json_object_get(f, "kind"));
    long long seq = json_integer_value(json_object_get(f, "seq"));
    if (ch->own == 0 || seq < ch->own || kind == NULL) {
        return;
    }
    if (strcmp(kind, "read") == 0 && ch->shown_read < ch->own) {
        printf("   ✓✓ read by %s\n", user);
        ch->shown_read = ch->shown_delivered = ch->own;
    } else if (strcmp(kind, "delivered") == 0 && ch->shown_delivered < ch->own) {
        printf("   ✓ delivered\n");
        ch->shown_delivered = ch->own;
    }
    fflush(stdout);
}

static int cmd_register(int argc, char **argv, int login)
{
    char pw[1100];
    int status;
    json_t *resp = NULL;
    if (argc < 1) {
        die(login ? "usage: parley login <user>" : "usage: parley register <user>");
    }
    read_password(pw, sizeof(pw), "password: ");
    pc_client_t *c = client(0);
    json_t *body =
        json_pack("{s:s,s:s,s:s}", "username", argv[0], "password", pw, "device", "parley-cli");
    if (!login) {
        json_object_del(body, "device");
    }
    memset(pw, 0, sizeof(pw));
    pc_rest(c, "POST", login ? "/v1/auth/login" : "/v1/auth/register", body, &status, &resp);
    json_decref(body);
    pc_free(&c);
    if (status != (login ? 200 : 201)) {
        print_error(status, resp);
        json_decref(resp);
        return 1;
    }
    if (login) {
        json_decref(session);
        session = json_pack("{s:s,s:s,s:O,s:O,s:O}", "url", server_url(), "username", argv[0],
                            "access_token", json_object_get(resp, "access_token"), "refresh_token",
                            json_object_get(resp, "refresh_token"), "session_id",
                            json_object_get(resp, "session_id"));
        save_session();
        printf("logged in as %s\n", argv[0]);
    } else {
        printf("registered %s; now run: parley login %s\n", argv[0], argv[0]);
    }
    json_decref(resp);
    return 0;
}

static int cmd_logout(void)
{
    int status;
    json_t *resp = NULL;
    pc_client_t *c = client(1);
    rest(c, "POST", "/v1/auth/logout", NULL, &status, &resp);
    json_decref(resp);
    pc_free(&c);
    unlink(session_path);
    printf("logged out\n");
    return status == 204 ? 0 : 1;
}

/* "-- bob is online --" or "-- bob is offline (last seen 14:02) --". */
static void print_presence(const char *user, const char *status, const char *last_seen)
{
    char when[32] = "";
    if (last_seen != NULL && status != NULL && strcmp(status, "offline") == 0) {
        fmt_time(last_seen, when, sizeof(when));
    }
    fprintf(stderr, "-- %s is %s%s%s%s --\n", user, status ? status : "?",
            *when ? " (last seen " : "", when, *when ? ")" : "");
}

static void on_frame(void *ud, json_t *f)
{
    struct send_wait *w = ud;
    const char *type = json_string_value(json_object_get(f, "type"));
    const char *cid = json_string_value(json_object_get(f, "client_id"));
    if (type != NULL && (strcmp(type, "receipt") == 0 || strcmp(type, "typing") == 0)) {
        chat_frame(w->chat, f, type);
        return;
    }
    if (type != NULL && strcmp(type, "presence") == 0) {
        const char *user = json_string_value(json_object_get(f, "user"));
        if (w->peer != NULL && user != NULL && strcmp(user, w->peer) == 0) {
            print_presence(user, json_string_value(json_object_get(f, "status")),
                           json_string_value(json_object_get(f, "last_seen")));
        }
        return;
    }
    if (type == NULL || cid == NULL || strcmp(cid, w->cid) != 0) {
        if (type != NULL && strcmp(type, "error") == 0) {
            fprintf(stderr, "error: %s\n", json_string_value(json_object_get(f, "message")));
        }
        return;
    }
    if (strcmp(type, "ack") == 0) {
        w->done = 1;
    } else if (strcmp(type, "error") == 0) {
        const char *code = json_string_value(json_object_get(f, "code"));
        if (code != NULL &&
            (strcmp(code, "unavailable") == 0 || strcmp(code, "rate_limited") == 0)) {
            w->failed = 2; /* retry with the same client_id */
        } else {
            fprintf(stderr, "parley: %s\n", json_string_value(json_object_get(f, "message")));
            w->failed = 1;
        }
    }
}

static void ignore_msg(void *ud, json_t *m)
{
    (void)ud;
    (void)m;
}

static int cmd_send(int argc, char **argv)
{
    char text[PL_MAX_CONTENT + 1] = "";
    size_t len = 0;
    if (argc < 2) {
        die("usage: parley send <user> <text…>");
    }
    /* The words joined by spaces, cut at PL_MAX_CONTENT (the server refuses more anyway). */
    for (int i = 1; i < argc; i++) {
        int n = snprintf(text + len, sizeof(text) - len, "%s%s", i > 1 ? " " : "", argv[i]);
        if (n < 0 || (size_t)n >= sizeof(text) - len) {
            break; /* full: snprintf kept what fits */
        }
        len += (size_t)n;
    }
    pc_client_t *c = client(1);
    struct send_wait w;
    memset(&w, 0, sizeof(w));
    pl_random_hex(w.cid, 16);
    for (int attempt = 0; attempt < 5 && !w.done && w.failed != 1; attempt++) {
        if (connect_ws(c) != PL_OK) {
            sleep(1);
            continue;
        }
        w.failed = 0;
        pc_send(c, argv[0], text, w.cid, NULL);
        for (int i = 0; i < 100 && !w.done && !w.failed; i++) {
            if (pc_poll(c, 100, ignore_msg, on_frame, &w) != PL_OK) {
                break;
            }
        }
        if (w.failed == 2) {
            usleep(500000);
        }
    }
    pc_free(&c);
    if (!w.done) {
        if (w.failed != 1) {
            fprintf(stderr, "parley: message not confirmed; it was not sent\n");
        }
        return 1;
    }
    printf("sent\n");
    return 0;
}

/* arg is a user (peer gets the name, conv the 1:1 conversation) or a group "g:<id>" (peer
 * gets "", conv the group). Exits on anything else. */
static void chat_target(const char *arg, char peer[PL_USERNAME_MAX + 1], char conv[PL_CONV_ID_LEN])
{
    if (sget("username") == NULL) {
        die("not logged in: run 'parley login <user>' first");
    }
    if (pl_conv_kind(arg) == 'g' && strlen(arg) < PL_CONV_ID_LEN) {
        *peer = '\0';
        snprintf(conv, PL_CONV_ID_LEN, "%s", arg);
        return;
    }
    if (pl_username_normalize(arg, peer) != PL_OK) {
        die("not a username or a group id (g:…)");
    }
    pl_conv_id(sget("username"), peer, conv);
}

static void chat_intro_peer(pc_client_t *c, const char *peer)
{
    char path[128];
    int status;
    json_t *resp = NULL;
    fprintf(stderr, "-- chatting with %s; type a line and press Enter, Ctrl-D to quit --\n", peer);
    snprintf(path, sizeof(path), "/v1/presence?users=%s", peer);
    if (rest(c, "GET", path, NULL, &status, &resp) == PL_OK && status == 200) {
        json_t *p = json_array_get(json_object_get(resp, "presence"), 0);
        if (p != NULL) {
            print_presence(peer, json_string_value(json_object_get(p, "status")),
                           json_string_value(json_object_get(p, "last_seen")));
        }
    }
    json_decref(resp);
}

/* The group's name and size; exits when the user is not a member (403 says nothing more). */
static void chat_intro_group(pc_client_t *c, const char *conv)
{
    char path[128];
    int status;
    json_t *resp = NULL;
    snprintf(path, sizeof(path), "/v1/groups/%s", conv);
    if (rest(c, "GET", path, NULL, &status, &resp) != PL_OK || status != 200) {
        print_error(status, resp);
        json_decref(resp);
        pc_free(&c);
        exit(1);
    }
    fprintf(stderr,
            "-- \"%s\" (%lld members, you are %s); type a line and press Enter, "
            "Ctrl-D to quit --\n",
            json_string_value(json_object_get(resp, "name")),
            (long long)json_integer_value(json_object_get(resp, "member_count")),
            json_string_value(json_object_get(resp, "role")));
    json_decref(resp);
}

/* "/edit <text>" and "/recall" act on the user's last message of the chat: 1 when line was
 * one of them (sent or refused here), 0 for a line to send as a message. */
static int chat_command(pc_client_t *c, struct chat *ch, const char *line)
{
    int edit = strncmp(line, "/edit ", 6) == 0 && line[6] != '\0';
    if (!edit && strcmp(line, "/recall") != 0) {
        return 0;
    }
    if (ch->own == 0) {
        fprintf(stderr, "-- nothing of yours to %s here yet --\n", edit ? "edit" : "recall");
        return 1;
    }
    char cid[33];
    pl_random_hex(cid, 16);
    json_t *f = json_pack("{s:s,s:s,s:s,s:I}", "type", edit ? PL_KIND_EDIT : PL_KIND_RECALL,
                          "client_id", cid, "conv", ch->conv, "target_seq", (json_int_t)ch->own);
    if (f != NULL && edit) {
        json_object_set_new(f, "content", json_string(line + 6));
    }
    if (f == NULL || pc_send_frame(c, f) != PL_OK) {
        fprintf(stderr, "-- not sent; try again --\n");
    }
    json_decref(f);
    return 1;
}

/* Tells the server how far this terminal has shown the conversation (a read cursor), once per
 * new item shown: the others see ✓✓ and every device of the user loses the unread badge. */
static void chat_read(pc_client_t *c, struct chat *ch)
{
    if (ch->latest <= ch->read_sent) {
        return;
    }
    json_t *f =
        json_pack("{s:s,s:s,s:I}", "type", "read", "conv", ch->conv, "seq", (json_int_t)ch->latest);
    if (f != NULL && pc_send_frame(c, f) == PL_OK) {
        ch->read_sent = ch->latest;
    }
    json_decref(f);
}

static int cmd_chat(int argc, char **argv)
{
    if (argc < 1) {
        die("usage: parley chat <user>|g:<id>");
    }
    char peer[PL_USERNAME_MAX + 1], conv[PL_CONV_ID_LEN];
    chat_target(argv[0], peer, conv);
    pc_client_t *c = client(1);
    struct send_wait w;
    struct chat ch;
    memset(&w, 0, sizeof(w));
    memset(&ch, 0, sizeof(ch));
    w.peer = *peer ? peer : NULL;
    w.chat = &ch;
    ch.me = sget("username");
    snprintf(ch.conv, sizeof(ch.conv), "%s", conv);
    /* Show the last messages, then follow live from there. */
    char path[256];
    int status;
    json_t *resp = NULL;
    snprintf(path, sizeof(path), "/v1/conversations/%s/messages?limit=20", conv);
    if (rest(c, "GET", path, NULL, &status, &resp) == PL_OK && status == 200) {
        size_t i;
        json_t *m;
        json_array_foreach(json_object_get(resp, "messages"), i, m)
        {
            print_msg(&w, m);
            pc_set_seen(c, conv, json_integer_value(json_object_get(m, "seq")));
        }
    }
    json_decref(resp);
    if (*peer) {
        chat_intro_peer(c, peer);
    } else {
        chat_intro_group(c, conv);
    }
    int backoff = 1;
    for (;;) {
        if (connect_ws(c) != PL_OK) {
            fprintf(stderr, "-- disconnected; retrying in %d s --\n", backoff);
            sleep((unsigned)backoff);
            backoff = backoff < 16 ? backoff * 2 : 16;
            continue;
        }
        backoff = 1;
        if (strcmp(pc_transport(c), "longpoll") == 0) {
            fprintf(stderr, "-- connected over HTTP long-polling --\n");
        }
        pc_sync(c, print_msg, &w); /* whatever arrived while away, in order, once */
        for (;;) {
            struct pollfd p[2] = {{.fd = STDIN_FILENO, .events = POLLIN},
                                  {.fd = pc_fd(c), .events = POLLIN}};
            poll(p, 2, 1000);
            if (p[0].revents & (POLLIN | POLLHUP)) {
                char line[4096];
                if (fgets(line, sizeof(line), stdin) == NULL) {
                    pc_free(&c);
                    return 0;
                }
                line[strcspn(line, "\n")] = '\0';
                if (!chat_command(c, &ch, line) && *line) {
                    pc_send(c, *peer ? peer : conv, line, NULL, w.cid);
                }
            }
            if (pc_poll(c, 0, print_msg, on_frame, &w) != PL_OK) {
                fprintf(stderr, "-- connection closed (%d); reconnecting --\n", pc_close_code(c));
                break;
            }
            chat_read(c, &ch);
        }
    }
}

static int cmd_list(const char *path)
{
    int status;
    json_t *resp = NULL;
    pc_client_t *c = client(1);
    if (rest(c, "GET", path, NULL, &status, &resp) != PL_OK || status != 200) {
        print_error(status, resp);
        json_decref(resp);
        pc_free(&c);
        return 1;
    }
    size_t i;
    json_t *m;
    json_array_foreach(json_object_get(resp, "messages"), i, m)
    {
        char when[32], what[512];
        fmt_time(json_string_value(json_object_get(m, "timestamp")), when, sizeof(when));
        const char *kind = json_string_value(json_object_get(m, "kind"));
        const char *text = json_string_value(json_object_get(m, "content"));
        if (kind != NULL && strcmp(kind, PL_KIND_SYSTEM) == 0) {
            describe_event(json_object_get(m, "event"),
                           json_string_value(json_object_get(m, "sender")), what, sizeof(what));
            text = what;
        }
        /* A group item's receiver is the group (g:…), as stored. */
        printf("[%s] #%lld %s -> %s: %s\n", when,
               (long long)json_integer_value(json_object_get(m, "seq")),
               json_string_value(json_object_get(m, "sender")),
               json_string_value(json_object_get(m, "receiver")), text ? text : "");
    }
    json_decref(resp);
    pc_free(&c);
    return 0;
}

/* One REST call of a social command; prints done on the expected status. */
static int social_call(const char *method, const char *path, json_t *body, const char *done)
{
    int status;
    json_t *resp = NULL;
    pc_client_t *c = client(1);
    int rc = rest(c, method, path, body, &status, &resp);
    json_decref(body);
    pc_free(&c);
    if (rc != PL_OK || status >= 300) {
        print_error(rc == PL_OK ? status : 0, resp);
        json_decref(resp);
        return 1;
    }
    const char *state = json_string_value(json_object_get(resp, "state"));
    printf("%s%s%s\n", done, state ? ": " : "", state ? state : "");
    json_decref(resp);
    return 0;
}

static void print_contacts(json_t *list, json_t *blocks)
{
    size_t i;
    json_t *e;
    if (json_array_size(list) == 0) {
        printf("no contacts yet: parley add <user>\n");
    }
    json_array_foreach(list, i, e)
    {
        const char *state = json_string_value(json_object_get(e, "state"));
        printf("%-32s %s%s\n", json_string_value(json_object_get(e, "user")), state ? state : "?",
               state && strcmp(state, "incoming") == 0 ? " (parley accept <user>)" : "");
    }
    json_array_foreach(blocks, i, e)
    {
        printf("%-32s blocked\n", json_string_value(json_object_get(e, "user")));
    }
}

static int cmd_contacts(void)
{
    int s1 = 0, s2 = 0;
    json_t *contacts = NULL, *blocks = NULL;
    pc_client_t *c = client(1);
    rest(c, "GET", "/v1/contacts", NULL, &s1, &contacts);
    if (s1 == 200) {
        rest(c, "GET", "/v1/blocks", NULL, &s2, &blocks);
    }
    pc_free(&c);
    int ok = s1 == 200 && s2 == 200;
    if (ok) {
        print_contacts(json_object_get(contacts, "contacts"), json_object_get(blocks, "blocks"));
    } else {
        print_error(s1 != 200 ? s1 : s2, s1 != 200 ? contacts : blocks);
    }
    json_decref(contacts);
    json_decref(blocks);
    return ok ? 0 : 1;
}

/* parley add|accept|remove|block|unblock <user>; -1 when cmd is none of them. */
static int cmd_social(const char *cmd, int argc, char **argv)
{
    static const char *const cmds[] = {"add", "accept", "remove", "block", "unblock"};
    int which = -1;
    for (int i = 0; i < 5; i++) {
        which = strcmp(cmd, cmds[i]) == 0 ? i : which;
    }
    if (which < 0) {
        return -1;
    }
    char user[PL_USERNAME_MAX + 1], path[128];
    if (argc < 1 || pl_username_normalize(argv[0], user) != PL_OK) {
        fprintf(stderr, "usage: parley %s <user>\n", cmd);
        return 2;
    }
    switch (which) {
    case 0:
        return social_call("POST", "/v1/contacts", json_pack("{s:s}", "user", user), user);
    case 1:
        snprintf(path, sizeof(path), "/v1/contacts/%s/accept", user);
        return social_call("POST", path, NULL, user);
    case 2:
        snprintf(path, sizeof(path), "/v1/contacts/%s", user);
        return social_call("DELETE", path, NULL, "removed");
    default:
        snprintf(path, sizeof(path), "/v1/blocks/%s", user);
        return social_call(which == 3 ? "PUT" : "DELETE", path, NULL,
                           which == 3 ? "blocked" : "unblocked");
    }
}

/* ---- for cli_groups.c (cli.h) ---- */

pc_client_t *cli_client(void)
{
    return client(1);
}

const char *cli_me(void)
{
    return sget("username");
}

int cli_rest(pc_client_t *c, const char *method, const char *path, json_t *body, int *status,
             json_t **out)
{
    return rest(c, method, path, body, status, out);
}

void cli_print_error(int status, json_t *resp)
{
    print_error(status, resp);
}

/* A count given on the command line; 0 (the caller's default then applies) when it is not one. */
static int count_arg(const char *s)
{
    char *end = NULL;
    long v = strtol(s, &end, 10);
    return end != s && *end == '\0' && v > 0 && v <= 100000 ? (int)v : 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: parley register|login|logout|send|chat|history|recent|"
                        "contacts|add|accept|remove|block|unblock|group …\n");
        return 2;
    }
    config_path();
    load_session();
    atexit(free_session);
    const char *cmd = argv[1];
    int n = argc > 3 ? count_arg(argv[3]) : 20;
    char path[256];
    if (strcmp(cmd, "register") == 0) {
        return cmd_register(argc - 2, argv + 2, 0);
    }
    if (strcmp(cmd, "login") == 0) {
        return cmd_register(argc - 2, argv + 2, 1);
    }
    if (strcmp(cmd, "logout") == 0) {
        return cmd_logout();
    }
    if (strcmp(cmd, "send") == 0) {
        return cmd_send(argc - 2, argv + 2);
    }
    if (strcmp(cmd, "chat") == 0) {
        return cmd_chat(argc - 2, argv + 2);
    }
    if (strcmp(cmd, "history") == 0 && argc >= 3) {
        char peer[PL_USERNAME_MAX + 1], conv[PL_CONV_ID_LEN];
        chat_target(argv[2], peer, conv);
        snprintf(path, sizeof(path), "/v1/conversations/%s/messages?limit=%d", conv,
                 n > 0 && n <= 200 ? n : 20);
        return cmd_list(path);
    }
    if (strcmp(cmd, "contacts") == 0) {
        return cmd_contacts();
    }
    if (strcmp(cmd, "group") == 0) {
        return cli_group(argc - 2, argv + 2);
    }
    int social = cmd_social(cmd, argc - 2, argv + 2);
    if (social >= 0) {
        return social;
    }
    if (strcmp(cmd, "recent") == 0) {
        n = argc > 2 ? count_arg(argv[2]) : 20;
        snprintf(path, sizeof(path), "/v1/messages/recent?limit=%d", n > 0 && n <= 200 ? n : 20);
        return cmd_list(path);
    }
    fprintf(stderr, "parley: unknown command %s\n", cmd);
    return 2;
}
