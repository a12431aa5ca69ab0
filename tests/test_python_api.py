"""The README's Python API example, executed against the simulator and the real Redis."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ingestor import InvalidSymbol, Subscriptions
from ingestor.settings import Settings
from ingestor.simulator import Simulator
from tests.conftest import sim_settings

README = Path(__file__).parent.parent / "README.md"


def readme_example() -> str:
    text = README.read_text()
    m = re.search(r"<!-- example:python-api -->\n```python\n(.*?)```", text, re.S)
    assert m, "the README lost its Python API example"
    return m.group(1)


async def test_readme_example_runs(
    settings: Settings, sim: Simulator, capsys: pytest.CaptureFixture[str]
) -> None:
    namespace: dict[str, object] = {"__name__": "readme_example"}
    exec(compile(readme_example(), "README.md", "exec"), namespace)
    s = sim_settings(settings, sim)
    await namespace["main"](s, seconds=2.0)  # type: ignore[operator]
    lines = capsys.readouterr().out.splitlines()
    assert lines, "the example printed nothing"
    for line in lines:
        code, close = line.split()
        assert code == "A005930" and float(close) > 0
    assert sim.stats.sent["kr:trade:A005930"] > 0


async def test_subscriptions_api_validates_like_the_cli(settings: Settings, r: object) -> None:
    import redis.asyncio as aredis

    client = aredis.Redis.from_url(settings.redis_url.get_secret_value())
    subs = Subscriptions(client, settings)
    assert await subs.add("a005930", "KR") == [("kr:trade:A005930", "added")]
    assert await subs.bulk(["A005930", "KGG01P"], "kr") == [
        ("kr:trade:A005930", "already present"),
        ("kr:index:KGG01P", "added"),
    ]
    with pytest.raises(InvalidSymbol, match="Toss product code"):
        await subs.add("AAPL", "us")
    assert [row["member"] for row in await subs.list()] == ["kr:index:KGG01P", "kr:trade:A005930"]
    assert await subs.remove("KGG01P", "kr") == [("kr:index:KGG01P", "removed")]
    await client.aclose()
