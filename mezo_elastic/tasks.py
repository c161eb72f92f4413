"""`python -m mezo_elastic.tasks render|table ...`: MeZO's tasks (the code lives in data/tasks/)."""

import sys

from mezo_elastic.data.tasks.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
