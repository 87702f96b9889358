"""RatelimitConfig and Limit: defaults, environment, validation, and a repr without the key."""

from __future__ import annotations

import itertools
import logging
import math
from typing import Any

import pytest

from mistral_ratelimit import config as config_module
from mistral_ratelimit.config import SECONDS_PER_MONTH, Default, Limit, RatelimitConfig

SECRET = "sk-SECRET-123"


@pytest.fixture(autouse=True)
def _no_ambient_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees only the variables it sets itself."""
    import os

    for name in list(os.environ):
        if name == "MISTRAL_API_KEY" or name.startswith("MISTRAL_RATELIMIT_"):
            monkeypatch.delenv(name)


# -- defaults -----------------------------------------------------------------------------


def test_defaults_match_the_issue() -> None:
    cfg = RatelimitConfig()
    assert cfg.api_key is None
    assert cfg.requests_per_second == 1.0
    assert cfg.tokens_per_minute == 500_000
    assert cfg.max_retries == 3
    assert cfg.base_delay == 1.0
    assert cfg.max_delay == 32.0
    assert cfg.timeout == 60.0
    assert cfg.tokens_per_month is None
    assert cfg.max_concurrency is None
    assert cfg.limits == ()


def test_a_field_left_unset_is_known_by_its_value() -> None:
    unset = RatelimitConfig()
    assert isinstance(unset.timeout, Default)
    assert isinstance(unset.requests_per_second, Default)
    # Equal to the defaults, but chosen: never mistaken for unset.
    chosen = RatelimitConfig(timeout=60.0, requests_per_second=1.0)
    assert not isinstance(chosen.timeout, Default)
    assert not isinstance(chosen.requests_per_second, Default)
    assert not isinstance(unset.replace(timeout=60.0).timeout, Default)
    assert not isinstance(
        RatelimitConfig.from_env({"MISTRAL_RATELIMIT_TIMEOUT": "60"}).timeout, Default
    )
    assert isinstance(RatelimitConfig.from_env({}).timeout, Default)
    assert "timeout" not in repr(unset)
    assert "timeout=60.0" in repr(chosen)
    assert "requests_per_second=1.0" in repr(chosen)


def test_api_key_falls_back_to_mistral_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MISTRAL_API_KEY", SECRET)
    assert RatelimitConfig().api_key == SECRET
    assert RatelimitConfig(api_key="sk-other").api_key == "sk-other"


def test_default_engine_limits_are_tier_defaults() -> None:
    pairs = RatelimitConfig().engine_limits()
    assert [(lim.amount, lim.per_seconds, lim.unit) for lim, _ in pairs] == [
        (1, 1.0, "requests"),
        (500_000, 60.0, "tokens"),
    ]
    assert [explicit for _, explicit in pairs] == [False, False]


def test_explicit_values_are_marked_explicit() -> None:
    cfg = RatelimitConfig(
        requests_per_second=1.0,  # the default's value, but chosen by the user
        tokens_per_minute=20_000,
        tokens_per_month=1_000_000,
        limits=(Limit(720, 60, "requests"),),
    )
    pairs = cfg.engine_limits()
    assert all(explicit for _, explicit in pairs)
    assert (pairs[2][0].amount, pairs[2][0].per_seconds) == (1_000_000, SECONDS_PER_MONTH)
    assert pairs[3][0] == Limit(720, 60, "requests")


@pytest.mark.parametrize(
    ("rps", "burst", "period"),
    [(1.2, 1, 1 / 1.2), (0.5, 1, 2.0), (1.0, 1, 1.0), (8.0, 8, 1.0), (2.5, 2, 0.8)],
)
def test_requests_per_second_becomes_a_window(rps: float, burst: int, period: float) -> None:
    (lim, _), *_ = RatelimitConfig(requests_per_second=rps, tokens_per_minute=None).engine_limits()
    assert lim.unit == "requests"
    assert lim.amount == burst
    assert math.isclose(lim.per_seconds, period)
    # The long-run pace stays the configured rate.
    assert math.isclose(lim.amount / lim.per_seconds, rps)


def test_one_point_two_rps_paces_one_request_every_833_ms() -> None:
    from mistral_ratelimit.limiter import RateLimiter

    now = [100.0]
    cfg = RatelimitConfig(requests_per_second=1.2, tokens_per_minute=None, window_margin=0.0)
    limiter = RateLimiter(cfg, clock=lambda: now[0])
    ats = [limiter.reserve(1).at - now[0] for _ in range(4)]
    gaps = [b - a for a, b in itertools.pairwise(ats)]
    assert ats[0] == 0
    for gap in gaps:
        # One slot (1% of the window) of quantisation at most.
        assert 1 / 1.2 - 1e-9 <= gap <= 1 / 1.2 * 1.01 + 1e-9


def test_none_disables_a_default_limit() -> None:
    cfg = RatelimitConfig(requests_per_second=None, tokens_per_minute=None)
    assert cfg.engine_limits() == []


# -- environment --------------------------------------------------------------------------


def test_from_env_reads_every_variable() -> None:
    env = {
        "MISTRAL_API_KEY": SECRET,
        "MISTRAL_RATELIMIT_REQUESTS_PER_SECOND": "2.5",
        "MISTRAL_RATELIMIT_TOKENS_PER_MINUTE": "20000",
        "MISTRAL_RATELIMIT_TOKENS_PER_MONTH": "1000000",
        "MISTRAL_RATELIMIT_MAX_CONCURRENCY": "4",
        "MISTRAL_RATELIMIT_MAX_RETRIES": "5",
        "MISTRAL_RATELIMIT_BASE_DELAY": "0.5",
        "MISTRAL_RATELIMIT_MAX_DELAY": "8",
        "MISTRAL_RATELIMIT_TIMEOUT": "30",
        "MISTRAL_RATELIMIT_WINDOW_MARGIN": "0",
        "MISTRAL_RATELIMIT_RETRY_SERVER_ERRORS": "yes",
        "MISTRAL_RATELIMIT_LIMITS": "720/60:requests,50000/10:tokens",
    }
    cfg = RatelimitConfig.from_env(env)
    assert cfg.api_key == SECRET
    assert cfg.requests_per_second == 2.5
    assert cfg.tokens_per_minute == 20_000
    assert cfg.tokens_per_month == 1_000_000
    assert cfg.max_concurrency == 4
    assert cfg.max_retries == 5
    assert (cfg.base_delay, cfg.max_delay, cfg.timeout) == (0.5, 8.0, 30.0)
    assert cfg.window_margin == 0.0
    assert cfg.retry_server_errors is True
    assert cfg.limits == (Limit(720, 60, "requests"), Limit(50_000, 10, "tokens"))
    # Values read from the environment were chosen by the user: never replaced by discovery.
    assert all(explicit for _, explicit in cfg.engine_limits())


@pytest.mark.parametrize("name", ["MAX_RETRIES", "MAX_CONCURRENCY", "DEFAULT_MAX_TOKENS"])
def test_from_env_integer_fields_take_integral_floats(name: str) -> None:
    cfg = RatelimitConfig.from_env({f"MISTRAL_RATELIMIT_{name}": "3.0"})
    value = getattr(cfg, name.lower())
    assert (value, type(value)) == (3, int)
    with pytest.raises(ValueError) as info:
        RatelimitConfig.from_env({f"MISTRAL_RATELIMIT_{name}": "3.5"})
    assert str(info.value) == f"MISTRAL_RATELIMIT_{name}: must be a whole number, got '3.5'"
    with pytest.raises(ValueError, match=f"MISTRAL_RATELIMIT_{name}: not a number: 'three'"):
        RatelimitConfig.from_env({f"MISTRAL_RATELIMIT_{name}": "three"})


def test_the_constructor_reads_no_ratelimit_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MISTRAL_RATELIMIT_TOKENS_PER_MINUTE", "1234")
    assert RatelimitConfig(requests_per_second=2).tokens_per_minute == 500_000
    assert RatelimitConfig.from_env(requests_per_second=2).tokens_per_minute == 1234


@pytest.mark.parametrize("blank", ["", "   ", "\t\n"])
def test_a_blank_key_is_no_key(monkeypatch: pytest.MonkeyPatch, blank: str) -> None:
    assert RatelimitConfig(api_key=blank).api_key is None
    assert RatelimitConfig.from_env({"MISTRAL_API_KEY": blank}).api_key is None
    monkeypatch.setenv("MISTRAL_API_KEY", blank)
    assert RatelimitConfig().api_key is None
    monkeypatch.setenv("MISTRAL_API_KEY", SECRET)
    assert RatelimitConfig(api_key=blank).api_key == SECRET  # as if left out


def test_from_env_reads_os_environ_and_overrides_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MISTRAL_RATELIMIT_TOKENS_PER_MINUTE", "1234")
    monkeypatch.setenv("MISTRAL_RATELIMIT_MAX_RETRIES", "7")
    cfg = RatelimitConfig.from_env(max_retries=1)
    assert cfg.tokens_per_minute == 1234
    assert cfg.max_retries == 1


@pytest.mark.parametrize(
    ("var", "raw", "override"),
    [
        ("MISTRAL_RATELIMIT_REQUESTS_PER_SECOND", "abc", {"requests_per_second": 2}),
        ("MISTRAL_RATELIMIT_TOKENS_PER_MONTH", "-1", {"tokens_per_month": None}),
        ("MISTRAL_RATELIMIT_MAX_RETRIES", "3.5", {"max_retries": 1}),
        ("MISTRAL_RATELIMIT_BASE_DELAY", "off", {"base_delay": 0.5}),
        ("MISTRAL_RATELIMIT_RETRY_SERVER_ERRORS", "maybe", {"retry_server_errors": True}),
        ("MISTRAL_RATELIMIT_LIMITS", "garbage", {"limits": ()}),
    ],
)
def test_a_field_given_as_a_keyword_is_not_read_from_the_environment(
    var: str, raw: str, override: dict[str, Any]
) -> None:
    with pytest.raises(ValueError):
        RatelimitConfig.from_env({var: raw})
    cfg = RatelimitConfig.from_env({var: raw}, **override)
    ((name, value),) = override.items()
    assert getattr(cfg, name) == value


def test_the_facade_keyword_beats_a_bad_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from mistral_ratelimit import MistralRatelimitClient

    monkeypatch.setenv("MISTRAL_RATELIMIT_REQUESTS_PER_SECOND", "abc")
    client = MistralRatelimitClient(server_url="http://127.0.0.1:1", requests_per_second=2)
    try:
        assert client.config.requests_per_second == 2
    finally:
        client.close()


def test_unknown_variables_are_named_in_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    env = {
        "MISTRAL_RATELIMIT_TOKENS_PER_MINUTES": "sk-looks-like-a-secret",
        "MISTRAL_RATELIMIT_ZZZ": "also-secret",
        "MISTRAL_RATELIMIT_TIMEOUT": "5",
        "MISTRAL_RATELIMIT_EMULATOR_API_KEY": "the emulator's own",
        "OTHER": "1",
    }
    with caplog.at_level(logging.WARNING, logger="mistral_ratelimit"):
        cfg = RatelimitConfig.from_env(env)
    assert cfg.timeout == 5
    (record,) = caplog.records
    assert record.name == "mistral_ratelimit" and record.levelno == logging.WARNING
    message = record.getMessage()
    assert (
        "MISTRAL_RATELIMIT_TOKENS_PER_MINUTES (did you mean MISTRAL_RATELIMIT_TOKENS_PER_MINUTE?)"
        in message
    )
    assert "MISTRAL_RATELIMIT_ZZZ" in message and "ZZZ (did you mean" not in message
    assert "EMULATOR" not in message and "MISTRAL_RATELIMIT_TIMEOUT," not in message
    assert "secret" not in message
    # Every client built reads the environment: the same names are not warned about again.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mistral_ratelimit"):
        RatelimitConfig.from_env(env)
    assert not caplog.records


def test_known_variables_only_warn_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mistral_ratelimit"):
        RatelimitConfig.from_env({"MISTRAL_RATELIMIT_MAX_RETRIES": "2", "MISTRAL_API_KEY": "k"})
    assert caplog.records == []


def test_from_env_none_turns_a_limit_off() -> None:
    cfg = RatelimitConfig.from_env({"MISTRAL_RATELIMIT_REQUESTS_PER_SECOND": "none"})
    assert cfg.requests_per_second is None


def test_from_env_unset_keeps_tier_defaults() -> None:
    assert RatelimitConfig.from_env({}).engine_limits() == RatelimitConfig().engine_limits()
    assert not any(explicit for _, explicit in RatelimitConfig.from_env({}).engine_limits())


def test_limits_default_to_tokens_and_tolerate_spaces() -> None:
    cfg = RatelimitConfig.from_env({"MISTRAL_RATELIMIT_LIMITS": " 100/1 , 5/2:requests ,"})
    assert cfg.limits == (Limit(100, 1, "tokens"), Limit(5, 2, "requests"))


@pytest.mark.parametrize(
    ("var", "raw", "field"),
    [
        ("MISTRAL_RATELIMIT_TOKENS_PER_MINUTE", "lots", "TOKENS_PER_MINUTE"),
        ("MISTRAL_RATELIMIT_TOKENS_PER_MINUTE", "0", "tokens_per_minute"),
        ("MISTRAL_RATELIMIT_REQUESTS_PER_SECOND", "nan", "requests_per_second"),
        ("MISTRAL_RATELIMIT_REQUESTS_PER_SECOND", "inf", "requests_per_second"),
        ("MISTRAL_RATELIMIT_MAX_CONCURRENCY", "0", "max_concurrency"),
        ("MISTRAL_RATELIMIT_LIMITS", "720/60:bytes", "unit"),
        ("MISTRAL_RATELIMIT_LIMITS", "720", "limits"),
        ("MISTRAL_RATELIMIT_LIMITS", "-5/60", "amount"),
        ("MISTRAL_RATELIMIT_LIMITS", "5/0", "per_seconds"),
    ],
)
def test_from_env_bad_values_name_the_field(var: str, raw: str, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        RatelimitConfig.from_env({var: raw})


# -- validation ---------------------------------------------------------------------------

NUMBER_FIELDS = [
    "requests_per_second",
    "tokens_per_minute",
    "tokens_per_month",
    "base_delay",
    "max_delay",
    "timeout",
]
BAD_NUMBERS: list[Any] = [0, -1, -0.5, math.nan, math.inf, -math.inf, True, "10"]


@pytest.mark.parametrize("name", NUMBER_FIELDS)
@pytest.mark.parametrize("value", BAD_NUMBERS, ids=repr)
def test_bad_numbers_raise_naming_the_field(name: str, value: Any) -> None:
    with pytest.raises(ValueError, match=name):
        RatelimitConfig(**{name: value})


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "2"], ids=repr)
def test_bad_max_concurrency_raises(value: Any) -> None:
    with pytest.raises(ValueError, match="max_concurrency"):
        RatelimitConfig(max_concurrency=value)


@pytest.mark.parametrize("value", [-1, 1.5, True], ids=repr)
def test_bad_max_retries_raises(value: Any) -> None:
    with pytest.raises(ValueError, match="max_retries"):
        RatelimitConfig(max_retries=value)


def test_zero_retries_is_a_valid_choice() -> None:
    assert RatelimitConfig(max_retries=0).max_retries == 0


@pytest.mark.parametrize("value", [-0.1, math.nan, math.inf], ids=repr)
def test_bad_window_margin_raises(value: float) -> None:
    with pytest.raises(ValueError, match="window_margin"):
        RatelimitConfig(window_margin=value)


def test_max_delay_below_base_delay_raises() -> None:
    with pytest.raises(ValueError, match="max_delay"):
        RatelimitConfig(base_delay=10, max_delay=5)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"amount": 0, "per_seconds": 1}, "amount"),
        ({"amount": -3, "per_seconds": 1}, "amount"),
        ({"amount": math.nan, "per_seconds": 1}, "amount"),
        ({"amount": math.inf, "per_seconds": 1}, "amount"),
        ({"amount": True, "per_seconds": 1}, "amount"),
        ({"amount": 5, "per_seconds": 0}, "per_seconds"),
        ({"amount": 5, "per_seconds": math.nan}, "per_seconds"),
        ({"amount": 5, "per_seconds": -math.inf}, "per_seconds"),
        ({"amount": 5, "per_seconds": 1, "unit": "bytes"}, "unit"),
    ],
)
def test_bad_limit_raises_naming_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Limit(**kwargs)


def test_limits_must_hold_limit_objects() -> None:
    with pytest.raises(ValueError, match="limits"):
        RatelimitConfig(limits=((5, 1, "requests"),))  # type: ignore[arg-type]


def test_limits_list_becomes_a_tuple() -> None:
    cfg = RatelimitConfig(limits=[Limit(5, 1, "requests")])  # type: ignore[arg-type]
    assert cfg.limits == (Limit(5, 1, "requests"),)
    hash(cfg)  # frozen config stays usable as a key


# -- the key never shows ------------------------------------------------------------------


def test_repr_hides_the_key() -> None:
    cfg = RatelimitConfig(api_key=SECRET, tokens_per_minute=1000)
    for text in (repr(cfg), str(cfg), f"{cfg}", repr([cfg]), repr(cfg.replace(timeout=5))):
        assert SECRET not in text
        assert "SECRET" not in text
    assert "api_key=***" in repr(cfg)
    assert "tokens_per_minute=1000" in repr(cfg)


def test_repr_hides_a_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MISTRAL_API_KEY", SECRET)
    assert SECRET not in repr(RatelimitConfig())
    assert SECRET not in repr(RatelimitConfig.from_env())


def test_validation_errors_never_contain_the_key() -> None:
    for kwargs in ({"timeout": -1}, {"max_concurrency": 0}, {"limits": ("x",)}):
        with pytest.raises(ValueError) as info:
            RatelimitConfig(api_key=SECRET, **kwargs)
        assert SECRET not in str(info.value)
    with pytest.raises(ValueError) as info:
        RatelimitConfig(api_key=12345)  # type: ignore[arg-type]
    assert "12345" not in str(info.value)


def test_switches_and_none_values_are_checked() -> None:
    with pytest.raises(ValueError, match="retry_server_errors"):
        RatelimitConfig(api_key="k", retry_server_errors="false")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="MISTRAL_RATELIMIT_RETRY_SERVER_ERRORS"):
        RatelimitConfig.from_env({"MISTRAL_RATELIMIT_RETRY_SERVER_ERRORS": "maybe"})
    with pytest.raises(ValueError, match="MISTRAL_RATELIMIT_MAX_RETRIES"):
        RatelimitConfig.from_env({"MISTRAL_RATELIMIT_MAX_RETRIES": "none"})
    cfg = RatelimitConfig.from_env(
        {
            "MISTRAL_RATELIMIT_TOKENS_PER_MONTH": "off",
            "MISTRAL_RATELIMIT_RETRY_SERVER_ERRORS": "yes",
        }
    )
    assert cfg.tokens_per_month is None and cfg.retry_server_errors is True


KEY = "sk-Zq8vT2mLw9Xc4Rb7Yn1Kd6Hf3Jp0Gs5A"  # what a Mistral key looks like


@pytest.mark.parametrize(
    "var",
    [f"MISTRAL_RATELIMIT_{name.upper()}" for name in (*config_module._FLOATS, *config_module._INTS)]
    + ["MISTRAL_RATELIMIT_RETRY_SERVER_ERRORS", "MISTRAL_RATELIMIT_LIMITS"],
)
def test_a_key_pasted_into_the_wrong_variable_is_never_quoted(var: str) -> None:
    with pytest.raises(ValueError) as info:
        RatelimitConfig.from_env({var: KEY})
    assert var.removeprefix("MISTRAL_RATELIMIT_").lower() in str(info.value).lower()
    assert KEY not in str(info.value)
    assert KEY[3:12] not in str(info.value)
    assert "may be a secret" in str(info.value)


@pytest.mark.parametrize(
    "limits", [f"{KEY}/60", f"720/{KEY}", f"720/60:{KEY}", KEY, f"720/60,{KEY}/1"]
)
def test_a_key_in_a_limit_spec_is_never_quoted(limits: str) -> None:
    with pytest.raises(ValueError) as info:
        RatelimitConfig.from_env({"MISTRAL_RATELIMIT_LIMITS": limits})
    assert KEY not in str(info.value)
    assert KEY[3:12] not in str(info.value)
