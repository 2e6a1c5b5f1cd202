# PostgreSQL v3 framing: a message is a type byte and a big-endian int32 length that counts
# itself but not the type byte.

cdef class PgFrameReader(FrameReader):
    pass


cdef class PgFramer(PgFrameReader):
    # A reader that hands every whole message to Python: the reference used by tests, the
    # fuzzer and the microbenchmarks. The relay does not use it.
    cdef:
        bint inspect_all          # False: walk headers only (the relay's forward path)
        list messages             # (kind, bytes) collected by the last feed
        Py_ssize_t count          # messages seen in all
        char hold_kind            # tests: HOLD the first message of this type once (0: never)
