"""Plain-Python twin of edge_agent/kernels/valuepack.pyx: the packed values block of a data
frame (docs/wire-format.md, "Packed values"). Written from the spec, one step at a time, to
disagree with a wrong kernel: the encoder makes the same choices, so the bytes match.
"""

MAX_ABS = (1 << 48) - 1  # quantized values are integers within +-(2**48 - 1)
MAX_COUNT = 8192  # values of one channel in one frame
MODE_CONSTANT, MODE_DELTA, MODE_DOD, MODE_LEVEL = 0, 1, 2, 3
CODE_FIXED, CODE_RICE, CODE_SPARSE = 0, 1, 2


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

    def tobytes(self):
        out = bytearray((len(self.bits) + 7) // 8)
        for i, bit in enumerate(self.bits):
            out[i // 8] |= bit << (i % 8)
        return bytes(out)


class BitReader:
    def __init__(self, data, pos_bits):
        self.data, self.pos = data, pos_bits

    def get(self, width):
        value = 0
        for i in range(width):
            byte = self.pos // 8
            if byte >= len(self.data):
                raise PackError("packed values: truncated")
            value |= ((self.data[byte] >> (self.pos % 8)) & 1) << i
            self.pos += 1
        return value

    def unary(self):
        q = 0
        while self.get(1):
            q += 1
            if q > MAX_QUOTIENT:
                raise PackError("packed values: bad residual code or unary run")
        return q


MAX_QUOTIENT = 64  # the longest unary run a decoder accepts
LEVEL_TRIED_OVER_BITS = 3  # level mode is tried when the deltas' code takes more bits a value


def rice_candidates(zs):
    """The Rice parameters the encoder tries: around the bit length of the mean, and only
    those that keep every quotient within MAX_QUOTIENT."""
    k = (sum(zs) // len(zs)).bit_length()
    top = max(zs)
    return [c for c in (k - 1, k, k + 1) if c >= 0 and top >> c <= MAX_QUOTIENT]


def rice_cost(zs, k):
    return sum(1 + k + (z >> k) for z in zs)


def code_cost(zs):
    """(bits, code, parameter) of the cheapest residual code; ties go to the lower code."""
    width = max(zs).bit_length()
    best = (6 + width * len(zs), CODE_FIXED, width)
    for k in rice_candidates(zs):
        cost = 6 + rice_cost(zs, k)
        if cost < best[0]:
            best = (cost, CODE_RICE, k)
    nonzero = [z - 1 for z in zs if z]
    if nonzero:
        for k in rice_candidates(nonzero):
            cost = 6 + len(zs) + rice_cost(nonzero, k)
            if cost < best[0]:
                best = (cost, CODE_SPARSE, k)
    else:
        best = min(best, (6 + len(zs), CODE_SPARSE, 0))
    return best[0] + 2, best[1], best[2]


def put_signed(w, v):
    z = zigzag(v)
    w.put(z.bit_length(), 6)
    w.put(z, z.bit_length())


def put_code(w, zs, code, param):
    w.put(code, 2)
    w.put(param, 6)
    if code == CODE_FIXED:
        for z in zs:
            w.put(z, param)
    elif code == CODE_RICE:
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


def signed_bits(v):
    return 6 + zigzag(v).bit_length()


def pack(counts, values):
    """Channels' quantized values (concatenated, `counts` per channel) -> the packed block."""
    if len(values) != sum(counts) or any(not 1 <= c <= MAX_COUNT for c in counts):
        raise PackError(
            f"packed values: counts must be 1..{MAX_COUNT} and sum to the number of values"
        )
    for v in values:
        if not -MAX_ABS <= v <= MAX_ABS:
            raise PackError(f"packed values: {v} is outside +-(2**48 - 1)")
    common, votes = 1, 0  # Boyer-Moore majority vote: the count most channels share
    for c in counts:
        if votes == 0:
            common = c
        votes += 1 if c == common else -1
    head = bytearray()
    c = common
    while c >= 0x80:
        head.append((c & 0x7F) | 0x80)
        c >>= 7
    head.append(c)
    w = BitWriter()
    start = 0
    for count in counts:
        q = values[start : start + count]
        start += count
        if count == common:
            w.put(0, 1)
        else:
            w.put(1, 1)
            put_signed(w, count)
        if all(v == q[0] for v in q):
            w.put(MODE_CONSTANT, 2)
            put_signed(w, q[0])
            continue
        d = [b - a for a, b in zip(q, q[1:], strict=False)]
        zd = [zigzag(x) for x in d]
        cost_d, code_d, param_d = code_cost(zd)
        best_cost, best = signed_bits(q[0]) + cost_d, MODE_DELTA
        if count > 2 and max(d) - min(d) < max(abs(x) for x in d):  # a ramp: try dod
            dd = [zigzag(b - a) for a, b in zip(d, d[1:], strict=False)]
            cost_dd, code_dd, param_dd = code_cost(dd)
            if signed_bits(q[0]) + signed_bits(d[0]) + cost_dd < best_cost:
                best_cost, best = signed_bits(q[0]) + signed_bits(d[0]) + cost_dd, MODE_DOD
        if cost_d > LEVEL_TRIED_OVER_BITS * count:  # only noisy channels try level
            base = sorted(q)[count // 2]  # the median (the upper one of an even count)
            zl = [zigzag(v - base) for v in q]
            cost_l, code_l, param_l = code_cost(zl)
            if signed_bits(base) + cost_l < best_cost:
                best = MODE_LEVEL
        w.put(best, 2)
        if best == MODE_DELTA:
            put_signed(w, q[0])
            put_code(w, zd, code_d, param_d)
        elif best == MODE_DOD:
            put_signed(w, q[0])
            put_signed(w, d[0])
            put_code(w, dd, code_dd, param_dd)
        else:
            put_signed(w, base)
            put_code(w, zl, code_l, param_l)
    return bytes(head) + w.tobytes()


MAX_WIDTH = 56  # the widest field a decoder reads in one piece


def get_code(r, n):
    code, param = r.get(2), r.get(6)
    if param > MAX_WIDTH and code != 3:
        raise PackError("packed values: bad residual code or unary run")
    if code == CODE_FIXED:
        return [r.get(param) for _ in range(n)]
    if code == CODE_RICE:
        return [(r.unary() << param) | r.get(param) for _ in range(n)]
    if code == CODE_SPARSE:
        flags = [r.get(1) for _ in range(n)]
        return [((r.unary() << param) | r.get(param)) + 1 if f else 0 for f in flags]
    raise PackError("packed values: bad residual code or unary run")


def get_signed(r):
    width = r.get(6)
    if width > MAX_WIDTH:
        raise PackError("packed values: truncated")
    return unzigzag(r.get(width))


def unpack(data, n_channels, max_values=1 << 20):
    """The packed block -> (counts, values). Raises PackError on any malformed input."""
    common, shift, pos = 0, 0, 0
    while True:
        if pos >= len(data) or shift > 28:
            raise PackError("packed values: bad common count")
        byte = data[pos]
        common |= (byte & 0x7F) << shift
        pos += 1
        shift += 7
        if not byte & 0x80:
            break
    r = BitReader(data, 8 * pos)
    counts, values = [], []
    for _ in range(n_channels):
        count = get_signed(r) if r.get(1) else common
        if not 1 <= count <= MAX_COUNT or len(values) + count > max_values:
            raise PackError(f"packed values: bad count {count}")
        mode = r.get(2)
        first = get_signed(r)
        if mode == MODE_CONSTANT:
            q = [first] * count
        elif mode == MODE_DELTA:
            q = [first]
            for z in get_code(r, count - 1):
                q.append(q[-1] + unzigzag(z))
        elif mode == MODE_DOD:
            if count < 3:
                raise PackError("packed values: delta-of-delta needs 3 or more values")
            d = get_signed(r)
            q = [first, first + d]
            for z in get_code(r, count - 2):
                d += unzigzag(z)
                q.append(q[-1] + d)
        else:  # MODE_LEVEL: `first` is the base
            q = [first + unzigzag(z) for z in get_code(r, count)]
        if any(not -MAX_ABS <= v <= MAX_ABS for v in q):
            raise PackError("packed values: a value outside +-(2**48 - 1)")
        counts.append(count)
        values.extend(q)
    if len(data) != (r.pos + 7) // 8:
        raise PackError("packed values: trailing bytes")
    return counts, values
