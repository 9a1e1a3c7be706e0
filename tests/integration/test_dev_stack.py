"""``make dev``'s stack: its env file points p31ctl at its own Redis, both daemons serve, and it cleans up."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from microservices.devtools.dev_stack import dev_stack
from microservices.ops.cli import main


@pytest.mark.slow
def test_the_dev_env_file_points_p31ctl_at_the_stacks_redis_and_the_daemons_serve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("REDIS_URL", "REDIS_HOST", "REDIS_PORT"):
        monkeypatch.delenv(name, raising=False)
    with dev_stack(tmp_path) as stack:
        assert f"REDIS_URL={stack.redis_url}\n" in stack.env_file.read_text()
        assert ":6379/" not in stack.redis_url
        env = ["--env-file", str(stack.env_file)]
        assert main(["inject-efficiency", "P31TESTDEVUSDT", "--score", "0.9", "--confidence", "0.9",
                     "--target-usd", "100", *env], out=io.StringIO(), err=io.StringIO()) == 0  # fmt: skip
        proposer, governor = stack.daemons
        proposer.wait_for(lambda: proposer.metric("p29_shadow_symbols") == 1.0, what="the seeded symbol")
        out = io.StringIO()
        assert main(["status", "--json", *env], out=out, err=io.StringIO()) == 0
        [row] = json.loads(out.getvalue())["rows"]
        assert (row["symbol"], row["multiplier"]) == ("P31TESTDEVUSDT", pytest.approx(1.4))
        assert governor.get("/healthz")[0] == 200
    assert not stack.env_file.exists()
    assert not any(d.running for d in stack.daemons)
