/*
 * The group commands of parley (DESIGN 7.4) over the REST API:
 *   parley group create <name> <user>…   a new group with you as its owner
 *   parley group add <g:id> <user>…      add members (admins and the owner)
 *   parley group remove <g:id> <user>    remove a member (admins and the owner)
 *   parley group leave <g:id>            leave a group
 *   parley group members <g:id>          the members and their roles
 *   parley group list                    your groups, newest first
 * Chatting in a group is `parley chat g:<id>` (parley.c). Every change carries a client_id,
 * so a command retried after a lost answer is one change.
 */
#include "cli.h"
#include "parley/enc.h"
#include "parley/err.h"
#include "parley/proto.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* One call; on a 503 (the change waits for the store) or no answer it tries again, with the
 * same body, a few times. Returns the status; *out gets the body. */
static int call(const char *method, const char *path, json_t *body, json_t **out)
{
    int status = 0;
    pc_client_t *c = cli_client();
    for (int attempt = 0; attempt < 4; attempt++) {
        json_decref(*out);
        *out = NULL;
        if (cli_rest(c, method, path, body, &status, out) == PL_OK && status != 503) {
            break;
        }
        sleep(1);
    }
    pc_free(&c);
    if (status == 0 || status >= 300) {
        cli_print_error(status, *out);
    }
    return status;
}

static json_t *change_body(json_t *body)
{
    char cid[33];
    pl_random_hex(cid, 16);
    json_object_set_new(body, "client_id", json_string(cid));
    return body;
}

static int users_of(int argc, char **argv, json_t *arr)
{
    for (int i = 0; i < argc; i++) {
        char u[PL_USERNAME_MAX + 1];
        if (pl_username_normalize(argv[i], u) != PL_OK) {
            fprintf(stderr, "parley: %s is not a username\n", argv[i]);
            return 0;
        }
        json_array_append_new(arr, json_string(u));
    }
    return 1;
}

static void print_users(const char *what, json_t *arr)
{
    size_t i;
    json_t *u;
    printf("%s", what);
    json_array_foreach(arr, i, u)
    {
        printf("%s%s", i ? ", " : " ", json_string_value(u));
    }
    printf("\n");
}

static int create(int argc, char **argv)
{
    json_t *members = json_array(), *out = NULL;
    if (argc < 1 || !users_of(argc - 1, argv + 1, members)) {
        json_decref(members);
        fprintf(stderr, "usage: parley group create <name> <user>…\n");
        return 2;
    }
    json_t *body = change_body(json_pack("{s:s,s:o}", "name", argv[0], "members", members));
    int status = call("POST", "/v1/groups", body, &out);
    json_decref(body);
    if (status == 201) {
        printf("created %s \"%s\"\n", json_string_value(json_object_get(out, "conv")), argv[0]);
        print_users("members:", json_object_get(out, "members"));
        printf("chat in it with: parley chat %s\n",
               json_string_value(json_object_get(out, "conv")));
    }
    json_decref(out);
    return status == 201 ? 0 : 1;
}

static int add(const char *conv, int argc, char **argv)
{
    json_t *users = json_array(), *out = NULL;
    if (argc < 1 || !users_of(argc, argv, users)) {
        json_decref(users);
        fprintf(stderr, "usage: parley group add <g:id> <user>…\n");
        return 2;
    }
    char path[128];
    snprintf(path, sizeof(path), "/v1/groups/%s/members", conv);
    json_t *body = change_body(json_pack("{s:o}", "users", users));
    int status = call("POST", path, body, &out);
    json_decref(body);
    if (status == 200) {
        json_t *added = json_object_get(out, "added");
        if (json_array_size(added) == 0) {
            printf("no one added: they are members already\n");
        } else {
            print_users("added:", added);
        }
    }
    json_decref(out);
    return status == 200 ? 0 : 1;
}

static int remove_member(const char *conv, const char *user, const char *done)
{
    char u[PL_USERNAME_MAX + 1], path[192];
    json_t *out = NULL;
    if (pl_username_normalize(user, u) != PL_OK) {
        fprintf(stderr, "parley: %s is not a username\n", user);
        return 2;
    }
    snprintf(path, sizeof(path), "/v1/groups/%s/members/%s", conv, u);
    int status = call("DELETE", path, NULL, &out);
    json_decref(out);
    if (status == 204) {
        printf("%s\n", done);
    }
    return status == 204 ? 0 : 1;
}

static int members(const char *conv)
{
    char path[192], after[PL_USERNAME_MAX + 1] = "";
    for (;;) {
        json_t *out = NULL;
        snprintf(path, sizeof(path), "/v1/groups/%s/members?limit=200%s%s", conv,
                 *after ? "&after=" : "", after);
        if (call("GET", path, NULL, &out) != 200) {
            json_decref(out);
            return 1;
        }
        size_t i;
        json_t *m;
        json_array_foreach(json_object_get(out, "members"), i, m)
        {
            printf("%-32s %s\n", json_string_value(json_object_get(m, "user")),
                   json_string_value(json_object_get(m, "role")));
        }
        const char *next = json_string_value(json_object_get(out, "next"));
        snprintf(after, sizeof(after), "%s", next ? next : "");
        json_decref(out);
        if (!*after) {
            return 0;
        }
    }
}

static int list(void)
{
    json_t *out = NULL;
    if (call("GET", "/v1/conversations?limit=1000", NULL, &out) != 200) {
        json_decref(out);
        return 1;
    }
    size_t i, n = 0;
    json_t *c;
    json_array_foreach(json_object_get(out, "conversations"), i, c)
    {
        const char *kind = json_string_value(json_object_get(c, "kind"));
        if (kind == NULL || strcmp(kind, "g") != 0) {
            continue;
        }
        long long unread = json_integer_value(json_object_get(c, "unread"));
        printf("%-30s %-28s", json_string_value(json_object_get(c, "conv")),
               json_string_value(json_object_get(c, "name")));
        if (unread > 0) {
            printf(" %lld unread", unread);
        }
        printf("\n");
        n++;
    }
    if (n == 0) {
        printf("no groups yet: parley group create <name> <user>…\n");
    }
    json_decref(out);
    return 0;
}

int cli_group(int argc, char **argv)
{
    const char *sub = argc > 0 ? argv[0] : "";
    if (strcmp(sub, "create") == 0) {
        return create(argc - 1, argv + 1);
    }
    if (strcmp(sub, "list") == 0) {
        return list();
    }
    const char *conv = argc > 1 ? argv[1] : "";
    if (pl_conv_kind(conv) != 'g' || strlen(conv) >= PL_CONV_ID_LEN) {
        fprintf(stderr, "usage: parley group create <name> <user>… | list | "
                        "add <g:id> <user>… | remove <g:id> <user> | leave <g:id> | "
                        "members <g:id>\n");
        return 2;
    }
    if (strcmp(sub, "add") == 0) {
        return add(conv, argc - 2, argv + 2);
    }
    if (strcmp(sub, "remove") == 0 && argc > 2) {
        return remove_member(conv, argv[2], "removed");
    }
    if (strcmp(sub, "leave") == 0 && cli_me() != NULL) {
        return remove_member(conv, cli_me(), "you left the group");
    }
    if (strcmp(sub, "members") == 0) {
        return members(conv);
    }
    fprintf(stderr, "parley: unknown group command %s\n", sub);
    return 2;
}
