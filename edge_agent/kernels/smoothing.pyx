# cython: language_level=3
"""Streaming smoothers (EMA, moving average/RMS/min/max, Hampel); never allocate per sample.

The filter chain's hot path (1-5 kHz bridge channels on a Pi). Imports nothing of the agent and
no numpy: `process` takes any float64 buffer (array.array('d') included), never allocates per
call and never holds the GIL in its inner loop. Each class keeps its state explicitly, so a
stream fed 1 sample at a time or in blocks of any size gives bit-identical output. The
plain-Python twin is `tests/oracles/smoothing_oracle.py`; docs/filters.md is the spec.

Bad samples (the same policy in every class): a NaN or infinite input gives a NaN output for
that sample and resets the state, as `reset()` does; the next finite sample starts afresh (the
EMA initialises at it, windows restart empty). A state that overflows to a non-finite value
from finite inputs is treated the same way where it would otherwise stick (the EMA).
"""

cimport cython
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.math cimport NAN, expm1, fabs, isfinite, sqrt
from libc.stdint cimport int64_t

from operator import index

# Scales the median absolute deviation to the standard deviation of a normal distribution
# (1 / Phi^-1(3/4)), so that `n_sigmas` reads as sigmas on Gaussian noise.
MAD_TO_SIGMA = 1.4826


cdef inline void _check_lengths(Py_ssize_t n_in, Py_ssize_t n_out) except *:
    if n_out < n_in:
        raise ValueError(f"output too short: {n_out} slots for {n_in} input samples")


cdef double* _alloc(Py_ssize_t n) except NULL:
    cdef double* p = <double*>PyMem_Malloc(max(n, 1) * sizeof(double))
    if p == NULL:
        raise MemoryError()
    return p


cdef Py_ssize_t _window(window) except -1:
    """The window as a positive sample count, or a one-line ValueError."""
    try:
        if isinstance(window, bool):
            raise TypeError
        window = index(window)
    except TypeError:
        raise ValueError(
            f"window must be an integer number of samples, got {window!r}"
        ) from None
    if window < 1:
        raise ValueError(f"window must be at least 1 sample, got {window}")
    if window > 10_000_000:  # 80 MB per buffer: far beyond any channel's need on a Pi
        raise ValueError(f"window of {window} samples exceeds the limit of 10000000")
    return window


@cython.final
cdef class Ema:
    """Exponential moving average, time-constant form: y += alpha * (x - y).

    alpha = 1 - exp(-dt_s / tau_s), computed as -expm1(-dt_s / tau_s): the step response
    reaches 1 - 1/e after tau_s seconds whatever the sampling period. The first finite sample
    (after construction, reset or a bad sample) initialises the state: no ramp up from zero.
    """

    cdef readonly double tau_s
    cdef readonly double dt_s
    cdef readonly double alpha
    cdef double _y
    cdef bint _primed

    def __init__(self, double tau_s, double dt_s):
        if not (isfinite(tau_s) and tau_s > 0):
            raise ValueError(f"tau_s must be a positive finite time constant, got {tau_s!r}")
        if not (isfinite(dt_s) and dt_s > 0):
            raise ValueError(f"dt_s must be a positive finite sample period, got {dt_s!r}")
        self.tau_s = tau_s
        self.dt_s = dt_s
        self.alpha = -expm1(-dt_s / tau_s)  # 1 - exp(-dt/tau), accurate when dt << tau
        self.reset()

    def reset(self) -> None:
        """Forget the state: the next finite sample initialises it."""
        self._y = 0.0
        self._primed = False

    def process(self, const double[::1] x, double[::1] out) -> None:
        """Filters x into out[:len(x)]; out may be x itself."""
        cdef Py_ssize_t n = x.shape[0]
        _check_lengths(n, out.shape[0])
        cdef Py_ssize_t i
        cdef double v
        cdef double y = self._y
        cdef double alpha = self.alpha
        cdef bint primed = self._primed
        with nogil:
            for i in range(n):
                v = x[i]
                if not isfinite(v):
                    out[i] = NAN
                    primed = False
                    y = 0.0
                    continue
                if primed:
                    y = y + alpha * (v - y)
                    if not isfinite(y):  # |v - y| overflowed: would stick at inf or NaN
                        out[i] = NAN
                        primed = False
                        y = 0.0
                        continue
                else:
                    y = v
                    primed = True
                out[i] = y
        self._y = y
        self._primed = primed


cdef class _RunningSum:
    """Ring buffer of the last `window` terms and their running sum, re-summed every window.

    The running sum is updated in O(1) per sample (s += term - oldest term; s += term while
    the window fills). At every sample index that is a multiple of `window`, counted since
    reset, the ring buffer holds the window oldest-first at positions 0..window-1 and the sum
    is recomputed from it (a plain left-to-right sum starting at 0.0): rounding error never
    accumulates beyond one window, and the instants of recomputation do not depend on how the
    stream is cut into blocks.
    """

    cdef readonly Py_ssize_t window
    cdef double* _terms
    cdef double _sum
    cdef Py_ssize_t _pos
    cdef Py_ssize_t _filled

    def __cinit__(self, *args, **kwargs):
        self._terms = NULL

    def __init__(self, window):
        cdef Py_ssize_t n = _window(window)
        cdef double* terms = _alloc(n)
        PyMem_Free(self._terms)
        self._terms = terms
        self.window = n
        self.reset()

    def __dealloc__(self):
        PyMem_Free(self._terms)

    def reset(self) -> None:
        """Empty the window: the next finite sample is the first of a new one."""
        self._sum = 0.0
        self._pos = 0
        self._filled = 0

    cdef void _run(self, const double[::1] x, double[::1] out, bint rms) except *:
        """The moving mean of x (rms False) or of x squared, square-rooted (rms True)."""
        cdef Py_ssize_t n = x.shape[0]
        _check_lengths(n, out.shape[0])
        if n == 0:
            return
        # State in locals: `out` may alias anything as far as the compiler knows.
        cdef const double* src = &x[0]
        cdef double* dst = &out[0]
        cdef double* terms = self._terms
        cdef Py_ssize_t window = self.window
        cdef double total = self._sum
        cdef Py_ssize_t pos = self._pos
        cdef Py_ssize_t filled = self._filled
        cdef Py_ssize_t i, j
        cdef double v, term, mean
        with nogil:
            for i in range(n):
                v = src[i]
                if not isfinite(v):
                    dst[i] = NAN
                    total = 0.0
                    pos = 0
                    filled = 0
                    continue
                term = v * v if rms else v
                if filled == window:
                    total += term - terms[pos]
                else:
                    total += term
                    filled += 1
                terms[pos] = term
                pos += 1
                if pos == window:
                    pos = 0
                    total = 0.0
                    for j in range(window):
                        total += terms[j]
                mean = total / filled
                if rms:
                    if mean < 0.0:
                        mean = 0.0
                    mean = sqrt(mean)
                dst[i] = mean
        self._sum = total
        self._pos = pos
        self._filled = filled


cdef class MovingAverage(_RunningSum):
    """Mean of the last `window` samples; while fewer have arrived, mean of those that have."""

    def process(self, const double[::1] x, double[::1] out) -> None:
        """Filters x into out[:len(x)]; out may be x itself."""
        self._run(x, out, False)


cdef class MovingRms(_RunningSum):
    """Root mean square of the last `window` samples (of those arrived, while fewer have).

    The ring buffer holds the squares. A mean square that cancellation leaves slightly below
    zero is read as zero, never as the NaN its square root would give.
    """

    def process(self, const double[::1] x, double[::1] out) -> None:
        """Filters x into out[:len(x)]; out may be x itself."""
        self._run(x, out, True)


cdef class _MonotonicWindow:
    """Extremum of the last `window` samples by a monotonic deque, O(1) amortised per sample.

    The deque (values and their sample indices since reset) lives in two preallocated ring
    arrays of `window` slots: it never holds more than `window` entries. Among equal values
    the newest is kept, so the result is the newest of the equal extrema (this decides the
    sign of a zero when 0.0 and -0.0 tie).
    """

    cdef readonly Py_ssize_t window
    cdef double* _values
    cdef int64_t* _indices
    cdef Py_ssize_t _head
    cdef Py_ssize_t _size
    cdef int64_t _count

    def __cinit__(self, *args, **kwargs):
        self._values = NULL
        self._indices = NULL

    def __init__(self, window):
        cdef Py_ssize_t n = _window(window)
        cdef double* values = _alloc(n)
        cdef int64_t* indices = <int64_t*>PyMem_Malloc(n * sizeof(int64_t))
        if indices == NULL:
            PyMem_Free(values)
            raise MemoryError()
        PyMem_Free(self._values)
        PyMem_Free(self._indices)
        self._values = values
        self._indices = indices
        self.window = n
        self.reset()

    def __dealloc__(self):
        PyMem_Free(self._values)
        PyMem_Free(self._indices)

    def reset(self) -> None:
        """Empty the window: the next finite sample is the first of a new one."""
        self._head = 0
        self._size = 0
        self._count = 0

    cdef void _run(self, const double[::1] x, double[::1] out, bint is_max) except *:
        cdef Py_ssize_t n = x.shape[0]
        _check_lengths(n, out.shape[0])
        if n == 0:
            return
        # State in locals: `out` may alias anything as far as the compiler knows.
        cdef const double* src = &x[0]
        cdef double* dst = &out[0]
        cdef double* values = self._values
        cdef int64_t* indices = self._indices
        cdef Py_ssize_t window = self.window
        cdef Py_ssize_t head = self._head
        cdef Py_ssize_t size = self._size
        cdef int64_t count = self._count
        cdef Py_ssize_t i, back
        cdef double v
        with nogil:
            for i in range(n):
                v = src[i]
                if not isfinite(v):
                    dst[i] = NAN
                    head = 0
                    size = 0
                    count = 0
                    continue
                # Expire the front entry leaving the window (at most one per sample).
                if size and indices[head] <= count - window:
                    head += 1
                    if head == window:
                        head = 0
                    size -= 1
                # Drop the entries the new sample dominates, ties included (newest kept).
                while size:
                    back = head + size - 1
                    if back >= window:
                        back -= window
                    if (values[back] <= v) if is_max else (values[back] >= v):
                        size -= 1
                    else:
                        break
                back = head + size
                if back >= window:
                    back -= window
                values[back] = v
                indices[back] = count
                size += 1
                count += 1
                dst[i] = values[head]
        self._head = head
        self._size = size
        self._count = count


cdef class MovingMin(_MonotonicWindow):
    """Minimum of the last `window` samples (of those arrived, while fewer have)."""

    def process(self, const double[::1] x, double[::1] out) -> None:
        """Filters x into out[:len(x)]; out may be x itself."""
        self._run(x, out, False)


cdef class MovingMax(_MonotonicWindow):
    """Maximum of the last `window` samples (of those arrived, while fewer have)."""

    def process(self, const double[::1] x, double[::1] out) -> None:
        """Filters x into out[:len(x)]; out may be x itself."""
        self._run(x, out, True)


cdef inline double _midpoint(double a, double b) noexcept nogil:
    """(a + b) / 2 for a <= b, always within [a, b].

    0.5 * (a + b) unless a + b overflows, then 0.5 * a + 0.5 * b (exact halves at that size).
    Not 0.5 * a + 0.5 * b always: halving two subnormals rounds each, and the result could
    fall outside [a, b].
    """
    cdef double total = a + b
    if isfinite(total):
        return 0.5 * total
    return 0.5 * a + 0.5 * b


@cython.final
cdef class Hampel:
    """Causal Hampel filter: replaces a spike by the median of the trailing window.

    The window is the last `window` samples, the current one included (no delay: the control
    loop acts on it now); while fewer have arrived, the samples so far. With med the window's
    median and mad the median of |x_i - med| over the window, the current sample becomes med
    if |x - med| > n_sigmas * 1.4826 * mad, and passes unchanged otherwise. A median of an
    even count is the mean of the two middle values. The window holds raw inputs, never the
    replaced outputs.

    The median comes from a preallocated sorted copy of the window kept by insertion (O(window)
    per sample, meant for 3..31 samples); equal values stay in arrival order, so the sorted
    copy is exactly Python's stable `sorted(window)`. The MAD comes from walking outwards from
    the median through that sorted copy, which visits the deviations in increasing order.
    """

    cdef readonly Py_ssize_t window
    cdef readonly double n_sigmas
    cdef double _threshold_per_mad
    cdef double* _ring
    cdef double* _sorted
    cdef Py_ssize_t _pos
    cdef Py_ssize_t _filled

    def __cinit__(self, *args, **kwargs):
        self._ring = NULL
        self._sorted = NULL

    def __init__(self, window, double n_sigmas=3.0):
        cdef Py_ssize_t n = _window(window)
        if not (isfinite(n_sigmas) and n_sigmas >= 0):
            raise ValueError(f"n_sigmas must be a finite number >= 0, got {n_sigmas!r}")
        cdef double* ring = _alloc(n)
        cdef double* sorted_ = NULL
        try:
            sorted_ = _alloc(n)
        except MemoryError:
            PyMem_Free(ring)
            raise
        PyMem_Free(self._ring)
        PyMem_Free(self._sorted)
        self._ring = ring
        self._sorted = sorted_
        self.window = n
        self.n_sigmas = n_sigmas
        self._threshold_per_mad = n_sigmas * MAD_TO_SIGMA
        self.reset()

    def __dealloc__(self):
        PyMem_Free(self._ring)
        PyMem_Free(self._sorted)

    def reset(self) -> None:
        """Empty the window: the next finite sample is the first of a new one."""
        self._pos = 0
        self._filled = 0

    cdef inline double _push(self, double v) noexcept nogil:
        """Adds finite `v` to the window; returns the filter's output for it."""
        cdef double* s = self._sorted
        cdef Py_ssize_t m = self._filled
        cdef Py_ssize_t j, k, lo, hi, steps
        cdef double oldest, med, dl, dr, d, previous, mad
        if m == self.window:
            # Remove the oldest sample: the first of the values equal to it, since equal
            # values sit in arrival order.
            oldest = self._ring[self._pos]
            j = 0
            while s[j] != oldest:
                j += 1
            m -= 1
            while j < m:
                s[j] = s[j + 1]
                j += 1
        # Insert after every value <= v (upper bound): equal values stay in arrival order.
        j = m
        while j > 0 and s[j - 1] > v:
            s[j] = s[j - 1]
            j -= 1
        s[j] = v
        m += 1
        self._filled = m
        self._ring[self._pos] = v
        self._pos += 1
        if self._pos == self.window:
            self._pos = 0

        lo = (m - 1) >> 1
        if m & 1:
            med = s[lo]
        else:
            med = _midpoint(s[lo], s[lo + 1])
        # Deviations below the median grow leftwards from lo, above it rightwards from lo + 1:
        # merging the two runs visits all m deviations in increasing order.
        hi = lo + 1
        steps = m >> 1  # the deviation of rank m // 2 (0-based) is the upper middle one
        previous = 0.0
        d = 0.0
        for k in range(steps + 1):
            previous = d
            if lo < 0:
                d = s[hi] - med
                hi += 1
            elif hi >= m:
                d = med - s[lo]
                lo -= 1
            else:
                dl = med - s[lo]
                dr = s[hi] - med
                if dl <= dr:
                    d = dl
                    lo -= 1
                else:
                    d = dr
                    hi += 1
        mad = d if m & 1 else _midpoint(previous, d)
        if fabs(v - med) > self._threshold_per_mad * mad:
            return med
        return v

    def process(self, const double[::1] x, double[::1] out) -> None:
        """Filters x into out[:len(x)]; out may be x itself."""
        cdef Py_ssize_t n = x.shape[0]
        _check_lengths(n, out.shape[0])
        cdef Py_ssize_t i
        cdef double v
        with nogil:
            for i in range(n):
                v = x[i]
                if not isfinite(v):
                    out[i] = NAN
                    self._pos = 0
                    self._filled = 0
                    continue
                out[i] = self._push(v)
