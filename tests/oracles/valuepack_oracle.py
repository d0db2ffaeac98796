"""Plain-Python twin of edge_agent/kernels/valuepack.pyx: the packed block of a data frame
(docs/wire-format.md, "Packed block"). Written from the spec, one step at a time, to disagree
with a wrong kernel: the encoder makes the same choices, so the bytes match.
"""

MAX_ABS = (1 << 48) - 1  # quantized values are integers within +-(2**48 - 1)
MAX_COUNT = 8192  # values of one series in one frame
MAX_WIDTH = 56  # the widest field a decoder reads in one piece
MAX_QUOTIENT = 64  # the longest unary run a decoder accepts
COUNTED = -1  # a series whose count is written (the others share an earlier one's)
MODE_DELTA, MODE_CONSTANT, MODE_LEVEL, MODE_DOD = "delta", "constant", "level", "dod"
#: The mode's prefix code: bits in writing order.
MODE_BITS = {MODE_DELTA: [0], MODE_CONSTANT: [1, 0], MODE_LEVEL: [1, 1, 0], MODE_DOD: [1, 1, 1]}
CODE_RICE, CODE_SPARSE = 0, 1


class PackError(ValueError):
    pass


def zigzag(v):
    return 2 * v if v >= 0 else -2 * v - 1


def unzigzag(z):
    return z >> 1 if not z & 1 else -((z + 1) >> 1)


class BitWriter:
    def __init__(self):
        self.bits = []

    def put(self, value, width):
        for i in range(width):
            self.bits.append((value >> i) & 1)

    def unary(self, q):
        self.bits.extend([1] * q)
        self.bits.append(0)

    def small(self, x):
        """4 bits for 0..14; 15 and then 6 bits for 15..56."""
        if x < 15:
            self.put(x, 4)
        else:
            self.put(15, 4)
            self.put(x, 6)

    def num(self, u):
        """0 as one 0-bit; else a 1-bit, small(bit length - 1), the bits below the top one."""
        if u == 0:
            self.put(0, 1)
            return
        length = u.bit_length()
        self.put(1, 1)
        self.small(length - 1)
        self.put(u, length - 1)

    def tobytes(self):
        out = bytearray((len(self.bits) + 7) // 8)
        for i, bit in enumerate(self.bits):
            out[i // 8] |= bit << (i % 8)
        return bytes(out)


def small_bits(x):
    return 4 if x < 15 else 10


def num_bits(u):
    return 1 if u == 0 else 1 + small_bits(u.bit_length() - 1) + u.bit_length() - 1


def signed_bits(v):
    return num_bits(zigzag(v))


def rice_candidates(zs):
    """The Rice parameters the encoder tries: around the bit length of the mean, and only
    those that keep every quotient within MAX_QUOTIENT."""
    k = (sum(zs) // len(zs)).bit_length()
    top = max(zs)
    return [c for c in (k - 1, k, k + 1) if c >= 0 and top >> c <= MAX_QUOTIENT]


def rice_fallback(zs):
    """The parameter Rice takes when none of the candidates keeps the quotients short (one
    huge residual among small ones): the largest quotient is then 32..63."""
    return max(zs).bit_length() - 6


def rice_cost(zs, k):
    return sum(1 + k + (z >> k) for z in zs)


def code_cost(zs):
    """(bits, code, parameter) of the cheapest residual code: Rice first, then sparse; a later
    candidate only if strictly cheaper."""
    best = None
    for k in rice_candidates(zs) or [rice_fallback(zs)]:
        cost = 1 + small_bits(k) + rice_cost(zs, k)
        if best is None or cost < best[0]:
            best = (cost, CODE_RICE, k)
    nonzero = [z - 1 for z in zs if z]
    if 0 < len(nonzero) < len(zs):  # sparse only where some residual is zero and some is not
        for k in rice_candidates(nonzero):
            cost = 1 + small_bits(k) + len(zs) + rice_cost(nonzero, k)
            if cost < best[0]:
                best = (cost, CODE_SPARSE, k)
    return best


def put_code(w, zs, code, param):
    w.put(code, 1)
    w.small(param)
    if code == CODE_RICE:
        for z in zs:
            w.unary(z >> param)
            w.put(z & ((1 << param) - 1), param)
    else:
        for z in zs:
            w.put(1 if z else 0, 1)
        for z in zs:
            if z:
                w.unary((z - 1) >> param)
                w.put((z - 1) & ((1 << param) - 1), param)


def put_series(w, q):
    """One series: its mode, first value (or base) and residuals."""
    if all(v == q[0] for v in q):
        for bit in MODE_BITS[MODE_CONSTANT]:
            w.put(bit, 1)
        w.num(zigzag(q[0]))
        return
    count = len(q)
    d = [b - a for a, b in zip(q, q[1:], strict=False)]
    zd = [zigzag(x) for x in d]
    cost_d, code_d, param_d = code_cost(zd)
    best_cost, best = 1 + signed_bits(q[0]) + cost_d, MODE_DELTA
    if count > 2 and max(d) - min(d) < max(abs(x) for x in d):  # a ramp: try dod
        dd = [zigzag(b - a) for a, b in zip(d, d[1:], strict=False)]
        cost_dd, code_dd, param_dd = code_cost(dd)
        cost = 3 + signed_bits(q[0]) + signed_bits(d[0]) + cost_dd
        if cost < best_cost:
            best_cost, best = cost, MODE_DOD
    mean = sum(q) // count
    if sum(abs(v - mean) for v in q) // count <= sum(zd) // (2 * (count - 1)):  # noise: try level
        base = sorted(q)[count // 2]  # the median (the upper one of an even count)
        zl = [zigzag(v - base) for v in q]
        cost_l, code_l, param_l = code_cost(zl)
        if 3 + signed_bits(base) + cost_l < best_cost:
            best = MODE_LEVEL
    for bit in MODE_BITS[best]:
        w.put(bit, 1)
    if best == MODE_DELTA:
        w.num(zigzag(q[0]))
        put_code(w, zd, code_d, param_d)
    elif best == MODE_DOD:
        w.num(zigzag(q[0]))
        w.num(zigzag(d[0]))
        put_code(w, dd, code_dd, param_dd)
    else:
        w.num(zigzag(base))
        put_code(w, zl, code_l, param_l)


def check_share(share):
    for i, s in enumerate(share):
        if s != COUNTED and not (0 <= s < i and share[s] == COUNTED):
            raise PackError(f"packed block: series {i} shares the count of a bad series {s}")


def pack(counts, values, share):
    """Series of quantized values (concatenated, `counts` per series) -> the packed block.
    `share[i]` is COUNTED for a series whose count is written, else the earlier counted
    series whose count it has."""
    if len(share) != len(counts):
        raise PackError("packed block: one share entry per series")
    check_share(share)
    if len(values) != sum(counts) or any(not 1 <= c <= MAX_COUNT for c in counts):
        raise PackError(
            f"packed block: counts must be 1..{MAX_COUNT} and sum to the number of values"
        )
    for i, s in enumerate(share):
        if s != COUNTED and counts[i] != counts[s]:
            raise PackError(f"packed block: series {i} has another count than series {s}")
    for v in values:
        if not -MAX_ABS <= v <= MAX_ABS:
            raise PackError(f"packed block: {v} is outside +-(2**48 - 1)")
    w = BitWriter()
    start = 0
    for count, s in zip(counts, share, strict=True):
        if s == COUNTED:
            w.num(count)
        put_series(w, values[start : start + count])
        start += count
    return w.tobytes()


class BitReader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def get(self, width):
        value = 0
        for i in range(width):
            byte = self.pos // 8
            if byte >= len(self.data):
                raise PackError("packed block: truncated")
            value |= ((self.data[byte] >> (self.pos % 8)) & 1) << i
            self.pos += 1
        return value

    def unary(self):
        q = 0
        while self.get(1):
            q += 1
            if q > MAX_QUOTIENT:
                raise PackError("packed block: a bad residual code or unary run")
        return q

    def small(self):
        x = self.get(4)
        if x < 15:
            return x
        x = self.get(6)
        if not 15 <= x <= MAX_WIDTH:
            raise PackError("packed block: a field width out of range")
        return x

    def num(self):
        if not self.get(1):
            return 0
        top = self.small()
        return (1 << top) | self.get(top)


def get_code(r, n):
    code, param = r.get(1), r.small()
    if code == CODE_RICE:
        return [(r.unary() << param) | r.get(param) for _ in range(n)]
    flags = [r.get(1) for _ in range(n)]
    return [((r.unary() << param) | r.get(param)) + 1 if f else 0 for f in flags]


def get_signed(r, limit=MAX_ABS):
    v = unzigzag(r.num())
    if not -limit <= v <= limit:
        raise PackError("packed block: a value outside +-(2**48 - 1)")
    return v


def get_series(r, count):
    if not r.get(1):
        mode = MODE_DELTA
    elif not r.get(1):
        mode = MODE_CONSTANT
    else:
        mode = MODE_DOD if r.get(1) else MODE_LEVEL
    first = get_signed(r)
    if mode == MODE_CONSTANT:
        return [first] * count
    if mode == MODE_DELTA:
        q = [first]
        for z in get_code(r, count - 1):
            q.append(q[-1] + unzigzag(z))
    elif mode == MODE_DOD:
        if count < 3:
            raise PackError("packed block: delta-of-delta needs 3 or more values")
        d = get_signed(r, 2 * MAX_ABS)  # the first delta spans up to twice the range
        q = [first, first + d]
        for z in get_code(r, count - 2):
            d += unzigzag(z)
            q.append(q[-1] + d)
    else:  # MODE_LEVEL: `first` is the base
        q = [first + unzigzag(z) for z in get_code(r, count)]
    if any(not -MAX_ABS <= v <= MAX_ABS for v in q):
        raise PackError("packed block: a value outside +-(2**48 - 1)")
    return q


def unpack(data, share, max_values=1 << 20):
    """The packed block -> (counts, values). Raises PackError on any malformed input."""
    check_share(share)
    per_count = [0] * len(share)  # series per written count, its own included
    for i, s in enumerate(share):
        per_count[i if s == COUNTED else s] += 1
    r = BitReader(data)
    counts, values, claimed = [], [], 0
    for i, s in enumerate(share):
        count = r.num() if s == COUNTED else counts[s]
        if s == COUNTED and 1 <= count <= MAX_COUNT:
            claimed += count * per_count[i]
            if claimed > max_values:
                raise PackError(f"packed block: claims {claimed} values or more, over {max_values}")
        if not 1 <= count <= MAX_COUNT or len(values) + count > max_values:
            raise PackError(f"packed block: a bad count {count}")
        counts.append(count)
        values.extend(get_series(r, count))
    if len(data) != (r.pos + 7) // 8 or (r.pos % 8 and data[-1] >> (r.pos % 8)):
        raise PackError("packed block: trailing bits")
    return counts, values
