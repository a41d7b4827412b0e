"""Collection rules for the doctests of the source packages (pytest's ``testpaths``)."""

from detectors import native

# pytest imports a module it collects doctests from by file path: for a compiled module that
# would load the Python source beside the extension and replace it for the rest of the run.
# Their examples run in tests/test_native.py instead, against both cores.
collect_ignore = ([m.replace(".", "/") + ".py" for m in native.MODULES]
                  if native.status() == "compiled" else [])
