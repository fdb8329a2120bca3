"""``python -m gencnn_plugin`` runs the CLI (and is what torchrun launches)."""

import sys

from .cli import main

sys.exit(main())
