/* The per-request bookkeeping of a worker in C: what WorkerMetrics.done and AccessLog.record
 * do in Python (albingress/dataplane/metrics.py and accesslog.py are the reference; the tests
 * check that both give the same counts and the same bytes).
 *
 * One Observer per worker. Its done(ex, pick) is called once per finished request:
 *   - metrics: the request's series (a list in the metrics' dict, keyed by (listener port,
 *     rule, server key, status)) gets its two histogram buckets and sums; retries and errors
 *     (rare) are left to a Python callback;
 *   - access log: the request's JSON line is written into a buffer that AccessLog.flush takes
 *     (take()); pre-encoded parts (the request's, the pick's) are copied as they are.
 * What needs Python (a request part not made yet, a request id to generate, a head to measure,
 * a string to escape) is asked of the callbacks given at construction.
 *
 * A Writer is the access log's writer thread without Python: batches of lines are copied into
 * a queue and a thread of its own writes them, so writing never needs the GIL (a Python writer
 * thread took it back after every write, and a busy event loop paid for every hand-over).
 *
 * The Exchange and Pick classes keep these attributes in __slots__: their member descriptors'
 * offsets are read once, and an instance of exactly that class is read directly; anything
 * else (a test's stand-in) through getattr.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define NB 15              /* buckets per histogram, the last one +Inf (metrics._NB) */
#define UP (NB + 1)        /* where the upstream histogram starts in a series (metrics._UP) */
#define CLIENT_GONE 499

/* the attributes read from an exchange and from a pick */
enum {
    EX_STATUS, EX_RULE, EX_STARTED, EX_SENT_AT, EX_ATTEMPTS, EX_CLIENT, EX_UPSTREAM_STATUS,
    EX_RAW_HEAD, EX_BODY_IN, EX_BYTES_OUT, EX_REQUEST_ID, EX_LOG_PART, EX_RID_LINE, EX_COUNT
};
static const char *const ex_names[EX_COUNT] = {
    "status", "rule", "started", "sent_at", "attempts", "client", "upstream_status",
    "raw_head", "body_in", "bytes_out", "request_id", "log_part", "rid_line",
};
enum { PK_KEY, PK_LOG_PART, PK_COUNT };
static const char *const pk_names[PK_COUNT] = {"key", "log_part"};

typedef struct {
    PyObject *type;                 /* the class whose instances are read by offset */
    Py_ssize_t offsets[EX_COUNT];   /* -1: read by getattr */
    PyObject *names[EX_COUNT];      /* interned attribute names */
    int count;
} Reader;

typedef struct {
    PyObject_HEAD
    /* metrics */
    PyObject *series;       /* dict, or None: no metrics */
    PyObject *rare;         /* callable(ex, pick, status): retries and errors */
    double buckets[NB - 1];
    /* access log */
    int log;
    PyObject *part_of;      /* callable(ex) -> the request part (bytes-like) */
    PyObject *record;       /* AccessLog.record: a line with values the C code does not take */
    PyObject *id_of;        /* callable(ex) -> str: the id of a request that has none yet */
    PyObject *head_size;    /* callable(ex) -> int: the size of a head not kept as received */
    PyObject *encode;       /* callable(str) -> bytes: a JSON string */
    PyObject *flush;        /* callable(): lines reached flush_lines */
    PyObject *no_pick;      /* the server part of a request no server answered */
    Py_ssize_t flush_lines;
    char *buf;
    Py_ssize_t len, cap, lines;
    double offset;          /* wall clock minus the monotonic clock */
    double stamp_until;     /* time_text holds for requests finished before this */
    char time_text[48];
    Py_ssize_t time_len;
    long long second;
    char second_text[32];
    Reader ex, pick;
    PyObject *rule_name, *listener_port;
    /* request ids: prefix + the count in hex (as AccessLog's) */
    char prefix[64];
    Py_ssize_t prefix_len;
    unsigned long long last_id;
} Observer;

/* ------------------------------------------------------------------ reading attributes */

static int
reader_init(Reader *r, PyObject *type, const char *const *names, int count)
{
    r->count = count;
    r->type = NULL;
    if (type != Py_None) {
        if (!PyType_Check(type)) {
            PyErr_SetString(PyExc_TypeError, "a class expected");
            return -1;
        }
        Py_INCREF(type);
        r->type = type;
    }
    for (int i = 0; i < count; i++) {
        r->names[i] = PyUnicode_InternFromString(names[i]);
        if (r->names[i] == NULL)
            return -1;
        r->offsets[i] = -1;
        if (r->type == NULL)
            continue;
        PyObject *d = PyObject_GetAttr(type, r->names[i]);
        if (d == NULL) {
            PyErr_Clear();
            continue;
        }
        if (Py_IS_TYPE(d, &PyMemberDescr_Type)) {
            PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
            if (m->type == T_OBJECT_EX && !(m->flags & READONLY))
                r->offsets[i] = m->offset;
        }
        Py_DECREF(d);
    }
    return 0;
}

static void
reader_clear(Reader *r)
{
    Py_CLEAR(r->type);
    for (int i = 0; i < r->count; i++)
        Py_CLEAR(r->names[i]);
}

/* A new reference to attribute i of obj, or NULL with an exception. */
static inline PyObject *
get(Reader *r, PyObject *obj, int i)
{
    Py_ssize_t off = r->offsets[i];
    if (off >= 0 && (PyObject *)Py_TYPE(obj) == r->type) {
        PyObject *v = *(PyObject **)((char *)obj + off);
        if (v != NULL) {
            Py_INCREF(v);
            return v;
        }
    }
    return PyObject_GetAttr(obj, r->names[i]);
}

/* Set attribute i of obj to v (a new reference is taken). */
static inline int
set(Reader *r, PyObject *obj, int i, PyObject *v)
{
    Py_ssize_t off = r->offsets[i];
    if (off >= 0 && (PyObject *)Py_TYPE(obj) == r->type) {
        PyObject **slot = (PyObject **)((char *)obj + off);
        PyObject *old = *slot;
        *slot = Py_NewRef(v);
        Py_XDECREF(old);
        return 0;
    }
    return PyObject_SetAttr(obj, r->names[i], v);
}

static inline int
as_ll(PyObject *v, long long *out)
{
    long long x = PyLong_AsLongLong(v);
    if (x == -1 && PyErr_Occurred())
        return -1;
    *out = x;
    return 0;
}

/* ------------------------------------------------------------------ the line buffer */

static int
reserve(Observer *o, Py_ssize_t more)
{
    if (o->len + more <= o->cap)
        return 0;
    Py_ssize_t cap = o->cap ? o->cap : 65536;
    while (cap < o->len + more)
        cap *= 2;
    char *buf = PyMem_Realloc(o->buf, cap);
    if (buf == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    o->buf = buf;
    o->cap = cap;
    return 0;
}

static inline void
put(Observer *o, const char *s, Py_ssize_t n)
{
    memcpy(o->buf + o->len, s, n);
    o->len += n;
}

#define PUT_LITERAL(o, s) put((o), (s), (Py_ssize_t)sizeof(s) - 1)

static inline void
put_ll(Observer *o, long long v)
{
    char tmp[24];
    int n = 0;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        tmp[n++] = '-';
    while (n)
        o->buf[o->len++] = tmp[--n];
}

static int
put_bytes_like(Observer *o, PyObject *obj)
{
    if (PyBytes_CheckExact(obj)) {
        Py_ssize_t n = PyBytes_GET_SIZE(obj);
        if (reserve(o, n) < 0)
            return -1;
        put(o, PyBytes_AS_STRING(obj), n);
        return 0;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE) < 0)
        return -1;
    int rc = reserve(o, view.len);
    if (rc == 0)
        put(o, view.buf, view.len);
    PyBuffer_Release(&view);
    return rc;
}

/* a str as a JSON string: copied when plain ASCII, else encoded by the Python encoder */
static int
put_json_str(Observer *o, PyObject *s)
{
    if (PyUnicode_IS_ASCII(s)) {
        Py_ssize_t n = PyUnicode_GET_LENGTH(s);
        const unsigned char *p = PyUnicode_1BYTE_DATA(s);
        Py_ssize_t i = 0;
        while (i < n && p[i] >= 0x20 && p[i] != '"' && p[i] != '\\' && p[i] < 0x7f)
            i++;
        if (i == n) {
            if (reserve(o, n + 2) < 0)
                return -1;
            o->buf[o->len++] = '"';
            put(o, (const char *)p, n);
            o->buf[o->len++] = '"';
            return 0;
        }
    }
    PyObject *encoded = PyObject_CallOneArg(o->encode, s);
    if (encoded == NULL)
        return -1;
    int rc = put_bytes_like(o, encoded);
    Py_DECREF(encoded);
    return rc;
}

/* the line's time text for monotonic time now (as AccessLog._stamp) */
static void
stamp(Observer *o, double now)
{
    long long ms = (long long)((now + o->offset) * 1000.0);
    o->stamp_until = (double)(ms + 1) / 1000.0 - o->offset;
    long long second = ms / 1000, milli = ms % 1000;
    if (milli < 0) {
        milli += 1000;
        second -= 1;
    }
    if (second != o->second) {
        time_t t = (time_t)second;
        struct tm tm;
        if (gmtime_r(&t, &tm) == NULL ||
            strftime(o->second_text, sizeof(o->second_text), "%Y-%m-%dT%H:%M:%S", &tm) == 0)
            strcpy(o->second_text, "1970-01-01T00:00:00"); /* a clock beyond reason */
        o->second = second;
    }
    o->time_len = snprintf(o->time_text, sizeof(o->time_text), "%s.%03lldZ", o->second_text,
                           milli);
}

/* ------------------------------------------------------------------ metrics */

static inline Py_ssize_t
bucket(const double *buckets, double v)
{
    /* bisect_left: the first bound >= v, NB - 1 for +Inf */
    Py_ssize_t lo = 0, hi = NB - 1;
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi) / 2;
        if (buckets[mid] < v)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static inline int
list_add_int(PyObject *list, Py_ssize_t i)
{
    PyObject *old = PyList_GET_ITEM(list, i);
    PyObject *one = PyLong_FromLong(1);
    PyObject *sum = PyNumber_Add(old, one);
    Py_DECREF(one);
    if (sum == NULL)
        return -1;
    PyList_SET_ITEM(list, i, sum);
    Py_DECREF(old);
    return 0;
}

static inline int
list_add_float(PyObject *list, Py_ssize_t i, double v)
{
    PyObject *old = PyList_GET_ITEM(list, i);
    PyObject *sum;
    if (PyFloat_CheckExact(old))
        sum = PyFloat_FromDouble(PyFloat_AS_DOUBLE(old) + v);
    else {
        PyObject *add = PyFloat_FromDouble(v);
        if (add == NULL)
            return -1;
        sum = PyNumber_Add(old, add);
        Py_DECREF(add);
    }
    if (sum == NULL)
        return -1;
    PyList_SET_ITEM(list, i, sum);
    Py_DECREF(old);
    return 0;
}

static PyObject *
new_series(void)
{
    PyObject *list = PyList_New(2 * UP);
    if (list == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < 2 * UP; i++) {
        PyObject *v = (i == NB || i == UP + NB) ? PyFloat_FromDouble(0.0) : PyLong_FromLong(0);
        if (v == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, v);
    }
    return list;
}

static int
count(Observer *o, PyObject *ex, PyObject *pick, PyObject *rule, PyObject *skey,
      PyObject *status_obj, long long status, long long attempts, double duration,
      double upstream)
{
    int rc = -1;
    PyObject *client = NULL, *port = NULL, *rname = NULL, *key = NULL;
    if ((client = get(&o->ex, ex, EX_CLIENT)) == NULL)
        goto done;
    if ((port = PyObject_GetAttr(client, o->listener_port)) == NULL)
        goto done;
    if (rule == Py_None)
        rname = PyUnicode_FromStringAndSize("", 0);
    else
        rname = PyObject_GetAttr(rule, o->rule_name);
    if (rname == NULL)
        goto done;
    key = PyTuple_Pack(4, port, rname, skey, status_obj);
    if (key == NULL)
        goto done;
    PyObject *hist = PyDict_GetItemWithError(o->series, key); /* borrowed */
    if (hist == NULL) {
        if (PyErr_Occurred())
            goto done;
        PyObject *fresh = new_series();
        if (fresh == NULL)
            goto done;
        if (PyDict_SetItem(o->series, key, fresh) < 0) {
            Py_DECREF(fresh);
            goto done;
        }
        hist = fresh;
        Py_DECREF(fresh); /* the dict holds it */
    }
    if (!PyList_CheckExact(hist) || PyList_GET_SIZE(hist) != 2 * UP) {
        PyErr_SetString(PyExc_TypeError, "a series is a list of two histograms");
        goto done;
    }
    Py_INCREF(hist);
    int bad = list_add_int(hist, bucket(o->buckets, duration)) < 0 ||
              list_add_float(hist, NB, duration) < 0;
    if (!bad && upstream >= 0.0)
        bad = list_add_int(hist, UP + bucket(o->buckets, upstream)) < 0 ||
              list_add_float(hist, UP + NB, upstream) < 0;
    Py_DECREF(hist);
    if (bad)
        goto done;
    if (attempts > 1 || status >= 500) {
        PyObject *r = PyObject_CallFunctionObjArgs(o->rare, ex, pick, status_obj, NULL);
        if (r == NULL)
            goto done;
        Py_DECREF(r);
    }
    rc = 0;
done:
    Py_XDECREF(client);
    Py_XDECREF(port);
    Py_XDECREF(rname);
    Py_XDECREF(key);
    return rc;
}

/* ------------------------------------------------------------------ the access log line */

/* int(seconds * 1e6) as Python has it, held within long long (a C cast out of range is
 * undefined; no clock gives such a duration) */
static inline long long
micros(double seconds)
{
    double us = seconds * 1e6;
    if (!(us > -9.2e18))
        return us != us ? 0 : -9200000000000000000LL; /* NaN: 0 */
    if (us > 9.2e18)
        return 9200000000000000000LL;
    return (long long)us;
}

/* A number of the line as Python's has it: an int of any size, or null (None; 0 too for a
 * status that means "none") */
typedef struct {
    long long v;
    PyObject *text; /* str(): an int beyond long long */
    int null;
} Num;

static int
num_of(PyObject *v, int zero_is_null, Num *n)
{
    n->v = 0;
    n->text = NULL;
    n->null = 0;
    if (v == Py_None) {
        n->null = 1;
        return 0;
    }
    if (!PyLong_Check(v) || PyBool_Check(v)) {
        PyErr_Format(PyExc_TypeError, "an int expected, not %.80s", Py_TYPE(v)->tp_name);
        return -1;
    }
    int overflow = 0;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (x == -1 && PyErr_Occurred())
        return -1;
    if (overflow) {
        n->text = PyObject_Str(v);
        return n->text != NULL ? 0 : -1;
    }
    if (zero_is_null && x == 0)
        n->null = 1;
    n->v = x;
    return 0;
}

static int
put_num(Observer *o, const Num *n)
{
    if (n->text != NULL) {
        Py_ssize_t len;
        const char *t = PyUnicode_AsUTF8AndSize(n->text, &len);
        if (t == NULL || reserve(o, len) < 0)
            return -1;
        put(o, t, len);
        return 0;
    }
    if (reserve(o, 24) < 0)
        return -1;
    if (n->null)
        PUT_LITERAL(o, "null");
    else
        put_ll(o, n->v);
    return 0;
}

/* bytes_in: the head's size (raw head kept: its length and the final CRLF; else Python's
 * head_size) plus the body's */
static int
bytes_in(Observer *o, PyObject *ex, PyObject *raw, PyObject *body, Num *n)
{
    PyObject *head = PyBytes_Check(raw) ? PyLong_FromSsize_t(PyBytes_GET_SIZE(raw) + 2)
                                        : PyObject_CallOneArg(o->head_size, ex);
    if (head == NULL)
        return -1;
    PyObject *sum = PyNumber_Add(head, body);
    Py_DECREF(head);
    if (sum == NULL)
        return -1;
    int rc = num_of(sum, 0, n);
    Py_DECREF(sum);
    return rc;
}

static int
line(Observer *o, PyObject *ex, PyObject *pick, long long status, long long attempts,
     double duration, double upstream, double now)
{
    int rc = -1;
    PyObject *part = NULL, *pick_part = NULL, *ustatus = NULL, *raw = NULL, *body = NULL,
             *out = NULL, *rid = NULL;
    Num ustatus_n = {0}, in_n = {0}, out_n = {0};

    if ((part = get(&o->ex, ex, EX_LOG_PART)) == NULL)
        goto done;
    if (part == Py_None) {
        Py_DECREF(part);
        if ((part = PyObject_CallOneArg(o->part_of, ex)) == NULL)
            goto done;
    }
    if (pick == Py_None)
        pick_part = Py_NewRef(o->no_pick);
    else if ((pick_part = get(&o->pick, pick, PK_LOG_PART)) == NULL)
        goto done;
    if ((ustatus = get(&o->ex, ex, EX_UPSTREAM_STATUS)) == NULL ||
        num_of(ustatus, 1, &ustatus_n) < 0)
        goto done;
    if ((raw = get(&o->ex, ex, EX_RAW_HEAD)) == NULL || (body = get(&o->ex, ex, EX_BODY_IN)) == NULL)
        goto done;
    if (PyBytes_CheckExact(raw) && PyLong_CheckExact(body)) { /* the usual case, no objects */
        int overflow = 0;
        long long b = PyLong_AsLongLongAndOverflow(body, &overflow);
        if (b == -1 && PyErr_Occurred())
            goto done;
        if (overflow || __builtin_add_overflow(b, (long long)PyBytes_GET_SIZE(raw) + 2, &in_n.v)) {
            if (bytes_in(o, ex, raw, body, &in_n) < 0)
                goto done;
        }
    }
    else if (bytes_in(o, ex, raw, body, &in_n) < 0)
        goto done;
    if ((out = get(&o->ex, ex, EX_BYTES_OUT)) == NULL || num_of(out, 0, &out_n) < 0)
        goto done;
    if ((rid = get(&o->ex, ex, EX_REQUEST_ID)) == NULL)
        goto done;
    if (!PyUnicode_Check(rid) || PyUnicode_GET_LENGTH(rid) == 0) {
        Py_DECREF(rid);
        if ((rid = PyObject_CallOneArg(o->id_of, ex)) == NULL)
            goto done;
        if (!PyUnicode_Check(rid)) {
            PyErr_SetString(PyExc_TypeError, "a request id is a str");
            goto done;
        }
    }

    if (now >= o->stamp_until)
        stamp(o, now);
    Py_ssize_t start = o->len;
    if (reserve(o, o->time_len + 32) < 0)
        goto done;
    PUT_LITERAL(o, "{\"time\":\"");
    put(o, o->time_text, o->time_len);
    PUT_LITERAL(o, "\",\"client\":");
    if (put_bytes_like(o, part) < 0)
        goto undo;
    if (reserve(o, 32) < 0)
        goto undo;
    PUT_LITERAL(o, ",\"server_group\":");
    if (put_bytes_like(o, pick_part) < 0)
        goto undo;
    if (reserve(o, 64) < 0)
        goto undo;
    PUT_LITERAL(o, ",\"status\":");
    put_ll(o, status);
    PUT_LITERAL(o, ",\"upstream_status\":");
    if (put_num(o, &ustatus_n) < 0 || reserve(o, 128) < 0)
        goto undo;
    PUT_LITERAL(o, ",\"duration_us\":");
    put_ll(o, micros(duration));
    PUT_LITERAL(o, ",\"upstream_duration_us\":");
    if (upstream >= 0.0)
        put_ll(o, micros(upstream));
    else
        PUT_LITERAL(o, "null");
    PUT_LITERAL(o, ",\"bytes_in\":");
    if (put_num(o, &in_n) < 0 || reserve(o, 16) < 0)
        goto undo;
    PUT_LITERAL(o, ",\"bytes_out\":");
    if (put_num(o, &out_n) < 0 || reserve(o, 64) < 0)
        goto undo;
    PUT_LITERAL(o, ",\"retries\":");
    put_ll(o, attempts > 1 ? attempts - 1 : 0);
    PUT_LITERAL(o, ",\"request_id\":");
    if (put_json_str(o, rid) < 0)
        goto undo;
    if (reserve(o, 2) < 0)
        goto undo;
    PUT_LITERAL(o, "}\n");
    o->lines++;
    rc = 0;
    goto done;
undo:
    o->len = start; /* no half line */
done:
    Py_XDECREF(part);
    Py_XDECREF(pick_part);
    Py_XDECREF(ustatus);
    Py_XDECREF(raw);
    Py_XDECREF(body);
    Py_XDECREF(out);
    Py_XDECREF(rid);
    Py_XDECREF(ustatus_n.text);
    Py_XDECREF(in_n.text);
    Py_XDECREF(out_n.text);
    return rc;
}

/* ------------------------------------------------------------------ Observer */

static double
monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int
ready(Observer *o)
{
    if (o->rule_name == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "the Observer is not initialised");
        return 0;
    }
    return 1;
}

static PyObject *
Observer_done(Observer *o, PyObject *const *args, Py_ssize_t nargs)
{
    if (!ready(o))
        return NULL;
    if (nargs != 2 && nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "done(ex, pick[, now])");
        return NULL;
    }
    PyObject *ex = args[0], *pick = args[1];
    double now;
    if (nargs == 3) {
        now = PyFloat_AsDouble(args[2]);
        if (now == -1.0 && PyErr_Occurred())
            return NULL;
    }
    else
        now = monotonic();

    PyObject *status_obj = NULL, *rule = NULL, *skey = NULL, *started = NULL, *sent = NULL,
             *attempts_obj = NULL, *result = NULL;
    long long status, attempts;
    double duration, upstream;

    if ((status_obj = get(&o->ex, ex, EX_STATUS)) == NULL || as_ll(status_obj, &status) < 0)
        goto done;
    if (status == 0) {
        status = CLIENT_GONE;
        Py_SETREF(status_obj, PyLong_FromLong(CLIENT_GONE));
        if (status_obj == NULL)
            goto done;
    }
    if ((rule = get(&o->ex, ex, EX_RULE)) == NULL)
        goto done;
    if (pick == Py_None)
        skey = PyUnicode_FromStringAndSize("", 0);
    else
        skey = get(&o->pick, pick, PK_KEY);
    if (skey == NULL)
        goto done;
    if ((started = get(&o->ex, ex, EX_STARTED)) == NULL)
        goto done;
    double started_v = PyFloat_AsDouble(started);
    if (started_v == -1.0 && PyErr_Occurred())
        goto done;
    duration = now - started_v;
    if ((sent = get(&o->ex, ex, EX_SENT_AT)) == NULL)
        goto done;
    double sent_v = PyFloat_AsDouble(sent);
    if (sent_v == -1.0 && PyErr_Occurred())
        goto done;
    upstream = sent_v != 0.0 ? now - sent_v : -1.0;
    if ((attempts_obj = get(&o->ex, ex, EX_ATTEMPTS)) == NULL || as_ll(attempts_obj, &attempts) < 0)
        goto done;

    if (o->series != Py_None &&
        count(o, ex, pick, rule, skey, status_obj, status, attempts, duration, upstream) < 0)
        goto done;
    if (o->log) {
        if (line(o, ex, pick, status, attempts, duration, upstream, now) < 0) {
            /* a value of an odd type: the line is Python's to make (as it would be without C) */
            if (!PyErr_ExceptionMatches(PyExc_TypeError) &&
                !PyErr_ExceptionMatches(PyExc_ValueError))
                goto done;
            PyErr_Clear();
            PyObject *r = PyObject_CallFunction(o->record, "OOOddd", ex, pick, status_obj,
                                                duration, upstream, now);
            if (r == NULL)
                goto done;
            Py_DECREF(r);
        }
        if (o->lines >= o->flush_lines) {
            PyObject *r = PyObject_CallNoArgs(o->flush);
            if (r == NULL)
                goto done;
            Py_DECREF(r);
        }
    }
    result = Py_NewRef(Py_None);
done:
    Py_XDECREF(status_obj);
    Py_XDECREF(rule);
    Py_XDECREF(skey);
    Py_XDECREF(started);
    Py_XDECREF(sent);
    Py_XDECREF(attempts_obj);
    return result;
}

/* ------------------------------------------------------------------ request ids */

#define ID_HEADER "X-Request-Id: "

/* the next id's text into out (at least prefix_len + 17 bytes); its length */
static Py_ssize_t
next_id(Observer *o, char *out)
{
    static const char hex[] = "0123456789abcdef";
    char tmp[16];
    int n = 0;
    unsigned long long v = ++o->last_id;
    do {
        tmp[n++] = hex[v & 15];
        v >>= 4;
    } while (v);
    memcpy(out, o->prefix, o->prefix_len);
    Py_ssize_t len = o->prefix_len;
    while (n)
        out[len++] = tmp[--n];
    return len;
}

/* ex gets a new id: its request_id and rid_line set; the line returned (new reference) */
static PyObject *
give_id(Observer *o, PyObject *ex)
{
    char text[96];
    Py_ssize_t n = next_id(o, text);
    PyObject *id = PyUnicode_FromStringAndSize(text, n);
    if (id == NULL)
        return NULL;
    Py_ssize_t hl = (Py_ssize_t)sizeof(ID_HEADER) - 1;
    PyObject *line = PyBytes_FromStringAndSize(NULL, hl + n + 2);
    if (line == NULL) {
        Py_DECREF(id);
        return NULL;
    }
    char *p = PyBytes_AS_STRING(line);
    memcpy(p, ID_HEADER, hl);
    memcpy(p + hl, text, n);
    memcpy(p + hl + n, "\r\n", 2);
    int bad = set(&o->ex, ex, EX_REQUEST_ID, id) < 0 || set(&o->ex, ex, EX_RID_LINE, line) < 0;
    Py_DECREF(id);
    if (bad) {
        Py_DECREF(line);
        return NULL;
    }
    return line;
}

static PyObject *
Observer_new_id(Observer *o, PyObject *ex)
{
    if (!ready(o))
        return NULL;
    return give_id(o, ex);
}

static PyObject *
Observer_forward_head(Observer *o, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "forward_head(ex, head: bytes)");
        return NULL;
    }
    if (!ready(o))
        return NULL;
    PyObject *ex = args[0], *head = args[1];
    Py_ssize_t hn = PyBytes_GET_SIZE(head);
    const char *h = PyBytes_AS_STRING(head);
    if (hn < 4 || memcmp(h + hn - 4, "\r\n\r\n", 4) != 0) {
        PyErr_SetString(PyExc_ValueError, "a whole request head expected");
        return NULL;
    }
    PyObject *rid = get(&o->ex, ex, EX_REQUEST_ID);
    if (rid == NULL)
        return NULL;
    int given = PyUnicode_Check(rid) && PyUnicode_GET_LENGTH(rid) > 0;
    int unknown = rid == Py_None; /* not looked for in the head yet */
    Py_DECREF(rid);
    if (given)
        return Py_NewRef(head);
    PyObject *line;
    if (unknown) { /* Python looks for the client's id, else makes one (then rid_line is set) */
        PyObject *r = PyObject_CallOneArg(o->id_of, ex);
        if (r == NULL)
            return NULL;
        Py_DECREF(r);
        if ((line = get(&o->ex, ex, EX_RID_LINE)) == NULL)
            return NULL;
        if (!PyBytes_Check(line) || PyBytes_GET_SIZE(line) == 0) {
            Py_DECREF(line);
            return Py_NewRef(head);
        }
    }
    else if ((line = give_id(o, ex)) == NULL)
        return NULL;
    Py_ssize_t ln = PyBytes_GET_SIZE(line);
    PyObject *out = PyBytes_FromStringAndSize(NULL, hn + ln);
    if (out != NULL) {
        char *p = PyBytes_AS_STRING(out);
        memcpy(p, h, hn - 2);
        memcpy(p + hn - 2, PyBytes_AS_STRING(line), ln);
        memcpy(p + hn - 2 + ln, "\r\n", 2);
    }
    Py_DECREF(line);
    return out;
}

static PyObject *
Observer_take(Observer *o, PyObject *Py_UNUSED(ignored))
{
    if (!ready(o))
        return NULL;
    PyObject *data = PyBytes_FromStringAndSize(o->buf, o->len);
    if (data == NULL)
        return NULL;
    PyObject *result = Py_BuildValue("(Nn)", data, o->lines);
    if (result == NULL)
        return NULL;
    o->len = 0;
    o->lines = 0;
    if (o->cap > (1 << 22)) { /* a burst of long lines: give the memory back */
        PyMem_Free(o->buf);
        o->buf = NULL;
        o->cap = 0;
    }
    return result;
}

static int
Observer_init(Observer *o, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"exchange_type", "pick_type", "buckets", "series", "rare", "log",
                             "part_of", "id_of", "head_size", "encode", "flush", "no_pick",
                             "flush_lines", "prefix", "record", NULL};
    PyObject *ex_type, *pick_type, *buckets, *series, *rare, *part_of, *id_of, *head_size,
        *encode, *flush, *no_pick, *record;
    if (o->rule_name != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "an Observer is initialised once");
        return -1;
    }
    int log;
    Py_ssize_t flush_lines;
    const char *prefix = "";
    Py_ssize_t prefix_len = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "$OOOOOpOOOOOOns#O", kwlist, &ex_type,
                                     &pick_type, &buckets, &series, &rare, &log, &part_of, &id_of,
                                     &head_size, &encode, &flush, &no_pick, &flush_lines, &prefix,
                                     &prefix_len, &record))
        return -1;
    if (prefix_len > 40) {
        PyErr_SetString(PyExc_ValueError, "prefix: at most 40 characters");
        return -1;
    }
    for (Py_ssize_t i = 0; i < prefix_len; i++) {
        unsigned char c = (unsigned char)prefix[i];
        if (c < 0x21 || c > 0x7e || c == '"' || c == '\\') {
            PyErr_SetString(PyExc_ValueError, "prefix: printable ASCII without quotes");
            return -1;
        }
    }
    memcpy(o->prefix, prefix, prefix_len);
    o->prefix_len = prefix_len;
    PyObject *seq = PySequence_Fast(buckets, "buckets: a sequence of floats");
    if (seq == NULL)
        return -1;
    if (PySequence_Fast_GET_SIZE(seq) != NB - 1) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "%d buckets expected", NB - 1);
        return -1;
    }
    for (Py_ssize_t i = 0; i < NB - 1; i++) {
        o->buckets[i] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(seq, i));
        if (PyErr_Occurred()) {
            Py_DECREF(seq);
            return -1;
        }
    }
    Py_DECREF(seq);
    if (series != Py_None && !PyDict_CheckExact(series)) {
        PyErr_SetString(PyExc_TypeError, "series: a dict or None");
        return -1;
    }
    if (reader_init(&o->ex, ex_type, ex_names, EX_COUNT) < 0 ||
        reader_init(&o->pick, pick_type, pk_names, PK_COUNT) < 0)
        return -1;
    o->rule_name = PyUnicode_InternFromString("name");
    o->listener_port = PyUnicode_InternFromString("listener_port");
    if (o->rule_name == NULL || o->listener_port == NULL)
        return -1;
    o->series = Py_NewRef(series);
    o->rare = Py_NewRef(rare);
    o->log = log;
    o->part_of = Py_NewRef(part_of);
    o->record = Py_NewRef(record);
    o->id_of = Py_NewRef(id_of);
    o->head_size = Py_NewRef(head_size);
    o->encode = Py_NewRef(encode);
    o->flush = Py_NewRef(flush);
    o->no_pick = Py_NewRef(no_pick);
    o->flush_lines = flush_lines > 0 ? flush_lines : 1;
    o->second = -1;
    o->stamp_until = 0.0;
    return 0;
}

static int
Observer_traverse(Observer *o, visitproc visit, void *arg)
{
    Py_VISIT(o->series);
    Py_VISIT(o->rare);
    Py_VISIT(o->part_of);
    Py_VISIT(o->record);
    Py_VISIT(o->id_of);
    Py_VISIT(o->head_size);
    Py_VISIT(o->encode);
    Py_VISIT(o->flush);
    Py_VISIT(o->no_pick);
    Py_VISIT(o->ex.type);
    Py_VISIT(o->pick.type);
    return 0;
}

static int
Observer_clear(Observer *o)
{
    Py_CLEAR(o->series);
    Py_CLEAR(o->rare);
    Py_CLEAR(o->part_of);
    Py_CLEAR(o->record);
    Py_CLEAR(o->id_of);
    Py_CLEAR(o->head_size);
    Py_CLEAR(o->encode);
    Py_CLEAR(o->flush);
    Py_CLEAR(o->no_pick);
    reader_clear(&o->ex);
    reader_clear(&o->pick);
    Py_CLEAR(o->rule_name);
    Py_CLEAR(o->listener_port);
    return 0;
}

static void
Observer_dealloc(Observer *o)
{
    PyObject_GC_UnTrack(o);
    Observer_clear(o);
    PyMem_Free(o->buf);
    Py_TYPE(o)->tp_free((PyObject *)o);
}

static PyObject *
Observer_get_offset(Observer *o, void *Py_UNUSED(closure))
{
    return PyFloat_FromDouble(o->offset);
}

static int
Observer_set_offset(Observer *o, PyObject *value, void *Py_UNUSED(closure))
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "offset cannot be deleted");
        return -1;
    }
    double v = PyFloat_AsDouble(value);
    if (v == -1.0 && PyErr_Occurred())
        return -1;
    o->offset = v;
    o->stamp_until = 0.0; /* the next line makes its time text again */
    return 0;
}

static PyObject *
Observer_get_pending(Observer *o, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(o->lines);
}

static PyMethodDef Observer_methods[] = {
    {"done", (PyCFunction)(void (*)(void))Observer_done, METH_FASTCALL,
     "done(ex, pick[, now]): count a finished request and write its access log line"},
    {"new_id", (PyCFunction)Observer_new_id, METH_O,
     "new_id(ex) -> bytes: give ex a new request id (request_id, rid_line); its header line"},
    {"forward_head", (PyCFunction)(void (*)(void))Observer_forward_head, METH_FASTCALL,
     "forward_head(ex, head) -> bytes: head, with a new X-Request-Id line unless ex has an id"},
    {"take", (PyCFunction)Observer_take, METH_NOARGS,
     "take() -> (bytes, count): the lines written since the last take"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Observer_getset[] = {
    {"offset", (getter)Observer_get_offset, (setter)Observer_set_offset,
     "the wall clock minus the monotonic clock (seconds)", NULL},
    {"pending", (getter)Observer_get_pending, NULL, "lines written and not taken yet", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ObserverType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "albingress.dataplane._speedups.Observer",
    .tp_basicsize = sizeof(Observer),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A worker's per-request counting and access log lines (see metrics.py).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Observer_init,
    .tp_dealloc = (destructor)Observer_dealloc,
    .tp_traverse = (traverseproc)Observer_traverse,
    .tp_clear = (inquiry)Observer_clear,
    .tp_methods = Observer_methods,
    .tp_getset = Observer_getset,
};


/* ------------------------------------------------------------------ Writer */

#define PIPE_ATOMIC 4096 /* POSIX PIPE_BUF: writes up to this size to a pipe are atomic */

typedef struct Chunk {
    struct Chunk *next;
    Py_ssize_t len, lines;
    char data[];
} Chunk;

/* shared by the Writer object and its thread; freed by whichever lets go last */
typedef struct {
    int fd, pipe;
    pthread_mutex_t mu;
    pthread_cond_t wake, changed;
    Chunk *head, *tail;
    int refs;                 /* the object, the thread */
    int stopping, finished;
    Py_ssize_t pending;       /* bytes queued or being written */
    unsigned long long lines, dropped, failures;
    int error;                /* errno of the last write when it failed, else 0 */
} WriterState;

typedef struct {
    PyObject_HEAD
    WriterState *st;
    pthread_t thread;
    int joinable;
} Writer;

static void
state_release(WriterState *st)
{
    pthread_mutex_lock(&st->mu);
    int last = --st->refs == 0;
    pthread_mutex_unlock(&st->mu);
    if (!last)
        return;
    for (Chunk *c = st->head; c != NULL;) {
        Chunk *next = c->next;
        free(c);
        c = next;
    }
    pthread_cond_destroy(&st->wake);
    pthread_cond_destroy(&st->changed);
    pthread_mutex_destroy(&st->mu);
    free(st);
}

static int
write_all(int fd, const char *p, Py_ssize_t n)
{
    while (n > 0) {
        ssize_t k = write(fd, p, (size_t)n);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) { /* a non-blocking destination */
                struct pollfd pf = {.fd = fd, .events = POLLOUT};
                poll(&pf, 1, 1000);
                continue;
            }
            return errno;
        }
        p += k;
        n -= k;
    }
    return 0;
}

/* to a pipe, whole lines in writes of at most PIPE_ATOMIC bytes (a longer line goes alone), so
 * that the lines of several workers sharing the pipe never interleave (as accesslog.py) */
static int
write_chunk(WriterState *st, const char *p, Py_ssize_t n)
{
    if (!st->pipe || n <= PIPE_ATOMIC)
        return write_all(st->fd, p, n);
    Py_ssize_t start = 0;
    while (start < n) {
        Py_ssize_t stop = start + PIPE_ATOMIC;
        if (stop >= n)
            stop = n;
        else {
            Py_ssize_t cut = stop - 1;
            while (cut >= start && p[cut] != '\n')
                cut--;
            if (cut >= start)
                stop = cut + 1;
            else {
                const char *nl = memchr(p + stop, '\n', (size_t)(n - stop));
                stop = nl != NULL ? nl - p + 1 : n;
            }
        }
        int err = write_all(st->fd, p + start, stop - start);
        if (err)
            return err;
        start = stop;
    }
    return 0;
}

static void *
writer_run(void *arg)
{
    WriterState *st = arg;
    pthread_mutex_lock(&st->mu);
    for (;;) {
        while (st->head == NULL && !st->stopping)
            pthread_cond_wait(&st->wake, &st->mu);
        Chunk *c = st->head;
        if (c == NULL)
            break; /* closing, and everything written */
        st->head = c->next;
        if (st->head == NULL)
            st->tail = NULL;
        pthread_mutex_unlock(&st->mu);
        int err = write_chunk(st, c->data, c->len);
        pthread_mutex_lock(&st->mu);
        if (err) {
            st->failures++;
            st->dropped += (unsigned long long)c->lines;
        }
        else
            st->lines += (unsigned long long)c->lines;
        st->error = err;
        st->pending -= c->len;
        free(c);
        pthread_cond_broadcast(&st->changed);
    }
    st->finished = 1;
    pthread_cond_broadcast(&st->changed);
    pthread_mutex_unlock(&st->mu);
    state_release(st);
    return NULL;
}

static int
Writer_init(Writer *w, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"fd", "pipe", NULL};
    int fd, pipe_ = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i|p", kwlist, &fd, &pipe_))
        return -1;
    if (w->st != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "a Writer is initialised once");
        return -1;
    }
    if (fd < 0) {
        PyErr_SetString(PyExc_ValueError, "fd: an open descriptor");
        return -1;
    }
    WriterState *st = calloc(1, sizeof(WriterState));
    if (st == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    st->fd = fd;
    st->pipe = pipe_;
    st->refs = 2;
    pthread_mutex_init(&st->mu, NULL);
    pthread_cond_init(&st->wake, NULL);
    pthread_cond_init(&st->changed, NULL);
    int rc = pthread_create(&w->thread, NULL, writer_run, st);
    if (rc != 0) {
        st->refs = 1;
        state_release(st);
        errno = rc;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    w->st = st;
    w->joinable = 1;
    return 0;
}

static PyObject *
Writer_put(Writer *w, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "put(data, lines)");
        return NULL;
    }
    WriterState *st = w->st;
    if (st == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "the Writer is not initialised");
        return NULL;
    }
    Py_ssize_t lines = PyLong_AsSsize_t(args[1]);
    if (lines == -1 && PyErr_Occurred())
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    Chunk *c = malloc(sizeof(Chunk) + (size_t)view.len);
    if (c == NULL) {
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    memcpy(c->data, view.buf, (size_t)view.len);
    c->len = view.len;
    c->lines = lines;
    c->next = NULL;
    PyBuffer_Release(&view);
    pthread_mutex_lock(&st->mu);
    int taken = !st->stopping;
    if (taken) {
        if (st->tail != NULL)
            st->tail->next = c;
        else
            st->head = c;
        st->tail = c;
        st->pending += c->len;
        pthread_cond_signal(&st->wake);
    }
    pthread_mutex_unlock(&st->mu);
    if (!taken)
        free(c);
    return PyBool_FromLong(taken);
}

static PyObject *
Writer_stats(Writer *w, PyObject *Py_UNUSED(ignored))
{
    WriterState *st = w->st;
    if (st == NULL)
        return Py_BuildValue("(KKKin)", 0ULL, 0ULL, 0ULL, 0, (Py_ssize_t)0);
    pthread_mutex_lock(&st->mu);
    unsigned long long lines = st->lines, dropped = st->dropped, failures = st->failures;
    int error = st->error;
    Py_ssize_t pending = st->pending;
    pthread_mutex_unlock(&st->mu);
    return Py_BuildValue("(KKKin)", lines, dropped, failures, error, pending);
}

static PyObject *
Writer_close(Writer *w, PyObject *const *args, Py_ssize_t nargs)
{
    double timeout = 2.0;
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "close([timeout])");
        return NULL;
    }
    if (nargs == 1) {
        timeout = PyFloat_AsDouble(args[0]);
        if (timeout == -1.0 && PyErr_Occurred())
            return NULL;
    }
    if (!(timeout > 0.0)) /* negative or NaN: do not wait */
        timeout = 0.0;
    if (timeout > 1e6)
        timeout = 1e6;
    WriterState *st = w->st;
    if (st == NULL)
        Py_RETURN_TRUE;
    int finished;
    Py_BEGIN_ALLOW_THREADS
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    double whole = (double)(long long)timeout;
    deadline.tv_sec += (time_t)whole;
    deadline.tv_nsec += (long)((timeout - whole) * 1e9);
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec += 1;
        deadline.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&st->mu);
    st->stopping = 1;
    pthread_cond_signal(&st->wake);
    while (!st->finished) {
        if (pthread_cond_timedwait(&st->changed, &st->mu, &deadline) != 0)
            break; /* timed out (or the deadline was refused) */
    }
    finished = st->finished;
    pthread_mutex_unlock(&st->mu);
    Py_END_ALLOW_THREADS
    if (finished && w->joinable) {
        pthread_join(w->thread, NULL);
        w->joinable = 0;
    }
    return PyBool_FromLong(finished);
}

static void
Writer_dealloc(Writer *w)
{
    WriterState *st = w->st;
    if (st != NULL) {
        pthread_mutex_lock(&st->mu);
        st->stopping = 1; /* what is queued is still written; a stuck write keeps the thread */
        pthread_cond_signal(&st->wake);
        pthread_mutex_unlock(&st->mu);
        if (w->joinable)
            pthread_detach(w->thread);
        state_release(st);
    }
    Py_TYPE(w)->tp_free((PyObject *)w);
}

static PyMethodDef Writer_methods[] = {
    {"put", (PyCFunction)(void (*)(void))Writer_put, METH_FASTCALL,
     "put(data, lines) -> bool: queue lines for the thread (False once closing)"},
    {"stats", (PyCFunction)Writer_stats, METH_NOARGS,
     "stats() -> (lines written, lines dropped, failed writes, errno of the last write or 0, "
     "bytes pending)"},
    {"close", (PyCFunction)(void (*)(void))Writer_close, METH_FASTCALL,
     "close([timeout]) -> bool: write what is queued and end the thread; False if it is still "
     "writing after timeout seconds (its descriptor must then stay open)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject WriterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "albingress.dataplane._speedups.Writer",
    .tp_basicsize = sizeof(Writer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Writer(fd, pipe=False): writes batches of access log lines from a thread of its "
              "own, without the GIL (the descriptor is not closed here).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Writer_init,
    .tp_dealloc = (destructor)Writer_dealloc,
    .tp_methods = Writer_methods,
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_speedups",
    .m_doc = "The data plane's per-request bookkeeping in C (optional; see metrics.py).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    if (PyType_Ready(&ObserverType) < 0 || PyType_Ready(&WriterType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&speedups_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&ObserverType);
    if (PyModule_AddObject(m, "Observer", (PyObject *)&ObserverType) < 0) {
        Py_DECREF(&ObserverType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&WriterType);
    if (PyModule_AddObject(m, "Writer", (PyObject *)&WriterType) < 0) {
        Py_DECREF(&WriterType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "NB", NB) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
