# The walk of a parsed JSON document for hoopwire.http.jsonmask, in C: key-path masking in
# place and the detectors' candidate strings, then one Hyperscan pass over them all.
#
# Why C: under cProfile the Python walk (_Job in jsonmask.py) was 75% of mask_json on the
# 64 KiB bench document (walk_dict + whole: 0.55 of 0.74 s for 20 documents), one Python frame
# and a few attribute lookups per member. Here a member costs a PyDict_Next, one dict lookup in
# the path automaton's state (a cdef class: a C field read, not a getattr) and a type check.
#
# Semantics are those of the Python walk, which stays in jsonmask.py as the reference: the
# tests mask a generated corpus both ways and compare bytes and counts.
#
# Detectors: the strings are joined as before ("\n\0\n") and scanned by the connection's own
# Scanner (hoopwire._mask, compiled with its MaskEngine, off the loop): first its database
# without start-of-match (only "any hit?", several times faster: STYLE.md), and only on a hit
# the SOM scan and the validators, as Scanner.mask would run them on the joined text. No
# Python per match and no marker text (the old route rewrote the joined text with a marker per
# hit and split it again).

from cpython.object cimport PyObject
from cpython.dict cimport PyDict_Next, PyDict_GetItem
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from libc.stdlib cimport free
from libc.time cimport time_t

from hoopwire._mask cimport Scanner, Span, SpanList, Marks

cdef extern from "<time.h>" nogil:
    ctypedef int clockid_t
    cdef struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(clockid_t clk_id, timespec* tp)
    enum: CLOCK_MONOTONIC

NAME, INDEX, ANY, DEEP = range(4)    # hoopwire.masking.jsonpath's step kinds

cdef int MAX_DEPTH = 254             # jsonmask.MAX_DEPTH: orjson writes at most 254 levels
cdef object DETECT_INT = 10 ** 12    # integers of 13+ digits go to the detectors
cdef bytes SEP = b"\n\0\n"
cdef Py_ssize_t SEPLEN = 3
# every CHECK_EVERY containers the walk looks at the clock and lets other threads have the
# GIL: C code never reaches the interpreter's switch, so an 8 MiB walk in the masking thread
# would otherwise hold the event loop for its whole ~60 ms
cdef int CHECK_EVERY = 256
KEY_CACHE = 4096                     # member names cached per state


class TooDeep(Exception):
    """Nested deeper than MAX_DEPTH where the walk must go."""


class TimedOut(Exception):
    """The walk passed its deadline."""


cdef double _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


def monotonic():
    """The clock the deadline is read on (CLOCK_MONOTONIC, as time.monotonic on Linux)."""
    return _now()


# ---------------------------------------------------------------------------------------------
# the key-path automaton's state (jsonmask._State's twin: same fields, C access)

cdef class State:
    """One set of (rule, step) positions; transitions built on first use and cached.
    fin: the rule index that masks a value reached here (lowest wins), or -1."""

    cdef public object auto
    cdef public object final          # fin as Python (None or int), for the reference walk
    cdef public int fin
    cdef public bint dead
    cdef public dict names            # casefolded name -> positions after it
    cdef public object other_m        # positions for a member no NAME step wants
    cdef public object other_e        # positions for an element no INDEX step wants
    cdef public dict indexes
    cdef public dict by_key
    cdef public dict by_index
    cdef State _member_other
    cdef State _elem_other

    def __init__(self, auto, positions):
        self.auto = auto
        paths = auto.paths
        finals = [r for r, p in positions if p == len(paths[r])]
        self.final = min(finals) if finals else None
        self.fin = -1 if self.final is None else self.final
        self.dead = not positions
        names = {}
        other_m = set()
        other_e = set()
        idx = {}
        for r, p in positions:
            steps = paths[r]
            if p == len(steps):
                continue
            kind, arg = steps[p]
            if kind == NAME:
                names.setdefault(arg, set()).add((r, p + 1))
                other_e.add((r, p))                 # a name step looks through arrays
            elif kind == ANY:
                other_m.add((r, p + 1))
                other_e.add((r, p + 1))
            elif kind == DEEP:
                other_m.add((r, p))
                other_e.add((r, p))
            else:
                idx.setdefault(arg, set()).add((r, p + 1))
        self.names = names
        self.other_m = other_m
        self.other_e = other_e
        self.indexes = idx
        self.by_key = {}
        self.by_index = {}
        self._member_other = None
        self._elem_other = None

    cpdef State member(self, key):
        cdef PyObject* hit = PyDict_GetItem(self.by_key, key)
        cdef State st
        if hit != NULL:
            return <State>hit
        want = self.names.get(key.casefold()) if self.names else None
        if want is None:
            st = self._member_other
            if st is None:
                st = self._member_other = self.auto.state(self.other_m)
        else:
            st = self.auto.state(want | self.other_m)
        if len(self.by_key) >= KEY_CACHE:
            self.by_key.clear()
        self.by_key[key] = st
        return st

    cpdef State element(self, Py_ssize_t index):
        cdef State st
        if self.indexes:
            want = self.indexes.get(index)
            if want is not None:
                st = self.by_index.get(index)
                if st is None:
                    st = self.auto.state(want | self.other_e)
                    self.by_index[index] = st
                return st
        st = self._elem_other
        if st is None:
            st = self._elem_other = self.auto.state(self.other_e)
        return st


# ---------------------------------------------------------------------------------------------
# the walk

cdef inline bint _big_int(object x):
    return x >= DETECT_INT or x <= -DETECT_INT


cdef class Walk:
    """One document: Walk(rules, whole_scalar, detect, deadline); root(holder, state); then
    scan(...) when detect. counts / changed as jsonmask._Job's.
    rules: [(label, strategy)]; whole_scalar(strategy, value) masks a scalar that is not a
    string under a constant strategy (jsonmask._whole_scalar)."""

    cdef public dict counts
    cdef public bint changed
    cdef bint detect
    cdef list labels
    cdef list strategies
    cdef list const_str               # per rule: what any string becomes, or None
    cdef list is_null                 # per rule: the strategy is `null`
    cdef object whole_scalar
    cdef Py_ssize_t* rule_counts
    cdef Py_ssize_t nrules
    cdef list items                   # (container, slot, member name for context, value)
    cdef dict keys
    cdef list dicts
    cdef double deadline              # 0: none
    cdef int ticks

    def __cinit__(self):
        self.rule_counts = NULL

    def __init__(self, list rules, whole_scalar, bint detect, double deadline=0.0):
        cdef Py_ssize_t i
        self.counts = {}
        self.changed = False
        self.detect = detect
        self.labels = [r[0] for r in rules]
        self.strategies = [r[1] for r in rules]
        self.const_str = [b"****".decode() if s.name == "redact" else None
                          for s in self.strategies]
        self.is_null = [bool(s.whole_is_null) for s in self.strategies]
        self.whole_scalar = whole_scalar
        self.nrules = len(rules)
        self.rule_counts = <Py_ssize_t*>PyMem_Malloc((self.nrules + 1) * sizeof(Py_ssize_t))
        if self.rule_counts == NULL:
            raise MemoryError()
        for i in range(self.nrules + 1):
            self.rule_counts[i] = 0
        self.items = []
        self.keys = {}
        self.dicts = []
        self.deadline = deadline
        self.ticks = 0

    def __dealloc__(self):
        PyMem_Free(self.rule_counts)

    cdef int tick(self) except -1:
        self.ticks += 1
        if self.ticks < CHECK_EVERY:
            return 0
        self.ticks = 0
        with nogil:
            pass                      # a waiting thread (the event loop) may take the GIL
        if self.deadline and _now() > self.deadline:
            raise TimedOut()
        return 0

    def root(self, list holder, State st):
        v = holder[0]
        try:
            if st.fin >= 0:
                holder[0] = self.whole(v, st.fin, 0)
            elif type(v) is dict:
                self.walk_dict(<dict>v, st, 0)
            elif type(v) is list:
                self.walk_list(<list>v, st, "", 0)
            elif self.detect and (type(v) is str and v or type(v) is int and _big_int(v)):
                self.items.append((holder, 0, "", v))
        finally:
            self._fold_counts()

    cdef void _fold_counts(self):
        cdef Py_ssize_t i
        for i in range(self.nrules):
            if self.rule_counts[i]:
                label = self.labels[i]
                self.counts[label] = self.counts.get(label, 0) + self.rule_counts[i]
                self.rule_counts[i] = 0

    cdef int walk_dict(self, dict d, State st, int depth) except -1:
        cdef Py_ssize_t pos = 0
        cdef PyObject* kp
        cdef PyObject* vp
        cdef PyObject* hit
        cdef State c
        cdef bint detect = self.detect
        cdef bint dead = st.dead
        cdef dict by_key = st.by_key
        cdef dict keys = self.keys
        cdef list items = self.items
        if depth >= MAX_DEPTH:
            raise TooDeep()
        depth += 1
        self.tick()
        if detect:
            self.dicts.append(d)
        while PyDict_Next(d, &pos, &kp, &vp):
            k = <object>kp
            x = <object>vp
            if dead:
                c = st
            else:
                hit = PyDict_GetItem(by_key, k)
                c = <State>hit if hit != NULL else st.member(k)
            if c.fin >= 0:
                # replacing the value of a key already there is allowed during PyDict_Next
                d[k] = self.whole(x, c.fin, depth)
                if detect:
                    keys[k] = None
                continue
            t = type(x)
            if not detect:
                if not c.dead:
                    if t is dict:
                        self.walk_dict(<dict>x, c, depth)
                    elif t is list:
                        self.walk_list(<list>x, c, k, depth)
                continue
            keys[k] = None
            if t is str:
                if x:
                    items.append((d, k, k, x))
            elif t is dict:
                self.walk_dict(<dict>x, c, depth)
            elif t is list:
                self.walk_list(<list>x, c, k, depth)
            elif t is int and _big_int(x):
                items.append((d, k, k, x))
        return 0

    cdef int walk_list(self, list v, State st, str ctx, int depth) except -1:
        cdef Py_ssize_t i, n
        cdef State c
        cdef State same = None
        cdef bint detect = self.detect
        cdef list items = self.items
        if depth >= MAX_DEPTH:
            raise TooDeep()
        depth += 1
        self.tick()
        if not st.indexes:
            same = st.element(0)        # no [N] step: one state for every element
        n = len(v)
        for i in range(n):
            x = v[i]
            c = same if same is not None else st.element(i)
            if c.fin >= 0:
                v[i] = self.whole(x, c.fin, depth)
                continue
            t = type(x)
            if t is dict:
                if detect or not c.dead:
                    self.walk_dict(<dict>x, c, depth)
            elif t is list:
                if detect or not c.dead:
                    self.walk_list(<list>x, c, ctx, depth)
            elif detect and (t is str and x or t is int and _big_int(x)):
                items.append((v, i, ctx, x))
        return 0

    cdef object whole(self, object v, int rule, int depth):
        """A value at a masked path (jsonmask._Job.whole)."""
        cdef Py_ssize_t i, n
        cdef PyObject* kp
        cdef PyObject* vp
        cdef Py_ssize_t pos = 0
        if v is None:
            return None
        t = type(v)
        if t is dict:
            if depth >= MAX_DEPTH:
                raise TooDeep()
            self.tick()
            while PyDict_Next(<dict>v, &pos, &kp, &vp):
                k = <object>kp
                if self.detect:
                    self.keys[k] = None
                (<dict>v)[k] = self.whole(<object>vp, rule, depth + 1)
            if self.detect:
                self.dicts.append(v)
            return v
        if t is list:
            if depth >= MAX_DEPTH:
                raise TooDeep()
            self.tick()
            n = len(<list>v)
            for i in range(n):
                (<list>v)[i] = self.whole((<list>v)[i], rule, depth + 1)
            return v
        self.changed = True
        self.rule_counts[rule] += 1
        if self.is_null[rule]:
            return None
        if t is str:
            c = self.const_str[rule]
            if c is not None:
                return c
            return self.strategies[rule].whole(
                (<str>v).encode("utf-8", "surrogatepass")).decode("utf-8", "replace")
        return self.whole_scalar(self.strategies[rule], v)

    # -- detectors ------------------------------------------------------------------------------

    def scan(self, Scanner sc, list names, list strategies, number_or_text, rename):
        """Every collected string and member name through the detectors (jsonmask._Job.scan):
        one find pass over them joined, and only on a hit the spans."""
        cdef Py_ssize_t i, k, nk, nt, s, e, start, clen
        cdef Py_ssize_t* ends = NULL
        cdef unsigned char* hit = NULL
        cdef Marks marks
        cdef list texts
        cdef dict out
        keys = list(self.keys)
        key_bytes = [(<str>kk).encode("utf-8", "surrogatepass") for kk in keys]
        prefix = {kk: kb + b":\n" for kk, kb in zip(keys, key_bytes)}
        prefix[""] = b""
        items = self.items
        texts = key_bytes[:]
        for item in items:
            x = item[3]
            if type(x) is str:
                texts.append(prefix[item[2]] + (<str>x).encode("utf-8", "surrogatepass"))
            else:
                texts.append(str(x).encode())
        nt = len(texts)
        if not nt:
            return
        joined = SEP.join(texts)
        out = {}
        hit = <unsigned char*>PyMem_Malloc(nt)
        ends = <Py_ssize_t*>PyMem_Malloc(nt * sizeof(Py_ssize_t))
        try:
            if hit == NULL or ends == NULL:
                raise MemoryError()
            e = 0
            for i in range(nt):
                e += PyBytes_GET_SIZE(texts[i]) + SEPLEN
                ends[i] = e             # text i and the joint after it end here
                hit[i] = 0
            marks.ends = ends
            marks.n = <int>nt
            marks.hit = hit
            marks.cols = NULL
            marks.cursor = 0
            sc.find(<const unsigned char*>PyBytes_AS_STRING(joined), PyBytes_GET_SIZE(joined),
                    &marks)
            # the start-of-match scan and the validators only on the texts a match ended in,
            # each alone: on the bench's 64 KiB document 5 KiB of 50 (a SOM scan runs at
            # ~100 MB/s, the find scan several times faster). The same spans as one SOM scan
            # of the joined texts: no built-in pattern crosses a joint, and a custom one that
            # does was rescanned alone by the first version too.
            for i in range(nt):
                if hit[i]:
                    sp = _som_spans(sc, texts[i])
                    if sp:
                        out[i] = sp
        finally:
            PyMem_Free(ends)
            PyMem_Free(hit)
        if not out:
            return
        nk = len(keys)
        counts = self.counts
        renamed = {}
        consts = _constants(strategies)
        for i, sp in out.items():
            if i < nk:
                new = _apply(texts[i], sp, counts, names, strategies, consts, 0, -1)
                renamed[keys[i]] = new.decode("utf-8", "replace")
                continue
            parent, slot, ctx, x = items[i - nk]
            clen = len(prefix[ctx]) if type(x) is str else 0
            if sp[len(sp) - 1][1] <= clen:
                continue                # the hits are in the member name (sorted spans)
            new = _apply(texts[i], sp, counts, names, strategies, consts, clen, -1)
            self.changed = True
            if type(x) is str:
                parent[slot] = new.decode("utf-8", "replace")
            else:
                parent[slot] = number_or_text(strategies[sp[0][2]], new)
        if renamed:
            self.changed = True
            for d in self.dicts:
                for kk in d:
                    if kk in renamed:
                        rename(d, renamed)
                        break


cdef inline void _trim(SpanList* sl) noexcept:
    """Give back a span list one huge text grew (hoopwire._mask keeps it per Scanner)."""
    if sl.cap > 4096:
        free(sl.items)
        sl.items = NULL
        sl.cap = 0
        sl.n = 0


def text_spans(Scanner sc, bytes data):
    """The validated detector spans [(start, end, detector id)] of data, sorted, overlaps
    joined: what Scanner.mask would rewrite. The find database first: no hit, no SOM scan."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data), k
    cdef Marks marks
    cdef Py_ssize_t end = n
    cdef unsigned char hit = 0
    cdef list res
    if n == 0:
        return []
    marks.ends = &end
    marks.n = 1
    marks.hit = &hit
    marks.cols = NULL
    marks.cursor = 0
    sc.find(p, n, &marks)
    if not hit:
        return []
    return _som_spans(sc, data)


cdef list _som_spans(Scanner sc, bytes data):
    """text_spans without the find pass (the caller knows a match ends in data)."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data), k
    cdef list res
    try:
        sc.scan_spans(p, n, &sc.spans)
        sc.accepted.n = 0
        sc.accept(p, n, data, sc.spans.items, sc.spans.n, &sc.accepted)
        res = [(sc.accepted.items[k].frm, sc.accepted.items[k].to, sc.accepted.items[k].ident)
               for k in range(sc.accepted.n)]
    finally:
        sc.accepted.n = 0
        _trim(&sc.spans)
        _trim(&sc.accepted)
    return res


cdef list _constants(strategies):
    """Per detector, what any hit becomes when that does not depend on the hit (redact, and
    null, which inside text is redact too), else None: no Python call per such hit."""
    return [b"****" if st.name in ("redact", "null") else None for st in strategies]


def apply_spans(bytes data, list spans, dict counts, names, strategies, Py_ssize_t lo=0,
                Py_ssize_t hi=-1):
    """data[lo:hi] with the spans (clipped to it) rewritten by their detector's strategy;
    counts[name] += 1 per span rewritten (jsonmask._SpanFinder.apply)."""
    return _apply(data, spans, counts, names, strategies, _constants(strategies), lo, hi)


cdef bytes _apply(bytes data, list spans, dict counts, names, strategies, list consts,
                  Py_ssize_t lo, Py_ssize_t hi):
    cdef Py_ssize_t s, e, last
    cdef list out = []
    if hi < 0:
        hi = PyBytes_GET_SIZE(data)
    last = lo
    for s, e, ident in spans:
        if s < lo:
            s = lo
        if e > hi:
            e = hi
        if s >= e:
            continue
        out.append(data[last:s])
        c = consts[ident]
        out.append(c if c is not None else strategies[ident].inline(data[s:e]))
        last = e
        name = names[ident]
        counts[name] = counts.get(name, 0) + 1
    out.append(data[last:hi])
    return b"".join(out)
