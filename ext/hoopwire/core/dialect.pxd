# A SQL dialect as C code sees it: what the audit thread calls, without the GIL, to mask the
# literals of a statement's text. The dialect's lexer module fills one CDialect and hands it
# out as a PyCapsule named CDIALECT_CAPSULE (on its mask_literals function, as `c_dialect`), so
# the audit extension runs any dialect's lexer in C and cimports none of them.

cdef extern from *:
    """
    #define HOOPWIRE_CDIALECT_CAPSULE "hoopwire.core.dialect.CDialect"
    """
    const char* CDIALECT_CAPSULE "HOOPWIRE_CDIALECT_CAPSULE"


# sql[0:n] with every literal replaced by ?, for a log: *out is malloc'd (the caller frees it,
# also after an error) and *out_len its length. -1 with an exception set (MemoryError) on failure.
ctypedef int (*mask_text_fn)(const unsigned char* sql, Py_ssize_t n, unsigned char** out,
                             Py_ssize_t* out_len) except -1 nogil


cdef struct CDialect:
    const char* name               # "postgres", later "mysql"
    mask_text_fn mask_literals
