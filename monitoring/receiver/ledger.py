"""What the receiver has seen: one JSON line per alert firing (fingerprint + ``startsAt``) it acted on, so a repeated
notification of the same firing is recorded and acted on once, across restarts."""

from __future__ import annotations

import json
import threading
from pathlib import Path

__all__ = ["Ledger", "firing_key"]


def firing_key(fingerprint: str, starts_at: str) -> str:
    """One firing of one alert: Alertmanager's fingerprint (its label set) and when this firing started."""
    return f"{fingerprint}@{starts_at}"


class Ledger:
    """``alerts.jsonl`` in the receiver's state folder; readable by people and by ``GET /alerts``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()  # held by the webhook across check, trigger and record: one at a time
        self._seen: set[str] = set()
        for record in self.records():
            if record.get("status") == "firing" and record.get("acted", False):
                self._seen.add(record["key"])

    def seen(self, key: str) -> bool:
        return key in self._seen

    @property
    def acted(self) -> int:
        """Firings acted on (kept in memory: the health check reads no file)."""
        return len(self._seen)

    def append(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        if record.get("status") == "firing" and record.get("acted", False):
            self._seen.add(record["key"])

    def records(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
