"""The nightly decision, in one table: new labels train; drift alone flags; nothing new skips.

| new labels (or recipe/code)? | drift in the new data? | the nightly does              |
| yes                          | either                 | train a challenger, gate it   |
| no                           | yes                    | flag; drifted images go first |
| no                           | no / not judged        | skip training, record why     |

Retraining on unchanged labels is not a response to drift: drift asks for labels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Action = Literal["train", "flag", "skip"]


@dataclass(frozen=True)
class NightlyDecision:
    """What the night does about training and drift, and why."""

    action: Action
    new_labels: bool
    drift: str  # "drifted" | "no drift" | "not judged: <why>"
    reason: str

    def row(self) -> dict[str, Any]:
        return asdict(self)


def decide_night(
    training_action: str, training_reason: str, drift: bool | None, drift_note: str
) -> NightlyDecision:
    """``training_action`` is the training plan's (train, reuse or skip); ``drift`` None when
    drift could not be judged (no champion yet, too few new images)."""
    trains = training_action in ("train", "reuse")
    drift_text = (
        "drifted" if drift else ("no drift" if drift is False else f"not judged: {drift_note}")
    )
    if trains:
        return NightlyDecision("train", True, drift_text, training_reason)
    if drift:
        reason = (
            f"drift without new labels ({drift_note}): the drifted images go to annotators first; "
            f"no retraining on unchanged labels ({training_reason})"
        )
        return NightlyDecision("flag", False, drift_text, reason)
    return NightlyDecision("skip", False, drift_text, training_reason)
