/*
 * ctrguard._shard: the per-event inner loops of a shard (see flows/engine.py, ShardState).
 *
 * The Python code they replace stays in flows/engine.py as the reference (used when this
 * extension is not built, is stale or is disabled), and tests/test_shard_native.py checks
 * that both give the same chunks, state and output. Everything that is not per event (opening a
 * campaign's window, taking in a new segment value) stays in Python, called back from here
 * in the same order as the Python loop calls it.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>

/* interned attribute names */
static PyObject *str_dims, *str_segs, *str_series, *str_first_wid, *str_last_event_wid,
    *str_impressions, *str_clicks, *str_monitor, *str_update, *str_start, *str_end,
    *str_windows;
static PyObject *zero_int;  /* 0 */

/* Stores ``made`` (a new reference, or NULL after an error) at ``key`` of ``dict`` and
 * returns it borrowed (the dict holds it); NULL on error. */
static PyObject *put_new(PyObject *dict, PyObject *key, PyObject *made) {
    if (made == NULL)
        return NULL;
    int rc = PyDict_SetItem(dict, key, made);
    Py_DECREF(made);
    return rc < 0 ? NULL : made;
}

/* ctrguard.flows.engine.ShardState._open_window for a campaign the shard has (``camp``): the
 * window ``wid`` lowers its first_wid and last_event_wid if earlier, and its counts in the window
 * start as an empty dict, stored at by_campaign[cid] and returned (borrowed). NULL on
 * error. */
static PyObject *open_known(PyObject *camp, PyObject *cid, PyObject *wid,
                            PyObject *by_campaign) {
    PyObject *first = PyObject_GetAttr(camp, str_first_wid);
    if (first == NULL)
        return NULL;
    int before = PyObject_RichCompareBool(wid, first, Py_LT);
    Py_DECREF(first);
    if (before < 0 || (before && PyObject_SetAttr(camp, str_first_wid, wid) < 0))
        return NULL;
    /* last_event_wid is the last *closed* window with events (close_campaign sets it): a
     * window opened ahead of it (an event far ahead of its stream) must not keep the
     * campaign alive through the windows in between. Only a campaign created by such a
     * window has it ahead: lower it. */
    PyObject *last = PyObject_GetAttr(camp, str_last_event_wid);
    if (last == NULL)
        return NULL;
    int ahead = PyObject_RichCompareBool(wid, last, Py_LT);
    Py_DECREF(last);
    if (ahead < 0 || (ahead && PyObject_SetAttr(camp, str_last_event_wid, wid) < 0))
        return NULL;
    return put_new(by_campaign, cid, PyDict_New());
}

/* A native int64 buffer (numpy int64, or the bytes made here). */
static int is_int64(const Py_buffer *b) {
    if (b->itemsize != 8 || b->len % 8)
        return 0;
    if (b->format == NULL)
        return 1;  /* plain bytes */
    const char *f = b->format;
    if (*f == '<' || *f == '=' || *f == '@')
        f++;
    return (f[0] == 'l' || f[0] == 'q') && f[1] == 0;
}

/* count(open, campaigns, wids, cids, keys, wrap, on_window, on_key) -> None
 *
 * For each event i, in order: add one to open[wid][cids[i]][key], where wid is ``wids``
 * (an int: every event in one window) or wids[i] (a sequence of ints, or an int64 buffer
 * such as a numpy array: an int is made for each run of equal ids), and key is keys[i] (impressions) or the
 * shared 1-tuple wrap[keys[i]] (clicks; made and stored when missing; wrap is None for
 * impressions). ``open[wid]`` is made when missing. When the campaign has no counts in the
 * window yet, on_window(cid, wid, open[wid]) makes them (and returns the dict), or, for a
 * campaign in ``campaigns`` already, this does what on_window does for one without the call
 * (a tenth of its cost; once per campaign and window): lowers the campaign's first_wid and
 * last_event_wid to wid if earlier and stores an empty dict at open[wid][cid]. When the key
 * is new in them and not in campaigns[cid].dims.segs (the segments of each dims key the
 * campaign knows), on_key(cid, dk) is called after it is counted, dk being keys[i] for
 * impressions and the element of the shared 1-tuple for clicks.
 */
static PyObject *count(PyObject *self, PyObject *args) {
    PyObject *open, *campaigns, *wids_obj, *cids_obj, *keys_obj, *wrap, *on_window, *on_key;
    if (!PyArg_ParseTuple(args, "O!O!OOOOOO", &PyDict_Type, &open, &PyDict_Type, &campaigns,
                          &wids_obj, &cids_obj, &keys_obj, &wrap, &on_window, &on_key))
        return NULL;
    if (wrap != Py_None && !PyDict_Check(wrap)) {
        PyErr_SetString(PyExc_TypeError, "wrap must be a dict or None");
        return NULL;
    }
    PyObject *cids = NULL, *keys = NULL, *wids = NULL, *one = NULL, *result = NULL;
    PyObject *wid = NULL;          /* the current window id (new reference) */
    PyObject *by_campaign = NULL;  /* open[wid] (borrowed: open holds it) */
    Py_buffer wid_buf;             /* wids as an int64 buffer, when given so */
    int have_buf = 0;
    int64_t wid_value = 0;
    cids = PySequence_Fast(cids_obj, "cids must be a sequence");
    if (cids == NULL)
        goto done;
    keys = PySequence_Fast(keys_obj, "keys must be a sequence");
    if (keys == NULL)
        goto done;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(cids);
    if (PySequence_Fast_GET_SIZE(keys) != n) {
        PyErr_SetString(PyExc_ValueError, "cids and keys differ in length");
        goto done;
    }
    if (PyLong_Check(wids_obj)) {
        /* one window for every event */
    } else if (PyObject_CheckBuffer(wids_obj)) {
        if (PyObject_GetBuffer(wids_obj, &wid_buf, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
            goto done;
        have_buf = 1;
        if (!is_int64(&wid_buf)) {
            PyErr_SetString(PyExc_TypeError, "wids: a buffer of int64");
            goto done;
        }
        if (wid_buf.len / 8 != n) {
            PyErr_SetString(PyExc_ValueError, "cids and wids differ in length");
            goto done;
        }
    } else {
        wids = PySequence_Fast(wids_obj, "wids must be an int, int64 buffer or a sequence");
        if (wids == NULL)
            goto done;
        if (PySequence_Fast_GET_SIZE(wids) != n) {
            PyErr_SetString(PyExc_ValueError, "cids and wids differ in length");
            goto done;
        }
    }
    one = PyLong_FromLong(1);
    if (one == NULL)
        goto done;
    PyObject **cid_items = PySequence_Fast_ITEMS(cids);
    PyObject **key_items = PySequence_Fast_ITEMS(keys);
    const int64_t *wid_values = have_buf ? (const int64_t *)wid_buf.buf : NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        int changed = 0;
        if (wid_values != NULL) {
            /* A window id as a number: an int object only where it changes. */
            if (wid == NULL || wid_values[i] != wid_value) {
                wid_value = wid_values[i];
                Py_XSETREF(wid, PyLong_FromLongLong(wid_value));
                if (wid == NULL)
                    goto done;
                changed = 1;
            }
        } else {
            PyObject *w = wids == NULL ? wids_obj : PySequence_Fast_ITEMS(wids)[i];
            if (wid == NULL || w != wid) {
                int same = wid == NULL ? 0 : PyObject_RichCompareBool(w, wid, Py_EQ);
                if (same < 0)
                    goto done;
                if (!same) {
                    Py_INCREF(w);
                    Py_XSETREF(wid, w);
                    changed = 1;
                }
            }
        }
        if (changed) {
            by_campaign = PyDict_GetItemWithError(open, wid);
            if (by_campaign == NULL) {
                by_campaign = put_new(open, wid, PyErr_Occurred() ? NULL : PyDict_New());
                if (by_campaign == NULL)
                    goto done;
            }
        }
        PyObject *cid = cid_items[i];
        PyObject *counts = PyDict_GetItemWithError(by_campaign, cid);
        if (counts == NULL) {
            if (PyErr_Occurred())
                goto done;
            PyObject *camp = PyDict_GetItemWithError(campaigns, cid);
            if (camp == NULL && PyErr_Occurred())
                goto done;
            if (camp != NULL) {
                counts = open_known(camp, cid, wid, by_campaign);
                if (counts == NULL)
                    goto done;
            } else {
                /* (by_campaign stays alive: open holds it, and on_window only adds to it) */
                PyObject *made = PyObject_CallFunctionObjArgs(on_window, cid, wid,
                                                              by_campaign, NULL);
                if (made == NULL)
                    goto done;
                if (!PyDict_Check(made)) {
                    Py_DECREF(made);
                    PyErr_SetString(PyExc_TypeError, "on_window must return a dict");
                    goto done;
                }
                counts = made;
                Py_DECREF(made);  /* by_campaign holds it */
            }
        }
        PyObject *dk = key_items[i];
        PyObject *key = dk;
        if (wrap != Py_None) {
            key = PyDict_GetItemWithError(wrap, dk);
            if (key == NULL) {
                key = put_new(wrap, dk, PyErr_Occurred() ? NULL : PyTuple_Pack(1, dk));
                if (key == NULL)
                    goto done;
            }
            /* What the segments are looked up by: the shared tuple's element (an equal str,
             * perhaps from an earlier batch), as in the Python reference. */
            if (!PyTuple_Check(key) || PyTuple_GET_SIZE(key) != 1) {
                PyErr_SetString(PyExc_TypeError, "wrap's values must be 1-tuples");
                goto done;
            }
            dk = PyTuple_GET_ITEM(key, 0);
        }
        PyObject *old = PyDict_GetItemWithError(counts, key);
        if (old == NULL) {
            if (PyErr_Occurred() || PyDict_SetItem(counts, key, one) < 0)
                goto done;
            /* Known to the campaign already (campaigns[cid].dims.segs holds it): the common
             * case, decided here; otherwise on_key takes it in. */
            int known = 0;
            PyObject *camp = PyDict_GetItemWithError(campaigns, cid);
            if (camp == NULL && PyErr_Occurred())
                goto done;
            if (camp != NULL) {
                PyObject *dims = PyObject_GetAttr(camp, str_dims);
                if (dims == NULL)
                    goto done;
                PyObject *segs = PyObject_GetAttr(dims, str_segs);
                Py_DECREF(dims);
                if (segs == NULL)
                    goto done;
                known = PyDict_Check(segs) ? PyDict_Contains(segs, dk) : 0;
                Py_DECREF(segs);
                if (known < 0)
                    goto done;
            }
            if (!known) {
                PyObject *r = PyObject_CallFunctionObjArgs(on_key, cid, dk, NULL);
                if (r == NULL)
                    goto done;
                Py_DECREF(r);
            }
        } else {
            long v = PyLong_AsLong(old);
            if (v == -1 && PyErr_Occurred())
                goto done;
            PyObject *next = PyLong_FromLong(v + 1);
            if (next == NULL)
                goto done;
            int rc = PyDict_SetItem(counts, key, next);
            Py_DECREF(next);
            if (rc < 0)
                goto done;
        }
    }
    result = Py_None;
    Py_INCREF(result);
done:
    if (have_buf)
        PyBuffer_Release(&wid_buf);
    Py_XDECREF(wid);
    Py_XDECREF(one);
    Py_XDECREF(wids);
    Py_XDECREF(keys);
    Py_XDECREF(cids);
    return result;
}

/* split(n_shards, shard_ids, columns) -> (order, counts, parts)
 *
 * A stable counting sort of a batch by shard: shard_ids is a buffer of n Py_ssize_t (a
 * numpy intp array), each in [0, n_shards); columns a tuple of sequences of length n.
 * Returns order (a bytearray of n Py_ssize_t: the positions of shard 0's events, then
 * shard 1's, ..., each in arrival order), counts (events per shard) and parts (per shard:
 * None when it has no events, else a tuple with a list per column holding its events'
 * items in arrival order).
 */
static PyObject *split(PyObject *self, PyObject *args) {
    Py_ssize_t n_shards;
    PyObject *ids_obj, *columns;
    if (!PyArg_ParseTuple(args, "nOO!", &n_shards, &ids_obj, &PyTuple_Type, &columns))
        return NULL;
    if (n_shards <= 0 || n_shards > 1 << 20) {
        PyErr_SetString(PyExc_ValueError, "n_shards out of range");
        return NULL;
    }
    Py_buffer ids;
    if (PyObject_GetBuffer(ids_obj, &ids, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        return NULL;
    PyObject *result = NULL, *order = NULL, *counts = NULL, *parts = NULL;
    PyObject **seqs = NULL, ***items = NULL;
    Py_ssize_t *start = NULL, *fill = NULL;
    Py_ssize_t n_cols = PyTuple_GET_SIZE(columns);
    Py_ssize_t n = ids.len / (Py_ssize_t)sizeof(Py_ssize_t);
    if (ids.itemsize != (Py_ssize_t)sizeof(Py_ssize_t) || ids.len % ids.itemsize) {
        PyErr_SetString(PyExc_TypeError, "shard_ids must be a buffer of Py_ssize_t (intp)");
        goto done;
    }
    const Py_ssize_t *sid = (const Py_ssize_t *)ids.buf;
    seqs = PyMem_Calloc(n_cols ? n_cols : 1, sizeof(PyObject *));
    items = PyMem_Calloc(n_cols ? n_cols : 1, sizeof(PyObject **));
    start = PyMem_Calloc(n_shards, sizeof(Py_ssize_t));
    fill = PyMem_Calloc(n_shards, sizeof(Py_ssize_t));
    if (seqs == NULL || items == NULL || start == NULL || fill == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t j = 0; j < n_cols; j++) {
        seqs[j] = PySequence_Fast(PyTuple_GET_ITEM(columns, j), "columns must be sequences");
        if (seqs[j] == NULL)
            goto done;
        if (PySequence_Fast_GET_SIZE(seqs[j]) != n) {
            PyErr_SetString(PyExc_ValueError, "a column's length differs from shard_ids'");
            goto done;
        }
        items[j] = PySequence_Fast_ITEMS(seqs[j]);
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (sid[i] < 0 || sid[i] >= n_shards) {
            PyErr_SetString(PyExc_ValueError, "a shard id is out of range");
            goto done;
        }
        fill[sid[i]]++;
    }
    counts = PyList_New(n_shards);
    parts = PyList_New(n_shards);
    order = PyByteArray_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(Py_ssize_t));
    if (counts == NULL || parts == NULL || order == NULL)
        goto done;
    Py_ssize_t at = 0;
    for (Py_ssize_t s = 0; s < n_shards; s++) {
        Py_ssize_t k = fill[s];
        PyObject *c = PyLong_FromSsize_t(k);
        if (c == NULL)
            goto done;
        PyList_SET_ITEM(counts, s, c);
        start[s] = at;
        at += k;
        PyObject *part;
        if (k == 0) {
            part = Py_None;
            Py_INCREF(part);
        } else {
            part = PyTuple_New(n_cols);
            if (part == NULL)
                goto done;
            for (Py_ssize_t j = 0; j < n_cols; j++) {
                PyObject *col = PyList_New(k);
                if (col == NULL) {
                    Py_DECREF(part);
                    goto done;
                }
                PyTuple_SET_ITEM(part, j, col);
            }
        }
        PyList_SET_ITEM(parts, s, part);
        fill[s] = 0;
    }
    Py_ssize_t *out = (Py_ssize_t *)PyByteArray_AS_STRING(order);
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t s = sid[i], k = fill[s]++;
        out[start[s] + k] = i;
        PyObject *part = PyList_GET_ITEM(parts, s);
        for (Py_ssize_t j = 0; j < n_cols; j++) {
            PyObject *item = items[j][i];
            Py_INCREF(item);
            PyList_SET_ITEM(PyTuple_GET_ITEM(part, j), k, item);
        }
    }
    result = PyTuple_Pack(3, order, counts, parts);
done:
    Py_XDECREF(order);
    Py_XDECREF(counts);
    Py_XDECREF(parts);
    if (seqs != NULL)
        for (Py_ssize_t j = 0; j < n_cols; j++)
            Py_XDECREF(seqs[j]);
    PyMem_Free(seqs);
    PyMem_Free(items);
    PyMem_Free(start);
    PyMem_Free(fill);
    PyBuffer_Release(&ids);
    return result;
}

/* The window of event time t (floor division: times before the epoch too). */
static inline int64_t window_of(int64_t t, int64_t length) {
    int64_t q = t / length;
    return (t % length != 0 && (t < 0) != (length < 0)) ? q - 1 : q;
}

/* Gets ``obj`` as a C-contiguous native int64 buffer; -1 with an error set otherwise. */
static int int64_buffer(PyObject *obj, Py_buffer *b, const char *what) {
    if (PyObject_GetBuffer(obj, b, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        return -1;
    if (!is_int64(b)) {
        PyBuffer_Release(b);
        PyErr_Format(PyExc_TypeError, "%s: a buffer of int64", what);
        return -1;
    }
    return 0;
}

/* span(ts, length) -> (lo, hi)
 *
 * The first and the last window (ts // length, floored) of the event times ``ts`` (an int64
 * buffer, at least one): one pass instead of numpy's division, min and max, three calls
 * that cost more than their work on a chunk of a few hundred events (see
 * ctrguard.flows.engine.ShardState._add_events). ``length`` 1: ``ts`` are window ids already.
 */
static PyObject *span(PyObject *self, PyObject *args) {
    PyObject *ts_obj;
    long long length;
    if (!PyArg_ParseTuple(args, "OL", &ts_obj, &length))
        return NULL;
    if (length <= 0) {
        PyErr_SetString(PyExc_ValueError, "length must be positive");
        return NULL;
    }
    Py_buffer b;
    if (int64_buffer(ts_obj, &b, "ts") < 0)
        return NULL;
    Py_ssize_t n = b.len / 8;
    PyObject *result = NULL;
    if (n == 0) {
        PyErr_SetString(PyExc_ValueError, "no event times");
    } else {
        const int64_t *ts = (const int64_t *)b.buf;
        int64_t tmin = ts[0], tmax = ts[0];
        for (Py_ssize_t i = 1; i < n; i++) {
            tmin = ts[i] < tmin ? ts[i] : tmin;
            tmax = ts[i] > tmax ? ts[i] : tmax;
        }
        /* (floor division is monotonic: the windows of the extremes are the extremes) */
        result = Py_BuildValue("(LL)", (long long)window_of(tmin, length),
                               (long long)window_of(tmax, length));
    }
    PyBuffer_Release(&b);
    return result;
}

/* group(ts, length, lo, n_windows) -> (wids, order, counts)
 *
 * The events of a chunk that spans several windows, by window (see span): ``wids`` (bytes,
 * native int64) the window of each event, ``order`` (bytes, native intp) the positions of
 * window lo's events, then lo + 1's, ..., each in arrival order (a stable counting sort),
 * ``counts`` (a list of n_windows ints) how many each window has. Every window must be in
 * [lo, lo + n_windows).
 */
static PyObject *group(PyObject *self, PyObject *args) {
    PyObject *ts_obj;
    long long length, lo;
    Py_ssize_t n_windows;
    if (!PyArg_ParseTuple(args, "OLLn", &ts_obj, &length, &lo, &n_windows))
        return NULL;
    if (length <= 0 || n_windows <= 0 || n_windows > 1 << 20) {
        PyErr_SetString(PyExc_ValueError, "length or n_windows out of range");
        return NULL;
    }
    Py_buffer b;
    if (int64_buffer(ts_obj, &b, "ts") < 0)
        return NULL;
    Py_ssize_t n = b.len / 8;
    const int64_t *ts = (const int64_t *)b.buf;
    PyObject *result = NULL, *wids = NULL, *order = NULL, *counts = NULL;
    Py_ssize_t *fill = PyMem_Calloc(n_windows, sizeof(Py_ssize_t));
    wids = PyBytes_FromStringAndSize(NULL, n * 8);
    order = PyBytes_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(Py_ssize_t));
    counts = PyList_New(n_windows);
    if (fill == NULL || wids == NULL || order == NULL || counts == NULL) {
        if (fill == NULL)
            PyErr_NoMemory();
        goto done;
    }
    int64_t *w = (int64_t *)PyBytes_AS_STRING(wids);
    for (Py_ssize_t i = 0; i < n; i++) {
        w[i] = window_of(ts[i], length);
        if (w[i] < lo || w[i] - lo >= n_windows) {
            PyErr_SetString(PyExc_ValueError, "a window outside [lo, lo + n_windows)");
            goto done;
        }
        fill[w[i] - lo]++;
    }
    Py_ssize_t at = 0;
    for (Py_ssize_t k = 0; k < n_windows; k++) {
        PyObject *c = PyLong_FromSsize_t(fill[k]);
        if (c == NULL)
            goto done;
        PyList_SET_ITEM(counts, k, c);
        Py_ssize_t m = fill[k];
        fill[k] = at;
        at += m;
    }
    Py_ssize_t *out = (Py_ssize_t *)PyBytes_AS_STRING(order);
    for (Py_ssize_t i = 0; i < n; i++)
        out[fill[w[i] - lo]++] = i;
    result = PyTuple_Pack(3, wids, order, counts);
done:
    Py_XDECREF(wids);
    Py_XDECREF(order);
    Py_XDECREF(counts);
    PyMem_Free(fill);
    PyBuffer_Release(&b);
    return result;
}

/* shard_ids(cache, cids) -> (ids, first) or None
 *
 * The shard of each campaign id of a batch, looked up in ``cache`` (a dict: campaign id ->
 * shard, an int): ``ids`` is a bytearray of n Py_ssize_t (for a numpy intp array, as split
 * takes them), ``first`` the shard of every event when they all share one, else -1. None
 * when a campaign id is not in the cache: the caller computes the missing shards, stores
 * them and asks again (see ctrguard.flows.engine.EventPreparer._route, whose reference is a numpy
 * fromiter over the cache's __getitem__).
 */
static PyObject *shard_ids(PyObject *self, PyObject *args) {
    PyObject *cache, *cids_obj;
    if (!PyArg_ParseTuple(args, "O!O", &PyDict_Type, &cache, &cids_obj))
        return NULL;
    PyObject *cids = PySequence_Fast(cids_obj, "cids must be a sequence");
    if (cids == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(cids);
    PyObject **items = PySequence_Fast_ITEMS(cids);
    PyObject *result = NULL;
    PyObject *ids = PyByteArray_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(Py_ssize_t));
    if (ids == NULL)
        goto done;
    Py_ssize_t *out = (Py_ssize_t *)PyByteArray_AS_STRING(ids);
    Py_ssize_t first = -1, shard = -1;
    int alike = 1;
    PyObject *prev = NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *cid = items[i];
        if (cid != prev) {  /* (the scanner gives a campaign the same str every time) */
            PyObject *got = PyDict_GetItemWithError(cache, cid);
            if (got == NULL) {
                if (PyErr_Occurred())
                    goto done;
                result = Py_None;
                Py_INCREF(result);
                goto done;
            }
            shard = PyLong_AsSsize_t(got);
            if (shard == -1 && PyErr_Occurred())
                goto done;
            prev = cid;
        }
        out[i] = shard;
        if (i == 0)
            first = shard;
        else if (shard != first)
            alike = 0;
    }
    result = Py_BuildValue("(On)", ids, alike && n ? first : (Py_ssize_t)-1);
done:
    Py_XDECREF(ids);
    Py_DECREF(cids);
    return result;
}

/* series_counts(camp, counts, take_in, table, make) -> dict
 *
 * The counts of every series of campaign ``camp`` in one window (see
 * ctrguard.flows.engine.ShardState._series_counts, the reference): ``counts`` maps a dims key to its
 * impressions and the 1-tuple of a dims key to its clicks; each dims key adds to the series
 * camp.dims.segs[dims key] names (take_in(camp, dims key) makes and returns them when
 * missing). The result maps every name of camp.series, in order, to
 * table[impressions][clicks] (shared objects for small counts) or make(impressions, clicks).
 */
#define MAX_SERIES 4096
static PyObject *series_counts_of(PyObject *camp, PyObject *counts, PyObject *take_in,
                                  PyObject *table, PyObject *make) {
    PyObject *result = NULL, *series = NULL, *segs = NULL;
    long long *sums = NULL;            /* per series: impressions, clicks */
    series = PyObject_GetAttr(camp, str_series);
    if (series == NULL)
        goto done;
    if (!PyTuple_Check(series) || PyTuple_GET_SIZE(series) > MAX_SERIES) {
        PyErr_SetString(PyExc_TypeError, "camp.series must be a tuple (of at most 4096)");
        goto done;
    }
    Py_ssize_t n_series = PyTuple_GET_SIZE(series);
    sums = PyMem_Calloc(2 * (n_series ? n_series : 1), sizeof(long long));
    if (sums == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(counts, &pos, &key, &value)) {
        PyObject *dk = key;
        int kind = 0;  /* 0: impressions, 1: clicks */
        if (PyTuple_CheckExact(key) && PyTuple_GET_SIZE(key) == 1) {
            dk = PyTuple_GET_ITEM(key, 0);
            kind = 1;
        }
        long long n = PyLong_AsLongLong(value);
        if (n == -1 && PyErr_Occurred())
            goto done;
        if (segs == NULL) {
            PyObject *dims = PyObject_GetAttr(camp, str_dims);
            if (dims == NULL)
                goto done;
            segs = PyObject_GetAttr(dims, str_segs);
            Py_DECREF(dims);
            if (segs == NULL)
                goto done;
            if (!PyDict_Check(segs)) {
                PyErr_SetString(PyExc_TypeError, "camp.dims.segs must be a dict");
                goto done;
            }
        }
        PyObject *names = PyDict_GetItemWithError(segs, dk);  /* borrowed */
        PyObject *made = NULL;
        if (names == NULL) {
            if (PyErr_Occurred())
                goto done;
            /* A new value: take it in (this may add series and replace camp.dims). */
            made = PyObject_CallFunctionObjArgs(take_in, camp, dk, NULL);
            if (made == NULL)
                goto done;
            names = made;
            Py_CLEAR(segs);
            PyObject *fresh = PyObject_GetAttr(camp, str_series);
            if (fresh == NULL) {
                Py_DECREF(made);
                goto done;
            }
            Py_SETREF(series, fresh);
            if (!PyTuple_Check(series) || PyTuple_GET_SIZE(series) > MAX_SERIES) {
                Py_DECREF(made);
                PyErr_SetString(PyExc_TypeError, "camp.series must be a tuple (of at most 4096)");
                goto done;
            }
            if (PyTuple_GET_SIZE(series) > n_series) {
                long long *more = PyMem_Realloc(sums, 2 * PyTuple_GET_SIZE(series)
                                                * sizeof(long long));
                if (more == NULL) {
                    Py_DECREF(made);
                    PyErr_NoMemory();
                    goto done;
                }
                for (Py_ssize_t j = 2 * n_series; j < 2 * PyTuple_GET_SIZE(series); j++)
                    more[j] = 0;
                sums = more;
                n_series = PyTuple_GET_SIZE(series);
            }
        }
        if (!PyTuple_Check(names)) {
            Py_XDECREF(made);
            PyErr_SetString(PyExc_TypeError, "segments must be a tuple");
            goto done;
        }
        /* (series only grows at its end, so an index found stays right) */
        for (Py_ssize_t a = 0; a < PyTuple_GET_SIZE(names); a++) {
            PyObject *name = PyTuple_GET_ITEM(names, a);
            Py_ssize_t at = -1;
            for (Py_ssize_t b = 0; b < n_series; b++)
                if (PyTuple_GET_ITEM(series, b) == name) {
                    at = b;
                    break;
                }
            if (at < 0) {  /* an equal name that is another object */
                for (Py_ssize_t b = 0; b < n_series; b++) {
                    int eq = PyObject_RichCompareBool(PyTuple_GET_ITEM(series, b), name, Py_EQ);
                    if (eq < 0) {
                        Py_XDECREF(made);
                        goto done;
                    }
                    if (eq) {
                        at = b;
                        break;
                    }
                }
            }
            if (at >= 0)
                sums[2 * at + kind] += n;
        }
        Py_XDECREF(made);
    }
    result = PyDict_New();
    if (result == NULL)
        goto done;
    Py_ssize_t rows = PyList_GET_SIZE(table);
    for (Py_ssize_t b = 0; b < n_series; b++) {
        long long ni = sums[2 * b], nk = sums[2 * b + 1];
        PyObject *c = NULL;
        if (ni >= 0 && ni < rows) {
            PyObject *row = PyList_GET_ITEM(table, ni);
            if (PyList_Check(row) && nk >= 0 && nk < PyList_GET_SIZE(row)) {
                c = PyList_GET_ITEM(row, nk);
                Py_INCREF(c);
            }
        }
        if (c == NULL) {
            PyObject *pi = PyLong_FromLongLong(ni), *pk = PyLong_FromLongLong(nk);
            if (pi != NULL && pk != NULL)
                c = PyObject_CallFunctionObjArgs(make, pi, pk, NULL);
            Py_XDECREF(pi);
            Py_XDECREF(pk);
            if (c == NULL) {
                Py_CLEAR(result);
                goto done;
            }
        }
        int rc = PyDict_SetItem(result, PyTuple_GET_ITEM(series, b), c);
        Py_DECREF(c);
        if (rc < 0) {
            Py_CLEAR(result);
            goto done;
        }
    }
done:
    PyMem_Free(sums);
    Py_XDECREF(segs);
    Py_XDECREF(series);
    return result;
}

static PyObject *series_counts(PyObject *self, PyObject *args) {
    PyObject *camp, *counts, *take_in, *table, *make;
    if (!PyArg_ParseTuple(args, "OO!OO!O", &camp, &PyDict_Type, &counts, &take_in,
                          &PyList_Type, &table, &make))
        return NULL;
    return series_counts_of(camp, counts, take_in, table, make);
}

/* slot_maker(cls, names) -> callable
 *
 * A positional constructor for a slotted class whose slots are exactly ``names`` (see
 * ctrguard.flows.engine._slot_constructor, which checks the class, and its Python version): the
 * object is allocated as object.__new__ allocates it and each slot is set at its offset,
 * as the slot's descriptor would set it. For objects built hundreds of thousands of times
 * per second (figures, decisions, counts).
 */
static PyObject *make_slotted(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    PyTypeObject *cls = (PyTypeObject *)PyTuple_GET_ITEM(self, 0);
    PyObject *offsets = PyTuple_GET_ITEM(self, 1);
    Py_ssize_t n = PyBytes_GET_SIZE(offsets) / (Py_ssize_t)sizeof(Py_ssize_t);
    if (nargs != n) {
        PyErr_Format(PyExc_TypeError, "%s() takes %zd positional arguments (%zd given)",
                     cls->tp_name, n, nargs);
        return NULL;
    }
    PyObject *obj = cls->tp_alloc(cls, 0);
    if (obj == NULL)
        return NULL;
    const Py_ssize_t *off = (const Py_ssize_t *)PyBytes_AS_STRING(offsets);
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_INCREF(args[i]);
        *(PyObject **)((char *)obj + off[i]) = args[i];
    }
    return obj;
}

static PyMethodDef make_slotted_def = {
    "make", (PyCFunction)(void (*)(void))make_slotted, METH_FASTCALL,
    "Build the object from one value per slot, in slot order."};

static PyObject *slot_maker(PyObject *self, PyObject *args) {
    PyObject *cls, *names;
    if (!PyArg_ParseTuple(args, "O!O!", &PyType_Type, &cls, &PyTuple_Type, &names))
        return NULL;
    PyTypeObject *type = (PyTypeObject *)cls;
    if (type->tp_alloc == NULL || type->tp_new != PyBaseObject_Type.tp_new) {
        PyErr_SetString(PyExc_TypeError, "slot_maker: the class must use object.__new__");
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(names);
    PyObject *offsets = PyBytes_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(Py_ssize_t));
    if (offsets == NULL)
        return NULL;
    Py_ssize_t *off = (Py_ssize_t *)PyBytes_AS_STRING(offsets);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *descr = PyDict_GetItemWithError(type->tp_dict, PyTuple_GET_ITEM(names, i));
        if (descr == NULL || !PyObject_TypeCheck(descr, &PyMemberDescr_Type)) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_TypeError, "slot_maker: %R is not a slot of %s",
                             PyTuple_GET_ITEM(names, i), type->tp_name);
            Py_DECREF(offsets);
            return NULL;
        }
        PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
        if (member->type != T_OBJECT_EX || (member->flags & READONLY)
                || member->offset < (Py_ssize_t)sizeof(PyObject)
                || member->offset + (Py_ssize_t)sizeof(PyObject *) > type->tp_basicsize) {
            PyErr_Format(PyExc_TypeError, "slot_maker: %R is not a plain slot of %s",
                         PyTuple_GET_ITEM(names, i), type->tp_name);
            Py_DECREF(offsets);
            return NULL;
        }
        off[i] = member->offset;
    }
    PyObject *bound = PyTuple_Pack(2, cls, offsets);
    Py_DECREF(offsets);
    if (bound == NULL)
        return NULL;
    PyObject *fn = PyCFunction_New(&make_slotted_def, bound);
    Py_DECREF(bound);
    return fn;
}

/* admit(keys, marks, shift, runs) -> (fresh, positions)
 *
 * ctrguard.flows.engine._Seen.admit's work (the reference): which of ``keys`` (a buffer of m uint64
 * de-duplication keys, in arrival order) are the first arrival of a key not seen before.
 * ``runs`` is the list of sorted runs of keys seen (uint64 buffers), ``marks`` the bit map
 * (one bit at ``key >> shift``) of every key in them, which is searched only where the bit
 * is set. Returns ``fresh`` (a bytearray of the new keys, ascending, distinct: the next
 * run; their bits are set in ``marks`` here) and ``positions`` (a bytearray of the
 * ascending positions, as intp, of the events to count), or None when that is all of them
 * in order.
 */
typedef struct {
    uint64_t key;
    Py_ssize_t at;
} Keyed;

/* in_run for ascending keys: *from is where the previous (smaller) key's search ended. */
static int in_run_from(const uint64_t *run, Py_ssize_t n, uint64_t key, Py_ssize_t *from) {
    Py_ssize_t lo = *from, step = 1, hi = lo;
    while (hi < n && run[hi] < key) {  /* gallop: the bound at lo + 1, 3, 7, ... */
        lo = hi + 1;
        hi = lo + step;
        step *= 2;
    }
    if (hi > n)
        hi = n;
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        if (run[mid] < key)
            lo = mid + 1;
        else
            hi = mid;
    }
    *from = lo;
    return lo < n && run[lo] == key;
}

/* Stable LSD radix sort of (key, arrival) pairs by key, 8 bits a pass (arrival order is
 * the initial order, so equal keys stay first arrival first). Swaps *items and *spare. */
static int sort_keyed(Keyed **items, Keyed **spare, Py_ssize_t m) {
    if (m < 2)
        return 0;
    if (*spare == NULL) {
        *spare = PyMem_Malloc(m * sizeof(Keyed));
        if (*spare == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    }
    Keyed *src = *items, *dst = *spare;
    for (int shift = 0; shift < 64; shift += 8) {
        Py_ssize_t count[257] = {0};
        for (Py_ssize_t i = 0; i < m; i++)
            count[((src[i].key >> shift) & 0xff) + 1]++;
        if (count[((src[0].key >> shift) & 0xff) + 1] == m)
            continue;  /* every key has this byte alike: nothing to move */
        for (int b = 0; b < 256; b++)
            count[b + 1] += count[b];
        for (Py_ssize_t i = 0; i < m; i++)
            dst[count[(src[i].key >> shift) & 0xff]++] = src[i];
        Keyed *t = src;
        src = dst;
        dst = t;
    }
    *items = src;
    *spare = dst;
    return 0;
}

static PyObject *admit(PyObject *self, PyObject *args) {
    PyObject *keys_obj, *marks_obj, *runs;
    unsigned long long shift;
    if (!PyArg_ParseTuple(args, "OOKO!", &keys_obj, &marks_obj, &shift, &PyList_Type, &runs))
        return NULL;
    if (shift > 63) {
        PyErr_SetString(PyExc_ValueError, "shift out of range");
        return NULL;
    }
    Py_buffer kb, mb;
    if (PyObject_GetBuffer(keys_obj, &kb, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    if (PyObject_GetBuffer(marks_obj, &mb, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&kb);
        return NULL;
    }
    PyObject *result = NULL, *fresh = NULL, *positions = NULL;
    Keyed *items = NULL, *spare = NULL;
    Py_buffer *rb = NULL;
    Py_ssize_t *from = NULL;
    Py_ssize_t n_runs = PyList_GET_SIZE(runs), got_runs = 0;
    Py_ssize_t m = kb.len / 8;
    if (kb.len % 8) {
        PyErr_SetString(PyExc_TypeError, "keys must be a buffer of uint64");
        goto done;
    }
    const uint64_t *keys = (const uint64_t *)kb.buf;
    uint8_t *marks = (uint8_t *)mb.buf;
    for (Py_ssize_t i = 0; i < m; i++)
        if ((Py_ssize_t)((keys[i] >> shift) >> 3) >= mb.len) {
            PyErr_SetString(PyExc_ValueError, "marks too small for shift");
            goto done;
        }
    rb = PyMem_Calloc(n_runs ? n_runs : 1, sizeof(Py_buffer));
    from = PyMem_Calloc(n_runs ? n_runs : 1, sizeof(Py_ssize_t));
    items = PyMem_Malloc((m ? m : 1) * sizeof(Keyed));
    if (rb == NULL || from == NULL || items == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (; got_runs < n_runs; got_runs++) {
        if (PyObject_GetBuffer(PyList_GET_ITEM(runs, got_runs), &rb[got_runs],
                               PyBUF_C_CONTIGUOUS) < 0)
            goto done;
        if (rb[got_runs].len % 8) {
            got_runs++;
            PyErr_SetString(PyExc_TypeError, "runs must be buffers of uint64");
            goto done;
        }
    }
    for (Py_ssize_t i = 0; i < m; i++) {
        items[i].key = keys[i];
        items[i].at = i;
    }
    if (sort_keyed(&items, &spare, m) < 0)
        goto done;
    /* Keep the new ones in place: items[0:k] are the fresh keys, ascending. */
    Py_ssize_t k = 0;
    for (Py_ssize_t i = 0; i < m; i++) {
        uint64_t key = items[i].key;
        if (i > 0 && key == items[i - 1].key)
            continue;  /* a repeat within the chunk */
        uint64_t slot = key >> shift;
        if (marks[slot >> 3] & (1u << (slot & 7))) {
            int found = 0;
            /* Probes come in ascending order: each run's search starts where its last one
             * ended (galloping), which stays within the cache lines just read. */
            for (Py_ssize_t r = 0; r < n_runs && !found; r++)
                found = in_run_from((const uint64_t *)rb[r].buf, rb[r].len / 8, key, &from[r]);
            if (found)
                continue;
        }
        items[k++] = items[i];
    }
    fresh = PyByteArray_FromStringAndSize(NULL, k * 8);
    if (fresh == NULL)
        goto done;
    uint64_t *out = (uint64_t *)PyByteArray_AS_STRING(fresh);
    for (Py_ssize_t i = 0; i < k; i++) {
        uint64_t slot = items[i].key >> shift;
        marks[slot >> 3] |= (uint8_t)(1u << (slot & 7));
        out[i] = items[i].key;
    }
    if (k == m) {
        positions = Py_None;  /* every event counted, in arrival order */
        Py_INCREF(positions);
    } else {
        positions = PyByteArray_FromStringAndSize(NULL, k * (Py_ssize_t)sizeof(Py_ssize_t));
        if (positions == NULL)
            goto done;
        Py_ssize_t *pos = (Py_ssize_t *)PyByteArray_AS_STRING(positions);
        /* Ascending positions: a flag per event, read in order (linear; qsort with a
         * comparison call per step was a few per cent of a dense stream's time). */
        uint8_t *keep = PyMem_Calloc(m, 1);
        if (keep == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        for (Py_ssize_t i = 0; i < k; i++)
            keep[items[i].at] = 1;
        Py_ssize_t j = 0;
        for (Py_ssize_t i = 0; i < m; i++)
            if (keep[i])
                pos[j++] = i;
        PyMem_Free(keep);
    }
    result = PyTuple_Pack(2, fresh, positions);
done:
    Py_XDECREF(fresh);
    Py_XDECREF(positions);
    for (Py_ssize_t r = 0; r < got_runs; r++)
        PyBuffer_Release(&rb[r]);
    PyMem_Free(rb);
    PyMem_Free(from);
    PyMem_Free(items);
    PyMem_Free(spare);
    PyBuffer_Release(&mb);
    PyBuffer_Release(&kb);
    return result;
}

/* merge(a, b) -> bytes
 *
 * Two ascending runs of uint64 keys (buffers) as one ascending run (native uint64), a's
 * first among equals: what numpy's stable sort of their concatenation gives, in one linear
 * pass (ctrguard.flows.engine._Seen._add).
 */
static PyObject *merge(PyObject *self, PyObject *args) {
    PyObject *a_obj, *b_obj;
    if (!PyArg_ParseTuple(args, "OO", &a_obj, &b_obj))
        return NULL;
    Py_buffer a, b;
    if (PyObject_GetBuffer(a_obj, &a, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    if (PyObject_GetBuffer(b_obj, &b, PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&a);
        return NULL;
    }
    PyObject *result = NULL;
    if (a.len % 8 || b.len % 8) {
        PyErr_SetString(PyExc_TypeError, "runs must be buffers of uint64");
        goto done;
    }
    Py_ssize_t na = a.len / 8, nb = b.len / 8, i = 0, j = 0, k = 0;
    result = PyBytes_FromStringAndSize(NULL, a.len + b.len);
    if (result == NULL)
        goto done;
    const uint64_t *x = (const uint64_t *)a.buf, *y = (const uint64_t *)b.buf;
    uint64_t *out = (uint64_t *)PyBytes_AS_STRING(result);
    while (i < na && j < nb)
        out[k++] = y[j] < x[i] ? y[j++] : x[i++];
    while (i < na)
        out[k++] = x[i++];
    while (j < nb)
        out[k++] = y[j++];
done:
    PyBuffer_Release(&a);
    PyBuffer_Release(&b);
    return result;
}

/* ok_figures(cid, counts, zero, start_iso, end_iso, start_s, status, alert_ids, make)
 *     -> tuple
 *
 * The figures of a campaign-window without verdicts (ctrguard.flows.engine.ShardState._decide, its
 * reference): for each (series, c) of ``counts`` (a dict, in its order) whose c is not
 * ``zero`` (the shared empty counts), make(cid, series, start_iso, end_iso, start_s,
 * c.impressions, c.clicks, ctr, status, alert_ids), ctr being c.clicks / c.impressions
 * (0.0 without impressions).
 */
/* Where the class of the shared zero counts keeps impressions and clicks: plain slots,
 * read at their offsets as their descriptors read them (a third of a figure's cost went to
 * the two attribute look-ups), or type NULL: read by name. */
typedef struct {
    PyTypeObject *type;
    Py_ssize_t imps, clicks;
} CountsSlots;

static Py_ssize_t plain_slot(PyTypeObject *type, PyObject *name) {
    PyObject *descr = _PyType_Lookup(type, name);  /* borrowed; sets no error */
    if (descr == NULL || !PyObject_TypeCheck(descr, &PyMemberDescr_Type))
        return -1;
    PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
    if (member->type != T_OBJECT_EX || member->offset < (Py_ssize_t)sizeof(PyObject)
            || member->offset + (Py_ssize_t)sizeof(PyObject *) > type->tp_basicsize)
        return -1;
    return member->offset;
}

static void counts_slots(PyObject *zero, CountsSlots *slots) {
    PyTypeObject *type = Py_TYPE(zero);
    slots->type = NULL;
    if (type->tp_getattro != PyObject_GenericGetAttr)
        return;
    slots->imps = plain_slot(type, str_impressions);
    slots->clicks = plain_slot(type, str_clicks);
    if (slots->imps >= 0 && slots->clicks >= 0)
        slots->type = type;
}

/* c.<name> (a new reference), from its slot when c's class is slots->type. */
static PyObject *counts_field(PyObject *c, const CountsSlots *slots, Py_ssize_t offset,
                              PyObject *name) {
    if (Py_TYPE(c) == slots->type) {
        PyObject *v = *(PyObject **)((char *)c + offset);
        if (v != NULL) {
            Py_INCREF(v);
            return v;
        }
    }
    return PyObject_GetAttr(c, name);  /* (an unset slot raises here, as by name) */
}

/* clicks / impressions if impressions > 0 else 0.0. Two ints below 2**53 are divided as
 * doubles, as int's true division does for them (both exact, the quotient correctly
 * rounded), without its generic dispatch. */
static PyObject *ctr_of(PyObject *imps, PyObject *clicks) {
    const long long exact = 1LL << 53;
    if (PyLong_CheckExact(imps) && PyLong_CheckExact(clicks)) {
        int over_i, over_k;
        long long i = PyLong_AsLongLongAndOverflow(imps, &over_i);
        long long k = PyLong_AsLongLongAndOverflow(clicks, &over_k);
        if (!over_i && !over_k && i <= exact && i >= -exact && k <= exact && k >= -exact)
            return PyFloat_FromDouble(i > 0 ? (double)k / (double)i : 0.0);
    }
    int some = PyObject_RichCompareBool(imps, zero_int, Py_GT);
    if (some < 0)
        return NULL;
    return some ? PyNumber_TrueDivide(clicks, imps) : PyFloat_FromDouble(0.0);
}

static PyObject *ok_figures_of(PyObject *cid, PyObject *counts, PyObject *zero,
                               PyObject *start_iso, PyObject *end_iso, PyObject *start_s,
                               PyObject *status, PyObject *alert_ids, PyObject *make,
                               const CountsSlots *slots) {
    PyObject *figures = PyList_New(0);
    if (figures == NULL)
        return NULL;
    Py_ssize_t pos = 0;
    PyObject *seg, *c;
    while (PyDict_Next(counts, &pos, &seg, &c)) {
        if (c == zero)
            continue;
        PyObject *imps = counts_field(c, slots, slots->imps, str_impressions);
        PyObject *clicks = imps == NULL ? NULL
                           : counts_field(c, slots, slots->clicks, str_clicks);
        PyObject *ctr = NULL, *figure = NULL;
        if (clicks != NULL)
            ctr = ctr_of(imps, clicks);
        if (ctr != NULL) {
            PyObject *argv[10] = {cid, seg, start_iso, end_iso, start_s, imps, clicks, ctr,
                                  status, alert_ids};
            figure = PyObject_Vectorcall(make, argv, 10, NULL);
        }
        Py_XDECREF(imps);
        Py_XDECREF(clicks);
        Py_XDECREF(ctr);
        if (figure == NULL || PyList_Append(figures, figure) < 0) {
            Py_XDECREF(figure);
            Py_DECREF(figures);
            return NULL;
        }
        Py_DECREF(figure);
    }
    PyObject *out = PyList_AsTuple(figures);
    Py_DECREF(figures);
    return out;
}

static PyObject *ok_figures(PyObject *self, PyObject *args) {
    PyObject *cid, *counts, *zero, *start_iso, *end_iso, *start_s, *status, *alert_ids, *make;
    if (!PyArg_ParseTuple(args, "OO!OOOOOOO", &cid, &PyDict_Type, &counts, &zero, &start_iso,
                          &end_iso, &start_s, &status, &alert_ids, &make))
        return NULL;
    CountsSlots slots;
    counts_slots(zero, &slots);
    return ok_figures_of(cid, counts, zero, start_iso, end_iso, start_s, status, alert_ids,
                         make, &slots);
}

/* An int attribute of ``obj`` as a C long long; -1 with an exception set on error. */
static int int_attr(PyObject *obj, PyObject *name, long long *value) {
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL)
        return -1;
    *value = PyLong_AsLongLong(v);
    Py_DECREF(v);
    return (*value == -1 && PyErr_Occurred()) ? -1 : 0;
}

/* What close_window does for one campaign: 0 when it has nothing in the window (before its
 * first, or evicted: then cid is appended to ``evict``), 1 with a new reference to its
 * decision in *decision, -1 on error. *windows counts the figures of decisions made here. */
typedef struct {
    PyObject *by_campaign, *window, *start_iso, *end_iso, *start_s, *end_s, *evict, *take_in,
        *table, *make_counts, *zero, *status, *make_figure, *make_decision, *on_verdicts, *when,
        *no_alerts;
    PyObject *wid_obj;
    long long wid, ttl;
    Py_ssize_t windows;
    CountsSlots slots;
} Closing;

static int close_campaign(Closing *w, PyObject *cid, PyObject *camp, PyObject **decision) {
    long long first, last;
    if (int_attr(camp, str_first_wid, &first) < 0)
        return -1;
    if (w->wid < first)
        return 0;
    PyObject *win = PyDict_GetItemWithError(w->by_campaign, cid);  /* borrowed */
    if (win == NULL) {
        if (PyErr_Occurred() || int_attr(camp, str_last_event_wid, &last) < 0)
            return -1;
        if (w->wid - last > w->ttl)  /* (no window after this one: that would be later) */
            return PyList_Append(w->evict, cid) < 0 ? -1 : 0;
    }
    else if (!PyDict_Check(win)) {
        PyErr_SetString(PyExc_TypeError, "a campaign's window counts must be a dict");
        return -1;
    }
    else if (PyObject_SetAttr(camp, str_last_event_wid, w->wid_obj) < 0)
        return -1;
    PyObject *counts = NULL, *monitor = NULL, *verdicts = NULL, *figures = NULL;
    int rc = -1;
    if (win == NULL) {  /* dict.fromkeys(camp.series, zero) */
        PyObject *series = PyObject_GetAttr(camp, str_series);
        if (series == NULL)
            goto done;
        if (!PyTuple_Check(series)) {
            Py_DECREF(series);
            PyErr_SetString(PyExc_TypeError, "camp.series must be a tuple");
            goto done;
        }
        counts = PyDict_New();
        for (Py_ssize_t i = 0; counts != NULL && i < PyTuple_GET_SIZE(series); i++)
            if (PyDict_SetItem(counts, PyTuple_GET_ITEM(series, i), w->zero) < 0)
                Py_CLEAR(counts);
        Py_DECREF(series);
    }
    else {
        Py_INCREF(win);  /* (take_in is Python code) */
        counts = series_counts_of(camp, win, w->take_in, w->table, w->make_counts);
        Py_DECREF(win);
    }
    if (counts == NULL)
        goto done;
    monitor = PyObject_GetAttr(camp, str_monitor);
    if (monitor == NULL)
        goto done;
    PyObject *argv[3] = {monitor, w->window, counts};
    verdicts = PyObject_VectorcallMethod(str_update, argv,
                                         3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (verdicts == NULL)
        goto done;
    int some = PyList_CheckExact(verdicts) ? PyList_GET_SIZE(verdicts) > 0
                                           : PyObject_IsTrue(verdicts);
    if (some < 0)
        goto done;
    if (some) {  /* alerts: the Python code builds the decision */
        PyObject *args[4] = {cid, counts, verdicts, w->when};
        *decision = PyObject_Vectorcall(w->on_verdicts, args, 4, NULL);
    }
    else {
        figures = ok_figures_of(cid, counts, w->zero, w->start_iso, w->end_iso, w->start_s,
                                w->status, w->no_alerts, w->make_figure, &w->slots);
        if (figures == NULL)
            goto done;
        w->windows += PyTuple_GET_SIZE(figures);
        PyObject *args[5] = {cid, w->start_s, w->end_s, figures, w->no_alerts};
        *decision = PyObject_Vectorcall(w->make_decision, args, 5, NULL);
    }
    rc = *decision == NULL ? -1 : 1;
done:
    Py_XDECREF(figures);
    Py_XDECREF(verdicts);
    Py_XDECREF(monitor);
    Py_XDECREF(counts);
    return rc;
}

/* close_window(campaigns, by_campaign, wid, ttl, when, out, evict, stats, take_in, table,
 *              make_counts, zero, status, make_figure, make_decision, on_verdicts) -> None
 *
 * The campaign loop of closing window ``wid`` (ctrguard.flows.engine.ShardState._close_through, whose
 * Python loop and _decide are the reference), in the order of ``campaigns``: a campaign
 * whose first window is later is skipped; one without counts in the window
 * (by_campaign[cid]) and no event for more than ``ttl`` windows has its id appended to
 * ``evict``; any other gets its series counts (series_counts, zero counts without events),
 * camp.monitor.update(window, counts), and a decision appended to ``out``: for verdicts
 * on_verdicts(cid, counts, verdicts, when) makes it, otherwise it is
 * make_decision(cid, start_s, end_s, ok figures, ()) and stats.windows grows by its figures
 * (also when an error stops the loop, as the reference's would have).
 */
static PyObject *close_window(PyObject *self, PyObject *args) {
    PyObject *campaigns, *wid, *ttl, *out, *stats;
    Closing w = {0};
    if (!PyArg_ParseTuple(args, "O!O!OOO!O!O!OOO!OOOOOO", &PyDict_Type, &campaigns,
                          &PyDict_Type, &w.by_campaign, &wid, &ttl, &PyTuple_Type, &w.when,
                          &PyList_Type, &out, &PyList_Type, &w.evict, &stats, &w.take_in,
                          &PyList_Type, &w.table, &w.make_counts, &w.zero, &w.status,
                          &w.make_figure, &w.make_decision, &w.on_verdicts))
        return NULL;
    if (PyTuple_GET_SIZE(w.when) != 3) {
        PyErr_SetString(PyExc_TypeError, "when must be (window, start_iso, end_iso)");
        return NULL;
    }
    w.wid_obj = wid;
    w.wid = PyLong_AsLongLong(wid);
    if (w.wid == -1 && PyErr_Occurred())
        return NULL;
    w.ttl = PyLong_AsLongLong(ttl);
    if (w.ttl == -1 && PyErr_Occurred())
        return NULL;
    counts_slots(w.zero, &w.slots);
    w.window = PyTuple_GET_ITEM(w.when, 0);
    w.start_iso = PyTuple_GET_ITEM(w.when, 1);
    w.end_iso = PyTuple_GET_ITEM(w.when, 2);
    w.start_s = PyObject_GetAttr(w.window, str_start);
    if (w.start_s == NULL)
        return NULL;
    w.end_s = PyObject_GetAttr(w.window, str_end);
    w.no_alerts = PyTuple_New(0);
    int failed = w.end_s == NULL || w.no_alerts == NULL;
    Py_ssize_t pos = 0;
    PyObject *cid, *camp;
    while (!failed && PyDict_Next(campaigns, &pos, &cid, &camp)) {
        PyObject *decision = NULL;
        Py_INCREF(cid);  /* (held across calls of Python code) */
        Py_INCREF(camp);
        int rc = close_campaign(&w, cid, camp, &decision);
        Py_DECREF(camp);
        Py_DECREF(cid);
        if (rc > 0) {
            rc = PyList_Append(out, decision);
            Py_DECREF(decision);
        }
        failed = rc < 0;
    }
    if (w.windows) {  /* an error raised already stays the one raised */
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyObject *before = PyObject_GetAttr(stats, str_windows), *after = NULL;
        if (before != NULL) {
            PyObject *more = PyLong_FromSsize_t(w.windows);
            if (more != NULL)
                after = PyNumber_Add(before, more);
            Py_XDECREF(more);
            Py_DECREF(before);
        }
        if (after == NULL || PyObject_SetAttr(stats, str_windows, after) < 0)
            failed = 1;
        Py_XDECREF(after);
        if (type != NULL)
            PyErr_Restore(type, value, tb);
    }
    Py_XDECREF(w.no_alerts);
    Py_XDECREF(w.end_s);
    Py_DECREF(w.start_s);
    if (failed)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"count", count, METH_VARARGS,
     "count(open, campaigns, wids, cids, keys, wrap, on_window, on_key) -> None\n\n"
     "Count a shard's de-duplicated events into its open windows (see "
     "ctrguard.flows.engine.ShardState._count_windows)."},
    {"split", split, METH_VARARGS,
     "split(n_shards, shard_ids, columns) -> (order, counts, parts)\n\n"
     "Split a batch's columns by shard, keeping arrival order within each shard (see "
     "ctrguard.flows.engine.EventPreparer._route)."},
    {"span", span, METH_VARARGS,
     "span(ts, length) -> (lo, hi)\n\n"
     "The first and last window of a chunk's event times (see "
     "ctrguard.flows.engine.ShardState._add_events)."},
    {"group", group, METH_VARARGS,
     "group(ts, length, lo, n_windows) -> (wids, order, counts)\n\n"
     "A chunk's events by window, each window's in arrival order (see "
     "ctrguard.flows.engine.ShardState._add_events)."},
    {"merge", merge, METH_VARARGS,
     "merge(a, b) -> bytes\n\n"
     "Two ascending runs of uint64 keys as one (see ctrguard.flows.engine._Seen._add)."},
    {"ok_figures", ok_figures, METH_VARARGS,
     "ok_figures(cid, counts, zero, start_iso, end_iso, start_s, status, alert_ids, make)"
     " -> tuple\n\n"
     "The figures of a campaign-window without verdicts (see "
     "ctrguard.flows.engine.ShardState._decide)."},
    {"close_window", close_window, METH_VARARGS,
     "close_window(campaigns, by_campaign, wid, ttl, when, out, evict, stats, take_in, table,"
     " make_counts, zero, status, make_figure, make_decision, on_verdicts) -> None\n\n"
     "Decide every campaign of a closing window; back to Python only for verdicts (see "
     "ctrguard.flows.engine.ShardState._close_through)."},
    {"shard_ids", shard_ids, METH_VARARGS,
     "shard_ids(cache, cids) -> (ids, first) | None\n\n"
     "The shard of each campaign id from a cache (see ctrguard.flows.engine.EventPreparer._route)."},
    {"series_counts", series_counts, METH_VARARGS,
     "series_counts(camp, counts, take_in, table, make) -> dict\n\n"
     "The counts of every series of a campaign in one window (see "
     "ctrguard.flows.engine.ShardState._series_counts)."},
    {"admit", admit, METH_VARARGS,
     "admit(keys, marks, shift, runs) -> (fresh, positions)\n\n"
     "The de-duplication of one chunk's keys in one window (see "
     "ctrguard.flows.engine._Seen.admit)."},
    {"slot_maker", slot_maker, METH_VARARGS,
     "slot_maker(cls, names) -> callable\n\n"
     "A positional constructor that sets a slotted class's slots ``names`` directly (see "
     "ctrguard.flows.engine._slot_constructor)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "ctrguard._shard",
    "The compiled per-event loops of routing and counting (see ctrguard.flows.engine).", -1, methods,
};

PyMODINIT_FUNC PyInit__shard(void) {
    str_dims = PyUnicode_InternFromString("dims");
    str_segs = PyUnicode_InternFromString("segs");
    str_series = PyUnicode_InternFromString("series");
    str_first_wid = PyUnicode_InternFromString("first_wid");
    str_last_event_wid = PyUnicode_InternFromString("last_event_wid");
    str_impressions = PyUnicode_InternFromString("impressions");
    str_clicks = PyUnicode_InternFromString("clicks");
    str_monitor = PyUnicode_InternFromString("monitor");
    str_update = PyUnicode_InternFromString("update");
    str_start = PyUnicode_InternFromString("start");
    str_end = PyUnicode_InternFromString("end");
    str_windows = PyUnicode_InternFromString("windows");
    zero_int = PyLong_FromLong(0);
    if (str_monitor == NULL || str_update == NULL || str_start == NULL || str_end == NULL
            || str_windows == NULL || str_dims == NULL || str_segs == NULL || str_series == NULL || str_first_wid == NULL
            || str_last_event_wid == NULL || str_impressions == NULL || str_clicks == NULL
            || zero_int == NULL)
        return NULL;
    return PyModule_Create(&module);
}
