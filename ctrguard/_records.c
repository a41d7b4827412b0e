/*
 * ctrguard._records: the JSON text and record keys of figures, in C (see
 * ctrguard/records.py: encode_figures, figure_keys).
 *
 * The reference is orjson.dumps of each Figure (its fields in order) and the key
 * "campaign|segment|window_start_s". This code answers only for figures it can tell are
 * written the same: every string printable ASCII without a quote or a backslash (nothing
 * to escape), every count an int (not a bool) within 64 bits, the CTR a float that is 0 or
 * between 1e-4 and 1e16 (where Python's repr, used here, and orjson write the same
 * digits; outside it they differ, e.g. 1e-05 and 0.00001), alert ids a tuple of such
 * strings. For anything else it returns None and the caller uses the Python path, which
 * gives the reference text (or its error).
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
static Py_ssize_t name_lens[N_ATTRS];

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

static int buf_put(Buf *b, const char *s, Py_ssize_t n) {
    if (buf_reserve(b, n) < 0)
        return -1;
    memcpy(b->data + b->len, s, n);
    b->len += n;
    return 0;
}

#define PUT_LIT(b, lit) buf_put((b), (lit), (Py_ssize_t)(sizeof(lit) - 1))

/* 1: a str written as it is inside quotes (its UTF-8 is its ASCII); 0: not; sets *s, *n. */
static int plain_str(PyObject *o, const char **s, Py_ssize_t *n) {
    if (!PyUnicode_CheckExact(o) || !PyUnicode_IS_READY(o) || !PyUnicode_IS_ASCII(o))
        return 0;
    const char *p = (const char *)PyUnicode_DATA(o);
    Py_ssize_t len = PyUnicode_GET_LENGTH(o);
    for (Py_ssize_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c < 0x20 || c > 0x7e || c == '"' || c == '\\')
            return 0;
    }
    *s = p;
    *n = len;
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

/* Decimal text of v into out (at least 21 bytes); returns its length. */
static int put_ll(char *out, long long v) {
    char tmp[24];
    int n = 0;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    int len = 0;
    if (v < 0)
        out[len++] = '-';
    while (n)
        out[len++] = tmp[--n];
    return len;
}

/* The text of CTRs already written, by their bits: most figures have small counts, whose
 * few ratios recur in every window (repr's shortest-digits search is the slow part). */
#define CTR_CACHE 4096
static struct {
    uint64_t bits;
    char text[32];   /* NUL-terminated; empty: unused */
} ctr_cache[CTR_CACHE];

/* Writes "name": (with the comma before it unless first). */
static int put_name(Buf *b, int attr) {
    const char *name = ATTR_NAMES[attr];
    Py_ssize_t len = name_lens[attr];
    if (buf_reserve(b, len + 4) < 0)
        return -1;
    if (attr != A_CAMPAIGN)
        b->data[b->len++] = ',';
    b->data[b->len++] = '"';
    memcpy(b->data + b->len, name, len);
    b->len += len;
    b->data[b->len++] = '"';
    b->data[b->len++] = ':';
    return 0;
}

static int put_quoted(Buf *b, const char *s, Py_ssize_t n) {
    if (buf_reserve(b, n + 2) < 0)
        return -1;
    b->data[b->len++] = '"';
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len++] = '"';
    return 0;
}

/* Appends the figure's JSON text to b (and its key to key, unless NULL). 1: done; 0: not
 * plain (the caller discards what was appended); -1: error. */
/* Where the class's fields are: their slots' offsets when every field is a plain slot
 * (read directly, as the slot's descriptor reads it), else 0 (read by getattr). */
static PyTypeObject *offsets_of;
static Py_ssize_t offsets[N_ATTRS];

static void find_slots(PyTypeObject *cls) {
    /* Held, so that no other class can take its address while the offsets are cached. */
    Py_INCREF(cls);
    Py_XSETREF(offsets_of, cls);
    for (int a = 0; a < N_ATTRS; a++) {
        PyObject *d = PyDict_GetItemWithError(cls->tp_dict, attr_names[a]);
        PyMemberDef *m = (d != NULL && PyObject_TypeCheck(d, &PyMemberDescr_Type))
            ? ((PyMemberDescrObject *)d)->d_member : NULL;
        if (m == NULL || m->type != T_OBJECT_EX || m->offset < (Py_ssize_t)sizeof(PyObject)
                || m->offset + (Py_ssize_t)sizeof(PyObject *) > cls->tp_basicsize) {
            PyErr_Clear();
            for (int i = 0; i < N_ATTRS; i++)
                offsets[i] = 0;
            return;
        }
        offsets[a] = m->offset;
    }
}

static PyObject *field(PyObject *fig, int a) {
    if (offsets[a]) {
        PyObject *v = *(PyObject **)((char *)fig + offsets[a]);
        if (v == NULL)
            PyErr_SetString(PyExc_AttributeError, ATTR_NAMES[a]);  /* an unset slot */
        else
            Py_INCREF(v);
        return v;
    }
    return PyObject_GetAttr(fig, attr_names[a]);
}

static int encode_one(Buf *b, PyObject *fig, Buf *key) {
    PyObject *v[N_ATTRS] = {NULL};
    int rc = -1;
    for (int a = 0; a < N_ATTRS; a++) {
        v[a] = field(fig, a);
        if (v[a] == NULL) {  /* (an unset slot): the Python path says what orjson says */
            if (!PyErr_ExceptionMatches(PyExc_AttributeError))
                goto done;
            PyErr_Clear();
            rc = 0;
            goto done;
        }
    }
    rc = 0;
    if (PUT_LIT(b, "{") < 0)
        goto fail;
    for (int a = 0; a < N_ATTRS; a++) {
        if (put_name(b, a) < 0)
            goto fail;
        const char *s;
        Py_ssize_t n;
        long long iv;
        char num[24];
        switch (a) {
        case A_CAMPAIGN: case A_SEGMENT: case A_WSTART: case A_WEND: case A_STATUS:
            if (!plain_str(v[a], &s, &n))
                goto done;
            if (put_quoted(b, s, n) < 0)
                goto fail;
            if (key != NULL && (a == A_CAMPAIGN || a == A_SEGMENT)) {
                if (buf_put(key, s, n) < 0 || buf_put(key, "|", 1) < 0)
                    goto fail;
            }
            break;
        case A_WSTART_S: case A_IMPRESSIONS: case A_CLICKS: {
            int ok = plain_int(v[a], &iv);
            if (ok < 0)
                goto fail;
            if (!ok)
                goto done;
            int len = put_ll(num, iv);
            if (buf_put(b, num, len) < 0)
                goto fail;
            if (key != NULL && a == A_WSTART_S && buf_put(key, num, len) < 0)
                goto fail;
            break;
        }
        case A_CTR: {
            if (!PyFloat_CheckExact(v[a]))
                goto done;
            double x = PyFloat_AS_DOUBLE(v[a]);
            double ax = x < 0 ? -x : x;
            if (!(ax == 0.0 || (ax >= 1e-4 && ax < 1e16)))
                goto done;
            uint64_t bits;
            memcpy(&bits, &x, sizeof bits);
            size_t slot = (size_t)((bits * 0x9E3779B97F4A7C15ULL) >> 52) & (CTR_CACHE - 1);
            if (ctr_cache[slot].text[0] == 0 || ctr_cache[slot].bits != bits) {
                char *text = PyOS_double_to_string(x, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
                if (text == NULL)
                    goto fail;
                size_t len = strlen(text);
                int plain = strpbrk(text, "eEni") == NULL && len < sizeof ctr_cache[0].text;
                if (plain) {
                    memcpy(ctr_cache[slot].text, text, len + 1);
                    ctr_cache[slot].bits = bits;
                }
                PyMem_Free(text);
                if (!plain)
                    goto done;  /* an exponent or a non-number: not written the same */
            }
            if (buf_put(b, ctr_cache[slot].text, (Py_ssize_t)strlen(ctr_cache[slot].text)) < 0)
                goto fail;
            break;
        }
        case A_ALERT_IDS: {
            if (!PyTuple_CheckExact(v[a]))
                goto done;
            if (PUT_LIT(b, "[") < 0)
                goto fail;
            for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(v[a]); i++) {
                if (!plain_str(PyTuple_GET_ITEM(v[a], i), &s, &n))
                    goto done;
                if ((i > 0 && PUT_LIT(b, ",") < 0) || put_quoted(b, s, n) < 0)
                    goto fail;
            }
            if (PUT_LIT(b, "]") < 0)
                goto fail;
            break;
        }
        }
    }
    if (PUT_LIT(b, "}") < 0)
        goto fail;
    rc = 1;
    goto done;
fail:
    rc = -1;
done:
    for (int a = 0; a < N_ATTRS; a++)
        Py_XDECREF(v[a]);
    return rc;
}

/* encode_figures(figures, cls, with_keys) -> list[bytes] | (list[bytes], list[bytes]) | None
 *
 * orjson.dumps of each figure (and, with with_keys, its record key), when every figure is
 * of class cls and plain (see the top of this file); else None.
 */
static PyObject *encode_figures(PyObject *self, PyObject *args) {
    PyObject *figs_obj, *cls;
    int with_keys;
    if (!PyArg_ParseTuple(args, "OO!p", &figs_obj, &PyType_Type, &cls, &with_keys))
        return NULL;
    PyObject *figs = PySequence_Fast(figs_obj, "figures must be a sequence");
    if (figs == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(figs);
    PyObject *values = PyList_New(n), *keys = with_keys ? PyList_New(n) : NULL;
    PyObject *result = NULL;
    Buf b = {NULL, 0, 0}, k = {NULL, 0, 0};
    if (values == NULL || (with_keys && keys == NULL))
        goto done;
    if ((PyTypeObject *)cls != offsets_of)
        find_slots((PyTypeObject *)cls);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *fig = PySequence_Fast_ITEMS(figs)[i];
        if ((PyObject *)Py_TYPE(fig) != cls) {
            result = Py_None;
            Py_INCREF(result);
            goto done;
        }
        b.len = k.len = 0;
        int rc = encode_one(&b, fig, with_keys ? &k : NULL);
        if (rc < 0)
            goto done;
        if (rc == 0) {
            result = Py_None;
            Py_INCREF(result);
            goto done;
        }
        PyObject *text = PyBytes_FromStringAndSize(b.data, b.len);
        if (text == NULL)
            goto done;
        PyList_SET_ITEM(values, i, text);
        if (with_keys) {
            PyObject *key = PyBytes_FromStringAndSize(k.data, k.len);
            if (key == NULL)
                goto done;
            PyList_SET_ITEM(keys, i, key);
        }
    }
    if (with_keys) {
        result = PyTuple_Pack(2, values, keys);
    } else {
        result = values;
        Py_INCREF(result);
    }
done:
    PyMem_Free(b.data);
    PyMem_Free(k.data);
    Py_XDECREF(values);
    Py_XDECREF(keys);
    Py_DECREF(figs);
    return result;
}

static PyMethodDef methods[] = {
    {"encode_figures", encode_figures, METH_VARARGS,
     "encode_figures(figures, cls, with_keys) -> list | tuple | None\n\n"
     "orjson.dumps of each figure (and its record key), or None (see "
     "ctrguard.records.encode_figures)."},
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
        name_lens[a] = (Py_ssize_t)strlen(ATTR_NAMES[a]);
        if (attr_names[a] == NULL)
            return NULL;
    }
    return PyModule_Create(&module);
}
