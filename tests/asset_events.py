"""Asset events as the session's Airflow metadata DB recorded them (after `dag.test()` runs)."""

from __future__ import annotations


def asset_event_extras(asset_name: str) -> list[dict]:
    """The `extra` of every event of the Asset named `asset_name`, oldest first."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = (
            session.query(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .filter(AssetModel.name == asset_name)
            .order_by(AssetEvent.id)
            .all()
        )
        return [dict(e.extra or {}) for e in rows]
