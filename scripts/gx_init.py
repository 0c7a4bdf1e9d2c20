"""(Re)generate the churn sample data set's Great Expectations files in ``great_expectations/``.

Run from the repository root::

    .venv/bin/python scripts/gx_init.py            # rewrite churn's suite, validation definition, checkpoint
    .venv/bin/python scripts/gx_init.py --check    # exit 1 if the committed files differ from the script

The churn expectation suite is defined here, in code, so it can be reviewed (its ranges and value sets are
business rules, not guesses from a sample); the JSON/YAML files it writes are what gets committed and what
the pipeline reads at run time (``mlops_bundle.validation``). Other data sets are onboarded with
``python -m mlops_bundle new-dataset`` (``mlops_bundle.onboarding``), which infers their suite from a
sample; both write through ``mlops_bundle.onboarding.write_gx_files``: only this data set's suite,
validation definition and checkpoint files and its asset (``churn_batches``) in ``great_expectations.yml``
are written, nothing of another data set is deleted or rewritten, and every GX id is a UUIDv5 derived from
the object's name, so running the script twice gives byte-identical files.

Run-time output (validation results, Data Docs, the lock file) lives in ``great_expectations/uncommitted/``,
which is git-ignored. Never add an ``__init__.py`` to ``great_expectations/``: it would shadow the
``great_expectations`` package.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from mlops_bundle.config import DEFAULT_CONFIG_PATH, PROJECT_ROOT, BundleConfig, load_config
from mlops_bundle.onboarding import MAX_ROWS_PER_BATCH, write_gx_files
from mlops_bundle.sample import CONTRACT_TYPES, PAYMENT_METHODS, REGIONS

COMMITTED = (
    "great_expectations.yml",
    ".gitignore",
    "expectations",
    "validation_definitions",
    "checkpoints",
)


def build_expectations(cfg: BundleConfig) -> list:
    """The churn batch suite: one expectation per rule, each with a short note saying why."""
    import great_expectations.expectations as gxe

    ds = cfg.dataset
    ints = [c.name for c in ds.columns if c.dtype == "int"]
    floats = [c.name for c in ds.columns if c.dtype == "float"]
    dts = [c.name for c in ds.columns if c.dtype == "datetime"]
    required = [c.name for c in ds.columns if not c.nullable]
    nullable = [c.name for c in ds.columns if c.nullable]

    exps: list = [
        gxe.ExpectTableColumnsToMatchSet(
            column_set=ds.column_names,
            exact_match=True,
            notes="The batch has exactly the columns declared in config/datasets/churn.yaml: none missing, none extra.",
        ),
        gxe.ExpectTableRowCountToBeBetween(
            min_value=1,
            max_value=MAX_ROWS_PER_BATCH,
            notes="An empty batch is an upstream failure; more than 20M rows is not a daily batch.",
        ),
        gxe.ExpectColumnValuesToBeUnique(
            column=ds.id_column,
            notes="One row per customer snapshot: a duplicated id means a double export or a bad join.",
        ),
    ]
    exps += [
        gxe.ExpectColumnValuesToNotBeNull(column=c, notes=f"{c} is declared non-nullable.") for c in required
    ]
    exps += [
        gxe.ExpectColumnValuesToNotBeNull(
            column=c,
            mostly=0.95,
            notes=f"{c} may be missing (billing lag, not given) but for at most 5% of rows.",
        )
        for c in nullable
    ]
    # Types, as the ingest step coerces them: numpy int64/float64, naive datetime64[ns].
    exps += [
        gxe.ExpectColumnValuesToBeOfType(column=c, type_="int64", notes="Coerced to int64 at ingest.")
        for c in ints
    ]
    exps += [
        gxe.ExpectColumnValuesToBeOfType(column=c, type_="float64", notes="Coerced to float64 at ingest.")
        for c in floats
    ]
    exps += [
        gxe.ExpectColumnValuesToBeOfType(
            column=c, type_="datetime64[ns]", notes="Naive datetime64[ns] (UTC) after ingest."
        )
        for c in dts
    ]
    # Text columns get no separate type rule: their value-set rule below admits only the declared strings,
    # which fixes the type too, and GX checks object columns' types value by value (~0.4 s per column per
    # million rows), the largest single cost of the suite.
    ranges = {
        "tenure_months": (0, 120, "Months as a customer: 0 to 10 years."),
        "monthly_charges": (15, 250, "The price list goes from 15 to 250 per month."),
        "total_charges": (0, 40_000, "Lifetime billing; never negative, at most 250 x 120 plus margin."),
        "support_tickets": (0, 40, "Tickets in the period; more than 40 is a logging bug."),
        "age": (18, 100, "Customers are adults; over 100 is a data-entry error."),
    }
    exps += [
        gxe.ExpectColumnValuesToBeBetween(column=c, min_value=lo, max_value=hi, notes=note)
        for c, (lo, hi, note) in ranges.items()
    ]
    sets = {
        "contract_type": (list(CONTRACT_TYPES), "Only the contract types the business sells."),
        "payment_method": (list(PAYMENT_METHODS), "Only the payment methods the billing system knows."),
        "region": (list(REGIONS), "Only the declared sales regions."),
        ds.target: ([0, 1], "Binary label: 1 = churned within 30 days."),
    }
    exps += [
        gxe.ExpectColumnValuesToBeInSet(column=c, value_set=values, notes=note)
        for c, (values, note) in sets.items()
    ]
    return exps


def _committed_files(root: Path) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for name in COMMITTED:
        p = root / name
        if p.is_file():
            files[name] = p.read_bytes()
        elif p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file():
                    files[str(f.relative_to(root))] = f.read_bytes()
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", help="the churn sample's config file (default: config/datasets/churn.yaml)"
    )
    parser.add_argument("--target", help="GX folder to write (default: the config's validation.gx_root)")
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if the files differ")
    args = parser.parse_args(argv)

    cfg = load_config(args.config or DEFAULT_CONFIG_PATH)
    target = Path(args.target).resolve() if args.target else cfg.gx_root
    if (target / "__init__.py").exists():
        print(f"{target}/__init__.py shadows the great_expectations package: delete it", file=sys.stderr)
        return 1
    if args.check:
        # write into a copy of the committed files and compare: exactly what a real run would change
        old = _committed_files(target)
        with tempfile.TemporaryDirectory(prefix="gx_init_") as tmp:
            copy = Path(tmp) / "great_expectations"
            for name, data in old.items():
                (copy / name).parent.mkdir(parents=True, exist_ok=True)
                (copy / name).write_bytes(data)
            write_gx_files(copy, cfg, build_expectations(cfg), force=True)
            new = _committed_files(copy)
        if old == new:
            print(f"{target}: up to date")
            return 0
        for name in sorted(set(old) | set(new)):
            if old.get(name) != new.get(name):
                print(f"differs: {name}", file=sys.stderr)
        return 1
    written = write_gx_files(target, cfg, build_expectations(cfg), force=True)
    print(
        f"wrote {len(written)} files to {os.path.relpath(target, PROJECT_ROOT)}/ (other data sets untouched)"
    )
    for name in sorted(written):
        print(f"  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
