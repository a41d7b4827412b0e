import sys

from ctrguard.cli import main

sys.exit(main())
