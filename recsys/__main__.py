"""python -m recsys predict|recommend|evaluate|blend|data ...: see recsys.cli."""

import sys

from recsys.cli import main

sys.exit(main())
