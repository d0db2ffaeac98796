# cython: language_level=3, cdivision=True
"""The packed block of a data frame: every series (stamps, then values) in one call.

docs/wire-format.md ("Packed block") is the spec, byte for byte; the plain-Python twin is
`tests/oracles/valuepack_oracle.py`, which makes the same encoder choices, so the bytes match.
Per series: constant, delta, delta-of-delta or level (differences from the median), zigzag,
then the cheaper of Rice coding or a sparse form (a bitmap of the non-zero residuals, then
those Rice coded), all in one LSB-first bitstream; headers are short prefix codes. Imports
nothing of the agent; one call per frame.
"""

cimport cython
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.stdlib cimport qsort
from libc.string cimport memcpy

import array

# Limits that keep every sum of a series' residuals inside 64 bits (docs/wire-format.md).
MAX_ABS = (1 << 48) - 1
MAX_COUNT = 8192
MAX_QUOTIENT = 64
#: `share` entry of a series whose count is written (the others share an earlier one's).
COUNTED = -1

cdef int64_t _MAX_ABS = (1 << 48) - 1
cdef Py_ssize_t _MAX_COUNT = 8192
cdef uint64_t _MAX_QUOTIENT = 64
cdef int _MAX_WIDTH = 56
cdef int _COUNTED = -1

# Modes as the numbers _put writes, least significant bit first, for the prefix codes
# 0 (delta, 1 bit), 10 (constant, 2 bits), 110 (level, 3 bits) and 111 (delta-of-delta).
cdef enum:
    MODE_DELTA = 0
    MODE_CONSTANT = 1
    MODE_LEVEL = 3
    MODE_DOD = 7
    CODE_RICE = 0
    CODE_SPARSE = 1


class PackError(ValueError):
    """A packed block that cannot be made or read: one line saying why."""


cdef inline uint64_t _zz(int64_t v) noexcept nogil:
    return (<uint64_t>v << 1) ^ <uint64_t>(v >> 63)


cdef inline int64_t _unzz(uint64_t z) noexcept nogil:
    return <int64_t>(z >> 1) ^ -<int64_t>(z & 1)


cdef extern from *:
    """
    /* GCC and Clang on every target we build for (x86_64, aarch64): one instruction. */
    static inline int edge_bitlen64(unsigned long long v) { return v ? 64 - __builtin_clzll(v) : 0; }
    """
    int edge_bitlen64(unsigned long long v) noexcept nogil


cdef inline int _bitlen(uint64_t v) noexcept nogil:
    return edge_bitlen64(v)


# -- the bit writer ----------------------------------------------------------------------

cdef struct Writer:
    uint8_t* buf
    Py_ssize_t byte
    uint64_t acc
    int nacc


cdef inline void _put(Writer* w, uint64_t value, int width) noexcept nogil:
    """The low `width` bits of value (width <= 56), least significant first. Fewer than 8
    bits wait in the accumulator between calls, so it always has room; all 8 of its bytes
    are stored each time (the buffer has 8 spare) and the whole ones are passed: no branch."""
    cdef int whole
    w.acc |= (value & ((<uint64_t>1 << width) - 1)) << w.nacc
    w.nacc += width
    w.buf[w.byte] = <uint8_t>w.acc
    w.buf[w.byte + 1] = <uint8_t>(w.acc >> 8)
    w.buf[w.byte + 2] = <uint8_t>(w.acc >> 16)
    w.buf[w.byte + 3] = <uint8_t>(w.acc >> 24)
    w.buf[w.byte + 4] = <uint8_t>(w.acc >> 32)
    w.buf[w.byte + 5] = <uint8_t>(w.acc >> 40)
    w.buf[w.byte + 6] = <uint8_t>(w.acc >> 48)
    w.buf[w.byte + 7] = <uint8_t>(w.acc >> 56)
    whole = w.nacc >> 3
    w.byte += whole
    w.acc >>= whole << 3
    w.nacc &= 7


cdef inline void _unary(Writer* w, uint64_t q) noexcept nogil:
    while q >= 32:
        _put(w, 0xFFFFFFFF, 32)
        q -= 32
    _put(w, (<uint64_t>1 << q) - 1, <int>q + 1)


cdef inline void _small(Writer* w, int x) noexcept nogil:
    """4 bits for 0..14; 15 and then 6 bits for 15..56."""
    if x < 15:
        _put(w, <uint64_t>x, 4)
    else:
        _put(w, 15 | (<uint64_t>x << 4), 10)


cdef inline int _small_bits(int x) noexcept nogil:
    return 4 if x < 15 else 10


cdef inline void _num(Writer* w, uint64_t u) noexcept nogil:
    """0 as one 0-bit; else a 1-bit, small(bit length - 1), the bits below the top one."""
    cdef int top
    if u == 0:
        _put(w, 0, 1)
        return
    top = _bitlen(u) - 1
    if top < 15:
        _put(w, 1 | (<uint64_t>top << 1), 5)
    else:
        _put(w, 1 | (15 << 1) | (<uint64_t>top << 5), 11)
    _put(w, u, top)


cdef inline uint64_t _num_bits(uint64_t u) noexcept nogil:
    cdef int top
    if u == 0:
        return 1
    top = _bitlen(u) - 1
    return <uint64_t>(1 + _small_bits(top) + top)


cdef inline uint64_t _signed_bits(int64_t v) noexcept nogil:
    return _num_bits(_zz(v))


# -- choosing a residual code ------------------------------------------------------------

cdef struct Choice:
    uint64_t bits
    int code
    int param


cdef inline void _offer(Choice* best, uint64_t cost, int code, int param) noexcept nogil:
    if cost < best.bits:
        best.bits, best.code, best.param = cost, code, param


cdef inline uint64_t _rice(Py_ssize_t n, int k, uint64_t quotients) noexcept nogil:
    """Bits of n residuals Rice coded with parameter k, with the code bit and parameter."""
    return <uint64_t>(1 + _small_bits(k)) + <uint64_t>n * <uint64_t>(k + 1) + quotients


cdef struct Stats:
    uint64_t total  # the residuals' sum
    uint64_t top  # the largest
    Py_ssize_t m  # how many are not zero


cdef inline void _tally(Stats* st, uint64_t v) noexcept nogil:
    st.total += v
    if v > st.top:
        st.top = v
    st.m += v != 0


cdef Choice _choose(const uint64_t* z, Py_ssize_t n, Stats st) noexcept nogil:
    """The cheapest residual code, as docs/wire-format.md specifies: Rice with parameters
    k-1, k, k+1 around the bit length of the mean, then sparse likewise (over the non-zero
    residuals less one); a later one only if strictly cheaper; a parameter only if every
    quotient stays within MAX_QUOTIENT (Rice falls back to bitlen(top) - 6 when none does).
    The statistics come tallied as the residuals were made; one pass here."""
    cdef uint64_t top = st.top, total = st.total, v, fallback = 0
    cdef Py_ssize_t i, m = st.m
    # Over the non-zero residuals less one: their sum and largest.
    cdef uint64_t stotal = total - <uint64_t>m, stop = top - 1 if m else 0
    cdef int k = _bitlen(total // <uint64_t>n)
    cdef int ks = _bitlen(stotal // <uint64_t>m) if m else 0
    cdef uint64_t r0 = 0, r1 = 0, r2 = 0, q0 = 0, q1 = 0, q2 = 0
    cdef int a0 = k - 1 if k > 0 else 0, b0 = ks - 1 if ks > 0 else 0
    cdef bint sparse = 0 < m < n  # sparse only where some residual is zero and some is not
    for i in range(n):  # the quotient sums of the candidates
        v = z[i]
        r0 += v >> a0
        r1 += v >> k
        r2 += v >> (k + 1)
        if sparse and v:
            v -= 1
            q0 += v >> b0
            q1 += v >> ks
            q2 += v >> (ks + 1)
    cdef Choice best
    best.bits, best.code, best.param = <uint64_t>-1, CODE_RICE, 0
    if k > 0 and (top >> (k - 1)) <= _MAX_QUOTIENT:
        _offer(&best, _rice(n, k - 1, r0), CODE_RICE, k - 1)
    if (top >> k) <= _MAX_QUOTIENT:
        _offer(&best, _rice(n, k, r1), CODE_RICE, k)
    if (top >> (k + 1)) <= _MAX_QUOTIENT:
        _offer(&best, _rice(n, k + 1, r2), CODE_RICE, k + 1)
    if best.bits == <uint64_t>-1:  # one huge residual among small ones
        k = _bitlen(top) - 6
        for i in range(n):
            fallback += z[i] >> k
        best.bits, best.param = _rice(n, k, fallback), k
    if sparse:
        if ks > 0 and (stop >> (ks - 1)) <= _MAX_QUOTIENT:
            _offer(&best, _rice(m, ks - 1, q0) + <uint64_t>n, CODE_SPARSE, ks - 1)
        if (stop >> ks) <= _MAX_QUOTIENT:
            _offer(&best, _rice(m, ks, q1) + <uint64_t>n, CODE_SPARSE, ks)
        if (stop >> (ks + 1)) <= _MAX_QUOTIENT:
            _offer(&best, _rice(m, ks + 1, q2) + <uint64_t>n, CODE_SPARSE, ks + 1)
    return best


cdef inline void _rice_put(Writer* w, uint64_t z, int k) noexcept nogil:
    """unary(z >> k) then the low k bits of z; one store when they fit in 56 bits."""
    cdef uint64_t q = z >> k
    if q + 1 + <uint64_t>k <= 56:
        _put(w, ((<uint64_t>1 << q) - 1) | ((z & ((<uint64_t>1 << k) - 1)) << (q + 1)),
             <int>(q + 1) + k)
    else:
        _unary(w, q)
        _put(w, z & ((<uint64_t>1 << k) - 1), k)


cdef void _put_code(Writer* w, const uint64_t* z, Py_ssize_t n, Choice c) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef uint64_t flags
    _put(w, <uint64_t>c.code, 1)
    _small(w, c.param)
    if c.code == CODE_RICE:
        for i in range(n):
            _rice_put(w, z[i], c.param)
        return
    for i in range(0, n, 32):  # the bitmap, up to 32 flags a store
        flags = 0
        for j in range(i, min(n, i + 32)):
            flags |= <uint64_t>(z[j] != 0) << (j - i)
        _put(w, flags, <int>(min(n, i + 32) - i))
    for i in range(n):
        if z[i]:
            _rice_put(w, z[i] - 1, c.param)


# -- pack --------------------------------------------------------------------------------

cdef int _order(const void* a, const void* b) noexcept nogil:
    cdef int64_t x = (<const int64_t*>a)[0], y = (<const int64_t*>b)[0]
    return (x > y) - (x < y)


cdef int64_t _median(const int64_t* q, int64_t* scratch, Py_ssize_t n) noexcept nogil:
    """sorted(q)[n // 2]. For the short series of a 1-s frame, the first value with at most
    n // 2 values below it and more than n // 2 at or below it: compares without branches,
    where a sort mispredicts about every other one. qsort beyond."""
    cdef Py_ssize_t i, j, below, at_most
    cdef int64_t v
    if n > 16:
        memcpy(scratch, q, n * sizeof(int64_t))
        qsort(scratch, n, sizeof(int64_t), _order)
        return scratch[n // 2]
    for i in range(n):
        v = q[i]
        below = at_most = 0
        for j in range(n):
            below += q[j] < v
            at_most += q[j] <= v
        if below <= n // 2 < at_most:  # v holds position n // 2 of the sorted values
            return v
    return q[0]  # not reached: some value holds every position


cdef inline bint _level_worth_trying(const int64_t* q, Py_ssize_t n, uint64_t zd_total) noexcept nogil:
    """Whether the values stray from their mean (floored) no further, on average, than they
    move from one to the next: noise around a level, where the median may beat the deltas.
    Averages in whole units (floor division), as docs/wire-format.md has it. Deciding costs
    two short passes; trying costs a median and a third code choice."""
    cdef int64_t total = 0, mean
    cdef uint64_t deviation = 0
    cdef Py_ssize_t j
    for j in range(n):
        total += q[j]
    mean = total // n
    if total % n and total < 0:  # floor, not C's truncation
        mean -= 1
    for j in range(n):
        deviation += <uint64_t>(q[j] - mean if q[j] >= mean else mean - q[j])
    return deviation // <uint64_t>n <= zd_total // <uint64_t>(2 * (n - 1))


cdef struct Scratch:
    uint64_t* zd
    uint64_t* zdd
    uint64_t* zl
    int64_t* sorted_q


cdef void _put_series(Writer* w, const int64_t* q, Py_ssize_t count, Scratch* s) noexcept nogil:
    """One series: its mode, first value (or base) and residuals, the cheapest of the modes
    docs/wire-format.md lists (ties to delta, then delta-of-delta)."""
    cdef Py_ssize_t j
    cdef bint constant = True
    cdef Choice cd, cdd, cl
    cdef Stats st, sdd, sl  # of the deltas, deltas of deltas and differences from the median
    cdef int64_t d0 = 0, base = 0, dmin, dmax
    cdef uint64_t best_bits, bits
    cdef int mode
    for j in range(1, count):
        if q[j] != q[0]:
            constant = False
            break
    if constant:
        _put(w, MODE_CONSTANT, 2)
        _num(w, _zz(q[0]))
        return
    dmin = dmax = q[1] - q[0]
    st.total, st.top, st.m = 0, 0, 0
    for j in range(count - 1):
        d0 = q[j + 1] - q[j]
        s.zd[j] = _zz(d0)
        _tally(&st, s.zd[j])
        if d0 < dmin:
            dmin = d0
        elif d0 > dmax:
            dmax = d0
    cd = _choose(s.zd, count - 1, st)
    best_bits = 1 + _signed_bits(q[0]) + cd.bits
    mode = MODE_DELTA
    d0 = q[1] - q[0]
    # Deltas that vary less than they are large: a ramp, where delta-of-delta may win.
    if count > 2 and dmax - dmin < max(dmax, -dmin):
        sdd.total, sdd.top, sdd.m = 0, 0, 0
        for j in range(count - 2):
            s.zdd[j] = _zz((q[j + 2] - q[j + 1]) - (q[j + 1] - q[j]))
            _tally(&sdd, s.zdd[j])
        cdd = _choose(s.zdd, count - 2, sdd)
        bits = 3 + _signed_bits(q[0]) + _signed_bits(d0) + cdd.bits
        if bits < best_bits:
            best_bits, mode = bits, MODE_DOD
    if _level_worth_trying(q, count, st.total):
        base = _median(q, s.sorted_q, count)
        sl.total, sl.top, sl.m = 0, 0, 0
        for j in range(count):
            s.zl[j] = _zz(q[j] - base)
            _tally(&sl, s.zl[j])
        cl = _choose(s.zl, count, sl)
        if 3 + _signed_bits(base) + cl.bits < best_bits:
            mode = MODE_LEVEL
    if mode == MODE_DELTA:
        _put(w, MODE_DELTA, 1)
        _num(w, _zz(q[0]))
        _put_code(w, s.zd, count - 1, cd)
    elif mode == MODE_DOD:
        _put(w, MODE_DOD, 3)
        _num(w, _zz(q[0]))
        _num(w, _zz(d0))
        _put_code(w, s.zdd, count - 2, cdd)
    else:
        _put(w, MODE_LEVEL, 3)
        _num(w, _zz(base))
        _put_code(w, s.zl, count, cl)


cdef int _check_share(const int[:] share) except -1:
    cdef Py_ssize_t i
    cdef int at
    for i in range(share.shape[0]):
        at = share[i]
        if at != _COUNTED and not (0 <= at < i and share[at] == _COUNTED):
            raise PackError(f"packed block: series {i} shares the count of a bad series {at}")
    return 0


@cython.boundscheck(False)
@cython.wraparound(False)
def pack(
    const int[:] counts not None, const long long[:] values not None, const int[:] share not None
) -> bytes:
    """Series of quantized values (concatenated; `counts` per series) -> the block.
    `share[i]` is COUNTED for a series whose count is written, else the earlier counted
    series whose count it has (the decoder knows which from the frame's layout)."""
    cdef Py_ssize_t nch = counts.shape[0], total = 0, i, start, count, longest = 0
    if share.shape[0] != nch:
        raise PackError(f"packed block: {share.shape[0]} share entries for {nch} series")
    _check_share(share)
    for i in range(nch):
        count = counts[i]
        if count < 1 or count > _MAX_COUNT:
            raise PackError(f"packed block: counts must be 1..{MAX_COUNT}, got {count}")
        if share[i] != _COUNTED and count != counts[share[i]]:
            raise PackError(f"packed block: series {i} has another count than series {share[i]}")
        total += count
        if count > longest:
            longest = count
    if total != values.shape[0]:
        raise PackError(
            f"packed block: counts sum to {total}, but {values.shape[0]} values were given"
        )
    cdef bint outside = False
    for i in range(total):  # without a branch per value; the message names the first
        outside |= <uint64_t>values[i] + <uint64_t>_MAX_ABS > <uint64_t>(2 * _MAX_ABS)
    if outside:
        for i in range(total):
            if values[i] > _MAX_ABS or values[i] < -_MAX_ABS:
                raise PackError(f"packed block: {values[i]} is outside +-(2**48 - 1)")
    cdef Py_ssize_t cap = 16 * total + 32 * nch + 16 + 8  # 8 spare for _put's stores
    cdef uint8_t* buf = <uint8_t*>PyMem_Malloc(cap)
    cdef Scratch s
    s.zd = <uint64_t*>PyMem_Malloc(max(longest, 1) * sizeof(uint64_t))
    s.zdd = <uint64_t*>PyMem_Malloc(max(longest, 1) * sizeof(uint64_t))
    s.zl = <uint64_t*>PyMem_Malloc(max(longest, 1) * sizeof(uint64_t))
    s.sorted_q = <int64_t*>PyMem_Malloc(max(longest, 1) * sizeof(int64_t))
    cdef Writer w
    try:
        if buf == NULL or s.zd == NULL or s.zdd == NULL or s.zl == NULL or s.sorted_q == NULL:
            raise MemoryError()
        w.buf, w.byte, w.acc, w.nacc = buf, 0, 0, 0
        start = 0
        for i in range(nch):
            count = counts[i]
            if share[i] == _COUNTED:
                _num(&w, <uint64_t>count)
            _put_series(&w, <const int64_t*>&values[start], count, &s)
            start += count
        return PyBytes_FromStringAndSize(<char*>buf, w.byte + (w.nacc > 0))
    finally:
        PyMem_Free(buf)
        PyMem_Free(s.zd)
        PyMem_Free(s.zdd)
        PyMem_Free(s.zl)
        PyMem_Free(s.sorted_q)


# -- unpack ------------------------------------------------------------------------------

cdef struct Reader:
    const uint8_t* buf
    Py_ssize_t nbits
    Py_ssize_t pos


cdef inline int _get(Reader* r, int width, uint64_t* out) noexcept nogil:
    """Read `width` bits (<= 56) into out; -1 past the end."""
    cdef uint64_t value = 0
    cdef int got = 0, take, shift
    cdef Py_ssize_t byte
    if r.pos + width > r.nbits:
        return -1
    while got < width:
        byte = r.pos >> 3
        shift = r.pos & 7
        take = 8 - shift
        if take > width - got:
            take = width - got
        value |= (<uint64_t>((r.buf[byte] >> shift) & ((1 << take) - 1))) << got
        got += take
        r.pos += take
    out[0] = value
    return 0


cdef inline int _get_unary(Reader* r, uint64_t* out) noexcept nogil:
    cdef uint64_t q = 0, bit
    while True:
        if _get(r, 1, &bit) < 0:
            return -1
        if not bit:
            out[0] = q
            return 0
        q += 1
        if q > _MAX_QUOTIENT:
            return -2


cdef inline int _get_small(Reader* r, uint64_t* out) noexcept nogil:
    """0, or -1 truncated, -2 an escaped width outside 15..56."""
    if _get(r, 4, out) < 0:
        return -1
    if out[0] < 15:
        return 0
    if _get(r, 6, out) < 0:
        return -1
    return 0 if 15 <= out[0] <= <uint64_t>_MAX_WIDTH else -2


cdef inline int _get_num(Reader* r, uint64_t* out) noexcept nogil:
    cdef uint64_t flag, top, low
    cdef int status
    if _get(r, 1, &flag) < 0:
        return -1
    if not flag:
        out[0] = 0
        return 0
    status = _get_small(r, &top)
    if status:
        return status
    if _get(r, <int>top, &low) < 0:
        return -1
    out[0] = (<uint64_t>1 << top) | low
    return 0


cdef inline int _get_signed(Reader* r, int64_t* out, int64_t limit) noexcept nogil:
    """0, or -1 truncated, -2 a bad width, -3 a value beyond +-limit."""
    cdef uint64_t z
    cdef int status = _get_num(r, &z)
    if status:
        return status
    if z > 2 * <uint64_t>limit:
        return -3
    out[0] = _unzz(z)
    return 0


cdef int _get_code(Reader* r, uint64_t* z, Py_ssize_t n) noexcept nogil:
    """n residuals into z; 0, or -1 truncated, -2 a bad parameter or unary run."""
    cdef uint64_t code, param, q, low, flag
    cdef Py_ssize_t i
    cdef int status
    if _get(r, 1, &code) < 0:
        return -1
    status = _get_small(r, &param)
    if status:
        return status
    if code == CODE_SPARSE:
        for i in range(n):
            if _get(r, 1, &flag) < 0:
                return -1
            z[i] = flag
    for i in range(n):
        if code == CODE_SPARSE and not z[i]:
            continue
        status = _get_unary(r, &q)
        if status:
            return status
        if _get(r, <int>param, &low) < 0:
            return -1
        z[i] = (q << param) | low
        if code == CODE_SPARSE:
            z[i] += 1
    return 0


cdef int _get_series(Reader* r, uint64_t* z, int64_t* out, Py_ssize_t count) noexcept nogil:
    """One series into out; 0, or -1 truncated, -2 a bad code, -3 a value out of range,
    -4 delta-of-delta for fewer than 3 values."""
    cdef Py_ssize_t j
    cdef uint64_t bit
    cdef int64_t d
    cdef int status, mode = MODE_DELTA
    if _get(r, 1, &bit) < 0:
        return -1
    if bit:
        if _get(r, 1, &bit) < 0:
            return -1
        mode = MODE_CONSTANT
        if bit:
            if _get(r, 1, &bit) < 0:
                return -1
            mode = MODE_DOD if bit else MODE_LEVEL
    status = _get_signed(r, &out[0], _MAX_ABS)
    if status:
        return status
    if mode == MODE_CONSTANT:
        for j in range(1, count):
            out[j] = out[0]
        return 0
    if mode == MODE_LEVEL:  # out[0] holds the base
        status = _get_code(r, z, count)
        if status:
            return status
        d = out[0]
        for j in range(count):
            out[j] = d + _unzz(z[j])
            if out[j] > _MAX_ABS or out[j] < -_MAX_ABS:
                return -3
        return 0
    if mode == MODE_DELTA:
        status = _get_code(r, z, count - 1)
        if status:
            return status
        for j in range(1, count):
            out[j] = out[j - 1] + _unzz(z[j - 1])
            if out[j] > _MAX_ABS or out[j] < -_MAX_ABS:
                return -3
        return 0
    if count < 3:
        return -4
    status = _get_signed(r, &d, 2 * _MAX_ABS)  # the first delta spans up to twice the range
    if status:
        return status
    status = _get_code(r, z, count - 2)
    if status:
        return status
    out[1] = out[0] + d
    if out[1] > _MAX_ABS or out[1] < -_MAX_ABS:
        return -3
    for j in range(2, count):
        d += _unzz(z[j - 2])
        if d > 2 * _MAX_ABS or d < -2 * _MAX_ABS:
            return -3
        out[j] = out[j - 1] + d
        if out[j] > _MAX_ABS or out[j] < -_MAX_ABS:
            return -3
    return 0


_SERIES_ERRORS = {
    -1: "packed block: truncated",
    -2: "packed block: a bad field width, residual code or unary run",
    -3: "packed block: a value outside +-(2**48 - 1)",
    -4: "packed block: delta-of-delta needs 3 or more values",
}


@cython.boundscheck(False)
@cython.wraparound(False)
def unpack(const uint8_t[:] data not None, const int[:] share not None, Py_ssize_t max_values=1 << 20):
    """The block -> (counts array('i'), values array('q')); PackError on malformed input.
    `share` is the frame's layout, as given to pack. A written count claims its values and
    those of every series sharing it: a block claiming more than `max_values` in all is
    refused when the count that takes it over is read, before any of it is decoded."""
    cdef Py_ssize_t nch = share.shape[0], i, count, total = 0, claimed = 0
    _check_share(share)
    counts = array.array("i", bytes(4 * nch))
    cdef int[:] cview = counts
    sharing = array.array("i", bytes(4 * nch))  # series per written count, its own included
    cdef int[:] per_count = sharing
    for i in range(nch):
        per_count[i if share[i] == _COUNTED else share[i]] += 1
    cdef Reader r
    r.buf, r.nbits, r.pos = &data[0] if data.shape[0] else NULL, 8 * data.shape[0], 0
    cdef uint64_t declared = 0, pad
    cdef uint64_t* z = <uint64_t*>PyMem_Malloc(_MAX_COUNT * sizeof(uint64_t))
    cdef Py_ssize_t capacity = 1024
    cdef int64_t* out = <int64_t*>PyMem_Malloc(capacity * sizeof(int64_t))
    cdef int64_t* grown
    cdef int status
    try:
        if z == NULL or out == NULL:
            raise MemoryError()
        for i in range(nch):
            if share[i] == _COUNTED:
                status = _get_num(&r, &declared)
                if status:
                    raise PackError(_SERIES_ERRORS[status])
                count = <Py_ssize_t>declared if declared <= <uint64_t>_MAX_COUNT else -1
                if count >= 1:
                    claimed += count * per_count[i]
                    if claimed > max_values:
                        raise PackError(
                            f"packed block: claims {claimed} values or more, over {max_values}"
                        )
            else:
                count = cview[share[i]]
            if count < 1 or total + count > max_values:
                raise PackError(f"packed block: a bad count {declared if count < 0 else count}")
            if total + count > capacity:
                while total + count > capacity:
                    capacity *= 2
                grown = <int64_t*>PyMem_Realloc(out, capacity * sizeof(int64_t))
                if grown == NULL:
                    raise MemoryError()
                out = grown
            status = _get_series(&r, z, &out[total], count)
            if status:
                raise PackError(_SERIES_ERRORS[status])
            cview[i] = <int>count
            total += count
        pad = 0
        if r.pos & 7:
            _get(&r, 8 - <int>(r.pos & 7), &pad)
        if data.shape[0] != r.pos >> 3 or pad:
            raise PackError("packed block: trailing bits")
        values = array.array("q", PyBytes_FromStringAndSize(<char*>out, total * sizeof(int64_t)))
    finally:
        PyMem_Free(z)
        PyMem_Free(out)
    return counts, values
