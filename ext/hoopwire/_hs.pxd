# The part of Hyperscan's C API (libhs, Debian package libhyperscan-dev) that hoopwire._mask
# calls. Scanning through the C API instead of the Python binding matters on the masking path:
# the binding costs a Python call per scan and another per match, which was most of the time
# spent masking a row full of detector hits (see bench/README.md).

cdef extern from "hs/hs.h" nogil:
    ctypedef int hs_error_t
    ctypedef struct hs_database_t:
        pass
    ctypedef struct hs_scratch_t:
        pass
    ctypedef struct hs_platform_info_t:
        pass
    ctypedef struct hs_compile_error_t:
        char* message
        int expression

    ctypedef int (*match_event_handler)(unsigned int id, unsigned long long frm,
                                        unsigned long long to, unsigned int flags,
                                        void* context) noexcept nogil

    enum:
        HS_SUCCESS
        HS_SCAN_TERMINATED
        HS_NOMEM
        HS_MODE_BLOCK
        HS_FLAG_CASELESS
        HS_FLAG_DOTALL
        HS_FLAG_MULTILINE
        HS_FLAG_SINGLEMATCH
        HS_FLAG_SOM_LEFTMOST

    hs_error_t hs_compile_multi(const char* const* expressions, const unsigned int* flags,
                                const unsigned int* ids, unsigned int elements,
                                unsigned int mode, const hs_platform_info_t* platform,
                                hs_database_t** db, hs_compile_error_t** error)
    hs_error_t hs_free_compile_error(hs_compile_error_t* error)
    hs_error_t hs_free_database(hs_database_t* db)
    hs_error_t hs_alloc_scratch(const hs_database_t* db, hs_scratch_t** scratch)
    hs_error_t hs_free_scratch(hs_scratch_t* scratch)
    hs_error_t hs_scan(const hs_database_t* db, const char* data, unsigned int length,
                       unsigned int flags, hs_scratch_t* scratch, match_event_handler on_event,
                       void* context)
    const char* hs_version()
    hs_error_t hs_valid_platform()
