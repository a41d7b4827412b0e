/*
 * ctrguard._scan: the fast path of event decoding (see ctrguard/events.py, scan_batch).
 *
 * One pass over a batch of messages that are all flat JSON objects in printable ASCII:
 * the fields the dataflow needs come out as columns (lists of str, and int64 / uint64
 * buffers), with no object per event and no object for fields it does not use.
 *
 * The reference is msgspec decoding into ctrguard.events._BatchEventWire. This scanner
 * accepts a batch only when it can tell that every message in it is valid and would
 * decode to exactly what it returns; for anything else (a syntax error, a missing or
 * mistyped field, an escape, a nested value, a repeated key, a number it does not
 * parse itself) it returns None and the caller decodes the whole batch with msgspec,
 * which then gives each message its verdict and its reason. So this code may refuse
 * too much (a slower batch), never accept too much.
 *
 * The de-duplication keys are the same function as ctrguard.flows.engine.dedup_keys (XXH64's
 * lane round over the id's bytes in 8-byte little-endian words, zero-padded).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

/* Field numbers: the order of FIELD_NAMES. */
enum {
    F_EVENT_ID, F_TS, F_CAMPAIGN_ID, F_CREATIVE_ID, F_CHANNEL, F_DEVICE, F_GEO,
    F_USER_ID, F_USER_AGENT, F_IMPRESSION_ID, F_IS_INTERNAL, N_FIELDS
};

static const char *FIELD_NAMES[N_FIELDS] = {
    "event_id", "ts", "campaign_id", "creative_id", "channel", "device", "geo",
    "user_id", "user_agent", "impression_id", "is_internal",
};

/* Value kinds as parsed. */
enum { V_STRING, V_INT, V_TRUE, V_FALSE, V_NULL, V_OTHER_NUMBER };

typedef struct {
    const char *start;   /* V_STRING: the characters between the quotes */
    Py_ssize_t len;
    int kind;
    int64_t ival;        /* V_INT: its value */
} Value;

static inline const char *skip_ws(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

/* A string without escapes, of printable ASCII (0x20..0x7e). *p is at the opening quote.
 * Returns the position after the closing quote, or NULL.
 *
 * Sixteen bytes at a time where SSE2 is there (every x86-64): one mask of the bytes that
 * end the run (a quote) or refuse it (a backslash, a control byte, DEL, a byte >= 0x80;
 * as signed bytes those last are negative, so "< 0x20" catches them with the control
 * bytes); the first such byte decides, as in the byte loop, which does the rest (fewer
 * than 16 bytes left in the message: nothing is read past its end). */
static inline const char *scan_string(const char *p, const char *end, Value *v) {
    const char *s = ++p;
#ifdef __SSE2__
    const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\'),
                  space = _mm_set1_epi8(0x20), del = _mm_set1_epi8(0x7f);
    while (end - p >= 16) {
        __m128i x = _mm_loadu_si128((const __m128i *)p);
        __m128i stop = _mm_or_si128(
            _mm_or_si128(_mm_cmpeq_epi8(x, quote), _mm_cmpeq_epi8(x, backslash)),
            _mm_or_si128(_mm_cmplt_epi8(x, space), _mm_cmpeq_epi8(x, del)));
        int mask = _mm_movemask_epi8(stop);
        if (mask != 0) {
            p += __builtin_ctz((unsigned)mask);
            if (*p != '"')
                return NULL;
            v->start = s;
            v->len = p - s;
            v->kind = V_STRING;
            return p + 1;
        }
        p += 16;
    }
#endif
    while (p < end) {
        unsigned char c = (unsigned char)*p;
        if (c == '"') {
            v->start = s;
            v->len = p - s;
            v->kind = V_STRING;
            return p + 1;
        }
        if (c < 0x20 || c >= 0x7f || c == '\\')
            return NULL;
        p++;
    }
    return NULL;
}

/* A JSON number (RFC 8259 grammar). An integer without fraction or exponent of at most
 * 18 digits is V_INT with its value; any other valid number is V_OTHER_NUMBER. */
static inline const char *scan_number(const char *p, const char *end, Value *v) {
    const char *s = p;
    int neg = 0;
    if (p < end && *p == '-') {
        neg = 1;
        p++;
    }
    if (p >= end || *p < '0' || *p > '9')
        return NULL;
    const char *digits = p;
    if (*p == '0') {
        p++;
    } else {
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    }
    Py_ssize_t ndigits = p - digits;
    int is_int = 1;
    if (p < end && *p == '.') {
        is_int = 0;
        p++;
        if (p >= end || *p < '0' || *p > '9')
            return NULL;
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        is_int = 0;
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        if (p >= end || *p < '0' || *p > '9')
            return NULL;
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    }
    v->start = s;
    v->len = p - s;
    if (is_int && ndigits <= 18) {
        int64_t x = 0;
        for (const char *q = digits; q < digits + ndigits; q++)
            x = x * 10 + (*q - '0');
        v->ival = neg ? -x : x;
        v->kind = V_INT;
    } else {
        v->kind = V_OTHER_NUMBER;
    }
    return p;
}

static inline const char *scan_literal(const char *p, const char *end, const char *word,
                                       Py_ssize_t n, int kind, Value *v) {
    if (end - p < n || memcmp(p, word, n) != 0)
        return NULL;
    v->kind = kind;
    return p + n;
}

static inline const char *scan_value(const char *p, const char *end, Value *v) {
    if (p >= end)
        return NULL;
    switch (*p) {
    case '"':
        return scan_string(p, end, v);
    case 't':
        return scan_literal(p, end, "true", 4, V_TRUE, v);
    case 'f':
        return scan_literal(p, end, "false", 5, V_FALSE, v);
    case 'n':
        return scan_literal(p, end, "null", 4, V_NULL, v);
    default:
        return scan_number(p, end, v);   /* objects and arrays: not on this path */
    }
}

static inline int field_of(const char *k, Py_ssize_t n) {
    switch (n) {
    case 2:
        if (memcmp(k, "ts", 2) == 0) return F_TS;
        break;
    case 3:
        if (memcmp(k, "geo", 3) == 0) return F_GEO;
        break;
    case 6:
        if (memcmp(k, "device", 6) == 0) return F_DEVICE;
        break;
    case 7:
        if (memcmp(k, "channel", 7) == 0) return F_CHANNEL;
        if (memcmp(k, "user_id", 7) == 0) return F_USER_ID;
        break;
    case 8:
        if (memcmp(k, "event_id", 8) == 0) return F_EVENT_ID;
        break;
    case 10:
        if (memcmp(k, "user_agent", 10) == 0) return F_USER_AGENT;
        break;
    case 11:
        if (memcmp(k, "campaign_id", 11) == 0) return F_CAMPAIGN_ID;
        if (memcmp(k, "creative_id", 11) == 0) return F_CREATIVE_ID;
        if (memcmp(k, "is_internal", 11) == 0) return F_IS_INTERNAL;
        break;
    case 13:
        if (memcmp(k, "impression_id", 13) == 0) return F_IMPRESSION_ID;
        break;
    }
    return -1;
}

/* XXH64 lane round and avalanche, as ctrguard.flows.engine.dedup_keys computes them in numpy. */
#define K1 0x9E3779B185EBCA87ULL
#define K2 0xC2B2AE3D27D4EB4FULL
#define K3 0x165667B19E3779F9ULL
#define K4 0x85EBCA77C2B2AE63ULL
#define K5 0x27D4EB2F165667C5ULL

static inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

static inline uint64_t absorb(uint64_t h, const char *s, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i += 8) {
        uint64_t w = 0;
        Py_ssize_t take = n - i < 8 ? n - i : 8;
        for (Py_ssize_t j = 0; j < take; j++)
            w |= (uint64_t)(unsigned char)s[i + j] << (8 * j);
        if (w == 0)
            continue;   /* cannot happen for ids without NUL; mirrors the padding rule */
        uint64_t k = w * K2;
        k = rotl(k, 31);
        k *= K1;
        k ^= h;
        k = rotl(k, 27);
        k *= K1;
        k += K4;
        h = k;
    }
    return h;
}

static inline uint64_t dedup_key(const char *cid, Py_ssize_t ncid, const char *eid,
                                 Py_ssize_t neid) {
    uint64_t h = absorb(K5, cid, ncid);
    h = rotl(h, 27);
    h *= K1;
    h += K3;
    h = absorb(h, eid, neid);
    h ^= h >> 33;
    h *= K2;
    h ^= h >> 29;
    h *= K3;
    h ^= h >> 32;
    return h;
}

static PyObject *ascii_str(const char *s, Py_ssize_t n) {
    PyObject *o = PyUnicode_New(n, 127);
    if (o != NULL)
        memcpy(PyUnicode_1BYTE_DATA(o), s, n);
    return o;
}

/* Interned: repeated values (campaigns, devices, user agents) share one str (see `kept`
 * below for which live across calls). Open addressing over the characters' hash; no
 * object is made to look a value up. */
typedef struct {
    uint64_t hash;
    PyObject *str;
} Slot;

typedef struct {
    Slot *slots;
    size_t mask;
    size_t used;
} Interner;

static int interner_init(Interner *t, size_t size) {
    t->slots = PyMem_Calloc(size, sizeof(Slot));
    t->mask = size - 1;
    t->used = 0;
    return t->slots == NULL ? -1 : 0;
}

static void interner_free(Interner *t) {
    if (t->slots == NULL)
        return;
    for (size_t i = 0; i <= t->mask; i++)
        Py_XDECREF(t->slots[i].str);
    PyMem_Free(t->slots);
    t->slots = NULL;
}

static inline uint64_t text_hash(const char *s, Py_ssize_t n) {
    uint64_t h = 0xcbf29ce484222325ULL ^ (uint64_t)n;   /* FNV-1a, 8 bytes a step */
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        h = (h ^ w) * 0x100000001b3ULL;
        h ^= h >> 29;
    }
    for (; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 0x100000001b3ULL;
    return h ^ (h >> 32);
}

static int interner_grow(Interner *t) {
    size_t size = (t->mask + 1) * 2;
    Slot *old = t->slots;
    size_t old_size = t->mask + 1;
    Slot *slots = PyMem_Calloc(size, sizeof(Slot));
    if (slots == NULL)
        return -1;
    for (size_t i = 0; i < old_size; i++) {
        if (old[i].str == NULL)
            continue;
        size_t j = old[i].hash & (size - 1);
        while (slots[j].str != NULL)
            j = (j + 1) & (size - 1);
        slots[j] = old[i];
    }
    PyMem_Free(old);
    t->slots = slots;
    t->mask = size - 1;
    return 0;
}

/* A new reference to the str of these characters (printable ASCII). */
static PyObject *interned(Interner *t, const char *s, Py_ssize_t n) {
    uint64_t h = text_hash(s, n);
    size_t j = h & t->mask;
    for (;;) {
        Slot *slot = &t->slots[j];
        if (slot->str == NULL)
            break;
        if (slot->hash == h && PyUnicode_GET_LENGTH(slot->str) == n &&
            memcmp(PyUnicode_1BYTE_DATA(slot->str), s, n) == 0) {
            Py_INCREF(slot->str);
            return slot->str;
        }
        j = (j + 1) & t->mask;
    }
    PyObject *o = ascii_str(s, n);
    if (o == NULL)
        return NULL;
    Py_INCREF(o);
    t->slots[j].hash = h;
    t->slots[j].str = o;
    if (++t->used * 2 > t->mask + 1 && interner_grow(t) < 0) {
        Py_DECREF(o);
        return NULL;
    }
    return o;
}

/* Campaign ids and dimension values are interned across calls: a campaign's id is then the
 * same str object in every batch, and the dicts downstream (windows, campaigns, shards)
 * find it by identity instead of comparing its characters, and no str is made for it
 * again. Bounded: past KEPT_MAX values (a stream of ever new ids) the table is emptied
 * and starts over. User agents, which may be many, are interned per call only. The GIL
 * guards the table (scan never releases it). */
#define KEPT_MAX (1 << 17)
static Interner kept = {NULL, 0, 0};

static int kept_ready(void) {
    if (kept.slots != NULL && kept.used > KEPT_MAX)
        interner_free(&kept);
    if (kept.slots == NULL)
        return interner_init(&kept, 4096);
    return 0;
}

/* Epoch milliseconds of "YYYY-MM-DDTHH:MM:SS.fffZ" or "YYYY-MM-DDTHH:MM:SSZ" (years
 * 2000..2099), or -1 for anything else: the rules of events._rfc3339_z_to_ms. */
static int64_t rfc3339_z_ms(const char *s, Py_ssize_t n) {
    static const int pos20[] = {0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18};
    static const int month_days[] = {0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int d[17];
    if (n != 20 && n != 24)
        return -1;
    if (s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':')
        return -1;
    if (n == 20 ? s[19] != 'Z' : (s[19] != '.' || s[23] != 'Z'))
        return -1;
    int ndig = n == 24 ? 17 : 14;
    for (int i = 0; i < ndig; i++) {
        char c = s[i < 14 ? pos20[i] : 20 + (i - 14)];
        if (c < '0' || c > '9')
            return -1;
        d[i] = c - '0';
    }
    int64_t year = d[0] * 1000 + d[1] * 100 + d[2] * 10 + d[3];
    int64_t month = d[4] * 10 + d[5], day = d[6] * 10 + d[7];
    int64_t hour = d[8] * 10 + d[9], minute = d[10] * 10 + d[11], sec = d[12] * 10 + d[13];
    int64_t frac = n == 24 ? d[14] * 100 + d[15] * 10 + d[16] : 0;
    if (year < 2000 || year > 2099 || month < 1 || month > 12)
        return -1;
    int leap = (year % 4 == 0) && (year % 100 != 0 || year % 400 == 0);
    int64_t mdays = month_days[month] + (month == 2 && leap);
    if (day < 1 || day > mdays || hour > 23 || minute > 59 || sec > 59)
        return -1;
    int64_t y = year - (month <= 2);
    int64_t era = y / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    int64_t days = era * 146097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719468;
    return (((days * 24 + hour) * 60 + minute) * 60 + sec) * 1000 + frac;
}

#define MAX_DIMS 4

/* The key of an optional reference field of a click (user_id, impression_id), hashed with
 * its campaign id as dedup_key hashes event ids; 0 when absent, null or empty. */
static inline uint64_t ref_key(const Value *cv, const Value *got, const int *present, int f) {
    if (!present[f] || got[f].kind != V_STRING || got[f].len == 0)
        return 0;
    return dedup_key(cv->start, cv->len, got[f].start, got[f].len);
}

/*
 * scan(values, dims, want_agents, min_ts, max_ts, max_id, max_attr[, max_bytes[, want_refs]])
 *
 * values: list of bytes, or (buffer, bounds) with bounds native int64 (start, end) pairs,
 * one message per pair (ctrguard.events.LineBlock); dims: tuple of field names (at most
 * 4, each one of the optional string fields). Returns None when the batch is not all plain and valid (see the top of
 * this file), else a tuple:
 *   (campaign_ids, event_ids, ts, dim_columns, agents, internal, keys)
 * campaign_ids, event_ids: list of str; ts: bytes, native int64 epoch milliseconds per
 * event (integers, or the two canonical UTC text forms); dim_columns: tuple of lists
 * (str or None), one per dimension; agents: list (str or None) or None when not wanted;
 * internal: list of the indexes with "is_internal": true; keys: bytes, native uint64
 * de-duplication keys. A message longer than max_bytes (if given) refuses the batch: it
 * is checked here, in the pass that reads the messages anyway, rather than by a Python
 * pass over their lengths before the call (40 ns a message: a sixth of the scan itself).
 * With want_refs (clicks), two more buffers: per event the native uint64 key of its user_id
 * and of its impression_id (ref_key: 0 when absent), (..., keys, users, refs).
 */
static PyObject *scan(PyObject *self, PyObject *args) {
    PyObject *values, *dims;
    int want_agents;
    long long min_ts, max_ts;
    Py_ssize_t max_id, max_attr, max_bytes = PY_SSIZE_T_MAX;
    int want_refs = 0;
    if (!PyArg_ParseTuple(args, "OO!pLLnn|np", &values, &PyTuple_Type, &dims,
                          &want_agents, &min_ts, &max_ts, &max_id, &max_attr, &max_bytes,
                          &want_refs))
        return NULL;
    /* values: a list of bytes, or (buffer, bounds): the messages are buffer[start:end] for
     * each native int64 (start, end) pair of bounds (ctrguard.events.LineBlock). */
    const char *block = NULL;
    const int64_t *bounds = NULL;
    Py_ssize_t n;
    if (PyList_Check(values)) {
        n = PyList_GET_SIZE(values);
    } else if (PyTuple_Check(values) && PyTuple_GET_SIZE(values) == 2 &&
               PyBytes_Check(PyTuple_GET_ITEM(values, 0)) &&
               PyBytes_Check(PyTuple_GET_ITEM(values, 1))) {
        PyObject *buf = PyTuple_GET_ITEM(values, 0), *bnd = PyTuple_GET_ITEM(values, 1);
        if (PyBytes_GET_SIZE(bnd) % (2 * (Py_ssize_t)sizeof(int64_t)) != 0) {
            PyErr_SetString(PyExc_ValueError, "bounds: not int64 (start, end) pairs");
            return NULL;
        }
        block = PyBytes_AS_STRING(buf);
        bounds = (const int64_t *)PyBytes_AS_STRING(bnd);
        n = PyBytes_GET_SIZE(bnd) / (2 * (Py_ssize_t)sizeof(int64_t));
        int64_t size = PyBytes_GET_SIZE(buf);
        for (Py_ssize_t i = 0; i < n; i++) {
            if (bounds[2 * i] < 0 || bounds[2 * i] > bounds[2 * i + 1] ||
                bounds[2 * i + 1] > size) {
                PyErr_SetString(PyExc_ValueError, "bounds: a line outside the buffer");
                return NULL;
            }
        }
    } else {
        PyErr_SetString(PyExc_TypeError, "values: a list of bytes or (buffer, bounds)");
        return NULL;
    }
    Py_ssize_t ndims = PyTuple_GET_SIZE(dims);
    if (ndims > MAX_DIMS) {
        PyErr_SetString(PyExc_ValueError, "at most 4 dimensions");
        return NULL;
    }
    int dim_field[MAX_DIMS];
    for (Py_ssize_t d = 0; d < ndims; d++) {
        PyObject *name = PyTuple_GET_ITEM(dims, d);
        Py_ssize_t len;
        const char *s = PyUnicode_Check(name) ? PyUnicode_AsUTF8AndSize(name, &len) : NULL;
        int f = s != NULL ? field_of(s, len) : -1;
        if (f < F_CREATIVE_ID || f > F_IMPRESSION_ID) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "a dimension must be a string field");
            return NULL;
        }
        dim_field[d] = f;
    }
    PyObject *cids = NULL, *eids = NULL, *ts_buf = NULL, *dim_cols = NULL, *agents = NULL,
             *internal = NULL, *keys_buf = NULL, *users_buf = NULL, *refs_buf = NULL,
             *result = NULL;
    Interner cache = {NULL, 0, 0};
    cids = PyList_New(n);
    eids = PyList_New(n);
    ts_buf = PyBytes_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(int64_t));
    keys_buf = PyBytes_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(uint64_t));
    internal = PyList_New(0);
    dim_cols = PyTuple_New(ndims);
    if (!cids || !eids || !ts_buf || !keys_buf || !internal || !dim_cols ||
        kept_ready() < 0 || (want_agents && interner_init(&cache, 1024) < 0))
        goto error;
    for (Py_ssize_t d = 0; d < ndims; d++) {
        PyObject *col = PyList_New(n);
        if (col == NULL)
            goto error;
        PyTuple_SET_ITEM(dim_cols, d, col);
    }
    if (want_agents && (agents = PyList_New(n)) == NULL)
        goto error;
    uint64_t *users_out = NULL, *refs_out = NULL;
    if (want_refs) {
        users_buf = PyBytes_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(uint64_t));
        refs_buf = PyBytes_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(uint64_t));
        if (users_buf == NULL || refs_buf == NULL)
            goto error;
        users_out = (uint64_t *)PyBytes_AS_STRING(users_buf);
        refs_out = (uint64_t *)PyBytes_AS_STRING(refs_buf);
    }
    int64_t *ts_out = (int64_t *)PyBytes_AS_STRING(ts_buf);
    uint64_t *keys_out = (uint64_t *)PyBytes_AS_STRING(keys_buf);

    for (Py_ssize_t i = 0; i < n; i++) {
        const char *p, *end;
        if (block != NULL) {
            p = block + bounds[2 * i];
            end = block + bounds[2 * i + 1];
            if (end - p > max_bytes)
                goto refuse;
        } else {
            PyObject *raw = PyList_GET_ITEM(values, i);
            if (!PyBytes_Check(raw) || PyBytes_GET_SIZE(raw) > max_bytes)
                goto refuse;
            p = PyBytes_AS_STRING(raw);
            end = p + PyBytes_GET_SIZE(raw);
        }
        Value got[N_FIELDS];
        int present[N_FIELDS] = {0};
        p = skip_ws(p, end);
        if (p >= end || *p != '{')
            goto refuse;
        p = skip_ws(p + 1, end);
        if (p < end && *p == '}') {
            goto refuse;   /* {}: required fields missing */
        }
        for (;;) {
            Value key, val;
            if (p >= end || *p != '"' || (p = scan_string(p, end, &key)) == NULL)
                goto refuse;
            p = skip_ws(p, end);
            if (p >= end || *p != ':')
                goto refuse;
            p = skip_ws(p + 1, end);
            if ((p = scan_value(p, end, &val)) == NULL)
                goto refuse;
            int f = field_of(key.start, key.len);
            if (f >= 0) {
                if (present[f])
                    goto refuse;   /* a repeated key: msgspec decides */
                present[f] = 1;
                got[f] = val;
            }
            p = skip_ws(p, end);
            if (p < end && *p == ',') {
                p = skip_ws(p + 1, end);
                continue;
            }
            if (p < end && *p == '}') {
                p = skip_ws(p + 1, end);
                break;
            }
            goto refuse;
        }
        if (p != end)
            goto refuse;   /* trailing data */

        /* Types and constraints, as _BatchEventWire declares them. */
        if (!present[F_EVENT_ID] || !present[F_CAMPAIGN_ID] || !present[F_TS])
            goto refuse;
        Value *ev = &got[F_EVENT_ID], *cv = &got[F_CAMPAIGN_ID], *tv = &got[F_TS];
        if (ev->kind != V_STRING || ev->len < 1 || ev->len > max_id)
            goto refuse;
        if (cv->kind != V_STRING || cv->len < 1 || cv->len > max_id)
            goto refuse;
        for (int f = F_CREATIVE_ID; f <= F_IMPRESSION_ID; f++) {
            if (present[f] && got[f].kind != V_NULL &&
                (got[f].kind != V_STRING || got[f].len > max_attr))
                goto refuse;
        }
        int is_internal = 0;
        if (present[F_IS_INTERNAL]) {
            int k = got[F_IS_INTERNAL].kind;
            if (k == V_TRUE)
                is_internal = 1;
            else if (k != V_FALSE && k != V_NULL)
                goto refuse;
        }
        if (tv->kind == V_INT) {
            if (tv->ival < min_ts || tv->ival >= max_ts)
                goto refuse;
            ts_out[i] = tv->ival;
        } else if (tv->kind == V_STRING) {
            /* Other ISO-8601 forms are valid too: decode_batch parses them one by one. */
            if ((ts_out[i] = rfc3339_z_ms(tv->start, tv->len)) < 0)
                goto refuse;
        } else {
            goto refuse;   /* other numbers and null: msgspec's reason */
        }

        PyObject *cid = interned(&kept, cv->start, cv->len);
        if (cid == NULL)
            goto error;
        PyList_SET_ITEM(cids, i, cid);
        PyObject *eid = ascii_str(ev->start, ev->len);
        if (eid == NULL)
            goto error;
        PyList_SET_ITEM(eids, i, eid);
        keys_out[i] = dedup_key(cv->start, cv->len, ev->start, ev->len);
        if (want_refs) {
            users_out[i] = ref_key(cv, got, present, F_USER_ID);
            refs_out[i] = ref_key(cv, got, present, F_IMPRESSION_ID);
        }
        for (Py_ssize_t d = 0; d < ndims; d++) {
            int f = dim_field[d];
            PyObject *o;
            if (present[f] && got[f].kind == V_STRING) {
                o = interned(&kept, got[f].start, got[f].len);
                if (o == NULL)
                    goto error;
            } else {
                o = Py_None;
                Py_INCREF(o);
            }
            PyList_SET_ITEM(PyTuple_GET_ITEM(dim_cols, d), i, o);
        }
        if (agents != NULL) {
            PyObject *o;
            if (present[F_USER_AGENT] && got[F_USER_AGENT].kind == V_STRING) {
                o = interned(&cache, got[F_USER_AGENT].start, got[F_USER_AGENT].len);
                if (o == NULL)
                    goto error;
            } else {
                o = Py_None;
                Py_INCREF(o);
            }
            PyList_SET_ITEM(agents, i, o);
        }
        if (is_internal) {
            PyObject *idx = PyLong_FromSsize_t(i);
            if (idx == NULL || PyList_Append(internal, idx) < 0) {
                Py_XDECREF(idx);
                goto error;
            }
            Py_DECREF(idx);
        }
    }
    if (agents == NULL) {
        agents = Py_None;
        Py_INCREF(agents);
    }
    if (want_refs)
        result = PyTuple_Pack(9, cids, eids, ts_buf, dim_cols, agents, internal, keys_buf,
                              users_buf, refs_buf);
    else
        result = PyTuple_Pack(7, cids, eids, ts_buf, dim_cols, agents, internal, keys_buf);
    goto done;
refuse:
    result = Py_None;
    Py_INCREF(result);
    goto done;
error:
    result = NULL;
done:
    /* Lists filled only in part hold NULL slots: list_dealloc skips them (Py_XDECREF). */
    Py_XDECREF(cids);
    Py_XDECREF(eids);
    Py_XDECREF(ts_buf);
    Py_XDECREF(dim_cols);
    Py_XDECREF(agents);
    Py_XDECREF(internal);
    Py_XDECREF(keys_buf);
    Py_XDECREF(users_buf);
    Py_XDECREF(refs_buf);
    interner_free(&cache);
    return result;
}

/* The bytes bytes.strip() removes (ASCII white space). */
static inline int is_space(unsigned char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/*
 * line_bounds(buffer, pos, limit) -> (bounds, numbers, consumed, seen)
 *
 * The next lines of buffer from pos, as a readline loop over a file would see them: up to
 * `limit` lines, each ended by "\n" (an unterminated rest is not a line yet); each line
 * without its trailing "\r"s; lines that are blank (white space only) skipped, but
 * counted. bounds: bytes, native int64 (start, end) pairs of the kept lines; numbers:
 * bytes, native int64 index (0-based, among the `seen` lines) of each kept line, or None
 * when every line was kept; consumed: the position after the last line; seen: lines
 * taken, blank ones included. The reference is ctrguard.events._line_bounds_py.
 */
static PyObject *line_bounds(PyObject *self, PyObject *args) {
    PyObject *buf;
    Py_ssize_t pos, limit;
    if (!PyArg_ParseTuple(args, "O!nn", &PyBytes_Type, &buf, &pos, &limit))
        return NULL;
    const char *data = PyBytes_AS_STRING(buf);
    Py_ssize_t size = PyBytes_GET_SIZE(buf);
    if (pos < 0 || pos > size || limit < 0) {
        PyErr_SetString(PyExc_ValueError, "pos outside the buffer, or a negative limit");
        return NULL;
    }
    if (limit > size - pos)   /* a line takes one byte ("\n") at least */
        limit = size - pos;
    PyObject *bounds = PyBytes_FromStringAndSize(NULL, limit * 2 * (Py_ssize_t)sizeof(int64_t));
    PyObject *numbers = PyBytes_FromStringAndSize(NULL, limit * (Py_ssize_t)sizeof(int64_t));
    if (bounds == NULL || numbers == NULL) {
        Py_XDECREF(bounds);
        Py_XDECREF(numbers);
        return NULL;
    }
    int64_t *b = (int64_t *)PyBytes_AS_STRING(bounds);
    int64_t *num = (int64_t *)PyBytes_AS_STRING(numbers);
    const char *p = data + pos, *end = data + size;
    Py_ssize_t seen = 0, n_kept = 0;
    while (seen < limit && p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (nl == NULL)
            break;
        const char *e = nl;
        while (e > p && e[-1] == '\r')
            e--;
        const char *q = p;
        while (q < e && is_space((unsigned char)*q))
            q++;
        if (q < e) {
            b[2 * n_kept] = p - data;
            b[2 * n_kept + 1] = e - data;
            num[n_kept] = seen;
            n_kept++;
        }
        seen++;
        p = nl + 1;
    }
    if (_PyBytes_Resize(&bounds, n_kept * 2 * (Py_ssize_t)sizeof(int64_t)) < 0) {
        Py_DECREF(numbers);
        return NULL;
    }
    if (n_kept == seen) {
        Py_DECREF(numbers);
        numbers = Py_None;
        Py_INCREF(numbers);
    } else if (_PyBytes_Resize(&numbers, n_kept * (Py_ssize_t)sizeof(int64_t)) < 0) {
        Py_DECREF(bounds);
        return NULL;
    }
    return Py_BuildValue("(NNnn)", bounds, numbers, (Py_ssize_t)(p - data), seen);
}

static PyObject *kept_count(PyObject *self, PyObject *unused) {
    return PyLong_FromSize_t(kept.slots != NULL ? kept.used : 0);
}

static PyObject *kept_clear(PyObject *self, PyObject *unused) {
    interner_free(&kept);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"kept_count", kept_count, METH_NOARGS,
     "kept_count() -> int: campaign ids and dimension values interned across calls"},
    {"kept_clear", kept_clear, METH_NOARGS,
     "kept_clear(): forget them (the next scan interns anew)"},
    {"line_bounds", line_bounds, METH_VARARGS,
     "line_bounds(buffer, pos, limit) -> (bounds, numbers, consumed, seen)\n\n"
     "The next lines of a buffer as offsets (see ctrguard.events.LineBlock)."},
    {"scan", scan, METH_VARARGS,
     "scan(values, dims, want_agents, min_ts, max_ts, max_id, max_attr[, max_bytes"
     "[, want_refs]])"
     " -> tuple | None\n\n"
     "values: a list of bytes, or (buffer, bounds) as a LineBlock holds them.\n"
     "Columns of a batch of plain, valid event messages, or None (see ctrguard.events)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "ctrguard._scan",
    "The compiled fast path of event decoding (see ctrguard.events.scan_batch).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__scan(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    PyObject *names = PyTuple_New(N_FIELDS);
    if (names == NULL) {
        Py_DECREF(m);
        return NULL;
    }
    for (int f = 0; f < N_FIELDS; f++) {
        PyObject *s = PyUnicode_FromString(FIELD_NAMES[f]);
        if (s == NULL) {
            Py_DECREF(names);
            Py_DECREF(m);
            return NULL;
        }
        PyTuple_SET_ITEM(names, f, s);
    }
    if (PyModule_AddObject(m, "FIELDS", names) < 0) {
        Py_DECREF(names);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
