/*
 * The Parley client library: REST calls, a WebSocket connection to a gateway, and the sync
 * rules of DESIGN section 4 (de-duplicate by msg_id, fill gaps by seq, catch up after a
 * reconnect). The command-line client and the load generator are built on it. Blocking I/O
 * with timeouts; one client object per thread.
 */
#ifndef PARLEY_CLIENT_H
#define PARLEY_CLIENT_H

#include <jansson.h>
#include <stddef.h>

typedef struct pc_client_s pc_client_t;

/* Called for every message the user should see, exactly once each and in seq order per
 * conversation. msg is borrowed for the call (the DESIGN's msg fields). */
typedef void (*pc_msg_fn)(void *ud, json_t *msg);

/* Parses "http://host:port" into a new client. Returns NULL for a bad URL. */
pc_client_t *pc_new(const char *base_url);
void pc_free(pc_client_t **c);

/* Sets the bearer token used by REST calls and the WebSocket (copied). */
void pc_set_token(pc_client_t *c, const char *token);

/*
 * One REST call. body may be NULL; on return *status is the HTTP status (0 when the server
 * could not be reached) and *out the parsed JSON body (a new reference, or NULL).
 * Returns PL_OK when an answer came, PL_ERR_UNAVAIL otherwise.
 */
int pc_rest(pc_client_t *c, const char *method, const char *path, json_t *body, int *status,
            json_t **out);

/* Opens the WebSocket (Authorization header) and waits for "ready". PL_OK or an error. When
 * the upgrade is refused (a proxy that does not pass it), or with PARLEY_TRANSPORT=longpoll,
 * opens an HTTP long-poll session instead (DESIGN 7.6); the rest of the API is the same. */
int pc_connect(pc_client_t *c);
/* "websocket" or "longpoll": the transport of the current connection. */
const char *pc_transport(const pc_client_t *c);
void pc_disconnect(pc_client_t *c);
/* The gateway id from the last "ready" frame. */
const char *pc_gateway(const pc_client_t *c);

/* Queues a send to a user, or to a conversation when to is a conversation id ("g:…" for a
 * group); client_id may be NULL (a random one is made and written to cid_out). */
int pc_send(pc_client_t *c, const char *to, const char *content, const char *client_id,
            char cid_out[65]);

/* Sends any client frame (read, typing, edit, recall, …) as JSON (borrowed). PL_OK or an error. */
int pc_send_frame(pc_client_t *c, json_t *frame);

/*
 * Waits up to timeout_ms for frames and handles them: pushed messages go through
 * de-duplication and gap filling to on_msg; acks and errors go to on_frame (may be NULL).
 * Returns PL_OK, or PL_ERR_UNAVAIL when the connection closed (see pc_close_code()).
 */
int pc_poll(pc_client_t *c, int timeout_ms, pc_msg_fn on_msg, pc_msg_fn on_frame, void *ud);

/* The WebSocket close code last received (0 when none). */
int pc_close_code(const pc_client_t *c);

/* The socket, for callers that multiplex it with other input (poll(2) for readability). */
int pc_fd(const pc_client_t *c);

/*
 * Catches up every conversation: lists them and pulls what is newer than what this client
 * has seen, delivering through on_msg like pushes. Call after (re)connecting.
 */
int pc_sync(pc_client_t *c, pc_msg_fn on_msg, void *ud);

/* Marks conv as seen up to seq, so older messages are neither pulled nor delivered. */
void pc_set_seen(pc_client_t *c, const char *conv, long long seq);

/* Messages delivered to on_msg so far, and duplicates dropped. */
size_t pc_delivered(const pc_client_t *c);
size_t pc_dropped(const pc_client_t *c);

#endif
