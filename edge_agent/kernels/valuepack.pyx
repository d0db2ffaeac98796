# cython: language_level=3
"""The packed values block of a data frame: every channel's quantized values in one call.

docs/wire-format.md ("Packed values") is the spec, byte for byte; the plain-Python twin is
`tests/oracles/valuepack_oracle.py`, which makes the same encoder choices, so the bytes match.
Per channel: constant, delta or delta-of-delta, zigzag, then the cheapest of fixed-width bit
packing, Rice coding, or a sparse form (a bitmap of the non-zero residuals, then those Rice
coded), all in one LSB-first bitstream. Imports nothing of the agent; one call per frame.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.stdlib cimport qsort
from libc.string cimport memcpy

import array

# Limits that keep every sum of a channel's residuals inside 64 bits (docs/wire-format.md).
MAX_ABS = (1 << 48) - 1
MAX_COUNT = 8192
MAX_QUOTIENT = 64

cdef int64_t _MAX_ABS = (1 << 48) - 1
cdef Py_ssize_t _MAX_COUNT = 8192
cdef uint64_t _MAX_QUOTIENT = 64
# Level mode is tried only when the deltas' code takes over this many bits per value: a
# smooth channel's deltas always beat it, and trying costs a sort and a third code choice.
cdef uint64_t LEVEL_TRIED_OVER_BITS = 3

cdef enum:
    MODE_CONSTANT = 0
    MODE_DELTA = 1
    MODE_DOD = 2
    MODE_LEVEL = 3
    CODE_FIXED = 0
    CODE_RICE = 1
    CODE_SPARSE = 2


class PackError(ValueError):
    """A packed values block that cannot be made or read: one line saying why."""


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
    """The low `width` bits of value (width <= 56), least significant first. Bytes leave the
    accumulator four at a time: fewer stores than one by one."""
    if width > 32:
        _put(w, value, 32)
        value >>= 32
        width -= 32
    if width == 0:
        return
    w.acc |= (value & ((<uint64_t>1 << width) - 1)) << w.nacc
    w.nacc += width
    if w.nacc >= 32:
        w.buf[w.byte] = <uint8_t>w.acc
        w.buf[w.byte + 1] = <uint8_t>(w.acc >> 8)
        w.buf[w.byte + 2] = <uint8_t>(w.acc >> 16)
        w.buf[w.byte + 3] = <uint8_t>(w.acc >> 24)
        w.byte += 4
        w.acc >>= 32
        w.nacc -= 32


cdef inline void _unary(Writer* w, uint64_t q) noexcept nogil:
    while q >= 32:
        _put(w, 0xFFFFFFFF, 32)
        q -= 32
    _put(w, (<uint64_t>1 << q) - 1, <int>q + 1)


cdef inline void _put_signed(Writer* w, int64_t v) noexcept nogil:
    cdef uint64_t z = _zz(v)
    cdef int n = _bitlen(z)
    _put(w, <uint64_t>n, 6)
    _put(w, z, n)


cdef inline int _signed_bits(int64_t v) noexcept nogil:
    return 6 + _bitlen(_zz(v))


# -- choosing a residual code ------------------------------------------------------------

cdef struct Choice:
    uint64_t bits
    int code
    int param


cdef inline void _offer(Choice* best, uint64_t cost, int code, int param) noexcept nogil:
    if cost < best.bits:
        best.bits, best.code, best.param = cost, code, param


cdef Choice _choose(const uint64_t* z, Py_ssize_t n) noexcept nogil:
    """The cheapest residual code, as docs/wire-format.md specifies: fixed, then Rice with
    parameters k-1, k, k+1 around the bit length of the mean, then sparse likewise (over the
    non-zero residuals less one); a later one only if strictly cheaper; a Rice parameter only
    if every quotient stays within MAX_QUOTIENT. Two passes over the residuals."""
    cdef uint64_t top = 0, total = 0, stop = 0, stotal = 0, v
    cdef Py_ssize_t i, m = 0
    for i in range(n):  # pass 1: the statistics of both forms
        v = z[i]
        total += v
        if v > top:
            top = v
        if v:
            m += 1
            stotal += v - 1
            if v - 1 > stop:
                stop = v - 1
    cdef Choice best
    best.param = _bitlen(top)
    best.bits = 6 + <uint64_t>best.param * n
    best.code = CODE_FIXED
    cdef int k = _bitlen(total // <uint64_t>n)
    cdef int ks = _bitlen(stotal // <uint64_t>m) if m else 0
    cdef uint64_t r0 = 0, r1 = 0, r2 = 0, q0 = 0, q1 = 0, q2 = 0
    cdef int a0 = k - 1 if k > 0 else 0, b0 = ks - 1 if ks > 0 else 0
    for i in range(n):  # pass 2: the quotient sums of all six candidates
        v = z[i]
        r0 += v >> a0
        r1 += v >> k
        r2 += v >> (k + 1)
        if v:
            v -= 1
            q0 += v >> b0
            q1 += v >> ks
            q2 += v >> (ks + 1)
    if k > 0 and (top >> (k - 1)) <= _MAX_QUOTIENT:
        _offer(&best, 6 + <uint64_t>n * k + r0, CODE_RICE, k - 1)
    if (top >> k) <= _MAX_QUOTIENT:
        _offer(&best, 6 + <uint64_t>n * (k + 1) + r1, CODE_RICE, k)
    if (top >> (k + 1)) <= _MAX_QUOTIENT:
        _offer(&best, 6 + <uint64_t>n * (k + 2) + r2, CODE_RICE, k + 1)
    if m:
        if ks > 0 and (stop >> (ks - 1)) <= _MAX_QUOTIENT:
            _offer(&best, 6 + <uint64_t>n + <uint64_t>m * ks + q0, CODE_SPARSE, ks - 1)
        if (stop >> ks) <= _MAX_QUOTIENT:
            _offer(&best, 6 + <uint64_t>n + <uint64_t>m * (ks + 1) + q1, CODE_SPARSE, ks)
        if (stop >> (ks + 1)) <= _MAX_QUOTIENT:
            _offer(&best, 6 + <uint64_t>n + <uint64_t>m * (ks + 2) + q2, CODE_SPARSE, ks + 1)
    else:
        _offer(&best, 6 + <uint64_t>n, CODE_SPARSE, 0)
    best.bits += 2
    return best


cdef void _put_code(Writer* w, const uint64_t* z, Py_ssize_t n, Choice c) noexcept nogil:
    cdef Py_ssize_t i
    cdef uint64_t mask = (<uint64_t>1 << c.param) - 1
    _put(w, <uint64_t>c.code, 2)
    _put(w, <uint64_t>c.param, 6)
    if c.code == CODE_FIXED:
        for i in range(n):
            _put(w, z[i], c.param)
    elif c.code == CODE_RICE:
        for i in range(n):
            _unary(w, z[i] >> c.param)
            _put(w, z[i] & mask, c.param)
    else:
        for i in range(n):
            _put(w, 1 if z[i] else 0, 1)
        for i in range(n):
            if z[i]:
                _unary(w, (z[i] - 1) >> c.param)
                _put(w, (z[i] - 1) & mask, c.param)


# -- pack --------------------------------------------------------------------------------

cdef int _order(const void* a, const void* b) noexcept nogil:
    cdef int64_t x = (<const int64_t*>a)[0], y = (<const int64_t*>b)[0]
    return (x > y) - (x < y)


cdef int64_t _median(const int64_t* q, int64_t* scratch, Py_ssize_t n) noexcept nogil:
    """sorted(q)[n // 2]: insertion sort for the short series of a 1-s frame, qsort beyond."""
    cdef Py_ssize_t i, j
    cdef int64_t v
    memcpy(scratch, q, n * sizeof(int64_t))
    if n > 48:
        qsort(scratch, n, sizeof(int64_t), _order)
        return scratch[n // 2]
    for i in range(1, n):
        v = scratch[i]
        j = i - 1
        while j >= 0 and scratch[j] > v:
            scratch[j + 1] = scratch[j]
            j -= 1
        scratch[j + 1] = v
    return scratch[n // 2]


@cython.boundscheck(False)
@cython.wraparound(False)
def pack(const int[:] counts not None, const long long[:] values not None) -> bytes:
    """Every channel's quantized values (concatenated; `counts` per channel) -> the block."""
    cdef Py_ssize_t nch = counts.shape[0], total = 0, i, j, start, count, common = 1
    cdef Py_ssize_t votes = 0, longest = 0
    for i in range(nch):
        count = counts[i]
        if count < 1 or count > _MAX_COUNT:
            raise PackError(f"packed values: counts must be 1..{MAX_COUNT}, got {count}")
        total += count
        if count > longest:
            longest = count
        if votes == 0:
            common = count
        votes += 1 if count == common else -1
    if total != values.shape[0]:
        raise PackError(
            f"packed values: counts sum to {total}, but {values.shape[0]} values were given"
        )
    for i in range(total):
        if values[i] > _MAX_ABS or values[i] < -_MAX_ABS:
            raise PackError(f"packed values: {values[i]} is outside +-(2**48 - 1)")
    cdef Py_ssize_t cap = 16 * total + 32 * nch + 16
    cdef uint8_t* buf = <uint8_t*>PyMem_Malloc(cap)
    cdef uint64_t* zd = <uint64_t*>PyMem_Malloc(max(longest, 1) * sizeof(uint64_t))
    cdef uint64_t* zdd = <uint64_t*>PyMem_Malloc(max(longest, 1) * sizeof(uint64_t))
    cdef uint64_t* zl = <uint64_t*>PyMem_Malloc(max(longest, 1) * sizeof(uint64_t))
    cdef int64_t* sorted_q = <int64_t*>PyMem_Malloc(max(longest, 1) * sizeof(int64_t))
    if buf == NULL or zd == NULL or zdd == NULL or zl == NULL or sorted_q == NULL:
        PyMem_Free(buf)
        PyMem_Free(zd)
        PyMem_Free(zdd)
        PyMem_Free(zl)
        PyMem_Free(sorted_q)
        raise MemoryError()
    cdef Writer w
    cdef const int64_t* q
    cdef bint constant
    cdef Choice cd, cdd, cl
    cdef int64_t d0 = 0, base, dmin, dmax
    cdef uint64_t best_bits, bits
    cdef int mode
    try:
        w.buf, w.byte, w.acc, w.nacc = buf, 0, 0, 0
        j = common
        while j >= 0x80:  # the common count, a varint
            buf[w.byte] = <uint8_t>((j & 0x7F) | 0x80)
            w.byte += 1
            j >>= 7
        buf[w.byte] = <uint8_t>j
        w.byte += 1
        start = 0
        for i in range(nch):
            count = counts[i]
            q = <const int64_t*>&values[start]
            start += count
            if count == common:
                _put(&w, 0, 1)
            else:
                _put(&w, 1, 1)
                _put_signed(&w, count)
            constant = True
            for j in range(1, count):
                if q[j] != q[0]:
                    constant = False
                    break
            if constant:
                _put(&w, MODE_CONSTANT, 2)
                _put_signed(&w, q[0])
                continue
            dmin = dmax = q[1] - q[0]
            for j in range(count - 1):
                d0 = q[j + 1] - q[j]
                zd[j] = _zz(d0)
                if d0 < dmin:
                    dmin = d0
                elif d0 > dmax:
                    dmax = d0
            cd = _choose(zd, count - 1)
            best_bits = <uint64_t>_signed_bits(q[0]) + cd.bits
            mode = MODE_DELTA
            # Deltas that vary less than they are large: a ramp, where delta-of-delta may win.
            if count > 2 and dmax - dmin < max(dmax, -dmin):
                for j in range(count - 2):
                    zdd[j] = _zz((q[j + 2] - q[j + 1]) - (q[j + 1] - q[j]))
                cdd = _choose(zdd, count - 2)
                d0 = q[1] - q[0]
                bits = <uint64_t>(_signed_bits(q[0]) + _signed_bits(d0)) + cdd.bits
                if bits < best_bits:
                    best_bits, mode = bits, MODE_DOD
            if cd.bits > LEVEL_TRIED_OVER_BITS * <uint64_t>count:  # noisy enough to try level
                base = _median(q, sorted_q, count)
                for j in range(count):
                    zl[j] = _zz(q[j] - base)
                cl = _choose(zl, count)
                if <uint64_t>_signed_bits(base) + cl.bits < best_bits:
                    mode = MODE_LEVEL
            _put(&w, <uint64_t>mode, 2)
            if mode == MODE_DELTA:
                _put_signed(&w, q[0])
                _put_code(&w, zd, count - 1, cd)
            elif mode == MODE_DOD:
                _put_signed(&w, q[0])
                _put_signed(&w, d0)
                _put_code(&w, zdd, count - 2, cdd)
            else:
                _put_signed(&w, base)
                _put_code(&w, zl, count, cl)
        while w.nacc > 0:
            buf[w.byte] = <uint8_t>w.acc
            w.byte += 1
            w.acc >>= 8
            w.nacc -= 8
        return PyBytes_FromStringAndSize(<char*>buf, w.byte)
    finally:
        PyMem_Free(buf)
        PyMem_Free(zd)
        PyMem_Free(zdd)
        PyMem_Free(zl)
        PyMem_Free(sorted_q)


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


cdef inline int _get_signed(Reader* r, int64_t* out) noexcept nogil:
    cdef uint64_t n, z
    if _get(r, 6, &n) < 0 or n > 56 or _get(r, <int>n, &z) < 0:
        return -1
    out[0] = _unzz(z)
    return 0


cdef int _get_code(Reader* r, uint64_t* z, Py_ssize_t n) noexcept nogil:
    """n residuals into z; 0, or -1 truncated, -2 a bad code or parameter."""
    cdef uint64_t code, param, q, low, flag
    cdef Py_ssize_t i
    if _get(r, 2, &code) < 0 or _get(r, 6, &param) < 0:
        return -1
    if code > CODE_SPARSE or param > 56:
        return -2
    if code == CODE_FIXED:
        for i in range(n):
            if _get(r, <int>param, &z[i]) < 0:
                return -1
        return 0
    if code == CODE_SPARSE:
        for i in range(n):
            if _get(r, 1, &flag) < 0:
                return -1
            z[i] = flag
    for i in range(n):
        if code == CODE_SPARSE and not z[i]:
            continue
        if _get_unary(r, &q) < 0 or _get(r, <int>param, &low) < 0:
            return -1
        z[i] = (q << param) | low
        if code == CODE_SPARSE:
            z[i] += 1
    return 0


cdef int _decode_rest(Reader* r, uint64_t* z, int64_t* out, Py_ssize_t count, int mode) noexcept nogil:
    """The values after the first (already in out[0]); 0, or -1 truncated, -2 a bad code,
    -3 a value out of range."""
    cdef Py_ssize_t j
    cdef int64_t d
    cdef int status
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
    if _get_signed(r, &d) < 0:
        return -1
    status = _get_code(r, z, count - 2)
    if status:
        return status
    out[1] = out[0] + d
    if out[1] > _MAX_ABS or out[1] < -_MAX_ABS or out[0] > _MAX_ABS or out[0] < -_MAX_ABS:
        return -3
    for j in range(2, count):
        d += _unzz(z[j - 2])
        if d > 2 * _MAX_ABS or d < -2 * _MAX_ABS:
            return -3
        out[j] = out[j - 1] + d
        if out[j] > _MAX_ABS or out[j] < -_MAX_ABS:
            return -3
    return 0


@cython.boundscheck(False)
@cython.wraparound(False)
def unpack(const uint8_t[:] data not None, Py_ssize_t n_channels, Py_ssize_t max_values=1 << 20):
    """The block -> (counts array('i'), values array('q')); PackError on malformed input."""
    cdef Py_ssize_t pos = 0, shift = 0, common = 0, i, j, count, total = 0
    cdef const uint8_t* buf = &data[0] if data.shape[0] else NULL
    if n_channels < 0:
        raise PackError(f"packed values: {n_channels} channels")
    while True:
        if pos >= data.shape[0] or shift > 28:
            raise PackError("packed values: bad common count")
        common |= (data[pos] & 0x7F) << shift
        shift += 7
        pos += 1
        if not data[pos - 1] & 0x80:
            break
    counts = array.array("i", bytes(4 * n_channels))
    cdef int[:] cview = counts
    cdef Reader r
    r.buf, r.nbits, r.pos = buf, 8 * data.shape[0], 8 * pos
    cdef uint64_t flag, mode
    cdef int64_t first, d, signed_count
    cdef uint64_t* z = <uint64_t*>PyMem_Malloc(_MAX_COUNT * sizeof(uint64_t))
    cdef Py_ssize_t capacity = 1024
    cdef int64_t* out = <int64_t*>PyMem_Malloc(capacity * sizeof(int64_t))
    cdef int64_t* grown
    cdef int status
    if z == NULL or out == NULL:
        PyMem_Free(z)
        PyMem_Free(out)
        raise MemoryError()
    try:
        for i in range(n_channels):
            if _get(&r, 1, &flag) < 0:
                raise PackError("packed values: truncated")
            if flag:
                if _get_signed(&r, &signed_count) < 0:
                    raise PackError("packed values: truncated")
                count = signed_count
            else:
                count = common
            if count < 1 or count > _MAX_COUNT or total + count > max_values:
                raise PackError(f"packed values: bad count {count}")
            if _get(&r, 2, &mode) < 0 or _get_signed(&r, &first) < 0:
                raise PackError("packed values: truncated")
            if mode == MODE_DOD and count < 3:
                raise PackError("packed values: delta-of-delta needs 3 or more values")
            if total + count > capacity:
                while total + count > capacity:
                    capacity *= 2
                grown = <int64_t*>PyMem_Realloc(out, capacity * sizeof(int64_t))
                if grown == NULL:
                    raise MemoryError()
                out = grown
            out[total] = first
            status = _decode_rest(&r, z, &out[total], count, <int>mode)
            if status == -1:
                raise PackError("packed values: truncated")
            if status == -2:
                raise PackError("packed values: bad residual code or unary run")
            if status == -3 or first > _MAX_ABS or first < -_MAX_ABS:
                raise PackError("packed values: a value outside +-(2**48 - 1)")
            cview[i] = <int>count
            total += count
        if data.shape[0] != (r.pos + 7) // 8:
            raise PackError("packed values: trailing bytes")
        values = array.array("q", PyBytes_FromStringAndSize(<char*>out, total * sizeof(int64_t)))
    finally:
        PyMem_Free(z)
        PyMem_Free(out)
    return counts, values
