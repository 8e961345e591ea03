"""`python -m blt_jax` == `blt-jax`."""

import sys

from blt_jax.cli import main

sys.exit(main())
