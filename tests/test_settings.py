from __future__ import annotations

import re
from pathlib import Path

import pytest

from ingestor.keys import Keys
from ingestor.settings import ConfigError, Settings, load_settings, mask_url

ROOT = Path(__file__).parent.parent


def test_example_lists_every_setting_and_loads() -> None:
    text = (ROOT / "config.env.example").read_text()
    named = set(re.findall(r"^#? ?TOSS_([A-Z0-9_]+)=", text, re.M))
    assert named == {n.upper() for n in Settings.model_fields}
    s = load_settings(ROOT / "config.env.example")
    assert s.websocket_url == "wss://realtime-socket.tossinvest.com/ws"
    assert s.max_reconnect_attempts == 10 and s.max_message_queue_size == 10000


def test_env_prefix_and_original_knob(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOSS_HEARTBEAT_INTERVAL", "4000")
    monkeypatch.setenv("TOSS_KEY_PREFIX", "mine")
    s = load_settings()
    assert s.heartbeat_interval_ms == 4000
    assert Keys(s.key_prefix).ticks("kr") == "mine:ticks:kr"


@pytest.mark.parametrize(
    ("name", "value", "text"),
    [
        ("TOSS_MAX_RECONNECT_ATTEMPTS", "ten", "TOSS_MAX_RECONNECT_ATTEMPTS"),
        ("TOSS_WEBSOCKET_URL", "http://x", "ws:// or wss://"),
        ("TOSS_STOCK_DESTINATION", "/topic/{nope}", "placeholders"),
        ("TOSS_SUBSCRIPTION_BUDGET", "0", "greater than or equal to 1"),
        ("TOSS_LOG_LEVEL", "LOUD", "DEBUG, INFO"),
    ],
)
def test_invalid_values_give_one_line(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, text: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    msg = str(info.value)
    assert text in msg and "\n" not in msg


def test_secrets_are_masked() -> None:
    s = load_settings(redis_url="redis://u:hunter2@h:6379/0", redis_password="pw-secret")
    assert "hunter2" not in repr(s) and "pw-secret" not in repr(s)
    assert s.redis_url_masked == "redis://u:***@h:6379/0"
    assert mask_url("redis://h:1/0") == "redis://h:1/0"
