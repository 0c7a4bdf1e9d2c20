"""``python -m mlops_bundle.crypto``: see :mod:`mlops_bundle.crypto.cli`."""

from mlops_bundle.crypto.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
