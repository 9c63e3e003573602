"""RetryPolicy: validation, backoff with full jitter, requested delays and which errors are retried."""

from __future__ import annotations

import random

import pytest

from agentflow import LeaseLost, Retry, RetryPolicy, RunCancelled, RunInterrupted
from agentflow.core.retry import NO_RETRY, requested_delay_seconds


class RateLimited(Exception):
    def __init__(self, retry_after: object) -> None:
        super().__init__("429")
        self.retry_after = retry_after


# -- validation --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": -1}, "max_attempts"),
        ({"max_attempts": 2.5}, "max_attempts"),
        ({"max_attempts": True}, "max_attempts"),
        ({"max_attempts": "3"}, "max_attempts"),
        ({"backoff": 0.5}, "backoff"),
        ({"backoff": -2}, "backoff"),
        ({"backoff": "2"}, "backoff"),
        ({"initial_delay_seconds": -1}, "initial_delay_seconds"),
        ({"initial_delay_seconds": None}, "initial_delay_seconds"),
        ({"max_delay_seconds": -0.1}, "max_delay_seconds"),
        ({"max_delay_seconds": False}, "max_delay_seconds"),
        ({"retry_on": "ValueError"}, "retry_on"),
        ({"retry_on": 42}, "retry_on"),
        ({"retry_on": (ValueError, int)}, "retry_on"),
        ({"give_up_on": [KeyError, "x"]}, "give_up_on"),
        ({"give_up_on": object()}, "give_up_on"),
    ],
)
def test_invalid_option_raises_type_error_naming_it(options, named):
    with pytest.raises(TypeError, match=named):
        RetryPolicy(**options)


def test_unknown_option_is_a_type_error_naming_it():
    with pytest.raises(TypeError, match="retires"):
        RetryPolicy(retires=3)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="retires"):
        RetryPolicy().updated(retires=3)


def test_exception_options_accept_a_class_or_any_sequence_and_store_tuples():
    policy = RetryPolicy(retry_on=ValueError, give_up_on=[KeyError, IndexError])
    assert policy.retry_on == (ValueError,)
    assert policy.give_up_on == (KeyError, IndexError)
    assert RetryPolicy(give_up_on=None).give_up_on == ()


def test_defaults_mean_a_single_attempt():
    assert NO_RETRY.max_attempts == 1
    assert not NO_RETRY.should_retry(ValueError(), 1)


def test_updated_returns_a_new_policy_and_leaves_the_original():
    original = RetryPolicy(max_attempts=2)
    changed = original.updated(max_attempts=5, jitter=False)
    assert (changed.max_attempts, changed.jitter) == (5, False)
    assert (original.max_attempts, original.jitter) == (2, True)
    with pytest.raises(TypeError, match="max_attempts"):
        original.updated(max_attempts=0)


# -- delays ------------------------------------------------------------------------------------------------


def test_ceilings_grow_with_backoff_without_jitter():
    policy = RetryPolicy(
        max_attempts=9, initial_delay_seconds=0.5, backoff=3.0, max_delay_seconds=1000, jitter=False
    )
    delays = [policy.delay_seconds(ValueError(), attempt) for attempt in range(1, 6)]
    assert delays == [0.5, 1.5, 4.5, 13.5, 40.5]


def test_backoff_of_one_keeps_the_delay_constant():
    policy = RetryPolicy(initial_delay_seconds=2, backoff=1, jitter=False)
    assert {policy.delay_seconds(ValueError(), attempt) for attempt in range(1, 8)} == {2}


def test_max_delay_caps_the_ceiling():
    policy = RetryPolicy(initial_delay_seconds=1, backoff=2, max_delay_seconds=5, jitter=False)
    delays = [policy.delay_seconds(ValueError(), attempt) for attempt in range(1, 7)]
    assert delays == [1, 2, 4, 5, 5, 5]


def test_thousands_of_attempts_stay_capped_instead_of_overflowing():
    policy = RetryPolicy(max_attempts=10_000, initial_delay_seconds=0.5, max_delay_seconds=30, jitter=False)
    assert policy.delay_seconds(ValueError(), 5_000) == 30
    no_delay = RetryPolicy(max_attempts=10_000, initial_delay_seconds=0, jitter=False)
    assert no_delay.delay_seconds(ValueError(), 5_000) == 0


def test_full_jitter_draws_uniformly_below_the_ceiling():
    policy = RetryPolicy(initial_delay_seconds=1, backoff=2, max_delay_seconds=6)
    rng = random.Random(1234)
    for attempt, ceiling in [(1, 1), (2, 2), (3, 4), (4, 6), (9, 6)]:
        delays = [policy.delay_seconds(ValueError(), attempt, rng) for _ in range(300)]
        assert all(0 <= d <= ceiling for d in delays)
        # Spread over the whole range, not pinned to either end.
        assert min(delays) < ceiling * 0.1
        assert max(delays) > ceiling * 0.9


def test_full_jitter_uses_the_given_rng():
    policy = RetryPolicy(initial_delay_seconds=1, backoff=2, max_delay_seconds=60)
    expected = random.Random(7).uniform(0, 8)
    assert policy.delay_seconds(ValueError(), 4, random.Random(7)) == expected


def test_retry_delay_is_a_lower_bound():
    policy = RetryPolicy(initial_delay_seconds=1, backoff=2, max_delay_seconds=60, jitter=False)
    assert policy.delay_seconds(Retry(5), 1) == 5  # longer than the backoff: honoured
    assert policy.delay_seconds(Retry(0.5), 3) == 4  # shorter: the backoff wins
    assert policy.delay_seconds(Retry(), 2) == 2  # no delay asked: the backoff
    assert policy.delay_seconds(Retry(120), 1) == 120  # even above max_delay_seconds


def test_retry_delay_is_a_lower_bound_under_jitter():
    policy = RetryPolicy(initial_delay_seconds=10, max_delay_seconds=10)
    rng = random.Random(3)
    delays = [policy.delay_seconds(Retry(4), 1, rng) for _ in range(200)]
    assert all(4 <= d <= 10 for d in delays)
    assert min(delays) == 4  # draws below the requested delay are raised to it


def test_retry_rejects_a_negative_delay():
    with pytest.raises(ValueError, match="delay_seconds"):
        Retry(-1)


def test_retry_after_attribute_is_honoured():
    policy = RetryPolicy(initial_delay_seconds=0.1, max_delay_seconds=1, jitter=False)
    assert policy.delay_seconds(RateLimited(7), 1) == 7
    assert policy.delay_seconds(RateLimited(0), 1) == 0.1


@pytest.mark.parametrize("value", [True, -3, "30", None, [1]])
def test_unusable_retry_after_is_ignored(value):
    assert requested_delay_seconds(RateLimited(value)) is None
    policy = RetryPolicy(initial_delay_seconds=0.25, jitter=False)
    assert policy.delay_seconds(RateLimited(value), 1) == 0.25


def test_requested_delay_of_retry_and_plain_errors():
    assert requested_delay_seconds(Retry(2.5)) == 2.5
    assert requested_delay_seconds(Retry()) is None
    assert requested_delay_seconds(ValueError()) is None
    assert requested_delay_seconds(RateLimited(3)) == 3.0


# -- classification ----------------------------------------------------------------------------------------


def test_max_attempts_is_respected():
    policy = RetryPolicy(max_attempts=3)
    assert policy.should_retry(ValueError(), 1)
    assert policy.should_retry(ValueError(), 2)
    assert not policy.should_retry(ValueError(), 3)
    assert not policy.should_retry(Retry(), 3)


def test_retry_on_limits_what_is_retried():
    policy = RetryPolicy(max_attempts=5, retry_on=(ConnectionError, TimeoutError))
    assert policy.should_retry(ConnectionResetError(), 1)  # subclasses count
    assert policy.should_retry(TimeoutError(), 1)
    assert not policy.should_retry(ValueError(), 1)


def test_give_up_on_wins_over_retry_on():
    policy = RetryPolicy(max_attempts=5, retry_on=OSError, give_up_on=PermissionError)
    assert policy.should_retry(ConnectionError(), 1)
    assert not policy.should_retry(PermissionError(), 1)


def test_retry_is_retried_whatever_the_lists_say():
    policy = RetryPolicy(max_attempts=2, retry_on=KeyError, give_up_on=Exception)
    assert policy.should_retry(Retry(1), 1)
    assert not policy.should_retry(ValueError(), 1)


@pytest.mark.parametrize("exc", [RunInterrupted(), RunCancelled(), LeaseLost()])
def test_run_interrupted_is_never_retried(exc):
    policy = RetryPolicy(max_attempts=10, retry_on=BaseException)
    assert not policy.should_retry(exc, 1)
