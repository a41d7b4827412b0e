/*
 * ctrguard._records: the JSON text and record keys of figures, in C (see
 * ctrguard/records.py: encode_figures, figure_records, decision_records).
 *
 * The reference is orjson.dumps of each Figure (its fields in order) and the key
 * "campaign|segment|window_start_s" in UTF-8, with '%' in campaign and segment written as
 * "%25" and '|' as "%7C" (ctrguard.records.figure_key: the key splits into three parts
 * whatever the ids hold). This code writes a figure only where it can
 * tell that the text is the same: every string a str (not a subclass) without lone
 * surrogates, escaped as orjson escapes (\" \\ \b \t \n \f \r, other controls as
 * \u00XX, everything else as its UTF-8), every count an int (not a bool) within 64 bits,
 * the CTR a float that is 0 or between 1e-4 and 1e16 (where Python's repr, used here, and
 * orjson write the same digits; outside it they differ, e.g. 1e-05 and 0.00001), alert ids
 * a tuple of such strings. Any other figure is handed to the caller's fallback (the Python
 * reference), in its place in the order, so one odd figure costs one call, not the batch;
 * the fallback's error (what orjson refuses) is raised for the same figure as before.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

enum {
    A_CAMPAIGN, A_SEGMENT, A_WSTART, A_WEND, A_WSTART_S, A_IMPRESSIONS, A_CLICKS, A_CTR,
    A_STATUS, A_ALERT_IDS, N_ATTRS
};
static const char *ATTR_NAMES[N_ATTRS] = {
    "campaign_id", "segment", "window_start", "window_end", "window_start_s",
    "impressions", "clicks", "ctr", "status", "alert_ids",
};
static PyObject *attr_names[N_ATTRS];  /* interned */

typedef struct {
    char *data;
    Py_ssize_t len, cap;
} Buf;

static int buf_reserve(Buf *b, Py_ssize_t more) {
    if (b->len + more <= b->cap)
        return 0;
    Py_ssize_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + more)
        cap *= 2;
    char *data = PyMem_Realloc(b->data, cap);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->cap = cap;
    return 0;
}

/* The most bytes write_str writes for str o (quoted; at most 6 a character, \u00XX), or
 * -1 if o is not a str (not a subclass either: its text could differ). */
static Py_ssize_t str_bound(PyObject *o) {
    if (!PyUnicode_CheckExact(o) || !PyUnicode_IS_READY(o))
        return -1;
    return 6 * PyUnicode_GET_LENGTH(o) + 2;
}

/* One ASCII character of a campaign id or segment into a record key at r: '%' and the
 * separator '|' escaped (3 bytes), anything else as it is; returns the end. */
static inline char *put_key_char(char *r, unsigned char c) {
    if (c == '%') {
        memcpy(r, "%25", 3);
        return r + 3;
    }
    if (c == '|') {
        memcpy(r, "%7C", 3);
        return r + 3;
    }
    *r = (char)c;
    return r + 1;
}

/* ASCII p[0..len) into a record key at r (see put_key_char); returns the end. Ids rarely
 * hold either character: then one copy. */
static char *put_key_ascii(char *r, const unsigned char *p, Py_ssize_t len) {
    if (memchr(p, '|', len) == NULL && memchr(p, '%', len) == NULL) {
        memcpy(r, p, len);
        return r + len;
    }
    for (Py_ssize_t i = 0; i < len; i++)
        r = put_key_char(r, p[i]);
    return r;
}

/* Writes the JSON text of str o at *out (quoted, escaped as orjson escapes; room for
 * str_bound(o) bytes), and its record-key text (UTF-8, see put_key_char) at *raw unless
 * raw is NULL (room for 4 bytes a character); advances both. 1: done; 0: a lone surrogate (orjson refuses it, the key
 * passes it: the fallback decides). */
static int write_str(char **out, PyObject *o, char **raw) {
    Py_ssize_t len = PyUnicode_GET_LENGTH(o);
    char *w = *out;
    *w++ = '"';
    if (PyUnicode_IS_ASCII(o)) {
        const unsigned char *p = (const unsigned char *)PyUnicode_DATA(o);
        Py_ssize_t i = 0;
        while (i < len && p[i] >= 0x20 && p[i] != '"' && p[i] != '\\')
            i++;
        if (i == len) {   /* the common case: nothing to escape */
            memcpy(w, p, len);
            w[len] = '"';
            *out = w + len + 1;
            if (raw != NULL)
                *raw = put_key_ascii(*raw, p, len);
            return 1;
        }
    }
    int kind = PyUnicode_KIND(o);
    const void *data = PyUnicode_DATA(o);
    char *r = raw != NULL ? *raw : NULL;
    for (Py_ssize_t i = 0; i < len; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        char u[4];
        int n;
        if (c < 0x80) {
            u[0] = (char)c;
            n = 1;
        } else if (c < 0x800) {
            u[0] = (char)(0xC0 | (c >> 6));
            u[1] = (char)(0x80 | (c & 0x3F));
            n = 2;
        } else if (c < 0x10000) {
            if (c >= 0xD800 && c <= 0xDFFF)
                return 0;
            u[0] = (char)(0xE0 | (c >> 12));
            u[1] = (char)(0x80 | ((c >> 6) & 0x3F));
            u[2] = (char)(0x80 | (c & 0x3F));
            n = 3;
        } else {
            u[0] = (char)(0xF0 | (c >> 18));
            u[1] = (char)(0x80 | ((c >> 12) & 0x3F));
            u[2] = (char)(0x80 | ((c >> 6) & 0x3F));
            u[3] = (char)(0x80 | (c & 0x3F));
            n = 4;
        }
        if (r != NULL) {
            if (n == 1) {
                r = put_key_char(r, (unsigned char)u[0]);
            } else {
                memcpy(r, u, n);
                r += n;
            }
        }
        if (c >= 0x20 && c != '"' && c != '\\') {
            memcpy(w, u, n);
            w += n;
            continue;
        }
        *w++ = '\\';
        switch (c) {
        case '"': *w++ = '"'; break;
        case '\\': *w++ = '\\'; break;
        case '\b': *w++ = 'b'; break;
        case '\t': *w++ = 't'; break;
        case '\n': *w++ = 'n'; break;
        case '\f': *w++ = 'f'; break;
        case '\r': *w++ = 'r'; break;
        default:
            memcpy(w, "u00", 3);
            w[3] = "0123456789abcdef"[c >> 4];
            w[4] = "0123456789abcdef"[c & 0xF];
            w += 5;
        }
    }
    *w++ = '"';
    *out = w;
    if (raw != NULL)
        *raw = r;
    return 1;
}

/* 1: an int (not a bool) within int64, in *v; 0: not (no error set); -1: error. */
static int plain_int(PyObject *o, long long *v) {
    if (!PyLong_CheckExact(o))
        return 0;
    int overflow = 0;
    *v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow)
        return 0;
    if (*v == -1 && PyErr_Occurred())
        return -1;
    return 1;
}

static const char DIGIT_PAIRS[201] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

/* Decimal text of v into out (at least 21 bytes); returns its length. Two digits a
 * division: window starts have ten. */
static int put_ll(char *out, long long v) {
    char tmp[24];
    char *t = tmp + sizeof tmp;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    while (u >= 100) {
        unsigned r = (unsigned)(u % 100);
        u /= 100;
        t -= 2;
        memcpy(t, DIGIT_PAIRS + 2 * r, 2);
    }
    if (u >= 10) {
        t -= 2;
        memcpy(t, DIGIT_PAIRS + 2 * u, 2);
    } else {
        *--t = (char)('0' + u);
    }
    int len = 0;
    if (v < 0)
        out[len++] = '-';
    int n = (int)(tmp + sizeof tmp - t);
    memcpy(out + len, t, n);
    return len + n;
}

/* The text of CTRs already written, by their bits: most figures have small counts, whose
 * few ratios recur in every window (repr's shortest-digits search is the slow part). */
#define CTR_CACHE 4096
static struct {
    uint64_t bits;
    char text[32];   /* NUL-terminated; empty: unused */
} ctr_cache[CTR_CACHE];

/* Where a class's fields are: their slots' offsets when every field is a plain slot
 * (read directly, as the slot's descriptor reads it), else 0 (read by getattr). */
typedef struct {
    PyTypeObject *cls;   /* held, so that no other class can take its address */
    int n;
    const char *const *names;
    PyObject **interned;
    Py_ssize_t offsets[N_ATTRS];
} Slots;

static void find_slots(Slots *sl, PyTypeObject *cls) {
    Py_INCREF(cls);
    Py_XSETREF(sl->cls, cls);
    for (int a = 0; a < sl->n; a++) {
        PyObject *d = PyDict_GetItemWithError(cls->tp_dict, sl->interned[a]);
        PyMemberDef *m = (d != NULL && PyObject_TypeCheck(d, &PyMemberDescr_Type))
            ? ((PyMemberDescrObject *)d)->d_member : NULL;
        if (m == NULL || m->type != T_OBJECT_EX || m->offset < (Py_ssize_t)sizeof(PyObject)
                || m->offset + (Py_ssize_t)sizeof(PyObject *) > cls->tp_basicsize) {
            PyErr_Clear();
            for (int i = 0; i < sl->n; i++)
                sl->offsets[i] = 0;
            return;
        }
        sl->offsets[a] = m->offset;
    }
}

/* A new reference to field a of obj, or NULL with an exception (AttributeError when the
 * slot is unset). */
static PyObject *field(const Slots *sl, PyObject *obj, int a) {
    if (sl->offsets[a]) {
        PyObject *v = *(PyObject **)((char *)obj + sl->offsets[a]);
        if (v == NULL)
            PyErr_SetString(PyExc_AttributeError, sl->names[a]);
        else
            Py_INCREF(v);
        return v;
    }
    return PyObject_GetAttr(obj, sl->interned[a]);
}

static Slots figure_slots = {NULL, N_ATTRS, ATTR_NAMES, attr_names, {0}};
static const char *DECISION_NAMES[1] = {"figures"};
static PyObject *decision_names[1];
static Slots decision_slots = {NULL, 1, DECISION_NAMES, decision_names, {0}};

/* The text of a CTR as repr writes it, NULL if orjson writes it otherwise (see the top of
 * this file), or NULL with an exception. */
static const char *ctr_text(double x) {
    double ax = x < 0 ? -x : x;
    if (!(ax == 0.0 || (ax >= 1e-4 && ax < 1e16)))
        return NULL;
    uint64_t bits;
    memcpy(&bits, &x, sizeof bits);
    size_t slot = (size_t)((bits * 0x9E3779B97F4A7C15ULL) >> 52) & (CTR_CACHE - 1);
    if (ctr_cache[slot].text[0] == 0 || ctr_cache[slot].bits != bits) {
        char *text = PyOS_double_to_string(x, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
        if (text == NULL)
            return NULL;
        size_t len = strlen(text);
        int plain = strpbrk(text, "eEni") == NULL && len < sizeof ctr_cache[0].text;
        if (plain) {
            memcpy(ctr_cache[slot].text, text, len + 1);
            ctr_cache[slot].bits = bits;
        }
        PyMem_Free(text);
        if (!plain)
            return NULL;  /* an exponent or a non-number: not written the same */
    }
    return ctr_cache[slot].text;
}

#define WRITE_LIT(w, lit) (memcpy((w), (lit), sizeof(lit) - 1), (w) += sizeof(lit) - 1)

/* Writes the figure's JSON text to b (and its key to key, unless NULL), both empty. 1:
 * done; 0: not written the same (the caller discards what was written); -1: error.
 * Every value is checked and the room for the longest text reserved first, so the
 * writing itself has no checks left but the one for lone surrogates. */
static int encode_one(Buf *b, PyObject *fig, Buf *key) {
    PyObject *v[N_ATTRS] = {NULL};
    int rc = -1;
    for (int a = 0; a < N_ATTRS; a++) {
        v[a] = field(&figure_slots, fig, a);
        if (v[a] == NULL) {  /* (an unset slot): the fallback says what orjson says */
            if (!PyErr_ExceptionMatches(PyExc_AttributeError))
                goto done;
            PyErr_Clear();
            rc = 0;
            goto done;
        }
    }
    rc = 0;
    /* The field names and punctuation (under 160 bytes), three ints and a CTR. */
    Py_ssize_t need = 160 + 3 * 21 + 32, part;
    static const int STRS[] = {A_CAMPAIGN, A_SEGMENT, A_WSTART, A_WEND, A_STATUS};
    for (size_t i = 0; i < sizeof STRS / sizeof STRS[0]; i++) {
        if ((part = str_bound(v[STRS[i]])) < 0)
            goto done;
        need += part;
    }
    long long ints[3];
    char nums[3][24];
    int num_lens[3];
    static const int INTS[] = {A_WSTART_S, A_IMPRESSIONS, A_CLICKS};
    for (int i = 0; i < 3; i++) {
        int ok = plain_int(v[INTS[i]], &ints[i]);
        if (ok <= 0) {
            rc = ok;
            goto done;
        }
        num_lens[i] = put_ll(nums[i], ints[i]);
    }
    if (!PyFloat_CheckExact(v[A_CTR]))
        goto done;
    const char *ctr = ctr_text(PyFloat_AS_DOUBLE(v[A_CTR]));
    if (ctr == NULL) {
        rc = PyErr_Occurred() ? -1 : 0;
        goto done;
    }
    PyObject *ids = v[A_ALERT_IDS];
    if (!PyTuple_CheckExact(ids))
        goto done;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(ids); i++) {
        if ((part = str_bound(PyTuple_GET_ITEM(ids, i))) < 0)
            goto done;
        need += part + 1;
    }
    if (buf_reserve(b, need) < 0)
        goto fail;
    char *raw = NULL, **rawp = NULL;
    if (key != NULL) {
        Py_ssize_t nk = 4 * (PyUnicode_GET_LENGTH(v[A_CAMPAIGN])
                             + PyUnicode_GET_LENGTH(v[A_SEGMENT])) + 2 + 21;
        if (buf_reserve(key, nk) < 0)
            goto fail;
        raw = key->data;
        rawp = &raw;
    }
    char *w = b->data;
    WRITE_LIT(w, "{\"campaign_id\":");
    if (!write_str(&w, v[A_CAMPAIGN], rawp))
        goto done;
    if (raw != NULL)
        *raw++ = '|';
    WRITE_LIT(w, ",\"segment\":");
    if (!write_str(&w, v[A_SEGMENT], rawp))
        goto done;
    if (raw != NULL) {
        *raw++ = '|';
        memcpy(raw, nums[0], num_lens[0]);
        key->len = raw + num_lens[0] - key->data;
    }
    WRITE_LIT(w, ",\"window_start\":");
    if (!write_str(&w, v[A_WSTART], NULL))
        goto done;
    WRITE_LIT(w, ",\"window_end\":");
    if (!write_str(&w, v[A_WEND], NULL))
        goto done;
    WRITE_LIT(w, ",\"window_start_s\":");
    memcpy(w, nums[0], num_lens[0]);
    w += num_lens[0];
    WRITE_LIT(w, ",\"impressions\":");
    memcpy(w, nums[1], num_lens[1]);
    w += num_lens[1];
    WRITE_LIT(w, ",\"clicks\":");
    memcpy(w, nums[2], num_lens[2]);
    w += num_lens[2];
    WRITE_LIT(w, ",\"ctr\":");
    size_t ctr_len = strlen(ctr);
    memcpy(w, ctr, ctr_len);
    w += ctr_len;
    WRITE_LIT(w, ",\"status\":");
    if (!write_str(&w, v[A_STATUS], NULL))
        goto done;
    WRITE_LIT(w, ",\"alert_ids\":[");
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(ids); i++) {
        if (i > 0)
            *w++ = ',';
        if (!write_str(&w, PyTuple_GET_ITEM(ids, i), NULL))
            goto done;
    }
    WRITE_LIT(w, "]}");
    b->len = w - b->data;
    rc = 1;
    goto done;
fail:
    rc = -1;
done:
    for (int a = 0; a < N_ATTRS; a++)
        Py_XDECREF(v[a]);
    return rc;
}

/* The record of one figure into values[i] (and keys[i] unless keys is NULL): written here,
 * or by fallback(fig), which returns the value, or (value, key) when keys are wanted.
 * 0: done; -1: error. b and k are scratch buffers. */
static int record_one(PyObject *fig, PyObject *values, PyObject *keys, Py_ssize_t i,
                      PyObject *fallback, Buf *b, Buf *k) {
    int rc = 0;
    b->len = k->len = 0;
    if (Py_TYPE(fig) == figure_slots.cls)
        rc = encode_one(b, fig, keys != NULL ? k : NULL);
    if (rc < 0)
        return -1;
    if (rc == 1) {
        PyObject *text = PyBytes_FromStringAndSize(b->data, b->len);
        if (text == NULL)
            return -1;
        PyList_SET_ITEM(values, i, text);
        if (keys != NULL) {
            PyObject *key = PyBytes_FromStringAndSize(k->data, k->len);
            if (key == NULL)
                return -1;
            PyList_SET_ITEM(keys, i, key);
        }
        return 0;
    }
    PyObject *out = PyObject_CallOneArg(fallback, fig);
    if (out == NULL)
        return -1;
    if (keys == NULL) {
        PyList_SET_ITEM(values, i, out);
        return 0;
    }
    if (!PyTuple_CheckExact(out) || PyTuple_GET_SIZE(out) != 2) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_TypeError, "fallback must return (value, key)");
        return -1;
    }
    PyObject *value = PyTuple_GET_ITEM(out, 0), *key = PyTuple_GET_ITEM(out, 1);
    Py_INCREF(value);
    Py_INCREF(key);
    PyList_SET_ITEM(values, i, value);
    PyList_SET_ITEM(keys, i, key);
    Py_DECREF(out);
    return 0;
}

/* The result of the two functions below: values, or (values, keys). Steals both. */
static PyObject *result_of(PyObject *values, PyObject *keys) {
    if (keys == NULL)
        return values;
    PyObject *result = PyTuple_Pack(2, values, keys);
    Py_DECREF(values);
    Py_DECREF(keys);
    return result;
}

/* encode_figures(figures, cls, with_keys, fallback) -> list[bytes] | (list, list)
 *
 * orjson.dumps of each figure (and, with with_keys, its record key): written here for
 * figures of class cls that are written the same (see the top of this file), else by
 * fallback(figure).
 */
static PyObject *encode_figures(PyObject *self, PyObject *args) {
    PyObject *figs_obj, *cls, *fallback;
    int with_keys;
    if (!PyArg_ParseTuple(args, "OO!pO", &figs_obj, &PyType_Type, &cls, &with_keys,
                          &fallback))
        return NULL;
    PyObject *figs = PySequence_Fast(figs_obj, "figures must be a sequence");
    if (figs == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(figs);
    PyObject *values = PyList_New(n), *keys = with_keys ? PyList_New(n) : NULL;
    Buf b = {NULL, 0, 0}, k = {NULL, 0, 0};
    if (values == NULL || (with_keys && keys == NULL))
        goto fail;
    if ((PyTypeObject *)cls != figure_slots.cls)
        find_slots(&figure_slots, (PyTypeObject *)cls);
    for (Py_ssize_t i = 0; i < n; i++) {
        /* (fallback may run any code: hold the figure, not the list) */
        PyObject *fig = PySequence_Fast_ITEMS(figs)[i];
        Py_INCREF(fig);
        int rc = record_one(fig, values, keys, i, fallback, &b, &k);
        Py_DECREF(fig);
        if (rc < 0)
            goto fail;
    }
    PyMem_Free(b.data);
    PyMem_Free(k.data);
    Py_DECREF(figs);
    return result_of(values, keys);
fail:
    PyMem_Free(b.data);
    PyMem_Free(k.data);
    Py_XDECREF(values);
    Py_XDECREF(keys);
    Py_DECREF(figs);
    return NULL;
}

/* decision_records(decisions, decision_cls, figure_cls, fallback) -> (list, list) | None
 *
 * encode_figures(figures, figure_cls, True, fallback) of the figures of all decisions, in
 * order, without a list of them; None when a decision is not of decision_cls or its
 * figures are not a tuple (the caller then makes the list).
 */
static PyObject *decision_records(PyObject *self, PyObject *args) {
    PyObject *decs_obj, *dcls, *fcls, *fallback;
    if (!PyArg_ParseTuple(args, "OO!O!O", &decs_obj, &PyType_Type, &dcls, &PyType_Type,
                          &fcls, &fallback))
        return NULL;
    if (!PyList_CheckExact(decs_obj) && !PyTuple_CheckExact(decs_obj))
        Py_RETURN_NONE;
    /* A tuple of tuples: nothing the fallback runs can change it. */
    PyObject *decs = PySequence_Tuple(decs_obj);
    if (decs == NULL)
        return NULL;
    Py_ssize_t nd = PyTuple_GET_SIZE(decs), n = 0;
    PyObject *figs = PyTuple_New(nd), *values = NULL, *keys = NULL;
    Buf b = {NULL, 0, 0}, k = {NULL, 0, 0};
    if (figs == NULL)
        goto fail;
    if ((PyTypeObject *)dcls != decision_slots.cls)
        find_slots(&decision_slots, (PyTypeObject *)dcls);
    if ((PyTypeObject *)fcls != figure_slots.cls)
        find_slots(&figure_slots, (PyTypeObject *)fcls);
    for (Py_ssize_t j = 0; j < nd; j++) {
        PyObject *d = PyTuple_GET_ITEM(decs, j);
        PyObject *f = Py_TYPE(d) == (PyTypeObject *)dcls ? field(&decision_slots, d, 0) : NULL;
        if (f == NULL || !PyTuple_CheckExact(f)) {
            Py_XDECREF(f);
            if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_AttributeError))
                goto fail;
            PyErr_Clear();
            Py_DECREF(figs);
            Py_DECREF(decs);
            Py_RETURN_NONE;
        }
        PyTuple_SET_ITEM(figs, j, f);
        n += PyTuple_GET_SIZE(f);
    }
    values = PyList_New(n);
    keys = PyList_New(n);
    if (values == NULL || keys == NULL)
        goto fail;
    Py_ssize_t i = 0;
    for (Py_ssize_t j = 0; j < nd; j++) {
        PyObject *f = PyTuple_GET_ITEM(figs, j);
        for (Py_ssize_t m = 0; m < PyTuple_GET_SIZE(f); m++, i++) {
            if (record_one(PyTuple_GET_ITEM(f, m), values, keys, i, fallback, &b, &k) < 0)
                goto fail;
        }
    }
    PyMem_Free(b.data);
    PyMem_Free(k.data);
    Py_DECREF(figs);
    Py_DECREF(decs);
    return result_of(values, keys);
fail:
    PyMem_Free(b.data);
    PyMem_Free(k.data);
    Py_XDECREF(values);
    Py_XDECREF(keys);
    Py_XDECREF(figs);
    Py_DECREF(decs);
    return NULL;
}

static PyMethodDef methods[] = {
    {"encode_figures", encode_figures, METH_VARARGS,
     "encode_figures(figures, cls, with_keys, fallback) -> list | tuple\n\n"
     "orjson.dumps of each figure (and its record key), written here or by "
     "fallback(figure) (see ctrguard.records.encode_figures)."},
    {"decision_records", decision_records, METH_VARARGS,
     "decision_records(decisions, decision_cls, figure_cls, fallback) -> tuple | None\n\n"
     "encode_figures of the figures of all decisions, with keys, or None (see "
     "ctrguard.records.decision_records)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "ctrguard._records",
    "The JSON text and keys of figures in C (see ctrguard.records.encode_figures).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__records(void) {
    for (int a = 0; a < N_ATTRS; a++) {
        attr_names[a] = PyUnicode_InternFromString(ATTR_NAMES[a]);
        if (attr_names[a] == NULL)
            return NULL;
    }
    decision_names[0] = PyUnicode_InternFromString(DECISION_NAMES[0]);
    if (decision_names[0] == NULL)
        return NULL;
    return PyModule_Create(&module);
}
