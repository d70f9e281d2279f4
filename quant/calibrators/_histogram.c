/*
 * quant.calibrators._histogram: the one hot loop of calibration in C.
 *
 * Adds the histogram of a float32 chunk into an int64 counts table:
 *
 *   abs_counts(values, scale, counts):             counts[trunc(|x| * scale)] += 1
 *   signed_counts(values, scale, offset, counts):  counts[trunc(x * scale) + offset] += 1
 *
 * with the product computed in float32, exactly as the NumPy fallback in stats.py does
 * (np.multiply on float32, then a truncating cast to int32), so both paths give the same counts
 * bit for bit. The scale is a power of two in calibration, which makes the product exact.
 *
 * Why C: NumPy needs five passes over memory for this (abs, multiply, cast, bincount's own range
 * check and its scalar counting loop) and bincount's loop is scalar; here it is one pass. It works
 * in blocks of BLOCK values: first their table indices, in a loop the compiler vectorises (SSE2 is
 * enough), then the counting: 0.74 -> 0.47 ns per value on an EPYC core. Counting into LANES
 * separate uint32 tables breaks the store-to-load dependency between equal consecutive indices
 * (calibration data is mostly in a few low bins; ReLU outputs are mostly exact zeros). The best
 * lane count depends on the CPU: on the Intel Xeon of docs/PERFORMANCE.md 2 / 4 / 8 lanes take
 * 0.96 / 0.80 / 0.70 ns per value spread over many bins and 1.8 / 1.4 / 0.7 ns for values all in
 * one bin; on the AMD EPYC, whose 32 KiB L1 cache four tables of 2049 counters overflow, 0.47 /
 * 0.58 / 0.84 and 0.47 / 0.43-0.55 / 0.48. Four lanes are the compromise: whole calibrations of
 * ResNet-50 took 1.72 -> 1.60x the forward pass on the Xeon and 1.35 -> 1.32x on the EPYC
 * against two lanes.
 *
 * Contract: the caller has checked the chunk (stats.py does, with the chunk's min and max, before
 * it picks the scale): finite values whose index lies inside the table. Checking every element
 * again here cost 40 % of the kernel's time, so the kernel only guarantees memory safety: each
 * index is clamped into the table in the float domain (NaN to the top), so a broken contract gives
 * wrong counts, never a write outside the table or an undefined float-to-int conversion. The GIL
 * is released while counting, so calibration workers count next to each other and ONNX Runtime.
 *
 * Built as an optional extension (setup.py): without a C compiler quant installs and uses the
 * NumPy path. Keep this file free of anything but C99 and the CPython stable calls used here.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LANES 4
/* Tables up to this many counters are counted in LANES uint32 tables (at most 1 MiB of scratch);
   bigger ones (huge --num-bins) directly in the int64 table. */
#define MAX_LANE_TABLE (1 << 16)
/* uint32 lane counters cannot overflow below this many elements per call. */
#define MAX_LANE_ELEMS ((Py_ssize_t)0x7fffffff)

static int get_values(PyObject *obj, Py_buffer *view) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        return -1;
    }
    if (view->itemsize != 4 || view->format == NULL || strcmp(view->format, "f") != 0) {
        PyErr_SetString(PyExc_TypeError, "values must be a C-contiguous float32 buffer");
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static int get_counts(PyObject *obj, Py_buffer *view) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) < 0) {
        return -1;
    }
    if (view->itemsize != 8 || view->format == NULL ||
        (strcmp(view->format, "q") != 0 && strcmp(view->format, "l") != 0)) {
        PyErr_SetString(PyExc_TypeError, "counts must be a writable C-contiguous int64 buffer");
        PyBuffer_Release(view);
        return -1;
    }
    if (view->len / 8 < 1) {
        PyErr_SetString(PyExc_ValueError, "counts must not be empty");
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* The table index of one value: trunc((|x| or x) * scale) + offset, clamped into [0, len - 1]. The
   clamp happens in the float domain (a NaN goes to the top), so no out-of-range float is ever
   converted to int (undefined behaviour in C) and no write leaves the table. */
static inline int32_t index_of(float x, float scale, int use_abs, float lo, float hi, int32_t offset) {
    float v = (use_abs ? fabsf(x) : x) * scale;
    v = v < hi ? v : hi;
    v = v > lo ? v : lo;
    return (int32_t)v + offset;
}

/* Indices of n <= BLOCK values (see index_of), computed apart from the counting so that the
   compiler vectorises them (abs, multiply, clamp and truncate are lane-wise SSE2 operations). */
static void block_indices(const float *x, Py_ssize_t n, float scale, int use_abs, float lo, float hi,
                          int32_t offset, int32_t *idx) {
    if (use_abs) {
        for (Py_ssize_t k = 0; k < n; k++) {
            idx[k] = index_of(x[k], scale, 1, lo, hi, offset);
        }
    } else {
        for (Py_ssize_t k = 0; k < n; k++) {
            idx[k] = index_of(x[k], scale, 0, lo, hi, offset);
        }
    }
}

#define BLOCK 256

/* Add the counts of n values to `counts` (len entries). Runs without the GIL. */
static void count_into(const float *x, Py_ssize_t n, float scale, int32_t offset, int use_abs,
                       int64_t *counts, Py_ssize_t len) {
    const float lo = -(float)offset;
    const float hi = (float)(len - 1 - offset);
    int32_t idx[BLOCK];

    if (len <= MAX_LANE_TABLE && n <= MAX_LANE_ELEMS) {
        uint32_t *lanes = (uint32_t *)calloc((size_t)LANES * (size_t)len, sizeof(uint32_t));
        if (lanes != NULL) {
            uint32_t *l0 = lanes, *l1 = lanes + len, *l2 = lanes + 2 * len, *l3 = lanes + 3 * len;
            for (Py_ssize_t start = 0; start < n; start += BLOCK) {
                const Py_ssize_t m = n - start < BLOCK ? n - start : BLOCK;
                Py_ssize_t k = 0;
                block_indices(x + start, m, scale, use_abs, lo, hi, offset, idx);
                for (; k + LANES <= m; k += LANES) {
                    l0[idx[k]]++;
                    l1[idx[k + 1]]++;
                    l2[idx[k + 2]]++;
                    l3[idx[k + 3]]++;
                }
                for (; k < m; k++) {
                    l0[idx[k]]++;
                }
            }
            for (Py_ssize_t j = 0; j < len; j++) {
                counts[j] += (int64_t)l0[j] + (int64_t)l1[j] + (int64_t)l2[j] + (int64_t)l3[j];
            }
            free(lanes);
            return;
        }
    }
    /* Big tables (huge --num-bins), or no memory for the lanes: count directly. */
    for (Py_ssize_t start = 0; start < n; start += BLOCK) {
        const Py_ssize_t m = n - start < BLOCK ? n - start : BLOCK;
        block_indices(x + start, m, scale, use_abs, lo, hi, offset, idx);
        for (Py_ssize_t k = 0; k < m; k++) {
            counts[idx[k]]++;
        }
    }
}

static PyObject *run(PyObject *values_obj, double scale_d, long long offset_ll, int use_abs,
                     PyObject *counts_obj) {
    Py_buffer values, counts;
    const float scale = (float)scale_d;
    if (!(scale > 0.0f) || !isfinite(scale) || (double)scale != scale_d) {
        PyErr_SetString(PyExc_ValueError, "scale must be a positive finite float32 value");
        return NULL;
    }
    if (get_values(values_obj, &values) < 0) {
        return NULL;
    }
    if (get_counts(counts_obj, &counts) < 0) {
        PyBuffer_Release(&values);
        return NULL;
    }
    const Py_ssize_t len = counts.len / 8;
    if (offset_ll < 0 || offset_ll >= len || len > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "offset must lie inside the counts table");
        PyBuffer_Release(&values);
        PyBuffer_Release(&counts);
        return NULL;
    }
    const Py_ssize_t n = values.len / 4;
    Py_BEGIN_ALLOW_THREADS
    count_into((const float *)values.buf, n, scale, (int32_t)offset_ll, use_abs, (int64_t *)counts.buf,
               len);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&values);
    PyBuffer_Release(&counts);
    Py_RETURN_NONE;
}

static PyObject *abs_counts(PyObject *self, PyObject *args) {
    PyObject *values, *counts;
    double scale;
    (void)self;
    if (!PyArg_ParseTuple(args, "OdO:abs_counts", &values, &scale, &counts)) {
        return NULL;
    }
    return run(values, scale, 0, 1, counts);
}

static PyObject *signed_counts(PyObject *self, PyObject *args) {
    PyObject *values, *counts;
    double scale;
    long long offset;
    (void)self;
    if (!PyArg_ParseTuple(args, "OdLO:signed_counts", &values, &scale, &offset, &counts)) {
        return NULL;
    }
    return run(values, scale, offset, 0, counts);
}

static PyMethodDef methods[] = {
    {"abs_counts", abs_counts, METH_VARARGS,
     "abs_counts(values, scale, counts): counts[trunc(|x| * scale)] += 1 for each float32 x."},
    {"signed_counts", signed_counts, METH_VARARGS,
     "signed_counts(values, scale, offset, counts): counts[trunc(x * scale) + offset] += 1."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_histogram",
    "Histogram kernel of quant's calibration (see quant/calibrators/_histogram.c).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__histogram(void) { return PyModule_Create(&module); }
