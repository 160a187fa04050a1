"""Waivers and overrides on the record (workflow/provenance.py)."""

from mlflow_core.workflow.provenance import OnRecord, _repeats_once


def _override(time: str, author: str | None = "Ada <ada@x>", mismatch: bool = False) -> OnRecord:
    return OnRecord("override", "optimization entered with the diagnostics gate closed", "Ada", time,
                    "no GPU this week", "c0ffee" + time if author else None, author, mismatch)


def test_an_override_given_again_is_listed_once_with_its_count():
    shown = _repeats_once([_override("t1"), _override("t2"), _override("t3"), _override("t4")])
    assert len(shown) == 1 and shown[0].times == 4 and shown[0].time == "t1"
    assert shown[0].shown().startswith("by Ada, 4 times from t1 (committed by Ada <ada@x>")


def test_a_repeat_by_another_author_or_not_yet_committed_stays_its_own_entry():
    forged = _override("t2", author="Mallory <m@x>", mismatch=True)
    shown = _repeats_once([_override("t1"), forged, _override("t3", author=None)])
    assert [r.times for r in shown] == [1, 1, 1] and shown[1].mismatch
