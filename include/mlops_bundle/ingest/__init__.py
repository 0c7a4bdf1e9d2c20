"""Ingestion: landing files -> typed, fingerprinted batch -> quality gate -> staging or quarantine.

Rules this package keeps, whatever the input:
- landing files are only ever read, never modified or deleted;
- staging is written only after every check passed, one object at a time and atomically, so a failed
  or interrupted run leaves the previous partition as it was; a rerun of the same date replaces the
  partition (same keys), it never adds a second copy;
- a rejected batch is copied byte for byte to quarantine together with the reason (and the GX result
  when validation ran), and the raised error names the file, the column or rule, the counts, and what
  to do next.

One module per concern: ``landing`` (find and read the raw files), ``schema`` (type and fingerprint the
batch), ``batch`` (staging/quarantine layout and writes, and the ``ingest_batch`` step), ``sources``
(the ``ingest.allowed_sources`` allowlist a ``source`` override must pass before anything is listed).
Every public name is importable from here; patch a name where it is defined (e.g.
``mlops_bundle.ingest.batch``).
"""

from __future__ import annotations

from mlops_bundle.ingest.batch import (
    MANIFEST_FILE,
    STAGING_FILE,
    BatchRejected,
    IngestResult,
    Validator,
    ingest_batch,
    mark_published,
    quarantine,
    quarantine_prefix,
    read_manifest,
    read_staging,
    staging_prefix,
    validated_dates,
    write_staging,
)
from mlops_bundle.ingest.landing import NoLandingFiles, discover, landing_prefix, read_batch
from mlops_bundle.ingest.schema import coerce, fingerprint
from mlops_bundle.ingest.sources import SourceNotAllowed, allowed_prefixes, check_keys, check_source
from mlops_bundle.names import parse_date  # re-exported: callers have imported it from here

__all__ = [
    "MANIFEST_FILE",
    "STAGING_FILE",
    "BatchRejected",
    "IngestResult",
    "NoLandingFiles",
    "SourceNotAllowed",
    "Validator",
    "allowed_prefixes",
    "check_keys",
    "check_source",
    "coerce",
    "discover",
    "fingerprint",
    "ingest_batch",
    "mark_published",
    "landing_prefix",
    "parse_date",
    "quarantine",
    "quarantine_prefix",
    "read_batch",
    "read_manifest",
    "read_staging",
    "staging_prefix",
    "validated_dates",
    "write_staging",
]
