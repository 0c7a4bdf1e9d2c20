"""``python -m mlops_bundle.audit``: see :mod:`mlops_bundle.audit.cli`."""

import sys

from mlops_bundle.audit.cli import main

if __name__ == "__main__":
    sys.exit(main())
