import sys

from qcomp.cli import main

sys.exit(main())
