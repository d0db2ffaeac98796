# cython: language_level=3
"""IIR second-order-section cascades and decimation, streaming; never allocate per call.

The filter chain's hot path (1-5 kHz bridge channels, 100 Hz controller signals, on a Pi).
Imports nothing of the agent and no numpy: `process` takes typed memoryviews, which accept
`array.array('d')`, `memoryview.cast('d', (n, channels))` 2-D buffers and numpy arrays; it
writes into caller-provided output, keeps its state in the object, never allocates and never
holds the GIL in its inner loop. Feeding a stream 1 sample at a time, in blocks of any size or
whole gives bit-identical output. One object serves one stream from one thread at a time (its
state is updated without the GIL held). The plain-Python twin is `tests/oracles/iir_oracle.py`;
docs/filters.md ("IIR filters and decimation") is the spec. Designs (Butterworth SOS, steady
state) come from `edge_agent.filters.design`.

    SosFilter(sos, zi_unit=None, init="steady")        one channel
        .process(x, out) -> None      x, out: float64 1-D; len(out) >= len(x); out may be x
        .reset() ; .state (copy, [[z0, z1]] per section) ; .set_state(zi) ; .initialised
    SosFilterBank(sos, n_channels, zi_unit=None, init="steady")
        .process(x, out) -> None      x, out: float64 (n_samples, n_channels), C-contiguous;
                                      same coefficients on every channel, state per channel
        .reset() ; .state (copy, shape (n_sections, 2, n_channels) like scipy's zi on axis 0)
        .set_state(zi) ; .initialised (one bool per channel)
    Decimator(factor, sos, zi_unit=None, init="steady")
        .process(x, out) -> int       samples written; len(out) >= ceil(len(x) / factor)
        .reset() ; .state ; .set_state(zi) ; .factor ; .phase
    sosfilt(sos, x, zi=None)          convenience, allocating: like scipy.signal.sosfilt

sos: a sequence of sections (b0, b1, b2, a0, a1, a2) with a0 == 1 (scipy's layout). Each
section is a transposed direct form II biquad, state (z0, z1) as in scipy's `zi`:

    y  = b0 * x + z0
    z0 = (b1 * x - a1 * y) + z1
    z1 = b2 * x - a2 * y

in scipy's order of operations: with no fused multiply-adds (-ffp-contract=off) the output
is scipy's own, bit for bit, wherever scipy's build does not fuse them either (x86_64
wheels). Adding z1 first would take one addition off the loop-carried dependency chain
(about 20 % faster on one channel) but loses that identity, and on near-DC designs,
which amplify rounding, the two orders differ by more than 1e-12 of the signal's peak.

zi_unit: the state of a filter that has seen a constant 1 for ever (scipy's `sosfilt_zi`);
computed from the sections when not given, with the same arithmetic as
`edge_agent.filters.design.sosfilt_zi`.

init="steady" (the agent's default): the first finite sample x0 sets the state to
zi_unit * x0 before it is filtered, so a filter starts at the signal's level with no
transient (scipy: `sosfilt(sos, x, zi=sosfilt_zi(sos) * x[0])`). init="zeros": the state
starts at zero, as scipy's `sosfilt(sos, x)`. `set_state(zi)` sets an explicit state.

Bad samples: a NaN or infinite input, or an output that overflows to a non-finite value from
finite input, gives a NaN output for that sample and resets the state; the next finite sample
re-initialises it at zi_unit * x (whatever `init` was), so the filter recovers at once
without a transient and nothing poisons the state for ever. For finite input that never
overflows, the output is scipy's.
"""

cimport cython
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.math cimport NAN, isfinite

import array
from operator import index

#: Most sections accepted: a band-pass of order 8 has 8; 64 leaves room for any cascade.
MAX_SECTIONS = 64
#: Decimator scratch: filtered samples are produced in chunks of this many, then picked.
#: 256 doubles (2 KiB) stay in L1 cache and amortise the per-chunk work to nothing.
cdef enum:
    _CHUNK = 256

INIT_MODES = ("steady", "zeros")


cdef struct Section:
    double b0
    double b1
    double b2
    double a1
    double a2


# -- arguments ------------------------------------------------------------------------------


cdef list _sections(sos):
    """The sections as 5-tuples (b0, b1, b2, a1, a2), or a one-line ValueError."""
    try:
        rows = [list(row) for row in sos]
    except TypeError:
        raise ValueError(f"sos must be a sequence of 6-coefficient sections, got {sos!r}") from None
    if not rows:
        raise ValueError("sos has no sections")
    if len(rows) > MAX_SECTIONS:
        raise ValueError(f"sos has {len(rows)} sections, more than the limit of {MAX_SECTIONS}")
    out = []
    for i, row in enumerate(rows):
        if len(row) != 6:
            raise ValueError(f"section {i}: expected 6 coefficients, got {len(row)}")
        try:
            b0, b1, b2, a0, a1, a2 = [float(c) for c in row]
        except (TypeError, ValueError):
            raise ValueError(f"section {i}: coefficients must be numbers, got {row!r}") from None
        if not all(isfinite(c) for c in (b0, b1, b2, a0, a1, a2)):
            raise ValueError(f"section {i}: coefficients must be finite, got {row!r}")
        if a0 != 1.0:
            raise ValueError(f"section {i}: a0 must be 1.0 (normalised), got {a0!r}")
        out.append((b0, b1, b2, a1, a2))
    return out


cdef list _zi_unit(list sections, zi_unit):
    """zi_unit as a flat list [z0, z1] * n_sections: given, or computed like sosfilt_zi."""
    cdef Py_ssize_t n = len(sections)
    if zi_unit is not None:
        return _flat_state(zi_unit, n, "zi_unit")
    flat = []
    scale = 1.0
    for i, (b0, b1, b2, a1, a2) in enumerate(sections):
        # scipy's lfilter_zi 2x2 system, in closed form; the same steps as
        # edge_agent.filters.design.sosfilt_zi (tests hold the two equal bit for bit).
        denominator = 1.0 + a1 + a2
        if denominator == 0.0:
            raise ValueError(f"section {i}: a pole at z = 1 has no steady state")
        rhs0 = b1 - a1 * b0
        rhs1 = b2 - a2 * b0
        z0 = (rhs0 + rhs1) / denominator
        z1 = rhs1 - a2 * z0
        flat += [scale * z0, scale * z1]
        scale *= (b0 + b1 + b2) / (1.0 + a1 + a2)
    return flat


cdef list _flat_state(zi, Py_ssize_t n_sections, str name):
    try:
        rows = [[float(v) for v in row] for row in zi]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be {n_sections} rows of 2 numbers, got {zi!r}") from None
    if len(rows) != n_sections or any(len(row) != 2 for row in rows):
        raise ValueError(f"{name} must be {n_sections} rows of 2 numbers (one per section)")
    return [v for row in rows for v in row]


cdef bint _steady(init) except -1:
    if init not in INIT_MODES:
        raise ValueError(f"init must be 'steady' or 'zeros', got {init!r}")
    return init == "steady"


cdef double* _alloc(Py_ssize_t n) except NULL:
    cdef double* p = <double*>PyMem_Malloc(max(n, 1) * sizeof(double))
    if p == NULL:
        raise MemoryError()
    return p


cdef inline void _check_lengths(Py_ssize_t n_in, Py_ssize_t n_out) except *:
    if n_out < n_in:
        raise ValueError(f"output too short: {n_out} slots for {n_in} input samples")


# -- one channel: the cascade, state in registers -------------------------------------------


cdef inline double _biquad(double v, const Section* c, double* z0, double* z1) noexcept nogil:
    """One transposed direct form II section; z0, z1 point at locals (kept in registers)."""
    cdef double y = c.b0 * v + z0[0]
    z0[0] = (c.b1 * v - c.a1 * y) + z1[0]
    z1[0] = c.b2 * v - c.a2 * y
    return y


# _run<n>: filters x[i:n_samples] into y until an output is not finite; returns the index of
# that sample (its non-finite output written), or n_samples. One version per cascade length
# up to 4 (orders 1-8 low/high-pass) keeps the state in registers across samples; longer
# cascades use the state array. Coefficients are copied to locals for the same reason: `y`
# may alias anything as far as the compiler knows.

cdef Py_ssize_t _run1(const Section* sec, double* z, const double* x, double* y,
                      Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    cdef Section c0 = sec[0]
    cdef double s00 = z[0], s01 = z[1]
    cdef double v
    while i < n:
        v = _biquad(x[i], &c0, &s00, &s01)
        y[i] = v
        if not isfinite(v):
            break
        i += 1
    z[0] = s00; z[1] = s01
    return i


cdef Py_ssize_t _run2(const Section* sec, double* z, const double* x, double* y,
                      Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    cdef Section c0 = sec[0], c1 = sec[1]
    cdef double s00 = z[0], s01 = z[1], s10 = z[2], s11 = z[3]
    cdef double v
    while i < n:
        v = _biquad(x[i], &c0, &s00, &s01)
        v = _biquad(v, &c1, &s10, &s11)
        y[i] = v
        if not isfinite(v):
            break
        i += 1
    z[0] = s00; z[1] = s01; z[2] = s10; z[3] = s11
    return i


cdef Py_ssize_t _run3(const Section* sec, double* z, const double* x, double* y,
                      Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    cdef Section c0 = sec[0], c1 = sec[1], c2 = sec[2]
    cdef double s00 = z[0], s01 = z[1], s10 = z[2], s11 = z[3], s20 = z[4], s21 = z[5]
    cdef double v
    while i < n:
        v = _biquad(x[i], &c0, &s00, &s01)
        v = _biquad(v, &c1, &s10, &s11)
        v = _biquad(v, &c2, &s20, &s21)
        y[i] = v
        if not isfinite(v):
            break
        i += 1
    z[0] = s00; z[1] = s01; z[2] = s10; z[3] = s11; z[4] = s20; z[5] = s21
    return i


cdef Py_ssize_t _run4(const Section* sec, double* z, const double* x, double* y,
                      Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    cdef Section c0 = sec[0], c1 = sec[1], c2 = sec[2], c3 = sec[3]
    cdef double s00 = z[0], s01 = z[1], s10 = z[2], s11 = z[3]
    cdef double s20 = z[4], s21 = z[5], s30 = z[6], s31 = z[7]
    cdef double v
    while i < n:
        v = _biquad(x[i], &c0, &s00, &s01)
        v = _biquad(v, &c1, &s10, &s11)
        v = _biquad(v, &c2, &s20, &s21)
        v = _biquad(v, &c3, &s30, &s31)
        y[i] = v
        if not isfinite(v):
            break
        i += 1
    z[0] = s00; z[1] = s01; z[2] = s10; z[3] = s11
    z[4] = s20; z[5] = s21; z[6] = s30; z[7] = s31
    return i


cdef Py_ssize_t _run_any(const Section* sec, Py_ssize_t n_sections, double* z,
                         const double* x, double* y, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t s
    cdef double v
    while i < n:
        v = x[i]
        for s in range(n_sections):
            v = _biquad(v, &sec[s], &z[2 * s], &z[2 * s + 1])
        y[i] = v
        if not isfinite(v):
            break
        i += 1
    return i


cdef void _cascade(const Section* sec, Py_ssize_t n_sections, double* z, const double* zu,
                   bint* pending, const double* x, double* y, Py_ssize_t n) noexcept nogil:
    """Filters x[:n] into y[:n] with the bad-sample policy; y may be x."""
    cdef Py_ssize_t i = 0, k
    cdef double v
    while i < n:
        if pending[0]:
            v = x[i]
            if not isfinite(v):
                y[i] = NAN
                i += 1
                continue
            for k in range(2 * n_sections):
                z[k] = zu[k] * v
            pending[0] = False
        if n_sections == 1:
            i = _run1(sec, z, x, y, i, n)
        elif n_sections == 2:
            i = _run2(sec, z, x, y, i, n)
        elif n_sections == 3:
            i = _run3(sec, z, x, y, i, n)
        elif n_sections == 4:
            i = _run4(sec, z, x, y, i, n)
        else:
            i = _run_any(sec, n_sections, z, x, y, i, n)
        if i < n:  # a bad sample: NaN out, state forgotten until the next finite sample
            y[i] = NAN
            for k in range(2 * n_sections):
                z[k] = 0.0
            pending[0] = True
            i += 1


@cython.final
cdef class SosFilter:
    """A cascade of second-order sections on one channel, streaming, with explicit state."""

    cdef Section* _sec
    cdef double* _z
    cdef double* _zu
    cdef Py_ssize_t _ns
    cdef bint _steady
    cdef bint _pending

    def __cinit__(self, *args, **kwargs):
        self._sec = NULL
        self._z = NULL
        self._zu = NULL
        self._ns = 0

    def __init__(self, sos, zi_unit=None, init="steady"):
        sections = _sections(sos)
        unit = _zi_unit(sections, zi_unit)
        steady = _steady(init)
        cdef Py_ssize_t n = len(sections)
        cdef Section* sec = <Section*>PyMem_Malloc(n * sizeof(Section))
        if sec == NULL:
            raise MemoryError()
        PyMem_Free(self._sec)
        self._sec = sec
        PyMem_Free(self._z)
        self._z = NULL
        self._z = _alloc(2 * n)
        PyMem_Free(self._zu)
        self._zu = NULL
        self._zu = _alloc(2 * n)
        self._ns = n
        for i, (b0, b1, b2, a1, a2) in enumerate(sections):
            sec[i].b0, sec[i].b1, sec[i].b2, sec[i].a1, sec[i].a2 = b0, b1, b2, a1, a2
        for i, v in enumerate(unit):
            self._zu[i] = v
        self._steady = steady
        self.reset()

    def __dealloc__(self):
        PyMem_Free(self._sec)
        PyMem_Free(self._z)
        PyMem_Free(self._zu)

    @property
    def n_sections(self) -> int:
        return self._ns

    @property
    def initialised(self) -> bool:
        """False while the next finite sample will set the state (zi_unit x sample)."""
        return not self._pending

    @property
    def state(self) -> list:
        """A copy of the state, [z0, z1] per section (scipy's zi layout)."""
        return [[self._z[2 * s], self._z[2 * s + 1]] for s in range(self._ns)]

    @property
    def zi_unit(self) -> list:
        return [[self._zu[2 * s], self._zu[2 * s + 1]] for s in range(self._ns)]

    def set_state(self, zi) -> None:
        """Sets the state ([z0, z1] per section), as scipy's `zi`; the filter is initialised."""
        flat = _flat_state(zi, self._ns, "zi")
        for i, v in enumerate(flat):
            self._z[i] = v
        self._pending = False

    def reset(self) -> None:
        """Back to the state of a new filter: zeros, awaiting its first sample if steady."""
        cdef Py_ssize_t k
        for k in range(2 * self._ns):
            self._z[k] = 0.0
        self._pending = self._steady

    cdef void _filter(self, const double* x, double* y, Py_ssize_t n) noexcept nogil:
        _cascade(self._sec, self._ns, self._z, self._zu, &self._pending, x, y, n)

    def process(self, const double[::1] x, double[::1] out) -> None:
        """Filters x into out[:len(x)]; out may be x itself."""
        cdef Py_ssize_t n = x.shape[0]
        _check_lengths(n, out.shape[0])
        if n == 0:
            return
        cdef const double* src = &x[0]
        cdef double* dst = &out[0]
        with nogil:
            self._filter(src, dst, n)


# -- many channels side by side ---------------------------------------------------------------


cdef void _bank_rows(const Section* sec, Py_ssize_t n_sections, Py_ssize_t n_channels,
                     double* z, const double* zu, bint* pending, Py_ssize_t* n_pending,
                     const double* x, double* y, Py_ssize_t n_rows) noexcept nogil:
    """Filters rows of x (n_rows x n_channels) into y; y may be x.

    Row by row, section by section, channel by channel: the innermost loop runs across
    channels, which are independent, so it has no loop-carried dependency (the compiler
    pairs channels into SIMD lanes and the CPU overlaps the rest). State layout
    z[(2 * s + j) * n_channels + c], scipy's (n_sections, 2, n_channels).
    """
    cdef Py_ssize_t r, s, c, k
    cdef const double* src
    cdef double* dst
    cdef double* z0
    cdef double* z1
    cdef double b0, b1, b2, a1, a2, v0, v1, w0, w1, p0, p1, q0, q1, bad0, bad1
    cdef Py_ssize_t pairs = n_channels - n_channels % 2
    for r in range(n_rows):
        src = x + r * n_channels
        dst = y + r * n_channels
        if n_pending[0]:
            for c in range(n_channels):
                if pending[c] and isfinite(src[c]):
                    for k in range(2 * n_sections):
                        z[k * n_channels + c] = zu[k] * src[c]
                    pending[c] = False
                    n_pending[0] -= 1
        for s in range(n_sections):
            b0 = sec[s].b0; b1 = sec[s].b1; b2 = sec[s].b2; a1 = sec[s].a1; a2 = sec[s].a2
            z0 = z + 2 * s * n_channels
            z1 = z0 + n_channels
            # Two channels per step, loads first and stores last, as straight-line code the
            # compiler can turn into 2-lane SIMD (SSE2 / NEON) at -O2 with no alias checks.
            for c in range(0, pairs, 2):
                v0 = src[c]; v1 = src[c + 1]
                p0 = z0[c]; p1 = z0[c + 1]
                q0 = z1[c]; q1 = z1[c + 1]
                w0 = b0 * v0 + p0; w1 = b0 * v1 + p1
                p0 = (b1 * v0 - a1 * w0) + q0; p1 = (b1 * v1 - a1 * w1) + q1
                q0 = b2 * v0 - a2 * w0; q1 = b2 * v1 - a2 * w1
                z0[c] = p0; z0[c + 1] = p1
                z1[c] = q0; z1[c + 1] = q1
                dst[c] = w0; dst[c + 1] = w1
            if pairs < n_channels:
                c = pairs
                v0 = src[c]
                w0 = b0 * v0 + z0[c]
                z0[c] = (b1 * v0 - a1 * w0) + z1[c]
                z1[c] = b2 * v0 - a2 * w0
                dst[c] = w0
            src = dst
        # x - x is 0 for finite x and NaN for NaN or inf: one NaN-check for the row, two
        # lanes wide like the loop above (a single accumulator would be a serial chain).
        bad0 = 0.0
        bad1 = 0.0
        for c in range(0, pairs, 2):
            bad0 += dst[c] - dst[c]
            bad1 += dst[c + 1] - dst[c + 1]
        if pairs < n_channels:
            bad0 += dst[pairs] - dst[pairs]
        if bad0 != bad0 or bad1 != bad1:
            for c in range(n_channels):
                if not isfinite(dst[c]):
                    dst[c] = NAN
                    for k in range(2 * n_sections):
                        z[k * n_channels + c] = 0.0
                    if not pending[c]:
                        pending[c] = True
                        n_pending[0] += 1


@cython.final
cdef class SosFilterBank:
    """The same SOS cascade on `n_channels` channels at once; state per channel.

    x is a C-contiguous block (n_samples, n_channels), channels side by side; every channel
    gets the same coefficients (one design per signal kind) and its own state and
    bad-sample handling. Channel c's output is bit for bit what a SosFilter would give.
    """

    cdef Section* _sec
    cdef double* _z
    cdef double* _zu
    cdef bint* _pending
    cdef Py_ssize_t _n_pending
    cdef Py_ssize_t _ns
    cdef readonly Py_ssize_t n_channels
    cdef bint _steady

    def __cinit__(self, *args, **kwargs):
        self._sec = NULL
        self._z = NULL
        self._zu = NULL
        self._pending = NULL

    def __init__(self, sos, n_channels, zi_unit=None, init="steady"):
        sections = _sections(sos)
        unit = _zi_unit(sections, zi_unit)
        steady = _steady(init)
        try:
            if isinstance(n_channels, bool):
                raise TypeError
            channels = index(n_channels)
        except TypeError:
            raise ValueError(f"n_channels must be an integer, got {n_channels!r}") from None
        if not 1 <= channels <= 4096:
            raise ValueError(f"n_channels must be in 1..4096, got {channels}")
        cdef Py_ssize_t n = len(sections)
        PyMem_Free(self._sec)
        self._sec = <Section*>PyMem_Malloc(n * sizeof(Section))
        PyMem_Free(self._z)
        self._z = <double*>PyMem_Malloc(2 * n * channels * sizeof(double))
        PyMem_Free(self._zu)
        self._zu = <double*>PyMem_Malloc(2 * n * sizeof(double))
        PyMem_Free(self._pending)
        self._pending = <bint*>PyMem_Malloc(channels * sizeof(bint))
        if not (self._sec and self._z and self._zu and self._pending):
            raise MemoryError()
        self._ns = n
        self.n_channels = channels
        for i, (b0, b1, b2, a1, a2) in enumerate(sections):
            self._sec[i].b0, self._sec[i].b1, self._sec[i].b2 = b0, b1, b2
            self._sec[i].a1, self._sec[i].a2 = a1, a2
        for i, v in enumerate(unit):
            self._zu[i] = v
        self._steady = steady
        self.reset()

    def __dealloc__(self):
        PyMem_Free(self._sec)
        PyMem_Free(self._z)
        PyMem_Free(self._zu)
        PyMem_Free(self._pending)

    @property
    def n_sections(self) -> int:
        return self._ns

    @property
    def initialised(self) -> list:
        """Per channel: False while its next finite sample will set its state."""
        return [not self._pending[c] for c in range(self.n_channels)]

    @property
    def state(self) -> list:
        """A copy of the state, shape (n_sections, 2, n_channels) as scipy's zi on axis 0."""
        cdef Py_ssize_t C = self.n_channels
        return [
            [[self._z[(2 * s + j) * C + c] for c in range(C)] for j in range(2)]
            for s in range(self._ns)
        ]

    def set_state(self, zi) -> None:
        """Sets the state, shape (n_sections, 2, n_channels); every channel is initialised."""
        cdef Py_ssize_t C = self.n_channels
        try:
            flat = [float(v) for sec in zi for pair in sec for v in pair]
            shape_ok = len(zi) == self._ns and all(
                len(sec) == 2 and all(len(pair) == C for pair in sec) for sec in zi
            )
        except (TypeError, ValueError):
            shape_ok = False
        if not shape_ok:
            raise ValueError(f"zi must have shape ({self._ns}, 2, {C})")
        for k, v in enumerate(flat):
            self._z[k] = v
        for c in range(C):
            self._pending[c] = False
        self._n_pending = 0

    def reset(self) -> None:
        """Back to the state of a new bank: zeros, awaiting the first sample if steady."""
        cdef Py_ssize_t k
        for k in range(2 * self._ns * self.n_channels):
            self._z[k] = 0.0
        for k in range(self.n_channels):
            self._pending[k] = self._steady
        self._n_pending = self.n_channels if self._steady else 0

    def process(self, const double[:, ::1] x, double[:, ::1] out) -> None:
        """Filters x (n_samples, n_channels) into out[:n_samples]; out may be x itself."""
        cdef Py_ssize_t n = x.shape[0]
        if x.shape[1] != self.n_channels or out.shape[1] != self.n_channels:
            raise ValueError(
                f"expected {self.n_channels} channels, got x with {x.shape[1]} "
                f"and out with {out.shape[1]}"
            )
        _check_lengths(n, out.shape[0])
        if n == 0:
            return
        cdef const double* src = &x[0, 0]
        cdef double* dst = &out[0, 0]
        with nogil:
            _bank_rows(self._sec, self._ns, self.n_channels, self._z, self._zu,
                       self._pending, &self._n_pending, src, dst, n)


# -- decimation ---------------------------------------------------------------------------------


@cython.final
cdef class Decimator:
    """Anti-alias SOS low-pass, then every factor-th sample; the phase carries across calls.

    The kept samples are those at stream indices 0, factor, 2 x factor, ... counted from
    construction or reset (scipy's `decimate` keeps y[::factor]). `sos` is the low-pass,
    normally `edge_agent.filters.design.decimate_sos(factor)` (order 8, cutoff 0.8 x the new
    Nyquist); the kernel cannot design it, since it imports nothing of the agent.
    """

    cdef SosFilter _filter
    cdef double* _scratch
    cdef readonly Py_ssize_t factor
    cdef Py_ssize_t _phase

    def __cinit__(self, *args, **kwargs):
        self._scratch = NULL

    def __init__(self, factor, sos, zi_unit=None, init="steady"):
        try:
            if isinstance(factor, bool):
                raise TypeError
            f = index(factor)
        except TypeError:
            raise ValueError(f"decimation factor must be an integer, got {factor!r}") from None
        if not 1 <= f <= 1_000_000:
            raise ValueError(f"decimation factor must be in 1..1000000, got {f}")
        self._filter = SosFilter(sos, zi_unit, init)
        PyMem_Free(self._scratch)
        self._scratch = NULL
        self._scratch = _alloc(_CHUNK)
        self.factor = f
        self._phase = 0

    def __dealloc__(self):
        PyMem_Free(self._scratch)

    @property
    def phase(self) -> int:
        """Samples since the last kept one (0: the next input sample is kept)."""
        return self._phase

    @property
    def state(self) -> list:
        return self._filter.state

    @property
    def initialised(self) -> bool:
        return self._filter.initialised

    def set_state(self, zi) -> None:
        self._filter.set_state(zi)

    def reset(self) -> None:
        """Back to a new decimator: filter reset, next sample kept."""
        self._filter.reset()
        self._phase = 0

    def process(self, const double[::1] x, double[::1] out) -> int:
        """Filters x and writes the kept samples to out; returns how many were written.

        out must hold ceil(len(x) / factor) samples (the most any phase can keep); out may
        be x itself (a kept sample never overwrites one not yet read).
        """
        cdef Py_ssize_t n = x.shape[0]
        cdef Py_ssize_t f = self.factor
        cdef Py_ssize_t need = (n + f - 1) // f
        if out.shape[0] < need:
            raise ValueError(
                f"output too short: {out.shape[0]} slots, decimating {n} samples by {f} "
                f"needs {need}"
            )
        if n == 0:
            return 0
        cdef const double* src = &x[0]
        cdef double* dst = &out[0]
        cdef double* scratch = self._scratch
        cdef Py_ssize_t start, m, j, written = 0
        cdef Py_ssize_t phase = self._phase
        with nogil:
            start = 0
            while start < n:
                m = min(<Py_ssize_t>_CHUNK, n - start)
                self._filter._filter(src + start, scratch, m)
                j = (f - phase) % f  # first kept index in this chunk
                while j < m:
                    dst[written] = scratch[j]
                    written += 1
                    j += f
                phase = (phase + m) % f
                start += m
        self._phase = phase
        return written


# -- convenience ------------------------------------------------------------------------------


def sosfilt(sos, x, zi=None):
    """Like `scipy.signal.sosfilt` on one channel, allocating: y, or (y, zf) when zi is given.

    y is an `array.array('d')`, zf a list of [z0, z1] per section. The state starts at
    zero (or zi), as scipy's; bad samples follow the policy above (scipy would be poisoned).
    """
    f = SosFilter(sos, init="zeros")
    if zi is not None:
        f.set_state(zi)
    y = array.array("d")
    try:
        view = memoryview(x)
    except TypeError:
        view = None
    if view is not None and view.format == "d" and view.ndim == 1 and view.c_contiguous:
        y.frombytes(view.cast("B"))
    else:
        y.extend(float(v) for v in x)
    f.process(y, y)
    if zi is None:
        return y
    return y, f.state
