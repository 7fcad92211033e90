"""``python -m earnorm.events``: queue stats and failed jobs (see ``earnorm.events._cli``)."""

import sys

from earnorm.events._cli import main

if __name__ == "__main__":
    sys.exit(main())
