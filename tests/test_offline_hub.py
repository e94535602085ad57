"""Fast failure when the Hub cannot be reached: a loopback host that accepts connections and never answers must
cost under 2 s and one line, for model downloads, hf-hub: bundles and sliced models, and push; a filled cache still
works, both with HF_HUB_OFFLINE=1 and when the Hub hangs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from snapvit_cli import hub_client as hub
from snapvit_cli.cli.app import app
from snapvit_cli.errors import ModelLoadError
from snapvit_cli.hub_client import HUB_TIMEOUT_S, HubError
from snapvit_cli.models.loading import load_model
from tests.hub_artifacts import TOKEN, build_artifacts, point_client_at, restore_client
from tests.hub_server import FakeHub, SilentServer

runner = CliRunner()
LIMIT_S = 2.0
REPO = "tester/small-elastic"


@pytest.fixture
def client(tmp_path, monkeypatch):
    """``client(endpoint, **env)`` points huggingface_hub at ``endpoint`` with an empty cache of its own."""
    monkeypatch.chdir(tmp_path)
    yield lambda endpoint, **env: point_client_at(monkeypatch, tmp_path / "hf-home", endpoint, **env)
    monkeypatch.undo()
    restore_client()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> tuple[Path, Path]:
    return build_artifacts(tmp_path_factory.mktemp("artifacts"))


def timed(call):
    start = time.perf_counter()
    result = call()
    return result, time.perf_counter() - start


def assert_fast_one_line(result, elapsed: float, message: str) -> None:
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.output
    assert elapsed < LIMIT_S, f"{elapsed:.2f} s"


def test_model_download_fails_fast_when_the_hub_hangs(client):
    with SilentServer() as silent:
        client(silent.url)
        start = time.perf_counter()
        with pytest.raises(ModelLoadError) as info:
            load_model("deit_tiny")
        elapsed = time.perf_counter() - start
    message = str(info.value)
    assert elapsed < LIMIT_S, f"{elapsed:.2f} s"
    assert f"no answer within {HUB_TIMEOUT_S:g} s" in message and "--checkpoint" in message
    assert "\n" not in message


def test_cli_hub_accesses_fail_fast_when_the_hub_hangs(client, artifacts):
    bundle_path, sliced_dir = artifacts
    with SilentServer() as silent:
        client(silent.url)
        message = f"cannot reach the Hub at {silent.url}"
        for args in (
            ["score", "-m", "deit_tiny", "--method", "magnitude", "-o", "t.safetensors"],
            ["slice", f"hf-hub:{REPO}", "--flops", "0.5"],
            ["eval", f"hf-hub:{REPO}", "-d", "demo"],
            ["push", str(sliced_dir), "--repo", REPO, "--token", TOKEN],
        ):
            result, elapsed = timed(lambda a=args: runner.invoke(app, a))
            assert_fast_one_line(result, elapsed, message)
    assert not Path("t.safetensors").exists()


def test_a_cached_repository_is_served_when_the_hub_hangs(client, artifacts):
    bundle_path, _ = artifacts
    with FakeHub(token=TOKEN) as server:
        client(server.url)
        assert runner.invoke(app, ["push", str(bundle_path), "--repo", REPO, "--token", TOKEN]).exit_code == 0
        online = hub.resolve_hub_artifact(f"hf-hub:{REPO}")  # fills the cache
    with SilentServer() as silent:
        client(silent.url)
        cached, elapsed = timed(lambda: hub.resolve_hub_artifact(f"hf-hub:{REPO}"))
        assert cached == online and elapsed < LIMIT_S
        result, elapsed = timed(lambda: runner.invoke(app, ["slice", f"hf-hub:{REPO}", "--flops", "0.5", "--dry-run"]))
        assert result.exit_code == 0 and elapsed < LIMIT_S + 1, result.output
        with pytest.raises(HubError, match="not in the local cache"):
            hub.resolve_hub_artifact("hf-hub:tester/never-downloaded")
    with FakeHub(token=TOKEN) as gone:
        client(gone.url, HF_HUB_OFFLINE="1")
        assert hub.resolve_hub_artifact(f"hf-hub:{REPO}") == online
        assert gone.requests == []


def test_cached_model_weights_load_when_the_hub_hangs_or_offline(client, tmp_path):
    """A timm model on the Hub, downloaded once, loads again from the cache when the Hub hangs (within the probe's
    limit, no retries) and with HF_HUB_OFFLINE=1."""
    import timm
    import torch
    from huggingface_hub import HfApi
    from timm.models import save_for_hf

    args = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=4, num_classes=0)
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch16_224", pretrained=False, **args)
    folder = tmp_path / "upload"
    save_for_hf(model, str(folder), model_args=args, safe_serialization=True)
    with FakeHub(token=TOKEN) as server:
        client(server.url)
        api = HfApi(endpoint=server.url, token=TOKEN)
        api.create_repo("tester/tiny-vit")
        api.upload_folder(repo_id="tester/tiny-vit", folder_path=str(folder))
        online, _ = load_model("hf-hub:tester/tiny-vit")
    expected = online.state_dict()
    with SilentServer() as silent:
        client(silent.url)
        (cached, _), elapsed = timed(lambda: load_model("hf-hub:tester/tiny-vit"))
        assert elapsed < LIMIT_S + 1, f"{elapsed:.2f} s"
        start = time.perf_counter()
        with pytest.raises(ModelLoadError, match="no answer within"):
            load_model("hf-hub:tester/never-downloaded")
        assert time.perf_counter() - start < LIMIT_S
    with FakeHub(token=TOKEN) as gone:
        client(gone.url, HF_HUB_OFFLINE="1")
        offline, _ = load_model("hf-hub:tester/tiny-vit")
        assert gone.requests == []
    for loaded in (cached, offline):
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in expected.items())
