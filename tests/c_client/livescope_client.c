/*
 * livescope_client.c: a conformance client for the livescope wire protocol, written from
 * docs/protocol.md alone (the doc is the contract; this program must never need the server's
 * source to be right).
 *
 *   cc -std=c99 -Wall -Werror -o livescope_client livescope_client.c -lzmq -lm
 *   ./livescope_client [--only CHECK[,CHECK...]] tcp://127.0.0.1:5760 [tcp://127.0.0.1:5761]
 *
 * The first address is the server's frames (ROUTER) address, the second its results (PUB) address;
 * without it the PUB checks are skipped. It runs a fixed script of checks against a running server
 * started with its defaults (the limits checked are the default ones), or with --only the checks
 * named, in the script's order. Some checks run only when named: those of a CURVE server (give its
 * public key and this client's key pair as Z85 text in LIVESCOPE_SERVER_PUBLIC_KEY,
 * LIVESCOPE_CLIENT_PUBLIC_KEY and LIVESCOPE_CLIENT_SECRET_KEY: then every socket uses CURVE), and
 * shutting_down (someone else stops the server when it says so). It prints one line per check:
 *
 *   ok NAME                 the server does what the doc says
 *   FAIL NAME: why          it does not (exit status 1)
 *   xfail NAME: why [...]   a known disagreement, waiting for a server change (not a failure)
 *   XPASS NAME: ...         a known disagreement that is gone: drop its expected-fail mark
 *   skip NAME: why          not run
 *
 * and exits non-zero if any check failed.
 *
 * No JSON library on purpose: headers are built with snprintf, and replies are read with the
 * minimal scanner below (skip a value; find a member of an object; compare a string without
 * escapes; read a number). That is all a client needs to read the server's headers, and it
 * shows that the protocol does not need more. It is not a general JSON parser.
 *
 * Payloads are built byte by byte in little-endian order, so the program is right on any host.
 *
 * One file on purpose, though long: a client writer can read, copy and build it with the one
 * command above, and no livescope build system stands between the doc and this program.
 */
#define _POSIX_C_SOURCE 200809L

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define TIMEOUT_MS 10000 /* the longest a check waits for one answer */
#define QUIET_MS 300     /* how long "nothing more arrives" is watched for */
#define MAX_PARTS 4
#define H 32
#define W 48

/* -- bookkeeping: per-check scratch memory and sockets, freed / closed after each check ------- */

static void *g_ctx;
static const char *g_frames, *g_results;
static char g_tag[32];     /* unique per run: stream names and routing ids start with it */
static char g_why[1024];   /* why the running check failed */
static void *g_scratch[4096];
static int g_nscratch;
static void *g_socks[32];
static int g_nsocks;

static void *keep(void *p)
{
    if (p == NULL) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    if (g_nscratch < (int)(sizeof g_scratch / sizeof g_scratch[0]))
        g_scratch[g_nscratch++] = p;
    return p;
}

static void *scratch(size_t n) { return keep(calloc(1, n + 1)); }

static char *fmt(const char *f, ...)
{
    va_list ap;
    va_start(ap, f);
    int n = vsnprintf(NULL, 0, f, ap);
    va_end(ap);
    char *s = scratch((size_t)n);
    va_start(ap, f);
    vsnprintf(s, (size_t)n + 1, f, ap);
    va_end(ap);
    return s;
}

static void end_check(void)
{
    for (int i = 0; i < g_nsocks; i++)
        zmq_close(g_socks[i]);
    g_nsocks = 0;
    for (int i = 0; i < g_nscratch; i++)
        free(g_scratch[i]);
    g_nscratch = 0;
}

/* A check returns 1 (pass) or 0 with g_why set. */
#define CHECK(cond, ...)                                   \
    do {                                                   \
        if (!(cond)) {                                     \
            snprintf(g_why, sizeof g_why, __VA_ARGS__);    \
            return 0;                                      \
        }                                                  \
    } while (0)
#define TRY(expr)         \
    do {                  \
        if (!(expr))      \
            return 0;     \
    } while (0)

/* -- the minimal JSON scanner ------------------------------------------------------------------ */

static const char *ws(const char *p)
{
    while (p && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

static const char *skip_string(const char *p) /* p at the opening quote */
{
    for (p++; *p && *p != '"'; p++)
        if (*p == '\\' && !*++p)
            return NULL;
    return *p == '"' ? p + 1 : NULL;
}

static const char *skip_value(const char *p) /* past one JSON value, or NULL if malformed */
{
    p = ws(p);
    if (p == NULL || *p == '\0')
        return NULL;
    if (*p == '"')
        return skip_string(p);
    if (*p == '{' || *p == '[') {
        char close = *p == '{' ? '}' : ']';
        p = ws(p + 1);
        if (*p == close)
            return p + 1;
        for (;;) {
            if (close == '}') { /* "key": */
                if (*p != '"' || (p = skip_string(p)) == NULL)
                    return NULL;
                p = ws(p);
                if (*p++ != ':')
                    return NULL;
            }
            if ((p = skip_value(p)) == NULL)
                return NULL;
            p = ws(p);
            if (*p == ',') {
                p = ws(p + 1);
                continue;
            }
            return *p == close ? p + 1 : NULL;
        }
    }
    const char *start = p; /* a number, true, false or null */
    while (*p && strchr("+-0123456789.eEtruefalsn", *p))
        p++;
    return p > start ? p : NULL;
}

/* The value of member `key` of the object at `obj` (not of nested objects), or NULL. */
static const char *jget(const char *obj, const char *key)
{
    const char *p = ws(obj);
    size_t klen = strlen(key);
    if (p == NULL || *p != '{')
        return NULL;
    p = ws(p + 1);
    while (*p == '"') {
        const char *k = p + 1, *end = skip_string(p);
        if (end == NULL)
            return NULL;
        p = ws(end);
        if (*p++ != ':')
            return NULL;
        p = ws(p);
        if ((size_t)(end - 1 - k) == klen && memcmp(k, key, klen) == 0)
            return p;
        if ((p = skip_value(p)) == NULL)
            return NULL;
        p = ws(p);
        if (*p != ',')
            return NULL;
        p = ws(p + 1);
    }
    return NULL;
}

/* Element i of the array at `arr`, or NULL. */
static const char *jat(const char *arr, int i)
{
    const char *p = ws(arr);
    if (p == NULL || *p != '[')
        return NULL;
    p = ws(p + 1);
    if (*p == ']')
        return NULL;
    for (int k = 0;; k++) {
        if (k == i)
            return p;
        if ((p = skip_value(p)) == NULL)
            return NULL;
        p = ws(p);
        if (*p != ',')
            return NULL;
        p = ws(p + 1);
    }
}

static int jlen(const char *arr) /* elements of an array, -1 if not one */
{
    const char *p = ws(arr);
    if (p == NULL || *p != '[')
        return -1;
    int n = 0;
    while (jat(arr, n) != NULL)
        n++;
    return n;
}

static int jstr(const char *v, const char *s) /* v is the string s (no escapes in s) */
{
    size_t n = strlen(s);
    return v && *v == '"' && strncmp(v + 1, s, n) == 0 && v[1 + n] == '"';
}

static int jlit(const char *v, const char *lit) /* null, true, false */
{
    size_t n = strlen(lit);
    const char *end = v ? skip_value(v) : NULL;
    return end && (size_t)(end - v) == n && strncmp(v, lit, n) == 0;
}

static int jnum(const char *v, double *out)
{
    if (v == NULL || !(*v == '-' || (*v >= '0' && *v <= '9')))
        return 0;
    char *end;
    *out = strtod(v, &end);
    return end != v;
}

static int jint(const char *v, long long *out)
{
    double d;
    if (!jnum(v, &d))
        return 0;
    const char *end = skip_value(v);
    for (const char *p = v; p < end; p++)
        if (*p == '.' || *p == 'e' || *p == 'E')
            return 0;
    *out = strtoll(v, NULL, 10);
    return 1;
}

static const char *shown(const char *v) /* a value, cut short, for messages */
{
    if (v == NULL)
        return "(missing)";
    const char *end = skip_value(v);
    size_t n = end ? (size_t)(end - v) : strlen(v);
    return n > 160 ? fmt("%.157s...", v) : fmt("%.*s", (int)n, v);
}

/* -- messages --------------------------------------------------------------------------------- */

typedef struct {
    int n;                     /* parts received */
    char *part[MAX_PARTS];     /* each NUL-terminated (so a header can be scanned as a string) */
    size_t len[MAX_PARTS];
} msg_t;

/* The header and payload of a DEALER message; of a SUB message the topic comes first. */
static const char *header_of(const msg_t *m, int sub) { return m->n > sub ? m->part[sub] : ""; }

static int send_parts(void *sock, int n, const void *const data[], const size_t len[])
{
    for (int i = 0; i < n; i++)
        CHECK(zmq_send(sock, data[i], len[i], i < n - 1 ? ZMQ_SNDMORE : 0) == (int)len[i],
              "send failed: %s", zmq_strerror(zmq_errno()));
    return 1;
}

static int send_header(void *sock, const char *header)
{
    const void *d[] = {header};
    size_t l[] = {strlen(header)};
    return send_parts(sock, 1, d, l);
}

static int send_frame(void *sock, const char *header, const void *payload, size_t n)
{
    const void *d[] = {header, payload};
    size_t l[] = {strlen(header), n};
    return send_parts(sock, 2, d, l);
}

/* 1: a message within timeout_ms; 0: none (g_why says so) or an error. */
static int recv_msg(void *sock, msg_t *m, int timeout_ms)
{
    zmq_pollitem_t item = {sock, 0, ZMQ_POLLIN, 0};
    memset(m, 0, sizeof *m);
    int rc = zmq_poll(&item, 1, timeout_ms);
    CHECK(rc > 0, "no message within %d ms", timeout_ms);
    int more;
    do {
        zmq_msg_t part;
        zmq_msg_init(&part);
        CHECK(zmq_msg_recv(&part, sock, 0) >= 0, "recv failed: %s", zmq_strerror(zmq_errno()));
        if (m->n < MAX_PARTS) {
            m->len[m->n] = zmq_msg_size(&part);
            m->part[m->n] = scratch(m->len[m->n]);
            memcpy(m->part[m->n], zmq_msg_data(&part), m->len[m->n]);
        }
        m->n++;
        more = zmq_msg_more(&part);
        zmq_msg_close(&part);
    } while (more);
    return 1;
}

static int recv_answer(void *sock, msg_t *m) { return recv_msg(sock, m, TIMEOUT_MS); }

/* 1 if nothing arrives within QUIET_MS (what was expected was all there was). */
static int expect_silence(void *sock, const char *what)
{
    msg_t m;
    if (!recv_msg(sock, &m, QUIET_MS))
        return 1;
    snprintf(g_why, sizeof g_why, "an unexpected extra message after %s: %s", what, shown(header_of(&m, 0)));
    return 0;
}

/* CURVE (the doc's Security): the server's public key and this client's key pair, Z85 text of 40
 * characters each, from the environment; NULL without them (loopback needs none). */
static const char *g_server_key, *g_public_key, *g_secret_key;

/* Make s a CURVE client of the server with this key pair. */
static void curve_client(void *s, const char *public_key, const char *secret_key)
{
    if (zmq_setsockopt(s, ZMQ_CURVE_SERVERKEY, g_server_key, 40) != 0 ||
        zmq_setsockopt(s, ZMQ_CURVE_PUBLICKEY, public_key, 40) != 0 ||
        zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, secret_key, 40) != 0) {
        fprintf(stderr, "cannot set CURVE keys: %s\n", zmq_strerror(zmq_errno()));
        exit(2);
    }
}

/* A socket connected to address; with a key pair (public_key not NULL) a CURVE client. */
static void *new_socket_keyed(int type, const char *address, const char *routing_id, const char *public_key,
                              const char *secret_key)
{
    void *s = zmq_socket(g_ctx, type);
    int zero = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    if (routing_id != NULL) /* stable and unique, as the doc asks */
        zmq_setsockopt(s, ZMQ_ROUTING_ID, routing_id, strlen(routing_id));
    if (public_key != NULL)
        curve_client(s, public_key, secret_key);
    if (zmq_connect(s, address) != 0) {
        fprintf(stderr, "cannot connect to %s: %s\n", address, zmq_strerror(zmq_errno()));
        exit(2);
    }
    if (g_nsocks == (int)(sizeof g_socks / sizeof g_socks[0])) {
        fprintf(stderr, "too many sockets in one check\n");
        exit(2);
    }
    g_socks[g_nsocks++] = s;
    return s;
}

/* A socket as every check's: CURVE with this client's keys where the environment gives them. */
static void *new_socket(int type, const char *address, const char *routing_id)
{
    return new_socket_keyed(type, address, routing_id, g_public_key, g_secret_key);
}

static int g_dealers;
static void *new_dealer(void) { return new_socket(ZMQ_DEALER, g_frames, fmt("%s-id%d", g_tag, ++g_dealers)); }

static const char *stream_name(const char *what) { return fmt("%s-%s", g_tag, what); }

/* -- frames: headers and pixels --------------------------------------------------------------- */

/* A frame header; dtype NULL leaves it out (the default), extra is more members (", ..." or ""). */
static char *frame_header(const char *stream, long seq, const char *dtype, const char *pipeline,
                          const char *extra)
{
    return fmt("{\"protocol\": 1, \"type\": \"frame\", \"stream\": \"%s\", \"seq\": %ld, "
               "\"shape\": [%d, %d]%s%s%s, \"pipeline\": %s%s}",
               stream, seq, H, W, dtype ? ", \"dtype\": \"" : "", dtype ? dtype : "",
               dtype ? "\"" : "", pipeline, extra);
}

static size_t itemsize(const char *dtype)
{
    return strcmp(dtype, "uint8") == 0 ? 1 : strcmp(dtype, "uint16") == 0 ? 2 : 4;
}

/* H x W pixels of dtype, C order, little-endian; `salt` makes frames differ. */
static unsigned char *pixels(const char *dtype, unsigned salt, size_t *nbytes)
{
    size_t n = (size_t)H * W, size = itemsize(dtype);
    unsigned char *b = scratch(n * size);
    for (size_t i = 0; i < n; i++) {
        uint32_t v;
        if (size == 1) {
            b[i] = (unsigned char)(i * 7 + salt);
            continue;
        }
        if (size == 2) {
            v = (uint32_t)((i * 1031 + salt * 4099) & 0xffff); /* both bytes vary */
        } else {
            float f = (float)i * 0.25f - 100.0f + (float)salt;
            memcpy(&v, &f, sizeof v);
        }
        for (size_t k = 0; k < size; k++)
            b[i * size + k] = (unsigned char)(v >> (8 * k));
    }
    *nbytes = n * size;
    return b;
}

/* -- what an answer must be ------------------------------------------------------------------- */

static int ids_are(const char *h, const char *stream, long seq)
{
    long long s;
    if (stream == NULL) {
        CHECK(jlit(jget(h, "stream"), "null") && jlit(jget(h, "seq"), "null"),
              "stream and seq should be null, got stream %s seq %s", shown(jget(h, "stream")),
              shown(jget(h, "seq")));
        return 1;
    }
    CHECK(jstr(jget(h, "stream"), stream), "stream should be \"%s\", got %s", stream,
          shown(jget(h, "stream")));
    CHECK(jint(jget(h, "seq"), &s) && s == seq, "seq should be %ld, got %s", seq, shown(jget(h, "seq")));
    return 1;
}

/* An error of `code` with one header part and no payload; stream NULL: stream and seq null. */
static int is_error(const msg_t *m, const char *code, const char *stream, long seq)
{
    const char *h = header_of(m, 0);
    CHECK(jstr(jget(h, "type"), "error"), "expected an error %s, got %s", code, shown(h));
    CHECK(jstr(jget(h, "code"), code), "expected code %s, got %s (message %s)", code,
          shown(jget(h, "code")), shown(jget(h, "message")));
    CHECK(jlit(jget(h, "protocol"), "1"), "protocol should be 1: %s", shown(h));
    CHECK(jget(h, "message") && *jget(h, "message") == '"', "error without a message: %s", shown(h));
    CHECK(m->n == 1, "an error is one part (header), got %d", m->n);
    return ids_are(h, stream, seq);
}

/* A final result of stream/seq whose payload is `payload` (NULL: any, of `nbytes`). */
static int is_result(const msg_t *m, int sub, const char *stream, long seq, const char *model,
                     const char *dtype, const void *payload, size_t nbytes)
{
    const char *h = header_of(m, sub);
    CHECK(jstr(jget(h, "type"), "result"), "expected a result, got %s", shown(h));
    TRY(ids_are(h, stream, seq));
    CHECK(m->n == sub + 2, "a result is %d parts, got %d", sub + 2, m->n);
    if (model)
        CHECK(jstr(jget(h, "model"), model), "model should be %s, got %s", model, shown(jget(h, "model")));
    CHECK(jstr(jget(h, "kind"), "image"), "kind should be image, got %s", shown(jget(h, "kind")));
    CHECK(jstr(jget(h, "dtype"), dtype), "dtype should be %s, got %s", dtype, shown(jget(h, "dtype")));
    long long y, x;
    const char *shape = jget(h, "shape");
    CHECK(jlen(shape) == 2 && jint(jat(shape, 0), &y) && jint(jat(shape, 1), &x) && y == H && x == W,
          "shape should be [%d, %d], got %s", H, W, shown(shape));
    CHECK(m->len[sub + 1] == nbytes, "payload should be %zu bytes (shape x dtype), got %zu", nbytes,
          m->len[sub + 1]);
    if (payload)
        CHECK(memcmp(m->part[sub + 1], payload, nbytes) == 0, "payload differs from the frame's pixels");
    return 1;
}

static int is_final(const msg_t *m, int sub, int final)
{
    const char *f = jget(header_of(m, sub), "final");
    CHECK(jlit(f, final ? "true" : "false"), "final should be %s, got %s", final ? "true" : "false", shown(f));
    return 1;
}

/* Send a control request and read its reply (ok as expected; `*data` its data). */
static int control(void *sock, const char *rid, const char *command, const char *args, int ok,
                   const char **data)
{
    TRY(send_header(sock, fmt("{\"protocol\": 1, \"type\": \"control\", \"request_id\": \"%s\", "
                              "\"command\": \"%s\", \"args\": %s}", rid, command, args)));
    msg_t m;
    TRY(recv_answer(sock, &m));
    const char *h = header_of(&m, 0);
    CHECK(jstr(jget(h, "type"), "reply"), "expected a reply to %s, got %s", command, shown(h));
    CHECK(m.n == 1, "a reply is one part, got %d", m.n);
    CHECK(jstr(jget(h, "request_id"), rid), "request_id should be %s, got %s", rid, shown(jget(h, "request_id")));
    CHECK(jlit(jget(h, "ok"), ok ? "true" : "false"), "%s %s: ok should be %s, got %s (error %s)", command,
          args, ok ? "true" : "false", shown(jget(h, "ok")), shown(jget(h, "error")));
    if (ok)
        CHECK(jlit(jget(h, "error"), "null"), "error should be null when ok, got %s", shown(jget(h, "error")));
    else
        CHECK(jget(h, "error") && *jget(h, "error") == '"' && strlen(shown(jget(h, "error"))) > 2,
              "a refusal should say why in error, got %s", shown(jget(h, "error")));
    if (data)
        *data = jget(h, "data");
    return 1;
}

/* Send one frame, expect one error back. */
static int refused(const char *header, const void *payload, size_t n, int with_payload,
                   const char *code, const char *stream, long seq)
{
    void *s = new_dealer();
    if (with_payload)
        TRY(send_frame(s, header, payload, n));
    else
        TRY(send_header(s, header));
    msg_t m;
    TRY(recv_answer(s, &m));
    return is_error(&m, code, stream, seq);
}

/* -- the checks ------------------------------------------------------------------------------- */

static int roundtrip_identity_uint16(void)
{
    void *s = new_dealer();
    const char *st = stream_name("u16");
    size_t n;
    unsigned char *px = pixels("uint16", 1, &n);
    TRY(send_frame(s, frame_header(st, 0, "uint16", "[\"identity\"]",
                                   ", \"axes\": \"yx\", \"pixel_size_um\": 0.108, \"z_um\": 1.5, "
                                   "\"event_index\": {\"t\": 2, \"z\": 1}, \"mode\": \"lossless\", "
                                   "\"t_acquired_ns\": 1732400000000000000, \"t_sent_ns\": 1732400000001000000"),
                   px, n));
    msg_t m;
    TRY(recv_answer(s, &m));
    TRY(is_result(&m, 0, st, 0, "identity@1", "uint16", px, n));
    TRY(is_final(&m, 0, 1));
    const char *h = header_of(&m, 0), *ev = jget(h, "event_index"), *lat = jget(h, "latency");
    double d, q, inf, tot;
    long long t, bs;
    CHECK(jlit(jget(h, "protocol"), "1"), "protocol should be 1: %s", shown(h));
    CHECK(jstr(jget(h, "stage"), "identity"), "stage should be identity, got %s", shown(jget(h, "stage")));
    CHECK(jstr(jget(h, "axes"), "yx"), "axes should be yx, got %s", shown(jget(h, "axes")));
    CHECK(jnum(jget(h, "pixel_size_um"), &d) && fabs(d - 0.108) < 1e-12, "pixel_size_um not passed through: %s",
          shown(jget(h, "pixel_size_um")));
    CHECK(jnum(jget(h, "z_um"), &d) && d == 1.5, "z_um not passed through: %s", shown(jget(h, "z_um")));
    CHECK(jint(jget(ev, "t"), &t) && t == 2 && jint(jget(ev, "z"), &t) && t == 1,
          "event_index not passed through: %s", shown(ev));
    CHECK(jint(jget(h, "t_sent_ns"), &t) && t == 1732400000001000000LL, "t_sent_ns not echoed: %s",
          shown(jget(h, "t_sent_ns")));
    CHECK(jnum(jget(lat, "queue_ms"), &q) && jnum(jget(lat, "inference_ms"), &inf) &&
          jnum(jget(lat, "total_ms"), &tot) && q >= 0 && inf >= 0 && tot >= inf,
          "latency should have queue_ms, inference_ms <= total_ms: %s", shown(lat));
    CHECK(jint(jget(lat, "batch_size"), &bs) && bs >= 1, "latency.batch_size should be >= 1: %s", shown(lat));
    return expect_silence(s, "the final result");
}

static int omitted_fields_come_back_as_documented(void)
{
    void *s = new_dealer();
    const char *st = stream_name("defaults");
    size_t n;
    unsigned char *px = pixels("uint16", 2, &n); /* no dtype: uint16 is the default */
    TRY(send_frame(s, frame_header(st, 0, NULL, "[\"identity\"]", ""), px, n));
    msg_t m;
    TRY(recv_answer(s, &m));
    TRY(is_result(&m, 0, st, 0, "identity@1", "uint16", px, n));
    const char *h = header_of(&m, 0);
    static const char *const nulls[] = {"pixel_size_um", "z_um", "dz_um"};
    for (int i = 0; i < 3; i++)
        CHECK(jlit(jget(h, nulls[i]), "null"), "%s should be null for a frame without it, got %s", nulls[i],
              shown(jget(h, nulls[i])));
    CHECK(jget(h, "event_index") && *ws(jget(h, "event_index")) == '{' && *ws(ws(jget(h, "event_index")) + 1) == '}',
          "event_index should be {} for a frame without it, got %s", shown(jget(h, "event_index")));
    CHECK(jlit(jget(h, "t_sent_ns"), "0"), "t_sent_ns should be 0 for a frame without it, got %s",
          shown(jget(h, "t_sent_ns")));
    CHECK(jlen(jget(h, "fields")) == 0, "an image result's fields should be [], got %s", shown(jget(h, "fields")));
    return 1;
}

static int identity_refuses(const char *dtype)
{
    size_t n;
    unsigned char *px = pixels(dtype, 3, &n);
    const char *st = stream_name(dtype);
    return refused(frame_header(st, 4, dtype, "[\"identity\"]", ""), px, n, 1, "unknown_model", st, 4);
}
static int identity_refuses_uint8(void) { return identity_refuses("uint8"); }
static int identity_refuses_float32(void) { return identity_refuses("float32"); }

/* refocus takes any pixel dtype and gives float32 ADU of the frame's shape. */
static int refocus_takes(const char *dtype)
{
    void *s = new_dealer();
    const char *st = stream_name(fmt("refocus-%s", dtype));
    size_t n;
    unsigned char *px = pixels(dtype, 4, &n);
    TRY(send_frame(s, frame_header(st, 0, dtype, "[\"refocus\"]", ", \"dz_um\": 0.5"), px, n));
    msg_t m;
    TRY(recv_answer(s, &m));
    TRY(is_result(&m, 0, st, 0, NULL, "float32", NULL, (size_t)H * W * 4));
    TRY(is_final(&m, 0, 1));
    const char *h = header_of(&m, 0);
    double dz;
    CHECK(strncmp(jget(h, "model") ? jget(h, "model") : "", "\"refocus@", 9) == 0, "model should be refocus@N, got %s",
          shown(jget(h, "model")));
    CHECK(jnum(jget(h, "dz_um"), &dz) && dz == 0.5, "dz_um not passed through: %s", shown(jget(h, "dz_um")));
    for (size_t i = 0; i < (size_t)H * W; i++) {
        const unsigned char *b = (const unsigned char *)m.part[1] + 4 * i;
        uint32_t v = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
        float f;
        memcpy(&f, &v, sizeof f);
        CHECK(isfinite(f), "pixel %zu of the refocused image is not finite", i);
    }
    return 1;
}
static int refocus_takes_uint8(void) { return refocus_takes("uint8"); }
static int refocus_takes_float32(void) { return refocus_takes("float32"); }

static int payload_wrong_size(void)
{
    const char *st = stream_name("size");
    static const unsigned char zeros[100];
    return refused(frame_header(st, 5, "uint16", "[\"identity\"]", ""), zeros, sizeof zeros, 1, "payload_size", st, 5);
}

static int payload_missing(void)
{
    const char *st = stream_name("nopixels");
    return refused(frame_header(st, 6, "uint16", "[\"identity\"]", ""), NULL, 0, 0, "payload_size", st, 6);
}

static int payload_extra_part(void)
{
    void *s = new_dealer();
    const char *st = stream_name("threeparts");
    size_t n;
    unsigned char *px = pixels("uint16", 5, &n);
    const char *h = frame_header(st, 7, "uint16", "[\"identity\"]", "");
    const void *d[] = {h, px, "x"};
    size_t l[] = {strlen(h), n, 1};
    TRY(send_parts(s, 3, d, l));
    msg_t m;
    TRY(recv_answer(s, &m));
    return is_error(&m, "payload_size", st, 7);
}

static int dtype_float64_refused(void)
{
    const char *st = stream_name("f64");
    size_t n = (size_t)H * W * 8;
    return refused(frame_header(st, 8, "float64", "[\"identity\"]", ""), scratch(n), n, 1, "unsupported_dtype", st, 8);
}

static int not_json_is_bad_header(void)
{
    static const unsigned char px[4];
    return refused("{not json", px, sizeof px, 1, "bad_header", NULL, 0);
}

static int not_an_object_is_bad_header(void)
{
    return refused("[1, 2]", NULL, 0, 0, "bad_header", NULL, 0);
}

static int unknown_field_is_bad_header(void)
{
    const char *st = stream_name("unknownfield");
    size_t n;
    unsigned char *px = pixels("uint16", 6, &n);
    return refused(frame_header(st, 9, "uint16", "[\"identity\"]", ", \"exposure_ms\": 10"), px, n, 1,
                   "bad_header", st, 9);
}

static int invalid_stream_name_is_bad_header(void)
{
    size_t n;
    unsigned char *px = pixels("uint16", 7, &n);
    return refused(frame_header("has space", 1, "uint16", "[\"identity\"]", ""), px, n, 1, "bad_header", NULL, 0);
}

static int shape_not_positive_is_bad_header(void)
{
    const char *st = stream_name("shape0");
    const char *h = fmt("{\"protocol\": 1, \"type\": \"frame\", \"stream\": \"%s\", \"seq\": 3, \"shape\": [0, %d], "
                        "\"pipeline\": [\"identity\"]}", st, W);
    return refused(h, "", 0, 1, "bad_header", st, 3);
}

static int non_finite_number_is_bad_header(void)
{
    const char *st = stream_name("inf");
    size_t n;
    unsigned char *px = pixels("uint16", 8, &n);
    return refused(frame_header(st, 2, "uint16", "[\"identity\"]", ", \"z_um\": 1e999"), px, n, 1, "bad_header", st, 2);
}

static int header_over_64k_is_bad_header(void)
{
    size_t pad = 70 * 1024;
    char *padding = scratch(pad);
    memset(padding, 'a', pad);
    const char *st = stream_name("big");
    size_t n;
    unsigned char *px = pixels("uint16", 9, &n);
    void *s = new_dealer();
    TRY(send_frame(s, frame_header(st, 0, "uint16", "[\"identity\"]", fmt(", \"pad\": \"%s\"", padding)), px, n));
    msg_t m;
    TRY(recv_answer(s, &m));
    const char *h = header_of(&m, 0);
    CHECK(jstr(jget(h, "type"), "error") && jstr(jget(h, "code"), "bad_header"), "expected bad_header, got %s",
          shown(h));
    return 1;
}

static const char *deep_event_index(void) /* 17 levels: the header object, then 16 nested in event_index */
{
    char *s = scratch(64 + 16 * 8);
    strcpy(s, ", \"event_index\": ");
    for (int i = 0; i < 15; i++)
        strcat(s, "{\"a\": ");
    strcat(s, "{}");
    for (int i = 0; i < 15; i++)
        strcat(s, "}");
    return s;
}

static int too_deep_is_bad_header(void)
{
    const char *st = stream_name("deep");
    size_t n;
    unsigned char *px = pixels("uint16", 10, &n);
    void *s = new_dealer();
    TRY(send_frame(s, frame_header(st, 1, "uint16", "[\"identity\"]", deep_event_index()), px, n));
    msg_t m;
    TRY(recv_answer(s, &m));
    const char *h = header_of(&m, 0);
    CHECK(jstr(jget(h, "code"), "bad_header"), "expected bad_header, got %s", shown(h));
    return 1;
}

/* The doc says a refused frame header with a valid stream and seq carries them "whatever else is
 * wrong with it", nesting too deep included (the server once refused it before reading them). */
static int too_deep_carries_stream_and_seq(void)
{
    const char *st = stream_name("deep-ids");
    size_t n;
    unsigned char *px = pixels("uint16", 10, &n);
    return refused(frame_header(st, 1, "uint16", "[\"identity\"]", deep_event_index()), px, n, 1, "bad_header", st, 1);
}

static int wrong_protocol_version(void)
{
    void *s = new_dealer();
    TRY(send_header(s, "{\"protocol\": 2, \"type\": \"control\", \"request_id\": \"v2\", \"command\": \"ping\", \"args\": {}}"));
    msg_t m;
    TRY(recv_answer(s, &m));
    const char *h = header_of(&m, 0);
    CHECK(jstr(jget(h, "code"), "protocol_version"), "expected protocol_version, got %s", shown(h));
    return 1;
}

/* As too_deep_carries_stream_and_seq, for "protocol": 2. */
static int wrong_protocol_version_carries_stream_and_seq(void)
{
    const char *st = stream_name("v2");
    size_t n;
    unsigned char *px = pixels("uint16", 11, &n);
    char *h = frame_header(st, 3, "uint16", "[\"identity\"]", "");
    h[strlen("{\"protocol\": ")] = '2';
    return refused(h, px, n, 1, "protocol_version", st, 3);
}

static int unknown_type(void)
{
    return refused("{\"protocol\": 1, \"type\": \"warp\"}", NULL, 0, 0, "unknown_type", NULL, 0);
}

static int unknown_model_version(void)
{
    const char *st = stream_name("v99");
    size_t n;
    unsigned char *px = pixels("uint16", 12, &n);
    return refused(frame_header(st, 0, "uint16", "[\"identity@99\"]", ""), px, n, 1, "unknown_model", st, 0);
}

static int unknown_stage(void)
{
    const char *st = stream_name("teleport");
    size_t n;
    unsigned char *px = pixels("uint16", 13, &n);
    return refused(frame_header(st, 0, "uint16", "[\"teleport\"]", ""), px, n, 1, "unknown_pipeline", st, 0);
}

static int table_stage_must_be_last(void)
{
    const char *st = stream_name("tablefirst");
    size_t n;
    unsigned char *px = pixels("uint16", 14, &n);
    return refused(frame_header(st, 0, "uint16", "[\"localise\", \"identity\"]",
                                ", \"pixel_size_um\": 0.1, \"camera\": {\"baseline_adu\": 100, \"e_per_adu\": 0.5}"),
                   px, n, 1, "unknown_pipeline", st, 0);
}

/* At most 8 stages: 8 run, 9 are refused. */
static int pipeline_at_most_8_stages(void)
{
    const char *st = stream_name("stages");
    size_t n;
    unsigned char *px = pixels("uint16", 18, &n);
    const char *eight = "[\"identity\", \"identity\", \"identity\", \"identity\", \"identity\", \"identity\", "
                        "\"identity\", \"identity\"";
    void *s = new_dealer();
    msg_t m;
    TRY(send_frame(s, frame_header(st, 0, "uint16", fmt("%s]", eight), ""), px, n));
    TRY(recv_answer(s, &m));
    TRY(is_result(&m, 0, st, 0, "identity@1", "uint16", px, n));
    return refused(frame_header(st, 1, "uint16", fmt("%s, \"identity\"]", eight), ""), px, n, 1, "bad_header", st, 1);
}

static int localise_needs_camera_and_pixel_size(void)
{
    const char *st = stream_name("nocamera");
    size_t n;
    unsigned char *px = pixels("uint16", 15, &n);
    return refused(frame_header(st, 0, "uint16", "[\"localise\"]", ""), px, n, 1, "bad_header", st, 0);
}

static int refocus_needs_dz(void)
{
    const char *st = stream_name("nodz");
    size_t n;
    unsigned char *px = pixels("uint16", 16, &n);
    return refused(frame_header(st, 0, "uint16", "[\"refocus\"]", ""), px, n, 1, "bad_header", st, 0);
}

static int refocus_dz_outside_training_range(void)
{
    const char *st = stream_name("farz");
    size_t n;
    unsigned char *px = pixels("uint16", 17, &n);
    return refused(frame_header(st, 0, "uint16", "[\"refocus\"]", ", \"dz_um\": 1000"), px, n, 1, "bad_header", st, 0);
}

static int ping(void)
{
    void *s = new_dealer();
    const char *data;
    long long t;
    TRY(control(s, "p-1", "ping", "{}", 1, &data));
    CHECK(jint(jget(data, "time_ns"), &t) && t > 1000000000000000000LL, "ping data.time_ns should be Unix ns, got %s",
          shown(data));
    return 1;
}

static int unknown_command(void)
{
    return control(new_dealer(), "u-1", "teleport", "{}", 0, NULL);
}

static int health_and_stats(void)
{
    void *s = new_dealer();
    const char *data;
    long long k;
    TRY(control(s, "h-1", "health", "{}", 1, &data));
    CHECK(jstr(jget(data, "status"), "serving"), "health status should be serving, got %s", shown(data));
    CHECK(jint(jget(data, "queue_depth"), &k), "health should give queue_depth: %s", shown(data));
    TRY(control(s, "s-1", "stats", "{}", 1, &data));
    static const char *const keys[] = {"frames", "results", "errors", "dropped", "duplicates", "queue_depth", "streams"};
    for (int i = 0; i < 7; i++)
        CHECK(jint(jget(data, keys[i]), &k), "stats should give %s: %s", keys[i], shown(data));
    CHECK(jget(data, "inference") && *jget(data, "inference") == '{', "stats should give inference: %s", shown(data));
    return 1;
}

/* load and activate take NAME@VERSION or a bare NAME (its newest version); unload needs NAME@VERSION. */
static int model_commands(void)
{
    void *s = new_dealer();
    const char *data, *models;
    long long newest = -1, v;
    TRY(control(s, "m-1", "list_models", "{}", 1, &data));
    models = jget(data, "models");
    CHECK(jlen(models) > 0, "list_models should list models: %s", shown(data));
    for (int i = 0; i < jlen(models); i++) {
        const char *mod = jat(models, i);
        CHECK(jget(mod, "name") && jint(jget(mod, "version"), &v) && jget(mod, "task") && jget(mod, "active") &&
              jget(mod, "loaded"), "a list_models entry lacks name, version, task, active or loaded: %s", shown(mod));
        if (jstr(jget(mod, "name"), "identity") && v > newest)
            newest = v;
    }
    CHECK(newest >= 1, "list_models has no identity model: %s", shown(models));
    const char *want = fmt("identity@%lld", newest);
    TRY(control(s, "m-2", "load", "{\"model\": \"identity\"}", 1, &data));
    CHECK(jstr(jget(data, "model"), want), "load identity should load the newest, %s, got %s", want, shown(data));
    TRY(control(s, "m-3", "activate", "{\"model\": \"identity\"}", 1, &data));
    CHECK(jstr(jget(data, "active"), want), "activate identity should activate the newest, %s, got %s", want,
          shown(data));
    TRY(control(s, "m-4", "load", fmt("{\"model\": \"%s\"}", want), 1, &data));
    TRY(control(s, "m-5", "load", "{\"model\": \"identity@99\"}", 0, NULL));
    TRY(control(s, "m-6", "unload", "{\"model\": \"identity\"}", 0, NULL));
    TRY(control(s, "m-7", "unload", fmt("{\"model\": \"%s\"}", want), 0, NULL)); /* the active version */
    return 1;
}

/* The doc says an error's request_id "is set when it was a control request", also for a control
 * request refused as a header. */
static int refused_control_carries_request_id(void)
{
    void *s = new_dealer();
    TRY(send_header(s, "{\"protocol\": 1, \"type\": \"control\", \"request_id\": \"bad-1\", \"command\": \"ping\", "
                       "\"args\": {}, \"bogus\": 1}"));
    msg_t m;
    TRY(recv_answer(s, &m));
    TRY(is_error(&m, "bad_header", NULL, 0));
    const char *h = header_of(&m, 0);
    CHECK(jstr(jget(h, "request_id"), "bad-1"), "request_id should be \"bad-1\", got %s", shown(jget(h, "request_id")));
    return 1;
}

/* Lossless credit flow, W = 4: every frame answered exactly once, by its own result, in seq order. */
static int credit_flow_lossless(void)
{
    enum { WIN = 4, N = 12 };
    void *s = new_dealer();
    const char *st = stream_name("credit");
    unsigned char *px[N];
    size_t n;
    int answered[N] = {0};
    long sent = 0, next = 0;
    for (int i = 0; i < N; i++)
        px[i] = pixels("uint16", 100u + (unsigned)i, &n);
    for (; sent < WIN; sent++)
        TRY(send_frame(s, frame_header(st, sent, "uint16", "[\"identity\"]", ""), px[sent], n));
    for (int got = 0; got < N; got++) {
        msg_t m;
        long long seq, bs;
        TRY(recv_answer(s, &m));
        const char *h = header_of(&m, 0);
        CHECK(jstr(jget(h, "type"), "result"), "expected a result, got %s", shown(h));
        CHECK(jint(jget(h, "seq"), &seq) && seq >= 0 && seq < sent, "an answer for a frame not in flight: %s", shown(h));
        CHECK(!answered[seq], "seq %lld answered twice", seq);
        CHECK(seq == next, "results of one stream should come in seq order: expected %ld, got %lld", next, seq);
        TRY(is_result(&m, 0, st, (long)seq, "identity@1", "uint16", px[seq], n));
        CHECK(jint(jget(jget(h, "latency"), "batch_size"), &bs) && bs >= 1 && bs <= WIN,
              "latency.batch_size should be 1..%d with %d in flight, got %s", WIN, WIN, shown(jget(h, "latency")));
        answered[seq] = 1;
        next++;
        if (sent < N) { /* a credit came back: send the next frame */
            TRY(send_frame(s, frame_header(st, sent, "uint16", "[\"identity\"]", ""), px[sent], n));
            sent++;
        }
    }
    return expect_silence(s, "every frame was answered");
}

/* latest mode: every frame answered exactly once, by a result or an ack "dropped"; the newest gets a result. */
static int latest_mode(void)
{
    enum { N = 8 };
    void *s = new_dealer();
    const char *st = stream_name("latest");
    unsigned char *px[N];
    size_t n;
    int answered[N] = {0};
    long long last_result = -1;
    for (int i = 0; i < N; i++) {
        px[i] = pixels("uint16", 200u + (unsigned)i, &n);
        TRY(send_frame(s, frame_header(st, i, "uint16", "[\"identity\"]", ", \"mode\": \"latest\""), px[i], n));
    }
    for (int got = 0; got < N; got++) {
        msg_t m;
        long long seq;
        TRY(recv_answer(s, &m));
        const char *h = header_of(&m, 0);
        CHECK(jint(jget(h, "seq"), &seq) && seq >= 0 && seq < N, "an answer for a frame not sent: %s", shown(h));
        CHECK(!answered[seq], "seq %lld answered twice", seq);
        answered[seq] = 1;
        if (jstr(jget(h, "type"), "ack")) {
            CHECK(jstr(jget(h, "status"), "dropped"), "latest mode acks should be dropped, got %s", shown(h));
            TRY(ids_are(h, st, (long)seq));
            CHECK(m.n == 1, "an ack is one part, got %d", m.n);
            continue;
        }
        TRY(is_result(&m, 0, st, (long)seq, "identity@1", "uint16", px[seq], n));
        CHECK(seq > last_result, "results of one stream should come in seq order: %lld after %lld", seq, last_result);
        last_result = seq;
    }
    CHECK(answered[N - 1] && last_result == N - 1, "the newest frame should get a result (newest result: %lld)",
          last_result);
    return expect_silence(s, "every frame was answered");
}

/* A frame resent after its result (the result was lost) gets its result again. */
static int resend_after_result(void)
{
    void *s = new_dealer();
    const char *st = stream_name("resend");
    size_t n;
    unsigned char *px = pixels("uint16", 300, &n);
    const char *h = frame_header(st, 0, "uint16", "[\"identity\"]", "");
    msg_t a, b;
    TRY(send_frame(s, h, px, n));
    TRY(recv_answer(s, &a));
    TRY(is_result(&a, 0, st, 0, "identity@1", "uint16", px, n));
    TRY(send_frame(s, h, px, n));
    TRY(recv_answer(s, &b));
    TRY(is_result(&b, 0, st, 0, "identity@1", "uint16", px, n));
    return expect_silence(s, "the resent frame's result");
}

/* A frame resent while in flight: answered by an ack "duplicate" and one result, or (if its first
 * result was out already) by that result and the result again. Never an error, never more. */
static int resend_in_flight(void)
{
    void *s = new_dealer();
    const char *st = stream_name("inflight");
    size_t n;
    unsigned char *px = pixels("uint16", 301, &n);
    const char *h = frame_header(st, 0, "uint16", "[\"identity\"]", "");
    int results = 0, acks = 0;
    TRY(send_frame(s, h, px, n));
    TRY(send_frame(s, h, px, n));
    for (int i = 0; i < 2; i++) {
        msg_t m;
        TRY(recv_answer(s, &m));
        const char *mh = header_of(&m, 0);
        if (jstr(jget(mh, "type"), "ack")) {
            CHECK(jstr(jget(mh, "status"), "duplicate"), "expected an ack duplicate, got %s", shown(mh));
            TRY(ids_are(mh, st, 0));
            acks++;
        } else {
            TRY(is_result(&m, 0, st, 0, "identity@1", "uint16", px, n));
            results++;
        }
    }
    CHECK(results >= 1 && acks <= 1, "expected a result and an ack duplicate or two results; got %d and %d", results,
          acks);
    return expect_silence(s, "the resent frame's answers");
}

/* The same (stream, seq) with other pixels, after the first was answered, is a new frame. */
static int same_seq_new_pixels_is_a_new_frame(void)
{
    void *s = new_dealer();
    const char *st = stream_name("reuse");
    size_t n;
    unsigned char *p1 = pixels("uint16", 400, &n), *p2 = pixels("uint16", 401, &n);
    const char *h = frame_header(st, 0, "uint16", "[\"identity\"]", "");
    msg_t m;
    TRY(send_frame(s, h, p1, n));
    TRY(recv_answer(s, &m));
    TRY(is_result(&m, 0, st, 0, "identity@1", "uint16", p1, n));
    TRY(send_frame(s, h, p2, n));
    TRY(recv_answer(s, &m));
    return is_result(&m, 0, st, 0, "identity@1", "uint16", p2, n);
}

/* Another client's frame with the same (stream, seq) and pixels is processed for it, never
 * answered with the first client's kept result (a kept result comes back byte for byte). */
static int another_clients_frame_is_its_own(void)
{
    void *a = new_dealer(), *b = new_dealer();
    const char *st = stream_name("shared");
    size_t n;
    unsigned char *px = pixels("uint16", 500, &n);
    const char *h = frame_header(st, 0, "uint16", "[\"identity\"]", "");
    msg_t ma, ma2, mb;
    TRY(send_frame(a, h, px, n));
    TRY(recv_answer(a, &ma));
    TRY(is_result(&ma, 0, st, 0, "identity@1", "uint16", px, n));
    TRY(send_frame(a, h, px, n)); /* the same sender again: its kept result */
    TRY(recv_answer(a, &ma2));
    TRY(is_result(&ma2, 0, st, 0, "identity@1", "uint16", px, n));
    TRY(send_frame(b, h, px, n));
    TRY(recv_answer(b, &mb));
    TRY(is_result(&mb, 0, st, 0, "identity@1", "uint16", px, n));
    if (ma2.len[0] == ma.len[0] && memcmp(ma2.part[0], ma.part[0], ma.len[0]) == 0)
        CHECK(mb.len[0] != ma.len[0] || memcmp(mb.part[0], ma.part[0], ma.len[0]) != 0,
              "the other client got the first client's kept result (the same header, latency included)");
    return 1;
}

/* Reconnect with the same routing id and resend: the result comes to the new connection. */
static int reconnect_and_resend(void)
{
    const char *id = fmt("%s-reconnect", g_tag), *st = stream_name("reconnect");
    size_t n;
    unsigned char *px = pixels("uint16", 600, &n);
    const char *h = frame_header(st, 0, "uint16", "[\"identity\"]", "");
    void *old = new_socket(ZMQ_DEALER, g_frames, id);
    msg_t m;
    TRY(send_frame(old, h, px, n));
    TRY(recv_answer(old, &m)); /* the server answered; suppose the answer was lost */
    zmq_close(old);
    g_socks[--g_nsocks] = NULL;
    void *s = new_socket(ZMQ_DEALER, g_frames, id);
    TRY(send_frame(s, h, px, n));
    TRY(recv_answer(s, &m));
    return is_result(&m, 0, st, 0, "identity@1", "uint16", px, n);
}

/* PUB: [topic = stream, header, payload], subscribed by stream. Kept between the two PUB checks. */
static void *g_sub;
static const char *g_pub_stream;
static long g_pub_seq;

static int pub_result_layout(void)
{
    static char stream[64];
    snprintf(stream, sizeof stream, "%s-pub", g_tag);
    g_pub_stream = stream;
    void *sub = zmq_socket(g_ctx, ZMQ_SUB), *s = new_dealer();
    int zero = 0;
    zmq_setsockopt(sub, ZMQ_LINGER, &zero, sizeof zero);
    if (g_public_key != NULL)
        curve_client(sub, g_public_key, g_secret_key);
    zmq_setsockopt(sub, ZMQ_SUBSCRIBE, stream, strlen(stream));
    CHECK(zmq_connect(sub, g_results) == 0, "cannot connect a SUB to %s", g_results);
    g_sub = sub;
    size_t n;
    msg_t m, p;
    /* a subscription takes a moment to reach the publisher: send frames until one is published */
    for (g_pub_seq = 0; g_pub_seq < 100; g_pub_seq++) {
        unsigned char *px = pixels("uint16", 700u + (unsigned)g_pub_seq, &n);
        TRY(send_frame(s, frame_header(stream, g_pub_seq, "uint16", "[\"identity\"]", ""), px, n));
        TRY(recv_answer(s, &m));
        if (recv_msg(sub, &p, 100))
            break;
    }
    CHECK(g_pub_seq < 100, "nothing published on stream %s after %ld frames", stream, g_pub_seq);
    CHECK(p.n == 3, "a PUB message is [topic, header, payload], got %d parts", p.n);
    CHECK(p.len[0] == strlen(stream) && memcmp(p.part[0], stream, p.len[0]) == 0, "topic should be the stream %s, got %s",
          stream, p.part[0]);
    long long seq;
    CHECK(jint(jget(header_of(&p, 1), "seq"), &seq) && seq >= 0 && seq <= g_pub_seq, "a published result not sent: %s",
          shown(header_of(&p, 1)));
    unsigned char *px = pixels("uint16", 700u + (unsigned)seq, &n);
    TRY(is_result(&p, 1, stream, (long)seq, "identity@1", "uint16", px, n));
    TRY(is_final(&p, 1, 1));
    while (recv_msg(sub, &p, QUIET_MS)) /* later frames' results, published meanwhile */
        ;
    return 1;
}

/* The sender gets the final result only; the PUB carries every stage's. */
static int pub_every_stage(void)
{
    void *sub = g_sub, *s = new_dealer();
    CHECK(sub != NULL, "no subscriber (pub_result_layout did not get one ready)");
    long seq = ++g_pub_seq;
    size_t n;
    unsigned char *px = pixels("uint16", 800, &n);
    msg_t m, p1, p2;
    TRY(send_frame(s, frame_header(g_pub_stream, seq, "uint16", "[\"identity\", \"identity\"]", ""), px, n));
    TRY(recv_answer(s, &m));
    TRY(is_result(&m, 0, g_pub_stream, seq, "identity@1", "uint16", px, n));
    TRY(is_final(&m, 0, 1));
    TRY(expect_silence(s, "the final result (the sender gets no intermediate result)"));
    TRY(recv_msg(sub, &p1, TIMEOUT_MS));
    TRY(is_result(&p1, 1, g_pub_stream, seq, "identity@1", "uint16", px, n));
    TRY(is_final(&p1, 1, 0));
    TRY(recv_msg(sub, &p2, TIMEOUT_MS));
    TRY(is_result(&p2, 1, g_pub_stream, seq, "identity@1", "uint16", px, n));
    TRY(is_final(&p2, 1, 1));
    return 1;
}

/* -- limits: the queue's share, the frame size ----------------------------------------------- */

/* busy: a client with its share of the queue waiting (64 frames by default) has the frames beyond
 * it refused `busy`, each error carrying its frame's stream and seq, and every frame is still
 * answered exactly once. The frames go through a model (refocus), far slower to run than to send,
 * so the queue fills; they are fewer than the 128 answers the server holds for a client that does
 * not read (it reads only once all are sent). A refused frame sent again once the others are
 * answered is taken. */
static int busy_beyond_share(void)
{
    enum { N = 120 };
    void *s = new_dealer();
    const char *st = stream_name("busy"), *pipeline = "[\"refocus\"]", *dz = ", \"dz_um\": 0.5";
    unsigned char *px[N];
    size_t n, out = (size_t)H * W * 4;
    int answered[N] = {0};
    long long last_result = -1, first_busy = -1, busy = 0, results = 0, counted;
    for (int i = 0; i < N; i++) { /* all at once, without reading an answer */
        px[i] = pixels("uint16", 1000u + (unsigned)i, &n);
        TRY(send_frame(s, frame_header(st, i, "uint16", pipeline, dz), px[i], n));
    }
    for (int got = 0; got < N; got++) {
        msg_t m;
        long long seq;
        TRY(recv_answer(s, &m));
        const char *h = header_of(&m, 0);
        CHECK(jint(jget(h, "seq"), &seq) && seq >= 0 && seq < N, "an answer for a frame not sent: %s", shown(h));
        CHECK(!answered[seq], "seq %lld answered twice", seq);
        answered[seq] = 1;
        if (jstr(jget(h, "type"), "error")) {
            TRY(is_error(&m, "busy", st, (long)seq));
            if (first_busy < 0)
                first_busy = seq;
            busy++;
            continue;
        }
        TRY(is_result(&m, 0, st, (long)seq, NULL, "float32", NULL, out));
        CHECK(seq > last_result, "results of one stream should come in seq order: %lld after %lld", seq, last_result);
        last_result = seq;
        results++;
    }
    CHECK(busy > 0, "%d frames sent at once without reading: none refused busy (the share is 64 frames)", N);
    CHECK(results >= 1, "every frame was refused busy: a client with nothing queued gets a frame in");
    TRY(expect_silence(s, "every frame was answered"));
    const char *data;
    TRY(control(s, "busy-1", "stats", "{}", 1, &data));
    CHECK(jint(jget(data, "busy"), &counted) && counted >= busy, "stats busy should count the %lld refused, got %s",
          busy, shown(jget(data, "busy")));
    msg_t m; /* sent again, now that its share is free */
    TRY(send_frame(s, frame_header(st, first_busy, "uint16", pipeline, dz), px[first_busy], n));
    TRY(recv_answer(s, &m));
    return is_result(&m, 0, st, (long)first_busy, NULL, "float32", NULL, out);
}

/* frame_too_large: a frame over the server's limit (64 MiB by default: `serve --max-frame-mb`) is
 * refused with its stream and seq. Sent whole (a payload of the size its shape says), so that it
 * has no other fault. */
static int frame_too_large(void)
{
    enum { ROWS = 8193, COLS = 4096 }; /* uint16: 64 MiB and one row */
    const char *st = stream_name("huge");
    size_t n = (size_t)ROWS * COLS * 2;
    const char *h = fmt("{\"protocol\": 1, \"type\": \"frame\", \"stream\": \"%s\", \"seq\": 4, \"shape\": [%d, %d], "
                        "\"dtype\": \"uint16\", \"pipeline\": [\"identity\"]}", st, ROWS, COLS);
    return refused(h, scratch(n), n, 1, "frame_too_large", st, 4);
}

/* -- localise streams' renders ---------------------------------------------------------------- */

#define CAMERA ", \"pixel_size_um\": 0.1, \"camera\": {\"baseline_adu\": 100, \"e_per_adu\": 0.5, \"em_gain\": 1}"

/* An H x W uint16 camera frame (ADU): baseline 100, background 10, and three bright emitters
 * (Gaussian spots of 1.3 px sigma) whose places move with `salt`. */
static unsigned char *spots(unsigned salt, size_t *nbytes)
{
    const double cy[] = {8.0 + salt % 5, 20.0, 13.5}, cx[] = {10.0, 30.0 - salt % 7, 38.5};
    unsigned char *b = scratch((size_t)H * W * 2);
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            double v = 110.0;
            for (int k = 0; k < 3; k++)
                v += 600.0 * exp(-((y - cy[k]) * (y - cy[k]) + (x - cx[k]) * (x - cx[k])) / (2 * 1.3 * 1.3));
            uint16_t u = (uint16_t)lround(v);
            b[2 * (y * W + x)] = (unsigned char)(u & 0xff);
            b[2 * (y * W + x) + 1] = (unsigned char)(u >> 8);
        }
    *nbytes = (size_t)H * W * 2;
    return b;
}

static double pixel_sum_f32(const msg_t *m, int part) /* float32 little-endian pixels, summed */
{
    double sum = 0;
    for (size_t i = 0; i + 4 <= m->len[part]; i += 4) {
        const unsigned char *b = (const unsigned char *)m->part[part] + i;
        uint32_t v = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
        float f;
        memcpy(&f, &v, sizeof f);
        sum += f;
    }
    return sum;
}

/* The next render published on sub (tables of the stream are published there too: passed over). */
static int recv_render(void *sub, const char *stream, msg_t *p)
{
    for (;;) {
        TRY(recv_msg(sub, p, TIMEOUT_MS));
        CHECK(p->n == 3, "a PUB message is [topic, header, payload], got %d parts", p->n);
        CHECK(p->len[0] == strlen(stream) && memcmp(p->part[0], stream, p->len[0]) == 0,
              "topic should be the stream %s, got %s", stream, p->part[0]);
        if (jstr(jget(header_of(p, 1), "stage"), "render"))
            return 1;
        CHECK(jstr(jget(header_of(p, 1), "stage"), "localise"), "expected a render or a table, got %s",
              shown(header_of(p, 1)));
    }
}

/* A render reply's data and the published render agree with the doc: the field of the stream's
 * first frame (H x W of 100 nm) at pixel_nm, drawn by method, from every emitter of its tables. */
static int render_is(const char *data, const msg_t *p, const char *stream, long frames, long long rows,
                     double pixel_nm, const char *method)
{
    long long k, inside, outside, not_kept, y, x;
    double d;
    int ry = (int)lround(H * 100 / pixel_nm), rx = (int)lround(W * 100 / pixel_nm);
    CHECK(jstr(jget(data, "stream"), stream), "render stream should be %s: %s", stream, shown(data));
    CHECK(jget(data, "model") && strncmp(jget(data, "model"), "\"localise@", 10) == 0,
          "render model should be localise@N: %s", shown(data));
    CHECK(jint(jget(data, "frames"), &k) && k == frames, "render frames should be %ld: %s", frames, shown(data));
    CHECK(jint(jget(data, "last_seq"), &k) && k == frames - 1, "render last_seq should be %ld: %s", frames - 1,
          shown(data));
    CHECK(jint(jget(data, "emitters"), &inside) && jint(jget(data, "emitters_outside"), &outside) &&
          jint(jget(data, "emitters_not_kept"), &not_kept) && inside >= 0 && outside >= 0 && not_kept == 0,
          "render emitters, emitters_outside, emitters_not_kept (0 of so few): %s", shown(data));
    CHECK(inside + outside == rows, "render emitters + emitters_outside should be the %lld rows of the tables: %s",
          rows, shown(data));
    CHECK(jnum(jget(data, "pixel_nm"), &d) && d == pixel_nm, "render pixel_nm should be %g: %s", pixel_nm,
          shown(data));
    CHECK(jstr(jget(data, "method"), method), "render method should be %s: %s", method, shown(data));
    const char *shape = jget(data, "shape");
    CHECK(jlen(shape) == 2 && jint(jat(shape, 0), &y) && jint(jat(shape, 1), &x) && y == ry && x == rx,
          "render shape should be [%d, %d] (the frame's field at %g nm): %s", ry, rx, pixel_nm, shown(data));
    const char *h = header_of(p, 1), *pshape = jget(h, "shape");
    CHECK(jstr(jget(h, "type"), "result") && jstr(jget(h, "stream"), stream) && jstr(jget(h, "kind"), "image") &&
          jstr(jget(h, "dtype"), "float32"), "the render should be a result, an image of float32: %s", shown(h));
    CHECK(jlen(pshape) == 2 && jint(jat(pshape, 0), &y) && jint(jat(pshape, 1), &x) && y == ry && x == rx,
          "the published render's shape should be the reply's [%d, %d]: %s", ry, rx, shown(pshape));
    CHECK(p->len[2] == (size_t)ry * rx * 4, "the render's payload should be %d x %d float32, got %zu bytes", ry, rx,
          p->len[2]);
    CHECK(jnum(jget(h, "pixel_size_um"), &d) && fabs(d - pixel_nm / 1000) < 1e-9,
          "the render's pixel_size_um should be its pixel, %g: %s", pixel_nm / 1000, shown(jget(h, "pixel_size_um")));
    double sum = pixel_sum_f32(p, 2);
    if (strcmp(method, "histogram") == 0) /* a count per emitter */
        CHECK(fabs(sum - (double)inside) < 1e-3, "a histogram render counts each emitter: sum %g, emitters %lld", sum,
              inside);
    else /* a unit-integral Gaussian each, less what falls off the field's edge */
        CHECK(sum <= inside + 1e-3 && sum >= 0.5 * inside, "a Gaussian render's sum should be about the %lld "
              "emitters, at most them: %g", inside, sum);
    return 1;
}

/* render: a localise stream's render is published on PUB (topic the stream) as a result of stage
 * "render", a float32 image, at the server's render pixel (20 nm by default), then at the pixel_nm
 * and method asked for, which it keeps; the reply says what it shows. A stream without localised
 * frames has no render. */
static int render_on_request(void)
{
    enum { MIN_FRAMES = 3 };
    const char *st = stream_name("smlm");
    void *s = new_dealer(), *sub = new_socket(ZMQ_SUB, g_results, NULL);
    zmq_setsockopt(sub, ZMQ_SUBSCRIBE, st, strlen(st));
    long seq;
    long long rows = 0, r;
    int subscribed = 0;
    msg_t m, p;
    /* frames until there are a few and the subscription is seen working (their tables published) */
    for (seq = 0; seq < 100 && (seq < MIN_FRAMES || !subscribed); seq++) {
        size_t n;
        unsigned char *px = spots((unsigned)seq, &n);
        TRY(send_frame(s, frame_header(st, seq, "uint16", "[\"localise\"]", CAMERA), px, n));
        TRY(recv_answer(s, &m));
        const char *h = header_of(&m, 0);
        CHECK(jstr(jget(h, "type"), "result") && jstr(jget(h, "kind"), "table"), "expected a table, got %s", shown(h));
        CHECK(jint(jat(jget(h, "shape"), 0), &r) && m.n == 2 && m.len[1] == (size_t)r * 44,
              "a table of shape[0] rows of 44 bytes: %s, %zu bytes", shown(jget(h, "shape")), m.len[1]);
        rows += r;
        while (recv_msg(sub, &p, subscribed ? 0 : 100))
            subscribed = 1;
    }
    CHECK(subscribed, "nothing published on stream %s after %ld frames", st, seq);
    CHECK(rows > 0, "no emitters localised in %ld frames of three bright spots each", seq);
    while (recv_msg(sub, &p, QUIET_MS)) /* the last tables */
        ;
    const char *data;
    TRY(control(s, "render-1", "render", fmt("{\"stream\": \"%s\"}", st), 1, &data));
    TRY(recv_render(sub, st, &p));
    TRY(render_is(data, &p, st, seq, rows, 20.0, "gaussian"));
    TRY(control(s, "render-2", "render", fmt("{\"stream\": \"%s\", \"pixel_nm\": 50, \"method\": \"histogram\"}", st),
                1, &data));
    TRY(recv_render(sub, st, &p));
    TRY(render_is(data, &p, st, seq, rows, 50.0, "histogram"));
    TRY(control(s, "render-3", "render", fmt("{\"stream\": \"%s\"}", st), 1, &data)); /* kept at those settings */
    TRY(recv_render(sub, st, &p));
    TRY(render_is(data, &p, st, seq, rows, 50.0, "histogram"));
    return control(s, "render-4", "render", fmt("{\"stream\": \"%s-none\"}", st), 0, NULL);
}

/* -- on request: CURVE, and a server stopping ------------------------------------------------- */

/* A client whose key is on the server's allow-list is served: a frame and a control request. */
static int curve_allowed_client_is_served(void)
{
    void *s = new_dealer();
    const char *st = stream_name("curve"), *data;
    size_t n;
    unsigned char *px = pixels("uint16", 1100, &n);
    msg_t m;
    TRY(send_frame(s, frame_header(st, 0, "uint16", "[\"identity\"]", ""), px, n));
    TRY(recv_answer(s, &m));
    TRY(is_result(&m, 0, st, 0, "identity@1", "uint16", px, n));
    TRY(control(s, "curve-1", "health", "{}", 1, &data));
    CHECK(jstr(jget(data, "status"), "serving"), "health status should be serving, got %s", shown(data));
    return 1;
}

/* Nothing comes back to s: it sends a ping and a frame, and waits `ms`. */
static int gets_nothing(void *s, const char *who, int ms)
{
    size_t n;
    unsigned char *px = pixels("uint16", 1101, &n);
    msg_t m;
    TRY(send_header(s, "{\"protocol\": 1, \"type\": \"control\", \"request_id\": \"x-1\", \"command\": \"ping\", "
                       "\"args\": {}}"));
    TRY(send_frame(s, frame_header(stream_name("stranger"), 0, "uint16", "[\"identity\"]", ""), px, n));
    if (recv_msg(s, &m, ms)) {
        snprintf(g_why, sizeof g_why, "%s got an answer: %s", who, shown(header_of(&m, 0)));
        return 0;
    }
    return 1;
}

/* A client whose key is not on the allow-list fails the handshake and receives nothing. */
static int curve_unknown_key_gets_nothing(void)
{
    char public_key[41], secret_key[41];
    CHECK(zmq_curve_keypair(public_key, secret_key) == 0, "cannot make a key pair: %s", zmq_strerror(zmq_errno()));
    void *s = new_socket_keyed(ZMQ_DEALER, g_frames, fmt("%s-stranger", g_tag), public_key, secret_key);
    return gets_nothing(s, "a client with a key not allowed", 1500);
}

/* A server that requires CURVE answers nothing to a client without it. */
static int curve_plain_client_gets_nothing(void)
{
    void *s = new_socket_keyed(ZMQ_DEALER, g_frames, fmt("%s-plain", g_tag), NULL, NULL);
    return gets_nothing(s, "a client without CURVE", 1000);
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec / 1e9;
}

/* shutting_down: the server stopping (SIGTERM) finishes the frames it has and refuses the frames
 * that come after with `shutting_down`, each error carrying its frame's stream and seq. Lossless
 * frames through a model (refocus), 8 in flight, until one is refused; then every frame in flight
 * is answered once, by its result or a refusal, and no refused frame comes before a finished one.
 * Someone else stops the server: this prints "# frames in flight: stop the server now" when it may
 * (once some frames have their results). */
static int shutting_down(void)
{
    enum { WIN = 8, MAX = 20000 };
    void *s = new_dealer();
    const char *st = stream_name("stopping"), *pipeline = "[\"refocus\"]", *dz = ", \"dz_um\": 0.5";
    size_t n, out = (size_t)H * W * 4;
    unsigned char *px = pixels("uint16", 1200, &n);
    char *answered = scratch(MAX);
    long sent = 0, in_flight = 0, refused_n = 0, results = 0, finished_after = 0;
    long long last_result = -1, first_refused = -1;
    double deadline = now_s() + 30;
    for (; sent < WIN; sent++, in_flight++)
        TRY(send_frame(s, frame_header(st, sent, "uint16", pipeline, dz), px, n));
    for (int told = 0; in_flight > 0;) {
        if (!told && results >= WIN) { /* the server takes frames: now it may stop */
            printf("# frames in flight: stop the server now\n");
            fflush(stdout);
            told = 1;
        }
        msg_t m;
        long long seq;
        TRY(recv_answer(s, &m));
        const char *h = header_of(&m, 0);
        CHECK(jint(jget(h, "seq"), &seq) && seq >= 0 && seq < sent, "an answer for a frame not in flight: %s",
              shown(h));
        CHECK(!answered[seq], "seq %lld answered twice", seq);
        answered[seq] = 1;
        in_flight--;
        if (jstr(jget(h, "type"), "error")) {
            TRY(is_error(&m, "shutting_down", st, (long)seq));
            if (first_refused < 0 || seq < first_refused)
                first_refused = seq;
            refused_n++;
        } else {
            TRY(is_result(&m, 0, st, (long)seq, NULL, "float32", NULL, out));
            CHECK(seq > last_result, "results of one stream should come in seq order: %lld after %lld", seq,
                  last_result);
            last_result = seq;
            results++;
            finished_after += refused_n > 0;
        }
        if (refused_n == 0 && sent < MAX && now_s() < deadline) { /* a credit came back: the next frame */
            TRY(send_frame(s, frame_header(st, sent, "uint16", pipeline, dz), px, n));
            sent++;
            in_flight++;
        }
    }
    CHECK(refused_n > 0, "%ld frames sent, none refused shutting_down (was the server stopped?)", sent);
    CHECK(results >= WIN, "the frames before the server stopped should have their results: %ld", results);
    CHECK(last_result < first_refused, "frame %lld was finished after frame %lld was refused: a stopping server "
          "takes no new frames", last_result, first_refused);
    printf("# %ld frames: %ld results (%ld of them after the first refusal), %ld refused shutting_down\n", sent,
           results, finished_after, refused_n);
    return 1;
}

/* -- the script ------------------------------------------------------------------------------- */

enum {
    NEEDS_PUB = 1,   /* the results (PUB) address */
    NEEDS_CURVE = 2, /* CURVE keys in the environment */
    ON_REQUEST = 4   /* not in the default script: run only when named with --only */
};

typedef struct {
    const char *name;
    int (*run)(void);
    const char *expected_fail; /* NULL, or the server change that will make it pass */
    int needs;                 /* NEEDS_PUB | NEEDS_CURVE | ON_REQUEST */
} check_t;

static const check_t CHECKS[] = {
    {"identity_uint16_roundtrip", roundtrip_identity_uint16, NULL, 0},
    {"omitted_fields_come_back_as_documented", omitted_fields_come_back_as_documented, NULL, 0},
    {"identity_refuses_uint8", identity_refuses_uint8, NULL, 0},
    {"identity_refuses_float32", identity_refuses_float32, NULL, 0},
    {"refocus_takes_uint8", refocus_takes_uint8, NULL, 0},
    {"refocus_takes_float32", refocus_takes_float32, NULL, 0},
    {"payload_wrong_size", payload_wrong_size, NULL, 0},
    {"payload_missing", payload_missing, NULL, 0},
    {"payload_extra_part", payload_extra_part, NULL, 0},
    {"dtype_float64_refused", dtype_float64_refused, NULL, 0},
    {"not_json_is_bad_header", not_json_is_bad_header, NULL, 0},
    {"not_an_object_is_bad_header", not_an_object_is_bad_header, NULL, 0},
    {"unknown_field_is_bad_header", unknown_field_is_bad_header, NULL, 0},
    {"invalid_stream_name_is_bad_header", invalid_stream_name_is_bad_header, NULL, 0},
    {"shape_not_positive_is_bad_header", shape_not_positive_is_bad_header, NULL, 0},
    {"non_finite_number_is_bad_header", non_finite_number_is_bad_header, NULL, 0},
    {"header_over_64k_is_bad_header", header_over_64k_is_bad_header, NULL, 0},
    {"too_deep_is_bad_header", too_deep_is_bad_header, NULL, 0},
    {"too_deep_carries_stream_and_seq", too_deep_carries_stream_and_seq, NULL, 0},
    {"wrong_protocol_version", wrong_protocol_version, NULL, 0},
    {"wrong_protocol_version_carries_stream_and_seq", wrong_protocol_version_carries_stream_and_seq, NULL, 0},
    {"unknown_type", unknown_type, NULL, 0},
    {"unknown_model_version", unknown_model_version, NULL, 0},
    {"unknown_stage", unknown_stage, NULL, 0},
    {"table_stage_must_be_last", table_stage_must_be_last, NULL, 0},
    {"pipeline_at_most_8_stages", pipeline_at_most_8_stages, NULL, 0},
    {"localise_needs_camera_and_pixel_size", localise_needs_camera_and_pixel_size, NULL, 0},
    {"refocus_needs_dz", refocus_needs_dz, NULL, 0},
    {"refocus_dz_outside_training_range", refocus_dz_outside_training_range, NULL, 0},
    {"ping", ping, NULL, 0},
    {"unknown_command", unknown_command, NULL, 0},
    {"health_and_stats", health_and_stats, NULL, 0},
    {"model_commands", model_commands, NULL, 0},
    {"refused_control_carries_request_id", refused_control_carries_request_id, NULL, 0},
    {"credit_flow_lossless", credit_flow_lossless, NULL, 0},
    {"latest_mode", latest_mode, NULL, 0},
    {"resend_after_result", resend_after_result, NULL, 0},
    {"resend_in_flight", resend_in_flight, NULL, 0},
    {"same_seq_new_pixels_is_a_new_frame", same_seq_new_pixels_is_a_new_frame, NULL, 0},
    {"another_clients_frame_is_its_own", another_clients_frame_is_its_own, NULL, 0},
    {"reconnect_and_resend", reconnect_and_resend, NULL, 0},
    {"pub_result_layout", pub_result_layout, NULL, 1},
    {"pub_every_stage", pub_every_stage, NULL, NEEDS_PUB},
    {"busy_beyond_share", busy_beyond_share, NULL, 0},
    {"frame_too_large", frame_too_large, NULL, 0},
    {"render_on_request", render_on_request, NULL, NEEDS_PUB},
    {"curve_allowed_client_is_served", curve_allowed_client_is_served, NULL, NEEDS_CURVE | ON_REQUEST},
    {"curve_unknown_key_gets_nothing", curve_unknown_key_gets_nothing, NULL, NEEDS_CURVE | ON_REQUEST},
    {"curve_plain_client_gets_nothing", curve_plain_client_gets_nothing, NULL, NEEDS_CURVE | ON_REQUEST},
    {"shutting_down", shutting_down, NULL, ON_REQUEST},
};

/* --only's list, NAME,NAME,...: the item at p is `name`; the next item, or NULL. */
static int item_is(const char *p, const char *name)
{
    size_t n = strlen(name);
    return strncmp(p, name, n) == 0 && (p[n] == ',' || p[n] == '\0');
}
static const char *next_item(const char *p) { return strchr(p, ',') ? strchr(p, ',') + 1 : NULL; }

static int listed(const char *list, const char *name)
{
    for (const char *p = list; p != NULL; p = next_item(p))
        if (item_is(p, name))
            return 1;
    return 0;
}

/* The CURVE keys from the environment: all three, or none (no CURVE). */
static int read_keys(void)
{
    static const char *const names[] = {"LIVESCOPE_SERVER_PUBLIC_KEY", "LIVESCOPE_CLIENT_PUBLIC_KEY",
                                        "LIVESCOPE_CLIENT_SECRET_KEY"};
    const char *keys[3];
    int given = 0;
    for (int i = 0; i < 3; i++) {
        keys[i] = getenv(names[i]);
        if (keys[i] != NULL && *keys[i] != '\0') {
            given++;
            if (strlen(keys[i]) != 40) {
                fprintf(stderr, "%s should be a key in Z85 text (40 characters), got %zu characters\n", names[i],
                        strlen(keys[i]));
                return 0;
            }
        }
    }
    if (given == 0)
        return 1;
    if (given < 3) {
        fprintf(stderr, "CURVE needs all of %s, %s and %s\n", names[0], names[1], names[2]);
        return 0;
    }
    if (!zmq_has("curve")) {
        fprintf(stderr, "CURVE keys given, but this libzmq was built without CURVE\n");
        return 0;
    }
    g_server_key = keys[0];
    g_public_key = keys[1];
    g_secret_key = keys[2];
    return 1;
}

int main(int argc, char **argv)
{
    const char *only = NULL;
    int n = (int)(sizeof CHECKS / sizeof CHECKS[0]);
    if (argc > 2 && strcmp(argv[1], "--only") == 0) {
        only = argv[2];
        argc -= 2;
        argv += 2;
    }
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s [--only CHECK[,CHECK...]] FRAMES_ADDRESS [RESULTS_ADDRESS]\n", argv[0]);
        return 2;
    }
    for (const char *p = only; p != NULL; p = next_item(p)) {
        int known = 0;
        for (int i = 0; i < n; i++)
            known |= item_is(p, CHECKS[i].name);
        if (!known) {
            fprintf(stderr, "--only: no check %.*s\n", (int)strcspn(p, ","), p);
            return 2;
        }
    }
    if (!read_keys())
        return 2;
    g_frames = argv[1];
    g_results = argc > 2 ? argv[2] : NULL;
    snprintf(g_tag, sizeof g_tag, "c%ld", (long)getpid());
    g_ctx = zmq_ctx_new();
    int failed = 0, xfailed = 0, passed = 0;
    for (int i = 0; i < n; i++) {
        const check_t *c = &CHECKS[i];
        if (only != NULL ? !listed(only, c->name) : (c->needs & ON_REQUEST) != 0)
            continue;
        if ((c->needs & NEEDS_PUB) && g_results == NULL) {
            printf("skip %s: no results (PUB) address given\n", c->name);
            continue;
        }
        if ((c->needs & NEEDS_CURVE) && g_server_key == NULL) {
            printf("skip %s: no CURVE keys in the environment\n", c->name);
            continue;
        }
        g_why[0] = '\0';
        int ok = c->run();
        end_check();
        if (ok && c->expected_fail == NULL) {
            printf("ok %s\n", c->name);
            passed++;
        } else if (ok) {
            printf("XPASS %s: passes now; remove its expected-fail mark (%s)\n", c->name, c->expected_fail);
            passed++;
        } else if (c->expected_fail != NULL) {
            printf("xfail %s: %s [%s]\n", c->name, g_why, c->expected_fail);
            xfailed++;
        } else {
            printf("FAIL %s: %s\n", c->name, g_why);
            failed++;
        }
        fflush(stdout);
    }
    if (g_sub != NULL)
        zmq_close(g_sub);
    zmq_ctx_term(g_ctx);
    printf("# %d passed, %d failed, %d expected failures\n", passed, failed, xfailed);
    return failed ? 1 : 0;
}
