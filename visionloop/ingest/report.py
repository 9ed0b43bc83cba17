"""The ingest stage's typed result: what a landing batch held and where each file went."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field, model_validator


class IngestReport(BaseModel):
    """Counts of one ingest; every listed file is counted once.

    ``listed = skipped + read`` (skipped: already placed, per the arrival ledger) and
    ``read = written + duplicates + quarantined``. A batch that read nothing is not committed.
    """

    batch_id: str
    listed: int = Field(ge=0)
    skipped: int = Field(ge=0, description="already placed by an earlier ingest (not opened)")
    read: int = Field(ge=0)
    written: int = Field(ge=0)
    duplicates: int = Field(ge=0)
    quarantined: int = Field(ge=0)
    quarantined_by_reason: dict[str, int] = Field(default_factory=dict)
    archived: int = Field(0, ge=0, description="placed files moved to the landing archive")
    ingested_at: datetime
    sources: list[str]

    @model_validator(mode="after")
    def _every_file_once(self) -> IngestReport:
        placed = self.written + self.duplicates + self.quarantined
        if self.listed != self.skipped + self.read or self.read != placed:
            raise ValueError(
                f"batch {self.batch_id}: {self.listed} files listed, {self.skipped} skipped, "
                f"{self.read} read, but {placed} written/duplicate/quarantined; "
                "the batch was not committed"
            )
        return self

    @property
    def arrived(self) -> bool:
        """Whether the batch read any file (else there is nothing to gate or commit)."""
        return self.read > 0

    @property
    def batch_ids(self) -> list[str]:
        """The batch, for stages that look at tonight's images; none when nothing arrived."""
        return [self.batch_id] if self.arrived else []

    def counts(self) -> list[dict[str, int | str]]:
        """The counts as table rows (the Prefect artifact and the CLI summary)."""
        rows = [
            ("files listed", self.listed),
            ("skipped: already placed", self.skipped),
            ("read", self.read),
            ("written to the lake", self.written),
            ("duplicates", self.duplicates),
            ("quarantined", self.quarantined),
        ] + [(f"quarantined: {r}", n) for r, n in self.quarantined_by_reason.items()]
        if self.archived:
            rows.append(("moved to the landing archive", self.archived))
        return [{"measure": measure, "count": count} for measure, count in rows]
