"""python -m recsys predict|recommend|evaluate ...: see recsys.cli."""

import sys

from recsys.cli import main

sys.exit(main())
