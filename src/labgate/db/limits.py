"""Per-owner limits an admin set (the `owner_limits` table), and how much an owner holds now."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Integer, String, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from labgate.db.models import Base, Forward, UTCDateTime, utcnow


class OwnerLimit(Base):
    """An admin's override of the [limits] defaults for one owner; NULL keeps the default."""

    __tablename__ = "owner_limits"

    owner: Mapped[str] = mapped_column(String(64), primary_key=True)
    forwards: Mapped[int | None] = mapped_column(Integer, nullable=True)
    ports: Mapped[int | None] = mapped_column(Integer, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    updated_by: Mapped[str | None] = mapped_column(String(64), nullable=True)


def owner_usage(s: Session, owner: str) -> tuple[int, int]:
    """(forwards, external ports) the owner holds now, on every gateway, enabled or not."""
    row = s.execute(select(func.count(), func.coalesce(func.sum(Forward.port_count), 0))
                    .where(Forward.owner == owner)).one()
    return int(row[0]), int(row[1])


def owner_limit(s: Session, owner: str) -> OwnerLimit | None:
    return s.get(OwnerLimit, owner)
