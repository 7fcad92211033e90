"""An app whose import kills the process at once: a consumer process that keeps dying."""

import os

os._exit(1)
