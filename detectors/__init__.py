"""Online detectors for windowed click/impression counts. No I/O; state pickles."""

from detectors import native as _native

# Use the mypyc-compiled core only if it matches its source (see detectors/native.py).
_native.select()
