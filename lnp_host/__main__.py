"""`python -m lnp_host` is `lnp-host`."""
import sys

from .cli import main

sys.exit(main())
