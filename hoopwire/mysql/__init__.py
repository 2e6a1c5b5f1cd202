"""The MySQL/MariaDB side of hoopwire: the handshake (both sides), the upstream login and the
session glue.

The per-packet relay lives in the Cython extension hoopwire.mysql._wire (ext/hoopwire/mysql/);
packets.py holds the pure-Python reference codecs it is tested against.
"""
