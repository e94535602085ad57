"""Push to and download from a loopback Hub (tests/hub_server.py) through the real huggingface_hub client."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import HfApi, ModelCard, constants
from safetensors.numpy import save_file

from snapvit_cli import hub_client as hub
from snapvit_cli.errors import BundleError, OutputError, OutputExistsError
from snapvit_cli.evaluation.report import EvalReport
from snapvit_cli.hub.push import push
from snapvit_cli.hub_client import HubError
from tests.hub_artifacts import (
    BASE_HUB_ID,
    TOKEN,
    free_port,
    point_client_at,
    restore_client,
    snapshot,
)
from tests.hub_server import FakeHub
from tests.test_model_card import EVAL

REPO = "tester/tiny-snapvit"


# -- fixtures ------------------------------------------------------------------------------------------------


@pytest.fixture
def configure(tmp_path, monkeypatch):
    """``configure(endpoint, **env)``: point huggingface_hub at ``endpoint`` with an isolated HF_HOME."""

    def _configure(endpoint: str, **env: str) -> None:
        point_client_at(monkeypatch, tmp_path / "hf-home", endpoint, **env)

    yield _configure
    monkeypatch.undo()
    restore_client()


@pytest.fixture
def fake_hub(configure):
    with FakeHub(token=TOKEN) as server:
        configure(server.url)
        yield server


@pytest.fixture
def sliced_dir(artifacts) -> Path:
    """A real sliced-model folder (config.json + model.safetensors), as `snapvit slice` writes it."""
    return artifacts[1]


@pytest.fixture
def bundle_file(artifacts) -> Path:
    """A real elastic bundle, as `snapvit score` writes it."""
    return artifacts[0]


def assert_no_token(capfd, *texts: str) -> None:
    out, err = capfd.readouterr()
    for text in (out, err, *texts):
        assert TOKEN not in text


# -- hf-hub ids ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hf_id", "expected"),
    [
        ("hf-hub:owner/name", ("owner/name", None)),
        ("hf-hub:owner/name@dev", ("owner/name", "dev")),
        ("hf-hub:owner/name@refs/pr/3", ("owner/name", "refs/pr/3")),
    ],
)
def test_parse_hf_id(hf_id, expected):
    assert hub.is_hf_id(hf_id)
    assert hub.parse_hf_id(hf_id) == expected


@pytest.mark.parametrize("bad", ["owner/name", "hf-hub:name", "hf-hub:a/b/c", "hf-hub:owner/name@", "hf-hub:"])
def test_parse_hf_id_rejects(bad):
    with pytest.raises(HubError):
        hub.parse_hf_id(bad)


def test_is_hf_id_on_local_paths():
    assert not hub.is_hf_id("out/model")
    assert not hub.is_hf_id(Path("hf-hub:owner/name"))


# -- push: success -------------------------------------------------------------------------------------------


def test_push_sliced_uploads_exactly_the_staged_files(fake_hub, sliced_dir, tmp_path, capfd):
    before = snapshot(sliced_dir)
    dry = push(sliced_dir, REPO, dry_run_dir=tmp_path / "staged")
    result = push(sliced_dir, REPO, token=TOKEN)

    staged = {p.name: p.read_bytes() for p in (tmp_path / "staged").iterdir()}
    uploaded = fake_hub.files(REPO)
    assert uploaded == staged
    assert set(uploaded) == {"config.json", "model.safetensors", "README.md"}
    for name in ("config.json", "model.safetensors"):
        assert uploaded[name] == (sliced_dir / name).read_bytes()
    assert result.files == dry.files == ("README.md", "config.json", "model.safetensors")
    assert result.kind == "sliced" and result.card_generated
    assert result.commit_url.startswith(f"{fake_hub.url}/{REPO}/commit/")
    assert result.hf_id == f"hf-hub:{REPO}"

    card = ModelCard(uploaded["README.md"].decode())
    assert card.data.base_model == BASE_HUB_ID
    assert f'snapvit_cli.load("hf-hub:{REPO}")' in card.text

    writes = [r for r in fake_hub.requests if r.method in ("POST", "PUT") and r.path.startswith("/api/")]
    assert writes and all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in writes)
    assert snapshot(sliced_dir) == before
    assert_no_token(capfd, *(b.decode("utf-8", "replace") for b in uploaded.values()))


def test_push_keeps_a_user_written_readme(fake_hub, sliced_dir):
    (sliced_dir / "README.md").write_text("---\nlicense: mit\n---\n# My own card\n")
    result = push(sliced_dir, REPO, token=TOKEN, eval_results=EvalReport.from_json(EVAL))
    assert not result.card_generated
    assert fake_hub.files(REPO)["README.md"] == (sliced_dir / "README.md").read_bytes()


def test_push_uploads_extra_files_but_not_hidden_ones(fake_hub, sliced_dir, tmp_path):
    (sliced_dir / "LICENSE").write_text("license text")
    (sliced_dir / ".cache").mkdir()
    (sliced_dir / ".cache" / "state").write_text("local only")
    (sliced_dir / ".DS_Store").write_bytes(b"x")
    result = push(sliced_dir, REPO, token=TOKEN)
    assert set(fake_hub.files(REPO)) == {"LICENSE", "README.md", "config.json", "model.safetensors"}
    assert result.files == ("LICENSE", "README.md", "config.json", "model.safetensors")


def test_push_bundle_is_renamed_and_round_trips(fake_hub, bundle_file, capfd):
    before = snapshot(bundle_file)
    result = push(bundle_file, REPO, token=TOKEN)

    uploaded = fake_hub.files(REPO)
    assert set(uploaded) == {"bundle.safetensors", "README.md"}
    assert uploaded["bundle.safetensors"] == bundle_file.read_bytes()
    assert result.kind == "bundle"
    assert f'snapvit_cli.load_bundle("hf-hub:{REPO}")' in uploaded["README.md"].decode()

    downloaded = hub.resolve_hub_artifact(f"hf-hub:{REPO}")[1]
    assert downloaded.read_bytes() == bundle_file.read_bytes()
    assert hub.resolve_hub_artifact(f"hf-hub:{REPO}") == ("bundle", downloaded)
    assert snapshot(bundle_file) == before
    assert_no_token(capfd)


def test_sliced_model_round_trip(fake_hub, sliced_dir):
    push(sliced_dir, REPO, token=TOKEN)
    folder = hub.resolve_hub_artifact(f"hf-hub:{REPO}")[1]
    for name in ("config.json", "model.safetensors"):
        assert (folder / name).read_bytes() == (sliced_dir / name).read_bytes()
    kind, path = hub.resolve_hub_artifact(f"hf-hub:{REPO}")
    assert (kind, path) == ("sliced", folder)


# huggingface_hub's LFS upload passes a file object as `data=`, which httpx2 deprecates; not ours to fix.
@pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")
def test_push_through_the_lfs_batch_api(configure, sliced_dir):
    # The xet-less client path: the server marks *.safetensors as LFS, the client uses batch + basic PUT.
    with FakeHub(token=TOKEN, lfs_patterns=("*.safetensors",)) as server:
        configure(server.url, HF_HUB_DISABLE_XET="1")
        push(sliced_dir, REPO, token=TOKEN)
        weights = (sliced_dir / "model.safetensors").read_bytes()
        assert server.files(REPO)["model.safetensors"] == weights
        assert server.repos[REPO].files("main")["model.safetensors"].lfs
        assert any(r.method == "PUT" and r.path.startswith("/lfs-upload/") for r in server.requests)
        assert hub.resolve_hub_artifact(f"hf-hub:{REPO}")[1].joinpath("model.safetensors").read_bytes() == weights


def test_push_to_a_new_branch_and_download_at_that_revision(fake_hub, sliced_dir):
    push(sliced_dir, REPO, token=TOKEN, revision="v1")
    assert "config.json" in fake_hub.files(REPO, "v1")
    assert fake_hub.files(REPO, "main") == {}
    config = hub.resolve_hub_artifact(f"hf-hub:{REPO}@v1")[1] / "config.json"
    assert config.read_bytes() == (sliced_dir / "config.json").read_bytes()
    with pytest.raises(HubError, match="revision not found"):
        hub.resolve_hub_artifact(f"hf-hub:{REPO}@nope")[1]


def test_push_as_pull_request(fake_hub, sliced_dir):
    result = push(sliced_dir, REPO, token=TOKEN, create_pr=True, commit_message="Add pruned model")
    assert result.pr_url == f"{fake_hub.url}/{REPO}/discussions/1"
    assert fake_hub.files(REPO, "main") == {}
    assert "model.safetensors" in fake_hub.files(REPO, "refs/pr/1")
    assert fake_hub.repos[REPO].pull_requests[0]["title"] == "Add pruned model"


def test_private_flag_reaches_the_hub(fake_hub, bundle_file):
    push(bundle_file, REPO, token=TOKEN, private=True)
    push(bundle_file, "tester/public", token=TOKEN)
    assert fake_hub.repos[REPO].private
    assert not fake_hub.repos["tester/public"].private
    creates = [json.loads(r.body) for r in fake_hub.requests if r.path == "/api/repos/create"]
    assert [c.get("visibility") for c in creates] == ["private", None]  # None: the namespace default applies


# -- tokens --------------------------------------------------------------------------------------------------


def test_token_from_env_and_from_saved_login(fake_hub, bundle_file, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    push(bundle_file, REPO)
    monkeypatch.delenv("HF_TOKEN")
    token_file = Path(constants.HF_TOKEN_PATH)
    token_file.parent.mkdir(parents=True, exist_ok=True)
    token_file.write_text(TOKEN)
    push(bundle_file, "tester/second")
    assert set(fake_hub.repos) == {REPO, "tester/second"}
    creates = [r for r in fake_hub.requests if r.path == "/api/repos/create"]
    assert [r.headers["authorization"] for r in creates] == [f"Bearer {TOKEN}"] * 2


def test_no_token_fails_before_any_request(fake_hub, sliced_dir, capfd):
    with pytest.raises(HubError, match="no Hugging Face token"):
        push(sliced_dir, REPO)
    assert fake_hub.requests == []


# -- dry run -------------------------------------------------------------------------------------------------


def test_dry_run_writes_the_folder_and_sends_nothing(fake_hub, sliced_dir, tmp_path, capfd):
    out = tmp_path / "dry"
    result = push(sliced_dir, REPO, dry_run_dir=out)  # no token needed
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert (out / "model.safetensors").read_bytes() == (sliced_dir / "model.safetensors").read_bytes()
    assert not (out / "model.safetensors").samefile(sliced_dir / "model.safetensors")
    assert result.dry_run_dir == out and result.commit_url is None
    assert fake_hub.requests == []

    with pytest.raises(OutputExistsError):
        push(sliced_dir, REPO, dry_run_dir=out)
    push(sliced_dir, REPO, dry_run_dir=out, force=True)  # an earlier dry run is replaced...
    (out / "stale.txt").write_text("x")
    with pytest.raises(OutputError, match="stale.txt, which snapvit did not write there"):
        push(sliced_dir, REPO, dry_run_dir=out, force=True)  # ...a folder with someone's other files is not
    assert (out / "stale.txt").exists()
    assert fake_hub.requests == []


def test_dry_run_into_an_existing_empty_folder(fake_hub, bundle_file, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    push(bundle_file, REPO, dry_run_dir=out)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "bundle.safetensors"]


# -- push: refusals and Hub errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"repo_id": "no-owner"}, "expected OWNER/NAME"),
        (
            {"repo_id": REPO, "create_pr": True, "revision": "dev"},
            "create_pr opens a pull request against the default branch; do not also pass a revision",
        ),
    ],
)
def test_push_refuses_bad_arguments_without_requests(fake_hub, bundle_file, kwargs, message):
    with pytest.raises(HubError, match=message):
        push(bundle_file, token=TOKEN, **kwargs)
    assert fake_hub.requests == []


def test_push_refuses_what_is_not_a_snapvit_artifact(fake_hub, tmp_path):
    (tmp_path / "folder").mkdir()
    with pytest.raises(BundleError, match="a directory but not a sliced model folder"):
        push(tmp_path / "folder", REPO, token=TOKEN)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": np.zeros(2, dtype=np.float32)}, str(plain))
    with pytest.raises(BundleError, match="neither an elastic bundle nor a sliced model"):
        push(plain, REPO, token=TOKEN)
    assert fake_hub.requests == []


@pytest.mark.parametrize(
    ("failure", "message"),
    [
        ({"status": 401, "path_contains": "/api/repos/create"}, "authentication failed"),
        ({"status": 403, "path_contains": "/commit/"}, "authentication failed"),
        ({"status": 404, "path_contains": "/preupload/", "code": "RepoNotFound"}, "repository not found"),
        ({"status": 500, "path_contains": "/api/repos/create"}, "the Hub answered 500"),
    ],
)
def test_push_errors_are_one_line_hub_errors(fake_hub, sliced_dir, capfd, failure, message):
    before = snapshot(sliced_dir)
    fake_hub.fail(**failure)
    with pytest.raises(HubError, match=message) as info:
        push(sliced_dir, REPO, token=TOKEN)
    assert "\n" not in str(info.value)
    assert snapshot(sliced_dir) == before
    assert_no_token(capfd, str(info.value))


def test_wrong_token_is_an_authentication_error(fake_hub, bundle_file, capfd):
    with pytest.raises(HubError, match="authentication failed") as info:
        push(bundle_file, REPO, token="hf_wrong")
    assert REPO not in fake_hub.repos
    assert_no_token(capfd, str(info.value))


def test_a_server_message_echoing_the_token_is_scrubbed(fake_hub, bundle_file, capfd):
    fake_hub.fail(401, path_contains="/api/repos/create", message=f"token {TOKEN} is revoked")
    with pytest.raises(HubError, match=r"token \*\*\* is revoked") as info:
        push(bundle_file, REPO, token=TOKEN)
    assert_no_token(capfd, str(info.value))


def test_a_download_error_echoing_the_env_token_is_scrubbed(fake_hub, bundle_file, monkeypatch, capfd):
    push(bundle_file, REPO, token=TOKEN)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    fake_hub.fail(401, path_contains="/resolve/", message=f"token {TOKEN} is revoked")
    with pytest.raises(HubError, match=r"authentication failed \(token \*\*\* is revoked\)") as info:
        hub.resolve_hub_artifact(f"hf-hub:{REPO}")[1]
    assert_no_token(capfd, str(info.value))


def test_unreachable_hub(configure, sliced_dir, capfd):
    configure(f"http://127.0.0.1:{free_port()}")
    before = snapshot(sliced_dir)
    with pytest.raises(HubError, match="cannot reach the Hub") as info:
        push(sliced_dir, REPO, token=TOKEN)
    assert snapshot(sliced_dir) == before
    with pytest.raises(HubError, match="cannot reach the Hub"):
        hub.resolve_hub_artifact(f"hf-hub:{REPO}")[1]
    assert_no_token(capfd, str(info.value))


def test_offline_mode(configure, sliced_dir, capfd):
    with FakeHub(token=TOKEN) as server:
        configure(server.url, HF_HUB_OFFLINE="1")
        with pytest.raises(HubError, match=r"cannot reach the Hub \(offline\)") as info:
            push(sliced_dir, REPO, token=TOKEN)
        with pytest.raises(HubError, match=r"cannot reach the Hub \(offline\)"):
            hub.resolve_hub_artifact(f"hf-hub:{REPO}")[1]
        with pytest.raises(HubError, match=r"cannot reach the Hub \(offline\)"):
            hub.resolve_hub_artifact(f"hf-hub:{REPO}")
        assert server.requests == []
    assert_no_token(capfd, str(info.value))


def test_offline_mode_serves_cached_repositories(configure, sliced_dir, bundle_file):
    with FakeHub(token=TOKEN) as server:
        configure(server.url)
        push(sliced_dir, "tester/sliced", token=TOKEN)
        push(bundle_file, "tester/bundle", token=TOKEN)
        online = (
            hub.resolve_hub_artifact("hf-hub:tester/sliced"),
            hub.resolve_hub_artifact("hf-hub:tester/bundle"),
        )
        configure(server.url, HF_HUB_OFFLINE="1")
        n_requests = len(server.requests)
        offline = (
            hub.resolve_hub_artifact("hf-hub:tester/sliced"),
            hub.resolve_hub_artifact("hf-hub:tester/bundle"),
        )
        assert offline == online
        assert len(server.requests) == n_requests


def test_hub_errors_leaves_bugs_alone():
    with pytest.raises(KeyError), hub.hub_errors(REPO):
        raise KeyError("not a Hub problem")


# -- download errors -----------------------------------------------------------------------------------------


def test_download_from_a_missing_repository(fake_hub):
    with pytest.raises(HubError, match="repository not found on the Hub: tester/missing"):
        hub.resolve_hub_artifact("hf-hub:tester/missing")[1]
    with pytest.raises(HubError, match="repository not found"):
        hub.resolve_hub_artifact("hf-hub:tester/missing")[1]


def test_download_server_error(fake_hub, sliced_dir):
    push(sliced_dir, REPO, token=TOKEN)
    fake_hub.fail(500, path_contains=f"/api/models/{REPO}/revision/")
    with pytest.raises(HubError, match="the Hub answered 500"):
        hub.resolve_hub_artifact(f"hf-hub:{REPO}")[1]


def test_private_repository_needs_the_token_to_download(fake_hub, bundle_file, monkeypatch):
    push(bundle_file, REPO, token=TOKEN, private=True)
    with pytest.raises(HubError, match="repository not found"):
        hub.resolve_hub_artifact(f"hf-hub:{REPO}")[1]
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert hub.resolve_hub_artifact(f"hf-hub:{REPO}")[1].read_bytes() == bundle_file.read_bytes()


def test_resolve_rejects_a_repository_without_snapvit_files(fake_hub):
    api = HfApi(token=TOKEN)
    api.create_repo(REPO)
    api.upload_file(path_or_fileobj=b"hello", path_in_repo="notes.txt", repo_id=REPO)
    with pytest.raises(HubError, match="holds neither bundle.safetensors nor config.json"):
        hub.resolve_hub_artifact(f"hf-hub:{REPO}")


def test_offline_mode_blocks_overlap_across_threads():
    """Two overlapping offline blocks (as two threads loading models would run them) that end in either order: the
    Hub stays offline until the last ends, then the flag is what it was before."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    first, second = hub.offline_mode(), hub.offline_mode()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # the first to start ends first: the second still needs the cache only
    assert constants.HF_HUB_OFFLINE is True
    second.__exit__(None, None, None)
    assert before == constants.HF_HUB_OFFLINE


def test_the_loopback_hub_validates_cards_as_the_hub_does(fake_hub):
    """Through huggingface_hub's own ``ModelCard.validate()``: a valid card passes; a YAML list and a model-index
    that does not parse into evaluation results are refused with the reason. The refused texts are sent as written
    (the client would check some of them itself first)."""
    from huggingface_hub import ModelCard

    class AsWritten(ModelCard):
        def __init__(self, text: str):
            super().__init__("---\nlicense: mit\n---\n")
            self.text = text

        def __str__(self) -> str:
            return self.text

    ModelCard("---\nlicense: apache-2.0\ntags:\n- snapvit\n---\n# ok\n").validate()
    bad = {
        "---\nmodel-index:\n- name: x\n  results:\n  - task: {}\n    metrics: []\n---\n# x\n": "Invalid `model_index`",
        "---\nmodel-index:\n- name: x\n  results:\n  - task: {type: t}\n    dataset: {type: d}\n---\n": "Invalid",
        "---\n- a list\n---\n# x\n": "repo card metadata block should be a dict",
    }
    for text, reason in bad.items():
        with pytest.raises(ValueError, match=re.escape(reason)):
            AsWritten(text).validate()
    assert [r for r in fake_hub.requests if r.path == "/api/validate-yaml"]
