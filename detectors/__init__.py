"""Online detectors for windowed click/impression counts. No I/O; state pickles."""

from ctrguard import native as _native

# Use the mypyc-compiled core only if it matches its source (see ctrguard/native.py).
_native.select()
