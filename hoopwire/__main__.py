import sys

from hoopwire.cli import main

sys.exit(main())
