"""``python -m llmsys`` runs the ``llmsys`` command."""

import sys

from llmsys.cli.main import main

sys.exit(main())
