"""Online detectors for windowed click/impression counts. No I/O; state pickles."""
