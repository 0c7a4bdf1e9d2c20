"""``python -m mlops_bundle <command>``: the bundle's own commands (no Airflow needed).

* ``new-dataset NAME SAMPLE.csv|parquet --target COL [...]``: onboard a data set (its config and GX files,
  see :mod:`mlops_bundle.onboarding`).

The audit trail and the encryption keys have their own: ``python -m mlops_bundle.audit``,
``python -m mlops_bundle.crypto``.
"""

from __future__ import annotations

import sys

COMMANDS = {
    "new-dataset": "onboard a data set from a sample file (config + GX suite, validation, checkpoint)"
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        out = sys.stdout if argv and argv[0] in ("-h", "--help") else sys.stderr
        if argv and argv[0] not in ("-h", "--help"):
            print(f"unknown command {argv[0]!r}", file=out)
        print("usage: python -m mlops_bundle <command> [options]\ncommands:", file=out)
        for name, text in COMMANDS.items():
            print(f"  {name:<12} {text}", file=out)
        print("`python -m mlops_bundle <command> --help` shows a command's options", file=out)
        return 0 if out is sys.stdout else 2
    from mlops_bundle.onboarding import main as new_dataset

    return new_dataset(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
