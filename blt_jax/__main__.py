"""`python -m blt_jax` == `blt-jax`."""

import sys

from blt_jax.tools.cli import main

sys.exit(main())
