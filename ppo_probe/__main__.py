"""``python -m ppo_probe`` runs the ``ppo-probe`` command line."""

import sys

from .cli import main

sys.exit(main())
