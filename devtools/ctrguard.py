"""``python -m devtools.ctrguard ARGS``: the ``ctrguard`` command with fault injection
(``$CTRGUARD_CRASH_AT``, see :mod:`devtools.faults`), for the reliability tests."""

import sys

from ctrguard.cli import main
from devtools.faults import install_from_env

if __name__ == "__main__":
    install_from_env()
    sys.exit(main())
