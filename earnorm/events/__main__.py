"""``python -m earnorm.events``: queue stats and failed jobs (see ``earnorm._cli.events``)."""

import sys

from earnorm._cli.events import main

if __name__ == "__main__":
    sys.exit(main())
