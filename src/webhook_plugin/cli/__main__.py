"""``python -m webhook_plugin.cli``: the same as the ``webhook-plugin`` command."""

import sys

from . import main

sys.exit(main())
