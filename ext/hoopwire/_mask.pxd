# Declarations of the hoopwire._mask extension: the protocol-neutral masker -- detectors
# (Scanner) and the per-result plan (RowPlan) that masks a row handed to it as spans.
# ext/hoopwire/_mask.pyx holds the implementation.
#
# A protocol's row walk `from hoopwire._mask cimport RowPlan, out_value` (ext/hoopwire/pg/
# _rows.pxi for PostgreSQL): it sets plan.off[i] / plan.ln[i] (ln -1: NULL) for every column,
# calls plan.mask_row(base) -- 0: forward the row's bytes as they are -- and otherwise frames
# the row again from plan.out_ln[i] (-1: NULL) and out_value(plan, i, dst). For a whole network read it
# first calls pre_begin / pre_row / pre_value / pre_finish (one scan for all the read's rows).
# All C calls: no Python object per value unless a strategy needs Python.

# What a column gets (RowPlan.action[i])
cpdef enum:
    ACT_PASS = 0          # forwarded as it is
    ACT_WHOLE = 1         # the whole value is masked by the column's strategy
    ACT_DETECT = 2        # the detectors run over the value; hits are masked in place

# Value kinds: how a column's bytes may be rewritten (RowPlan.kind[i]). Each protocol maps its
# types to one (PostgreSQL: hoopwire/pg/kinds.py, from type OID and format code); the masker
# knows only these.
cpdef enum:
    K_STR = 0             # a string as the client reads it: masked text in place is valid
    K_JSON = 1            # JSON text: hits masked in place if it stays JSON; whole -> "\"…\""
    K_JSONB_BIN = 2       # one version byte, then JSON text (PostgreSQL's binary jsonb)
    K_INPLACE = 3         # a text container of strings (arrays): hits in place; whole -> NULL
    K_OTHER = 4           # any other value: a hit or a whole mask makes the value NULL
    K_OPAQUE = 5          # an encoding of bytes (hex text): whole masks only, detectors do not
                          # see it


from libc.string cimport memcpy

from hoopwire._hs cimport hs_database_t, hs_scratch_t


ctypedef struct Span:                  # one detector match: data[frm:to], detector ident
    Py_ssize_t frm
    Py_ssize_t to
    unsigned int ident

ctypedef struct SpanList:              # the matches of one span scan, grown with realloc
    Span* items
    Py_ssize_t n
    Py_ssize_t cap
    bint failed                        # out of memory during the scan

ctypedef struct Marks:                 # pass 1: which of n joined values a match ends in
    const Py_ssize_t* ends             # ends[i]: offset just past value i (ascending)
    int n
    unsigned char* hit                 # flag to set: hit[cols[i]], or hit[i] when cols is NULL
    const int* cols
    int cursor                         # the value the last match ended in


cdef class Scanner:
    # All detectors of one connection: a database without start-of-match that only says which
    # values hold a hit (fast), and one with SOM_LEFTMOST to find the spans in those values.
    cdef:
        hs_database_t* db_find         # MULTILINE, no SOM
        hs_database_t* db_span         # SOM_LEFTMOST
        hs_scratch_t* scratch_find
        hs_scratch_t* scratch_span
        SpanList spans                 # the matches of mask_value's scan
        SpanList accepted              # apply_spans: the ones that survive validation
        readonly tuple names           # detector id -> name
        tuple validators               # id -> callable(data, s, e) -> (s, e) | None
        int* vcode                     # id -> V_* (a C validator, a Python one, none)
        int* sfast                     # id -> F_* code of its strategy
        Py_ssize_t* skeep              # id -> characters its partial strategy keeps
        tuple strategies               # id -> hoopwire.masking.strategies.Strategy
        readonly int ndet

    cdef int find(self, const unsigned char* p, Py_ssize_t n, Marks* marks) except -1
    cdef int scan_spans(self, const unsigned char* p, Py_ssize_t n, SpanList* out) except -1
    cdef object mask_value(self, object data, unsigned long long* counts)
    cdef int accept(self, const unsigned char* p, Py_ssize_t n, object data, const Span* spans,
                    Py_ssize_t nspans, SpanList* out) except -1
    cdef object apply_spans(self, object data, const Span* spans, Py_ssize_t nspans,
                            unsigned long long* counts)


cdef class RowPlan:
    # The columns of one result set and what each needs; reused for every row of that result.
    # Protocol neutral: it sees a row only as spans.
    cdef:
        readonly Scanner scanner       # None when no column is ACT_DETECT
        readonly Py_ssize_t ncols
        unsigned char* action          # ACT_* per column
        unsigned char* kind            # K_* per column
        int* rule                      # per column: index into rule_names, or -1
        list col_strategy              # per column: Strategy for ACT_WHOLE, else None
        int* col_fast                  # per column: F_* code of that strategy
        readonly tuple rule_names      # labels of the column rules, for counts
        bint any_work                  # some column is not ACT_PASS
        bint any_whole                 # some column is ACT_WHOLE
        # per-row spans, sized ncols: set by the protocol's row walk before mask_row
        Py_ssize_t* off                # byte offset of each value from the row's base
        Py_ssize_t* ln                 # its length (-1: NULL)
        Py_ssize_t* scan_end           # end of each scanned value in the pass-1 buffer
        int* scan_col                  # column of each scanned value
        int nscan
        unsigned char* hit             # pass 1 found something ending in this column
        unsigned char* sbuf            # pass 1: the values joined by '\n' (kept between rows)
        Py_ssize_t sbuf_cap
        # prescan of a whole read (see prescan): per row its offset and first value index,
        # per DETECT value its end in the joined buffer, column and hit flag
        const unsigned char* pre_base
        int pre_rows, pre_next, pre_nvals, pre_rows_cap, pre_vals_cap
        Py_ssize_t* pre_row_off
        int* pre_row_first
        Py_ssize_t* pre_end
        int* pre_col
        unsigned char* pre_hit
        # ... and the spans of ONE start-of-match scan over the flagged values of the read:
        # per value its first span in pre_spans (offsets relative to the value) and how many,
        # -1 when the value needs a scan of its own (a match crossed into a neighbour)
        SpanList pre_spans
        int* pre_span_first
        int* pre_span_n
        Py_ssize_t* som_end            # the flagged values joined: end of each ...
        int* som_val                   # ... and which prescanned value it is
        # the current row's columns: their spans in pre_spans, as pre_span_first/pre_span_n
        int* col_span_first
        int* col_span_n
        # pass 2's verdict per column (R_*), the new length, and for R_SPANS its validated spans
        # in row_spans; R_PY values are Python objects in a list
        unsigned char* rep
        Py_ssize_t* rep_len
        int* rep_first
        int* rep_n
        SpanList row_spans
        Py_ssize_t* col_keep           # per column: what a WHOLE partial strategy keeps
        # counters since the last take_counts(): masked values per detector / per column rule
        unsigned long long* det_counts
        unsigned long long* rule_counts
        readonly unsigned long long rows_seen
        readonly unsigned long long rows_rewritten
        list repl                      # mask_row's R_PY values (None when there are none)
        Py_ssize_t* out_ln             # after mask_row: each value's length as it leaves (-1: NULL)
        const unsigned char* cur_base  # the row mask_row last looked at
        Py_ssize_t pre_fill            # bytes pre_value wrote so far
        Py_ssize_t pre_total

    # the span API (see the top of this file)
    cdef int mask_row(self, const unsigned char* base) except -1
    cdef Py_ssize_t out_write(self, Py_ssize_t i, unsigned char* dst) noexcept
    cdef bint pre_begin(self, const unsigned char* base, int nrows, int nvals,
                        Py_ssize_t total) except -1
    cdef void pre_row(self, Py_ssize_t off) noexcept
    cdef void pre_value(self, int col, const unsigned char* p, Py_ssize_t n) noexcept
    cdef int pre_finish(self) except -1
    cdef bint _pre_reserve(self, int nrows, int nvals) except -1
    cdef unsigned char* _scan_buffer(self, Py_ssize_t size) noexcept
    cdef int _find(self, const unsigned char* buf, Py_ssize_t n) except -1
    cdef int _prescan_spans(self, unsigned char* buf) except -1
    cdef int _spans_c(self, int col, const unsigned char* p, Py_ssize_t n) except -1
    cdef object _detect_one(self, int col, object value)
    cdef object _whole_one(self, int col, object value)


# What mask_row decided for each value of the row (RowPlan.rep[i])
cdef enum:
    R_KEEP = 0            # the original bytes
    R_PY = 1              # a Python object in the row's list: bytes, or NULL_VALUE
    R_CONST = 2           # REDACTED (****)
    R_PARTIAL = 3         # an ASCII value: `*` but its last col_keep bytes
    R_SPANS = 4           # the value with its spans in row_spans rewritten (redact / partial)


# After mask_row, inlined into the protocol's walk: whether value i changed, and value i as it
# leaves written at dst (plan.out_ln[i] bytes; returns that count). Unchanged and redacted
# values are a memcpy here; the rest cost a call. Calling out_write for every value made the
# column-rule microbenchmark (bench/test_bench_masking.py) 16% slower than before the split.
cdef inline bint out_changed(RowPlan plan, Py_ssize_t i) noexcept:
    return plan.rep[i] != R_KEEP

cdef inline Py_ssize_t out_value(RowPlan plan, Py_ssize_t i, unsigned char* dst) noexcept:
    cdef Py_ssize_t n
    cdef unsigned char rp = plan.rep[i]
    if rp == R_KEEP:
        n = plan.ln[i]
        if n <= 0:
            return 0
        memcpy(dst, plan.cur_base + plan.off[i], n)
        return n
    if rp == R_CONST:
        memcpy(dst, <const char*>"****", 4)
        return 4
    return plan.out_write(i, dst)
