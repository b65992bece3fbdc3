"""CoordinatorUnreachable names what the coordinator said before it went away.

A coordinator that stops because its store failed (a full disk) answers the
call in flight UNAVAILABLE with the reason, then exits; the client's retries
then meet a closed port. The error the caller finally gets carries that
reason, not only "connection refused" (the e2e case: tests/e2e/test_faults.py).
"""

from __future__ import annotations

import pickle

from fleetflow.errors import ConnectFailure, CoordinatorUnreachable


def test_the_last_answer_is_in_the_message_and_survives_pickling():
    refused = (ConnectFailure("127.0.0.1:1", "refused", "connection refused"),)
    said = "the coordinator's store failed: database or disk is full"
    error = CoordinatorUnreachable(refused, 2.0, said)
    assert str(error).endswith(f"; before that it answered: {said}")
    again = pickle.loads(pickle.dumps(error))
    assert again.last_answer == said and str(again) == str(error)
    plain = CoordinatorUnreachable(refused, 2.0)
    assert "answered" not in str(plain) and pickle.loads(pickle.dumps(plain)).last_answer == ""
