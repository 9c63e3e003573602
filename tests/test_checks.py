"""One test per system check id, and the lazily read settings object."""

from __future__ import annotations

import pytest
from django.test import override_settings

from agentflow.checks import check_settings
from agentflow.conf import DEFAULTS, agentflow_settings


def ids(**agentflow: object) -> list[str]:
    with override_settings(AGENTFLOW=agentflow):
        return [message.id for message in check_settings()]


def test_valid_settings_pass():
    assert ids() == []
    assert ids(STREAM_MAXLEN=10, LEASE_SECONDS=10, HEARTBEAT_INTERVAL_SECONDS=1) == []


def test_e001_not_a_dict():
    with override_settings(AGENTFLOW=["nope"]):
        assert [m.id for m in check_settings()] == ["agentflow.E001"]


def test_e002_unknown_key_suggests_the_close_one():
    with override_settings(AGENTFLOW={"STREAMMAXLEN": 5}):
        (message,) = check_settings()
    assert message.id == "agentflow.E002"
    assert "STREAMMAXLEN" in message.msg and "STREAM_MAXLEN" in message.hint


@pytest.mark.parametrize("value", [0, -1, "5", True, None])
def test_e004_durations_must_be_positive_numbers(value):
    assert ids(LEASE_SECONDS=value) == ["agentflow.E004"]


@pytest.mark.parametrize("value", [0, 1.5, "10"])
def test_e005_stream_maxlen_whole_number(value):
    assert ids(STREAM_MAXLEN=value) == ["agentflow.E005"]


@pytest.mark.parametrize(
    "key", ["MAX_INPUT_BYTES", "RUNS_PAGE_SIZE", "EVENTS_PAGE_SIZE", "EVENTS_MAX_PAGE_SIZE"]
)
@pytest.mark.parametrize("value", [0, 1.5, "10", True])
def test_e005_api_sizes_whole_numbers(key, value):
    assert ids(**{key: value}) == ["agentflow.E005"]


@pytest.mark.parametrize(
    "key",
    [
        "SSE_KEEPALIVE_SECONDS",
        "SSE_RETRY_SECONDS",
        "WEBSOCKET_KEEPALIVE_SECONDS",
        "STREAM_IDLE_CHECK_SECONDS",
    ],
)
@pytest.mark.parametrize("value", [0, -0.5, "15", None])
def test_e004_streaming_durations(key, value):
    assert ids(**{key: value}) == ["agentflow.E004"]


@pytest.mark.parametrize("key", ["DISPATCH_TIMEOUT_SECONDS", "DISPATCH_RETRY_INTERVAL_SECONDS"])
@pytest.mark.parametrize("value", [0, -1, "2", None])
def test_e004_dispatch_durations(key, value):
    assert ids(**{key: value}) == ["agentflow.E004"]


@pytest.mark.parametrize("value", [0, 1.5, "10", True])
def test_e005_subscriber_queue_size(value):
    assert ids(SUBSCRIBER_QUEUE_SIZE=value) == ["agentflow.E005"]
    assert ids(SUBSCRIBER_QUEUE_SIZE=1) == []


def test_e006_strings():
    assert ids(KEY_PREFIX="") == ["agentflow.E006"]


def test_e007_redis_url_scheme():
    assert ids(REDIS_URL="http://localhost") == ["agentflow.E007"]


def test_e008_executor_import():
    assert ids(EXECUTOR="agentflow.executors.Nope") == ["agentflow.E008"]
    assert ids(EXECUTOR=42) == ["agentflow.E008"]


def test_e009_cache_alias_exists():
    assert ids(CACHE_ALIAS="missing") == ["agentflow.E009"]


def test_e010_booleans():
    assert ids(ARCHIVE_EVENTS="yes") == ["agentflow.E010"]
    assert ids(PREPARED_STATEMENTS=1) == ["agentflow.E010"]
    assert ids(WORKER_GC_FREEZE="no") == ["agentflow.E010"]


def test_e011_events_page_size_within_the_maximum():
    assert ids(EVENTS_PAGE_SIZE=50, EVENTS_MAX_PAGE_SIZE=50) == []
    assert ids(EVENTS_PAGE_SIZE=51, EVENTS_MAX_PAGE_SIZE=50) == ["agentflow.E011"]


def test_w001_lease_shorter_than_two_heartbeats():
    assert ids(LEASE_SECONDS=5, HEARTBEAT_INTERVAL_SECONDS=3) == ["agentflow.W001"]


@pytest.mark.parametrize("key", ["RETENTION_DAYS", "EVENT_RETENTION_DAYS"])
@pytest.mark.parametrize("value", [0, -1, "30", True])
def test_e012_retention_days_none_or_positive(key, value):
    assert ids(**{key: value}) == ["agentflow.E012"]
    assert ids(**{key: None}) == ids(**{key: 0.5}) == []


def test_w002_events_kept_longer_than_their_runs():
    assert ids(RETENTION_DAYS=30, EVENT_RETENTION_DAYS=90) == ["agentflow.W002"]
    assert ids(RETENTION_DAYS=90, EVENT_RETENTION_DAYS=30) == ids(EVENT_RETENTION_DAYS=90) == []


def test_settings_are_read_lazily_and_follow_override_settings():
    assert agentflow_settings.stream_maxlen == DEFAULTS["STREAM_MAXLEN"]
    with override_settings(AGENTFLOW={"STREAM_MAXLEN": 7}):
        assert agentflow_settings.stream_maxlen == 7
    assert agentflow_settings.stream_maxlen == DEFAULTS["STREAM_MAXLEN"]


def test_unknown_setting_attribute_is_an_error():
    with pytest.raises(AttributeError, match="no setting 'stream_max_len'"):
        agentflow_settings.stream_max_len  # noqa: B018


def test_redis_url_falls_back_to_the_environment(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://example:6380/2")
    with override_settings(AGENTFLOW={"REDIS_URL": None}):
        assert agentflow_settings.redis_url == "redis://example:6380/2"


@pytest.mark.parametrize("key", ["SLICE_SECONDS", "SUSPEND_THRESHOLD_SECONDS", "DRAIN_SECONDS"])
@pytest.mark.parametrize("value", [0, -1, "30", None])
def test_e004_slice_suspend_and_drain_durations(key, value):
    assert ids(**{key: value}) == ["agentflow.E004"]
    assert ids(**{key: 0.5}) == []


@pytest.mark.parametrize(
    "value",
    [
        [],
        {"openai": {"requests_per_minute": 10}},  # no model part
        {"openai:gpt*": {"requests_per_minute": 10}},  # '*' not a whole part
        {"openai:*": {}},
        {"openai:*": {"requests_per_minut": 10}},
        {"openai:gpt-4o": {"tokens_per_minute": 0}},
        {"openai:gpt-4o": {"requests_per_minute": 1.5}},
        {"openai:gpt-4o": 100},
    ],
)
def test_e013_rate_limits(value):
    assert ids(RATE_LIMITS=value) == ["agentflow.E013"]


def test_e013_valid_rate_limits_pass():
    limits = {
        "*": {"requests_per_minute": 1000},
        "openai:*": {"requests_per_minute": 500, "tokens_per_minute": 200_000},
        "openai:ft:gpt-4o:acme": {"tokens_per_minute": 10_000},
    }
    assert ids(RATE_LIMITS=limits) == ids(RATE_LIMITS={}) == []


def messages(**agentflow: object) -> list[tuple[str, str]]:
    with override_settings(AGENTFLOW=agentflow):
        return [(message.id, message.msg) for message in check_settings()]


@pytest.mark.parametrize("key", ["RATE_LIMIT_WINDOW_SECONDS", "LLM_PROVIDER_COOLDOWN_SECONDS"])
@pytest.mark.parametrize("value", [0, -1, "60", True, None])
def test_e004_rate_limit_window_and_provider_cool_down(key, value):
    assert ids(**{key: value}) == ["agentflow.E004"]
    assert ids(**{key: 0.5}) == []


@pytest.mark.parametrize(
    "key", ["LLM_MAX_CONCURRENCY_PER_RUN", "LLM_MAX_CONCURRENCY_PER_WORKER", "LLM_PROVIDER_FAILURE_THRESHOLD"]
)
@pytest.mark.parametrize("value", [0, -3, 2.5, "8", True, None])
def test_e005_llm_concurrency_limits(key, value):
    assert ids(**{key: value}) == ["agentflow.E005"]
    assert ids(**{key: 1}) == []


PROVIDER = {"name": "primary", "base_url": "https://llm.example/v1", "api_key": "sk-secret-1"}


def test_e014_valid_providers_pass():
    backup = {"name": "backup", "base_url": "http://127.0.0.1:8001/v1", "models": {"gpt-4o-mini": "llama3"}}
    assert ids(LLM_PROVIDERS=None) == ids(LLM_PROVIDERS=[PROVIDER, backup]) == []
    assert ids(LLM_PROVIDERS=(PROVIDER,)) == []


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ([], "must not be empty"),
        ([{**PROVIDER, "apikey": "x"}], "unknown provider options ['apikey']"),
        ([{"base_url": "https://llm.example/v1"}], "needs a 'name'"),
        ([{**PROVIDER, "name": "a:b"}], "name must be a non-empty str without ':'"),
        ([{**PROVIDER, "base_url": "llm.example"}], "base_url must be an http(s) URL"),
        ([{**PROVIDER, "models": {"gpt-4o": 4}}], "models must map requested model names"),
        ([PROVIDER, {**PROVIDER, "api_key": "sk-secret-2"}], "provider names must be unique"),
        (["primary"], "a provider is a Provider or a dict"),
        ("primary", "must be None or a list of provider dicts, not str"),
    ],
)
def test_e014_llm_providers(value, problem):
    ((check_id, message),) = messages(LLM_PROVIDERS=value)
    assert check_id == "agentflow.E014"
    assert message.startswith("AGENTFLOW['LLM_PROVIDERS'] ")
    assert problem in message


def test_e014_never_prints_an_api_key():
    # A dict where a list belongs would hold the key; so would the message about a key that is not a str.
    (only,) = messages(LLM_PROVIDERS=PROVIDER)
    (bytes_key,) = messages(LLM_PROVIDERS=[{**PROVIDER, "api_key": b"sk-secret-1"}])
    assert only == (
        "agentflow.E014",
        "AGENTFLOW['LLM_PROVIDERS'] must be None or a list of provider dicts, not dict.",
    )
    assert bytes_key[0] == "agentflow.E014"
    assert "api_key must be a str or None, not bytes" in bytes_key[1]
    assert "sk-secret" not in bytes_key[1]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (["gpt-4o"], " must be a dict of model"),
        ({"": {"input": 1}}, " keys must be model names or globs"),
        ({"gpt-4o": {"inptu": 1}}, "['gpt-4o'] must be a dict with 'input' and/or 'output'"),
        ({"gpt-4o": {}}, "['gpt-4o'] must be a dict with 'input' and/or 'output'"),
        ({"gpt-4o": {"input": -1}}, "['gpt-4o']['input'] must be a number >= 0"),
        ({"gpt-4o*": {"output": "2.5"}}, "['gpt-4o*']['output'] must be a number >= 0"),
    ],
)
def test_e015_llm_prices(value, problem):
    ((check_id, message),) = messages(LLM_PRICES=value)
    assert check_id == "agentflow.E015"
    assert message.startswith("AGENTFLOW['LLM_PRICES']" + problem)


def test_e015_one_error_per_problem_and_valid_prices_pass():
    prices = {
        "gpt-4o-mini": {"input": 0.15, "output": 0.6},
        "*embedding*": {"input": 0.02},
        "free": {"input": 0},
    }
    assert ids(LLM_PRICES=prices) == ids(LLM_PRICES={}) == []
    assert ids(LLM_PRICES={"a": {"input": -1}, "b": {"output": None}}) == ["agentflow.E015"] * 2


@pytest.mark.parametrize("value", [-0.01, "0.05", True, None])
def test_e016_llm_stream_coalesce_seconds(value):
    assert ids(LLM_STREAM_COALESCE_SECONDS=value) == ["agentflow.E016"]
    assert ids(LLM_STREAM_COALESCE_SECONDS=0) == ids(LLM_STREAM_COALESCE_SECONDS=0.25) == []


@pytest.mark.parametrize("value", [-0.1, "1", True, None])
def test_e017_rate_limit_jitter_seconds(value):
    assert ids(RATE_LIMIT_JITTER_SECONDS=value) == ["agentflow.E017"]
    assert ids(RATE_LIMIT_JITTER_SECONDS=0) == ids(RATE_LIMIT_JITTER_SECONDS=0.25) == []
