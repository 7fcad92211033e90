"""``python -m earnorm.events.consumer``: run a consumer for an application's handlers (the
command line itself is ``earnorm._cli.consumer``; ``--help`` lists every option)."""

import sys

from earnorm._cli.consumer import main

if __name__ == "__main__":
    sys.exit(main())
