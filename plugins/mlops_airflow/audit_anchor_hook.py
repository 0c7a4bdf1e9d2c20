"""``AuditAnchorHook``: the audit trail's Object Lock anchor bucket, through the amazon provider's ``S3Hook``.

The library's ``mlops_bundle.audit.anchors.S3Anchors`` takes a boto3 S3 client; this hook builds it from
the Airflow AWS connection (``storage.aws_conn_id``: region, credentials, ``endpoint_url`` in the extra
for MinIO/moto), so credentials stay in Airflow connections. The principal behind that connection needs
``s3:PutObject``, ``s3:PutObjectRetention``, ``s3:GetObject``/``GetObjectVersion`` and
``s3:ListBucketVersions`` on the anchor prefix; it must NOT hold ``s3:BypassGovernanceRetention`` (with
GOVERNANCE mode) and nothing can delete a COMPLIANCE-locked anchor before its retention ends.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

if TYPE_CHECKING:
    from mlops_bundle.audit.anchors import S3Anchors
    from mlops_bundle.config import BundleConfig


class AuditAnchorHook(BaseHook):
    """The anchor bucket of the audit trail.

    :param aws_conn_id: the Airflow AWS connection for S3
    :param anchor_uri: ``s3://bucket/prefix/`` of a bucket with Object Lock (``audit.anchor_uri``)
    :param retention_days: Object Lock retention of each new anchor (``audit.anchor_retention_days``)
    :param mode: ``COMPLIANCE`` or ``GOVERNANCE`` (``audit.anchor_retention_mode``)
    """

    conn_name_attr = "aws_conn_id"
    default_conn_name = "aws_default"
    hook_name = "MLOps audit anchors"

    def __init__(
        self,
        *,
        anchor_uri: str,
        aws_conn_id: str | None = default_conn_name,
        retention_days: int = 400,
        mode: str = "COMPLIANCE",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.aws_conn_id = aws_conn_id
        self.anchor_uri = anchor_uri
        self.retention_days = retention_days
        self.mode = mode

    @classmethod
    def from_config(cls, cfg: BundleConfig) -> AuditAnchorHook | None:
        """The hook of the configured bucket; None when ``audit.anchor_uri`` is empty."""
        if not cfg.audit.anchor_uri:
            return None
        return cls(
            anchor_uri=cfg.audit.anchor_uri,
            aws_conn_id=cfg.storage.aws_conn_id,
            retention_days=cfg.audit.anchor_retention_days,
            mode=cfg.audit.anchor_retention_mode,
        )

    @cached_property
    def s3_client(self) -> Any:
        """A boto3 S3 client built by the amazon provider's ``S3Hook``."""
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        return S3Hook(aws_conn_id=self.aws_conn_id).get_conn()

    def get_conn(self) -> S3Anchors:
        """The library's anchors of ``anchor_uri`` on this connection's client."""
        from mlops_bundle.audit.anchors import S3Anchors

        return S3Anchors(self.s3_client, self.anchor_uri, retention_days=self.retention_days, mode=self.mode)
