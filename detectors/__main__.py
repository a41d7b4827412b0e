"""``python -m detectors {status,build}``: the compiled detector core (detectors/native.py)."""

from detectors.native import main

raise SystemExit(main())
