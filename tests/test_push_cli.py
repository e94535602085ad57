"""`snapvit push`, `snapvit slice hf-hub:...` and `snapvit_cli.load("hf-hub:...")` end to end.

Real artifacts from the core (tests/hub_artifacts.py) go through the CLI and the real huggingface_hub client
to a loopback Hub (tests/hub_server.py) and back; nothing in huggingface_hub is patched.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from huggingface_hub.repocard import REGEX_YAML_BLOCK
from safetensors import safe_open
from safetensors.torch import load_file
from typer.testing import CliRunner

import snapvit_cli
from snapvit_cli.api import load, load_bundle
from snapvit_cli.cli.app import app
from snapvit_cli.errors import ModelLoadError, SnapvitError
from snapvit_cli.fileio import sha256_file
from snapvit_cli.hub.model_card import HUB_LICENSES
from snapvit_cli.models.loading import load_model
from tests.conftest import image_batch
from tests.hub_artifacts import (
    BASE_HUB_ID,
    BASE_LICENSE,
    SLICE_FLOPS,
    TOKEN,
    free_port,
    point_client_at,
    restore_client,
    snapshot,
)
from tests.hub_server import FakeHub
from tests.test_model_card import EVAL

runner = CliRunner()
SLICED_REPO = "tester/small-half"
BUNDLE_REPO = "tester/small-elastic"


def run(*args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def files_under(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_same_sliced_model(a: Path, b: Path) -> None:
    """Same config.json bytes, same tensors and header metadata (safetensors orders metadata keys at random)."""
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    assert (a / "config.json").read_bytes() == (b / "config.json").read_bytes()
    tensors_a, tensors_b = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert tensors_a.keys() == tensors_b.keys()
    assert all(torch.equal(tensors_a[k], tensors_b[k]) for k in tensors_a)
    with safe_open(a / "model.safetensors", "pt") as fa, safe_open(b / "model.safetensors", "pt") as fb:
        assert fa.metadata() == fb.metadata()


@pytest.fixture
def client(tmp_path, monkeypatch):
    """``client(endpoint, **env)`` points huggingface_hub at ``endpoint``; cwd is an empty folder."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    yield lambda endpoint, **env: point_client_at(monkeypatch, tmp_path / "hf-home", endpoint, **env)
    monkeypatch.undo()
    restore_client()


@pytest.fixture
def server(client):
    with FakeHub(token=TOKEN) as hub:
        client(hub.url)
        yield hub


def push(path: Path, repo: str, *args: str):
    result = run("push", path, "--repo", repo, "--token", TOKEN, *args)
    assert result.exit_code == 0, result.output
    return result


# -- round trips ----------------------------------------------------------------------------------------------


@torch.no_grad()
def test_push_sliced_and_load_it_back_identically(server, artifacts):
    bundle_path, sliced_dir = artifacts
    result = push(sliced_dir, SLICED_REPO)
    assert f"snapvit_cli.load('hf-hub:{SLICED_REPO}')" in result.stdout

    uploaded = server.files(SLICED_REPO)
    assert set(uploaded) == {"README.md", "config.json", "model.safetensors"}
    for name in ("config.json", "model.safetensors"):
        assert uploaded[name] == (sliced_dir / name).read_bytes()

    local = load(sliced_dir)
    remote = snapvit_cli.load(f"hf-hub:{SLICED_REPO}")
    x = image_batch(local)
    assert torch.equal(remote(x), local(x))
    assert torch.equal(remote(x), load_bundle(bundle_path).slice(flops=SLICE_FLOPS)(x))
    assert remote.snapvit_config.to_json() == json.loads((sliced_dir / "config.json").read_text())


@torch.no_grad()
def test_push_bundle_then_slice_it_from_the_hub(server, artifacts):
    bundle_path, _ = artifacts
    push(bundle_path, BUNDLE_REPO)
    assert server.files(BUNDLE_REPO)["bundle.safetensors"] == bundle_path.read_bytes()

    remote = run("slice", f"hf-hub:{BUNDLE_REPO}", "--flops", "0.5", "-o", "from-hub", "--json")
    assert remote.exit_code == 0, remote.output
    # no huggingface_hub bars or warnings off a terminal: only snapvit's timestamped progress lines
    assert all(PROGRESS_LINE.match(line) for line in remote.stderr.splitlines()), remote.stderr
    assert run("slice", bundle_path, "--flops", "0.5", "-o", "from-file").exit_code == 0
    assert_same_sliced_model(Path("from-hub"), Path("from-file"))

    default = run("slice", f"hf-hub:{BUNDLE_REPO}", "--flops", "0.75")
    assert default.exit_code == 0, default.output
    assert Path("small-elastic-flops0.75/model.safetensors").is_file()

    bundle = load_bundle(f"hf-hub:{BUNDLE_REPO}")
    x = image_batch(load(Path("from-file")))
    assert torch.equal(bundle.slice(flops=0.5)(x), load(Path("from-file"))(x))
    dense = snapvit_cli.load(f"hf-hub:{BUNDLE_REPO}")  # a bundle repo loads as its dense model
    assert torch.equal(dense(x), load_bundle(bundle_path).dense_model()(x))


def test_revision_round_trip(server, artifacts):
    _, sliced_dir = artifacts
    result = run("push", sliced_dir, "--repo", SLICED_REPO, "--revision", "v1", "--token", TOKEN, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["results"][0]
    assert report["hf_id"] == f"hf-hub:{SLICED_REPO}@v1" and report["revision"] == "v1"
    assert server.files(SLICED_REPO, "main") == {}
    assert f'snapvit_cli.load("hf-hub:{SLICED_REPO}@v1")' in server.files(SLICED_REPO, "v1")["README.md"].decode()
    x = image_batch(load(sliced_dir))
    with torch.no_grad():
        expected = load(sliced_dir)(x)
        assert torch.equal(load(f"hf-hub:{SLICED_REPO}@v1")(x), expected)
        assert torch.equal(load(f"hf-hub:{SLICED_REPO}", revision="v1")(x), expected)
    with pytest.raises(SnapvitError, match="only applies to hf-hub"):
        load(sliced_dir, revision="v1")


def test_pull_request(server, artifacts):
    _, sliced_dir = artifacts
    args = ["--create-pr", "--message", "Add", "--token", TOKEN, "--json"]
    result = run("push", sliced_dir, "--repo", SLICED_REPO, *args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["results"][0]
    assert report["pr_url"] == f"{server.url}/{SLICED_REPO}/discussions/1"
    assert report["hf_id"] == f"hf-hub:{SLICED_REPO}@refs/pr/1"
    assert server.files(SLICED_REPO, "main") == {}
    weights = (sliced_dir / "model.safetensors").read_bytes()
    assert server.files(SLICED_REPO, "refs/pr/1")["model.safetensors"] == weights
    x = image_batch(load(sliced_dir))
    with torch.no_grad():
        assert torch.equal(load(report["hf_id"])(x), load(sliced_dir)(x))


@pytest.mark.parametrize("kind", ["sliced", "bundle"])
def test_dry_run_writes_exactly_what_a_push_uploads(server, artifacts, kind):
    path = artifacts[1] if kind == "sliced" else artifacts[0]
    dry = run("push", path, "--repo", SLICED_REPO, "--dry-run", "staged")  # no token needed
    assert dry.exit_code == 0, dry.output
    assert "nothing was sent" in dry.stdout and server.requests == []
    push(path, SLICED_REPO)
    assert files_under(Path("staged")) == server.files(SLICED_REPO)

    again = run("push", path, "--repo", SLICED_REPO, "--dry-run", "staged")
    assert again.exit_code == 1 and "--force" in again.stderr
    assert run("push", path, "--repo", SLICED_REPO, "--dry-run", "staged", "--force").exit_code == 0


# -- the model card -------------------------------------------------------------------------------------------


def test_card_is_valid_and_has_the_numbers_of_the_pushed_model(server, artifacts):
    _, sliced_dir = artifacts
    push(sliced_dir, SLICED_REPO)
    text = server.files(SLICED_REPO)["README.md"].decode()
    ModelCard(text).validate()  # POST /api/validate-yaml on the loopback Hub
    meta = yaml.safe_load(REGEX_YAML_BLOCK.search(text).group(2))
    assert meta == {
        "base_model": BASE_HUB_ID,
        "library_name": "snapvit",
        "license": BASE_LICENSE,
        "pipeline_tag": "image-feature-extraction",
        "tags": ["vision", "pruning", "snapvit", "timm", "elastic"],
    }
    assert meta["license"] in HUB_LICENSES

    config = json.loads((sliced_dir / "config.json").read_text())
    cost, widths = config["cost"], config["widths"]
    assert f"| GMACs | {cost['gmacs']:.4g} | {cost['dense_gmacs']:.4g} | {100 * cost['flops_fraction']:.1f}% |" in text
    assert f"| Parameters | {cost['params'] / 1e6:.4g} M | {cost['dense_params'] / 1e6:.4g} M |" in text
    for i, (m, h) in enumerate(zip(widths["mlp_hidden"], widths["num_heads"], strict=True)):
        assert f"| {i} | {m} | {h} |" in text
    assert f"removed {100 * config['budget']['mlp_ratio']:.1f}% of the MLP neurons" in text
    assert f"sha256 `{config['bundle_sha256']}`" in text


def test_bundle_card_lists_example_budgets(server, artifacts):
    bundle_path, _ = artifacts
    push(bundle_path, BUNDLE_REPO)
    text = server.files(BUNDLE_REPO)["README.md"].decode()
    ModelCard(text).validate()
    bundle = load_bundle(bundle_path)
    for fraction in (0.9, 0.75, 0.5):
        plan = bundle.plan(flops=fraction)
        assert f"| {plan.budget.label()} | {plan.gmacs:.4g} | {plan.params / 1e6:.4g} |" in text
    assert f"snapvit slice hf-hub:{BUNDLE_REPO} --flops 0.5 -o out" in text


def eval_report(sliced_dir: Path, **changes) -> dict:
    """A `snapvit eval --json` report on ``sliced_dir`` (its sha, widths and resolution), with ``changes`` applied
    to its row (keys of a row) or to the report."""
    config = json.loads((sliced_dir / "config.json").read_text())
    resolution = config["cost"]["resolution"]
    row = {
        **copy.deepcopy(EVAL["results"][1]),
        "name": "half",
        "budget": {k: v for k, v in config["budget"].items() if k not in ("mlp_ratio", "head_ratio")},
        "accuracy": {"knn": 0.7125, "probe": 0.75},
        "probe": {"best_epoch": 3, "val_accuracy": 0.8},
        "widths": config["widths"],
        "resolution": resolution,
    }
    report = {
        **copy.deepcopy(EVAL),
        "target": str(sliced_dir),
        "target_kind": "sliced",
        "source": {"kind": "sliced", "sha256": sha256_file(sliced_dir / "model.safetensors")},
        "dataset": {
            "train": {"name": "cifar10", "split": "train", "n": 500, "samples": 500},
            "test": {"name": "cifar10", "split": "test", "n": 100, "samples": None},
        },
        "settings": {"k": 20, "vote": "majority", "seed": 0, "probe": True, "probe_epochs": 5, "probe_lr": 0.001},
        "resolution": resolution,
        "preprocessing": {"interpolation": "bicubic", "mean": [0.5] * 3, "std": [0.5] * 3},
        "transform": {
            "name": "resize",
            "description": "whole image resized to the input size (no crop)",
            "input_size": [3, resolution, resolution],
            "interpolation": "bicubic",
            "mean": [0.5] * 3,
            "std": [0.5] * 3,
        },
        "results": [row],
    }
    for key, value in changes.items():
        target = row if key in row else report
        target[key] = value
    return report


def test_eval_results_go_into_the_card_and_model_index(server, artifacts, tmp_path):
    _, sliced_dir = artifacts
    results = tmp_path / "eval.json"
    results.write_text(json.dumps(eval_report(sliced_dir)))
    push(sliced_dir, SLICED_REPO, "--eval-results", str(results))
    card = server.files(SLICED_REPO)["README.md"].decode()
    assert "## Evaluation" in card and "| half | flops 0.5 | 71.25% | 75.00% |" in card
    assert "No dense reference was evaluated" in card
    assert "500 train images" in card and "100 test images" in card and "k = 20, majority vote" in card
    assert "whole image resized to the input size" in card
    ModelCard(card).validate()  # the loopback Hub's /api/validate-yaml
    parsed = ModelCard(card).data
    assert parsed.model_name == SLICED_REPO
    assert [(r.metric_name, r.metric_value, r.dataset_split) for r in parsed.eval_results] == [
        ("kNN top-1 (k=20), flops 0.5", 0.7125, "test"),
        ("linear-probe top-1, flops 0.5", 0.75, "test"),
    ]
    assert {r.dataset_type for r in parsed.eval_results} == {"custom:cifar10"}  # a local set, not the Hub's

    bad_reports = [
        "[1, 2]",
        json.dumps({**EVAL, "results": [{"name": "half"}]}),
        '{"results": [NaN]}',
        json.dumps(eval_report(sliced_dir, source={"kind": "sliced", "sha256": "not a hash"})),
        json.dumps(eval_report(sliced_dir, transform={"name": "resize", "description": "no parameters"})),
    ]
    for bad_report in bad_reports:
        results.write_text(bad_report)
        bad = run("push", sliced_dir, "--repo", SLICED_REPO, "--token", TOKEN, "--eval-results", str(results))
        assert bad.exit_code == 1 and "not `snapvit eval --json` output" in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"source": {"kind": "sliced", "sha256": "0" * 64}}, "neither this model"),
        ({"widths": {"mlp_hidden": [1, 1, 1], "num_heads": [1, 1, 1]}}, "no result in the report has this model"),
        ({"resolution": 999}, "measured at 999 px"),
        ({"source": None}, "does not name the file it evaluated"),
    ],
)
def test_eval_results_of_another_model_are_refused(server, artifacts, tmp_path, change, message):
    _, sliced_dir = artifacts
    results = tmp_path / "eval.json"
    results.write_text(json.dumps(eval_report(sliced_dir, **change)))
    bad = run("push", sliced_dir, "--repo", SLICED_REPO, "--token", TOKEN, "--eval-results", str(results))
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert bad.exit_code == 1 and len(errors) == 1 and message in errors[0]
    assert SLICED_REPO not in server.repos


def test_a_bundle_report_covers_the_model_cut_from_it(server, artifacts, tmp_path):
    bundle_path, sliced_dir = artifacts
    report = eval_report(sliced_dir, source={"kind": "bundle", "sha256": sha256_file(bundle_path)})
    report["results"].insert(
        0, {**report["results"][0], "name": "dense", "widths": {"mlp_hidden": [], "num_heads": []}}
    )
    results = tmp_path / "eval.json"
    results.write_text(json.dumps(report))
    push(sliced_dir, SLICED_REPO, "--eval-results", str(results))
    card = server.files(SLICED_REPO)["README.md"].decode()
    assert "| half |" in card and "| dense |" not in card  # only the row with this model's widths


def test_a_user_card_is_kept(server, artifacts):
    _, sliced_dir = artifacts
    (sliced_dir / "README.md").write_text("---\nlicense: mit\n---\n# mine\n")
    result = push(sliced_dir, SLICED_REPO)
    assert "your README.md" in result.stdout
    assert server.files(SLICED_REPO)["README.md"] == b"---\nlicense: mit\n---\n# mine\n"


# -- the token ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["--token", "HF_TOKEN"])
def test_token_never_leaks(server, artifacts, tmp_path, capfd, via):
    bundle_path, sliced_dir = artifacts
    args, env = (["--token", TOKEN], None) if via == "--token" else ([], {"HF_TOKEN": TOKEN})
    outputs = []
    for path, repo in ((sliced_dir, SLICED_REPO), (bundle_path, BUNDLE_REPO)):
        for extra in ([], ["--json"]):
            result = run("push", path, "--repo", repo, *args, *extra, env=env)
            assert result.exit_code == 0, result.output
            outputs += [result.stdout, result.stderr]
    server.fail(401, path_contains="/preupload/", message=f"token {TOKEN} is revoked")
    refused = run("push", sliced_dir, "--repo", SLICED_REPO, *args, env=env)
    assert refused.exit_code == 1 and "token *** is revoked" in refused.stderr
    outputs += [refused.stdout, refused.stderr, *capfd.readouterr()]

    assert all(TOKEN not in text for text in outputs)
    secret = TOKEN.encode()
    uploaded = [data for repo in (SLICED_REPO, BUNDLE_REPO) for data in server.files(repo).values()]
    assert uploaded and all(secret not in data for data in uploaded)  # cards and weights
    assert all(secret not in r.body and TOKEN not in r.path for r in server.requests)
    assert all(secret not in p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())  # HF_HOME, cwd, ...
    sent = [r for r in server.requests if r.path == "/api/repos/create"]
    assert sent and all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in sent)  # it was used, though


# -- errors ---------------------------------------------------------------------------------------------------


PROGRESS_LINE = re.compile(r"\d\d:\d\d:\d\d ")  # the timestamped status lines of a non-terminal stderr


def assert_one_line_error(result, message: str) -> None:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # a handled error, not a crash
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.strip().splitlines() if not PROGRESS_LINE.match(line)]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert TOKEN not in result.output


PUSH_ERRORS = {
    "no token": ({}, [], "no Hugging Face token: set HF_TOKEN or run `hf auth login`"),
    "401": ({"status": 401, "path_contains": "/api/repos/create"}, ["--token", TOKEN], "authentication failed"),
    "403": ({"status": 403, "path_contains": "/commit/"}, ["--token", TOKEN], "authentication failed"),
    "404": (
        {"status": 404, "path_contains": "/preupload/", "code": "RepoNotFound"},
        ["--token", TOKEN],
        "repository not found on the Hub: tester/small-half",
    ),
    "500": ({"status": 500}, ["--token", TOKEN], "the Hub answered 500"),
}


@pytest.mark.parametrize("case", sorted(PUSH_ERRORS))
@pytest.mark.parametrize("kind", ["sliced", "bundle"])
def test_push_errors(server, artifacts, case, kind):
    failure, args, message = PUSH_ERRORS[case]
    path = artifacts[1] if kind == "sliced" else artifacts[0]
    before = snapshot(path.parent)
    if failure:
        server.fail(**failure)
    assert_one_line_error(run("push", path, "--repo", SLICED_REPO, *args), message)
    assert snapshot(path.parent) == before  # a failed upload leaves the local files untouched
    assert list(Path.cwd().iterdir()) == []


@pytest.mark.parametrize("environment", ["unreachable", "offline"])
def test_push_and_load_without_a_hub(client, artifacts, environment):
    bundle_path, sliced_dir = artifacts
    if environment == "unreachable":
        client(f"http://127.0.0.1:{free_port()}")
        message = "cannot reach the Hub at http://127.0.0.1:"
    else:
        client("http://127.0.0.1:9", HF_HUB_OFFLINE="1")
        message = "cannot reach the Hub (offline): HF_HUB_OFFLINE=1 is set"
    before = snapshot(bundle_path.parent)
    assert_one_line_error(run("push", sliced_dir, "--repo", SLICED_REPO, "--token", TOKEN), message)
    assert_one_line_error(run("push", bundle_path, "--repo", BUNDLE_REPO, "--token", TOKEN), message)
    assert_one_line_error(run("slice", f"hf-hub:{BUNDLE_REPO}", "--flops", "0.5"), message)
    assert snapshot(bundle_path.parent) == before
    assert list(Path.cwd().iterdir()) == []


def test_download_errors(server, artifacts):
    bundle_path, sliced_dir = artifacts
    assert_one_line_error(
        run("slice", "hf-hub:tester/missing", "--flops", "0.5"), "repository not found on the Hub: tester/missing"
    )
    push(sliced_dir, SLICED_REPO)
    assert_one_line_error(
        run("slice", f"hf-hub:{SLICED_REPO}", "--flops", "0.5"),
        f"hf-hub:{SLICED_REPO} is a sliced model, not an elastic bundle",
    )
    assert_one_line_error(run("slice", f"hf-hub:{SLICED_REPO}@nope", "--flops", "0.5"), "revision not found")
    push(bundle_path, BUNDLE_REPO)
    server.fail(401, path_contains=f"/api/models/{BUNDLE_REPO}")
    assert_one_line_error(run("slice", f"hf-hub:{BUNDLE_REPO}", "--flops", "0.5"), "authentication failed")
    server.failures.clear()
    server.fail(500)
    assert_one_line_error(run("slice", f"hf-hub:{BUNDLE_REPO}", "--flops", "0.5"), "the Hub answered 500")
    assert list(Path.cwd().iterdir()) == []


def test_model_download_errors_use_the_hub_translation(server):
    with pytest.raises(ModelLoadError) as info:
        load_model("hf-hub:tester/not-a-model")
    message = str(info.value)
    assert "cannot download pretrained weights for hf-hub:tester/not-a-model" in message
    assert "repository not found on the Hub: tester/not-a-model" in message and "--checkpoint FILE" in message
    result = run("score", "--model", "hf-hub:tester/not-a-model", "--method", "magnitude")
    assert_one_line_error(result, "repository not found on the Hub: tester/not-a-model")


# -- truthful cards ---------------------------------------------------------------------------------------------
def bundle_with_source(folder: Path, **changes) -> tuple[Path, Path]:
    """A small bundle whose source record has ``changes`` (e.g. a checkpoint), and its half-FLOPs slice."""
    import dataclasses

    from snapvit_cli.elastic.bundle import write_bundle
    from snapvit_cli.scoring import score_model
    from tests.conftest import make_small_model, small_model_source

    model = make_small_model("dino")
    # origin "" derives the provenance from the fields given, as records of snapvit <= 0.1 were read
    source = dataclasses.replace(small_model_source("dino", model), origin="", **changes)
    bundle = write_bundle(folder / "b.safetensors", model, source, score_model(model, "magnitude"))
    elastic = load_bundle(bundle)
    return bundle, elastic.save_slice(folder / "half", elastic.plan(flops=SLICE_FLOPS))


def card_meta(text: str) -> dict:
    return yaml.safe_load(REGEX_YAML_BLOCK.search(text).group(2))


def test_checkpoint_card_names_the_file_not_a_hub_model(server, tmp_path):
    sha = "c" * 64
    # what `score --model vit_small_patch16_224.dino --checkpoint ft.pth` records: timm's Hub id is still known
    bundle, sliced_dir = bundle_with_source(
        tmp_path, checkpoint="ft.pth", checkpoint_sha256=sha, hf_hub_id=BASE_HUB_ID, license=BASE_LICENSE
    )
    for path, repo in ((sliced_dir, SLICED_REPO), (bundle, BUNDLE_REPO)):
        push(path, repo)
        text = server.files(repo)["README.md"].decode()
        meta = card_meta(text)
        assert "base_model" not in meta and BASE_HUB_ID not in text
        assert meta["license"] == "other"  # never the Hub weights' licence for the user's weights
        assert "`ft.pth`" in text and f"file sha256 `{sha}`" in text and "uploader" in text
        ModelCard(text).validate()

    push(sliced_dir, SLICED_REPO, "--base-model", "someone/finetuned-from", "--license", "cc-by-4.0")
    text = server.files(SLICED_REPO)["README.md"].decode()
    assert card_meta(text)["base_model"] == "someone/finetuned-from" and card_meta(text)["license"] == "cc-by-4.0"
    assert "The uploader states that they derive from [`someone/finetuned-from`]" in text


def test_base_model_is_refused_for_known_weights(server, artifacts):
    _, sliced_dir = artifacts
    result = run("push", sliced_dir, "--repo", SLICED_REPO, "--token", TOKEN, "--base-model", "a/b")
    assert result.exit_code == 1 and "--base-model states where --checkpoint weights come from" in result.stderr


def test_random_weights_are_refused_unless_allowed(server, tmp_path):
    bundle, sliced_dir = bundle_with_source(tmp_path, pretrained=False, hf_hub_id=BASE_HUB_ID, license="mit")
    for path in (sliced_dir, bundle):
        refused = run("push", path, "--repo", SLICED_REPO, "--token", TOKEN)
        assert refused.exit_code == 1 and "random weights" in refused.stderr and "--allow-random" in refused.stderr
        assert len([line for line in refused.stderr.splitlines() if line.startswith("error:")]) == 1
    assert SLICED_REPO not in server.repos
    push(sliced_dir, SLICED_REPO, "--allow-random")
    text = server.files(SLICED_REPO)["README.md"].decode()
    body = REGEX_YAML_BLOCK.sub("", text, count=1).strip()
    assert body.splitlines()[0].startswith("> **Random weights:**")
    meta = card_meta(text)
    assert "base_model" not in meta and meta["license"] == "other"


def test_no_card_suggests_an_install_that_fails(server, artifacts):
    bundle, sliced_dir = artifacts
    push(sliced_dir, SLICED_REPO)
    push(bundle, BUNDLE_REPO)
    for repo in (SLICED_REPO, BUNDLE_REPO):
        text = server.files(repo)["README.md"].decode()
        assert "pip install snapvit-cli" not in text and "pip install 'snapvit-cli" not in text
        for line in re.findall(r"pip install [^`\n]*", text):
            assert line in ("pip install timm safetensors", "pip install -e ."), line


def test_license_must_be_a_hub_identifier(server, tmp_path):
    """Issue 24: `--license mit-typo` was published silently as `other`; now it is a usage error (exit 2, one line),
    and `other` needs a name and a link, which the card then carries (validated by the loopback Hub)."""
    bundle, sliced_dir = bundle_with_source(tmp_path, checkpoint="ft.pth", checkpoint_sha256="c" * 64)
    for extra, message in (
        (("--license", "mit-typo"), "not a Hub licence identifier (did you mean mit"),
        (("--license", "other"), "needs --license-name"),
        (("--license", "other", "--license-name", "my-licence"), "needs --license-link"),
    ):
        result = run("push", sliced_dir, "--repo", SLICED_REPO, "--token", TOKEN, *extra)
        words = " ".join(result.output.replace("│", " ").split())  # the usage error's box wraps lines
        assert result.exit_code == 2 and message in words, result.output
        assert "Traceback" not in result.output
    assert SLICED_REPO not in server.repos
    push(sliced_dir, SLICED_REPO, "--license", "other", "--license-name", "my-licence", "--license-link",
         "https://example.org/licence")  # fmt: skip
    text = server.files(SLICED_REPO)["README.md"].decode()
    meta = card_meta(text)
    assert (meta["license"], meta["license_name"], meta["license_link"]) == (
        "other", "my-licence", "https://example.org/licence"
    )
    ModelCard(text).validate()


def test_push_export_uploads_verified_files_that_run_without_snapvit_or_timm(server, artifacts):
    """Issue 24: `push --export onnx,pt2` stages the exported, parity-checked files beside model.safetensors with a
    card section that runs them; the staged ONNX runs with onnxruntime in a process that cannot import snapvit,
    timm or torch, and gives snapvit's outputs."""
    pytest.importorskip("onnxruntime")
    import numpy as np

    from snapvit_cli.export_metadata import read_export_metadata
    from tests.isolated import run_without

    bundle, sliced_dir = artifacts
    refused = run("push", bundle, "--repo", BUNDLE_REPO, "--dry-run", "b-staged", "--export", "onnx")
    assert refused.exit_code == 1 and "--export applies to a sliced model folder" in refused.stderr
    assert run("push", sliced_dir, "--repo", SLICED_REPO, "--export", "tflite").exit_code == 2
    dry = run("push", sliced_dir, "--repo", SLICED_REPO, "--dry-run", "staged", "--export", "onnx,pt2")
    assert dry.exit_code == 0, dry.output
    staged = Path("staged")
    assert {"model.onnx", "model.pt2", "model.safetensors", "config.json", "README.md"} == set(files_under(staged))
    card = (staged / "README.md").read_text()
    assert "## Run the exported files (no snapvit, no timm)" in card
    assert f'hf_hub_download("{SLICED_REPO}", "model.onnx")' in card and "torch.export.load(" in card
    config = json.loads((staged / "config.json").read_text())
    assert read_export_metadata(staged / "model.onnx")["source"] == config["base_model"]

    model = load(sliced_dir)
    x = image_batch(model, n=3)
    np.save(staged / "x.npy", x.numpy())
    code = """
    import json
    import numpy as np, onnxruntime as ort
    session = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
    meta = json.loads(session.get_modelmeta().custom_metadata_map["snapvit"])
    assert meta["input"]["name"] == session.get_inputs()[0].name == "pixel_values"
    np.save("onnx.npy", session.run(None, {"pixel_values": np.load("x.npy")})[0])
    print(session.get_outputs()[0].name)
    """
    output_name = run_without({"snapvit_cli", "timm", "torch"}, code, staged).strip()
    assert output_name == "features"  # the small test model has no classifier
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.abs(np.load(staged / "onnx.npy") - expected).max() <= 1e-4

    push(sliced_dir, SLICED_REPO, "--export", "onnx")
    uploaded = server.files(SLICED_REPO)
    assert uploaded["model.onnx"] == (staged / "model.onnx").read_bytes()  # same inputs, same bytes
    ModelCard(uploaded["README.md"].decode()).validate()
