"""Hugging Face Hub: push sliced models and elastic bundles; fetch them by ``hf-hub:OWNER/NAME[@REV]``.

Everything goes through ``huggingface_hub`` (its cache, revisions, token lookup and ``HF_ENDPOINT`` /
``HF_HUB_OFFLINE`` handling). Its exceptions are translated into one-line :class:`HubError` messages by
:func:`hub_errors`. The token is only handed to ``huggingface_hub``; it is never in a message or a file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote

import httpx2
from huggingface_hub import CommitInfo, HfApi, constants, get_token, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from snapvit_cli import __version__
from snapvit_cli.errors import BudgetError, BundleError, OutputExistsError, SnapvitError
from snapvit_cli.fileio import atomic_dir
from snapvit_cli.model_card import render_model_card

HF_PREFIX = "hf-hub:"
BUNDLE_FILENAME = "bundle.safetensors"
SLICED_FILES = ("config.json", "model.safetensors")
CARD_FILENAME = "README.md"
_USER_AGENT = {"library_name": "snapvit", "library_version": __version__}

Kind = Literal["sliced", "bundle"]


class HubError(SnapvitError):
    """The Hub could not be reached, refused the request, or does not have what was asked for."""


@dataclass(frozen=True)
class PushResult:
    """What :func:`push` staged and, unless it was a dry run, where it went."""

    repo_id: str
    kind: Kind
    files: tuple[str, ...]
    card_generated: bool
    revision: str | None = None  # where it went: the branch, or refs/pr/N for a pull request
    commit_url: str | None = None
    pr_url: str | None = None
    dry_run_dir: Path | None = None

    @property
    def hf_id(self) -> str:
        """What ``snapvit_cli.load`` takes to fetch exactly what was pushed."""
        at = f"@{self.revision}" if self.revision not in (None, constants.DEFAULT_REVISION) else ""
        return f"{HF_PREFIX}{self.repo_id}{at}"


# -- hf-hub ids ------------------------------------------------------------------------------------------


def is_hf_id(s: object) -> bool:
    """Whether ``s`` names a Hub repository (``hf-hub:OWNER/NAME[@REVISION]``) rather than a local path."""
    return isinstance(s, str) and s.startswith(HF_PREFIX)


def parse_hf_id(hf_id: str) -> tuple[str, str | None]:
    """Split ``hf-hub:OWNER/NAME[@REVISION]`` into ``(repo_id, revision)``."""
    if not is_hf_id(hf_id):
        raise HubError(f"not a Hub id: {hf_id!r}; expected hf-hub:OWNER/NAME[@REVISION]")
    repo_id, _, revision = hf_id[len(HF_PREFIX) :].partition("@")
    _check_repo_id(repo_id)
    if "@" in hf_id[len(HF_PREFIX) :] and not revision:
        raise HubError(f"empty revision in {hf_id!r}; expected hf-hub:OWNER/NAME@REVISION")
    return repo_id, revision or None


def _check_repo_id(repo_id: str) -> None:
    """Require ``OWNER/NAME``: the owner is part of every ``hf-hub:`` id we print, so it must be explicit."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise HubError(f"invalid Hub repository id {repo_id!r}: expected OWNER/NAME") from err
    if repo_id.count("/") != 1:
        raise HubError(f"invalid Hub repository id {repo_id!r}: expected OWNER/NAME")


# -- error translation -----------------------------------------------------------------------------------


@contextlib.contextmanager
def hub_errors(repo_id: str | None = None, token: str | None = None) -> Iterator[None]:
    """Turn ``huggingface_hub`` / HTTP exceptions raised in the block into a one-line :class:`HubError`."""
    try:
        yield
    except SnapvitError:
        raise
    except Exception as err:
        message = hub_error_message(err, repo_id, token)
        if message is None:
            raise
        raise HubError(message) from err


def hub_error_message(err: BaseException, repo_id: str | None = None, token: str | None = None) -> str | None:
    """The one-line message for a Hub or network exception, or None when ``err`` is not one (a bug).

    This is the one place that maps ``huggingface_hub`` exceptions to advice. Server messages are quoted, so
    the token in use (``token``, else the one huggingface_hub would send) is masked in case a server echoes it.
    """
    translated = _translate(err, repo_id)
    if translated is None:
        return None
    message = str(translated)
    secret = token or get_token()
    return message.replace(secret, "***") if secret else message


def unreachable_message(reason: str) -> str:
    """What to say when the Hub's host cannot be reached at all (also used by the fail-fast DNS check)."""
    return f"cannot reach the Hub at {constants.ENDPOINT} ({reason}); check your network connection and HF_ENDPOINT"


def _translate(err: BaseException, repo_id: str | None = None) -> HubError | None:
    """The :class:`HubError` for ``err`` or, when wrapped, for its first recognisable cause; None for bugs."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        # A cache miss wraps the real reason (offline, unreachable, 5xx) as its cause: report that first.
        if not isinstance(current, LocalEntryNotFoundError):
            translated = _translate_one(current, repo_id)
            if translated is not None:
                return translated
        current = current.__cause__ or current.__context__
    if isinstance(err, LocalEntryNotFoundError):
        return HubError(f"{_what(repo_id)} is not in the local cache and the Hub could not be asked: {_first(err)}")
    return None


def _translate_one(err: BaseException, repo_id: str | None) -> HubError | None:
    what = _what(repo_id)
    if isinstance(err, OfflineModeIsEnabled):
        return HubError(
            "cannot reach the Hub (offline): HF_HUB_OFFLINE=1 is set; unset it to push, or to download what is "
            "not cached yet"
        )
    if isinstance(err, GatedRepoError):
        return HubError(f"{what} is gated: request access on its Hub page and use a token of an account that has it")
    if isinstance(err, RepositoryNotFoundError):
        return HubError(
            f"repository not found on the Hub: {what}; check the name, and for a private repository set "
            "HF_TOKEN or run `hf auth login` with an account that can see it"
        )
    if isinstance(err, RevisionNotFoundError):
        return HubError(f"revision not found in {what}: check the branch, tag or commit after '@'")
    if isinstance(err, RemoteEntryNotFoundError):
        return HubError(f"file not found in {what}: {unquote(err.response.url.path.rsplit('/', 1)[-1])}")
    if isinstance(err, HfHubHTTPError):
        return _translate_status(err, what)
    if isinstance(err, httpx2.TransportError):
        return HubError(unreachable_message(f"{type(err).__name__}: {_first(err)}"))
    return None


def _translate_status(err: HfHubHTTPError, what: str) -> HubError:
    status = err.response.status_code
    server = f" ({err.server_message.splitlines()[0]})" if err.server_message else ""
    if status in (401, 403):
        return HubError(f"authentication failed{server}: check HF_TOKEN / `hf auth login` and its rights on {what}")
    if status == 429:
        return HubError(f"the Hub is rate-limiting requests (429){server}; wait a moment and try again")
    if status >= 500:
        detail = f": {err.server_message.splitlines()[0]}" if err.server_message else ""
        return HubError(f"the Hub answered {status} (server error{detail}); try again later")
    return HubError(f"the Hub refused the request for {what} with {status}{server}")


def _what(repo_id: str | None) -> str:
    return repo_id or "the repository"


def _first(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _no_token_error() -> HubError:
    return HubError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (a token with write access)")


# -- push ------------------------------------------------------------------------------------------------

# FLOPs fractions listed in a bundle's model card, to show what the bundle can be cut to.
CARD_EXAMPLE_FLOPS = (0.9, 0.75, 0.5)


def push(
    path: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str | None = None,
    token: str | None = None,
    dry_run_dir: str | os.PathLike | None = None,
    force: bool = False,
    eval_results: dict[str, Any] | None = None,
) -> PushResult:
    """Upload a sliced model folder or an elastic bundle to ``repo_id``, with a generated model card.

    The upload is staged in a temporary folder (hard links or copies), so the user's files are never changed.
    With ``dry_run_dir`` the staged folder is written there instead and nothing is sent. A ``README.md``
    already in a sliced model folder is uploaded as is (``eval_results`` then go unused). ``private=False``
    leaves visibility to the namespace default (public unless an organisation makes new repos private).
    """
    path = Path(path)
    _check_repo_id(repo_id)
    if create_pr and revision is not None:
        raise HubError("--create-pr opens a pull request against the default branch; do not also pass --revision")
    kind, sources, config, examples = _collect(path)
    card_generated = CARD_FILENAME not in sources
    card = (
        render_model_card(
            config,
            kind=kind,
            repo_id=repo_id,
            revision=revision,
            eval_results=eval_results,
            examples=examples,
        )
        if card_generated
        else None
    )
    files = tuple(sorted([*sources, *([CARD_FILENAME] if card_generated else [])]))

    if dry_run_dir is not None:
        out = _prepare_dry_run_dir(Path(dry_run_dir), force)
        with atomic_dir(out) as staging:
            _stage(sources, card, staging, link=False)
        return PushResult(repo_id, kind, files, card_generated, revision=revision, dry_run_dir=out)

    token = token or get_token()
    if not token:
        raise _no_token_error()
    with tempfile.TemporaryDirectory(prefix="snapvit-push-") as tmp:
        staging = Path(tmp)
        _stage(sources, card, staging, link=True)
        with hub_errors(repo_id, token):
            commit = _upload(staging, repo_id, token, private, revision, create_pr, commit_message)
    return PushResult(
        repo_id,
        kind,
        files,
        card_generated,
        revision=commit.pr_revision if create_pr else revision,
        commit_url=commit.commit_url,
        pr_url=commit.pr_url,
    )


def _upload(
    staging: Path,
    repo_id: str,
    token: str,
    private: bool,
    revision: str | None,
    create_pr: bool,
    commit_message: str | None,
) -> CommitInfo:
    api = HfApi(token=token, **_USER_AGENT)
    # private=None rather than False lets an organisation's "private by default" setting apply.
    api.create_repo(repo_id, private=private or None, exist_ok=True, repo_type="model")
    if revision is not None and revision != constants.DEFAULT_REVISION and not revision.startswith("refs/"):
        api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
    return api.upload_folder(
        folder_path=staging,
        repo_id=repo_id,
        repo_type="model",
        revision=revision,
        create_pr=create_pr,
        commit_message=commit_message or f"Upload SnapViT model with snapvit {__version__}",
    )


def _collect(path: Path) -> tuple[Kind, dict[str, Path], dict[str, Any], list[dict[str, Any]]]:
    """What to upload from ``path``: its kind, ``{name in repo: local file}``, and what the card needs
    (the sliced ``config.json`` or the bundle metadata, plus example budgets for a bundle).

    Both kinds are validated with the same readers that load them, so nothing unloadable is pushed.
    """
    # Imported here: they pull in torch and timm, which the rest of this module does not need.
    from snapvit_cli.bundle import ElasticBundle
    from snapvit_cli.sliced import CONFIG_NAME, WEIGHTS_NAME, read_config

    if path.is_dir():
        missing = [name for name in (CONFIG_NAME, WEIGHTS_NAME) if not (path / name).is_file()]
        if missing:
            raise BundleError(f"{path} is not a sliced model folder: missing {', '.join(missing)}")
        config = read_config(path)
        sources = {
            f.relative_to(path).as_posix(): f
            for f in sorted(path.rglob("*"))
            if f.is_file() and not any(part.startswith(".") for part in f.relative_to(path).parts)
        }
        return "sliced", sources, config, []
    if path.is_file():
        bundle = ElasticBundle.open(path)
        return "bundle", {BUNDLE_FILENAME: path}, bundle.metadata, _example_plans(bundle)
    raise BundleError(f"{path} does not exist")


def _example_plans(bundle) -> list[dict[str, Any]]:
    """The dense model and a few FLOPs budgets of ``bundle`` (``SlicePlan.to_json``), skipping unreachable ones."""
    plans = [bundle.plan(mlp=0.0, heads=0.0).to_json()]
    for fraction in CARD_EXAMPLE_FLOPS:
        try:
            plans.append(bundle.plan(flops=fraction).to_json())
        except BudgetError:  # below what the bundle's min-keep ratios allow
            continue
    return plans


def _prepare_dry_run_dir(out: Path, force: bool) -> Path:
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise OutputExistsError(f"{out} is not empty; pass --force to replace it")
    return out


def _stage(sources: dict[str, Path], card: str | None, dest: Path, *, link: bool) -> None:
    """Lay out the repository in ``dest``: hard links (falling back to copies) or copies, plus the card."""
    for name, src in sources.items():
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if link:
            try:
                os.link(src, target)
                continue
            except OSError:
                pass
        shutil.copy2(src, target)
    if card is not None:
        (dest / CARD_FILENAME).write_text(card, encoding="utf-8")


# -- download --------------------------------------------------------------------------------------------
#
# Everything goes through ``snapshot_download``: it asks the Hub once (repo info) and, when that fails for
# any reason (offline, unreachable, 5xx), looks in the cache at once. ``hf_hub_download`` would instead retry
# a failed lookup with back-off for ~25 s and log every retry.


def _snapshot(hf_id: str, patterns: list[str], revision: str | None) -> Path:
    """The cached snapshot folder holding the files of ``hf_id`` that match ``patterns`` (``revision``
    overrides an ``@REV`` in the id)."""
    repo_id, parsed_revision = parse_hf_id(hf_id)
    with hub_errors(repo_id):
        return Path(
            snapshot_download(repo_id, revision=revision or parsed_revision, allow_patterns=patterns, **_USER_AGENT)
        )


def download(hf_id: str, filename: str, revision: str | None = None) -> Path:
    """One file of a Hub repository, via the ``huggingface_hub`` cache."""
    path = _snapshot(hf_id, [filename], revision) / filename
    if not path.is_file():
        raise HubError(f"file not found in {parse_hf_id(hf_id)[0]}: {filename}")
    return path


def download_bundle(hf_id: str, revision: str | None = None) -> Path:
    """The ``bundle.safetensors`` of an elastic bundle repository."""
    return download(hf_id, BUNDLE_FILENAME, revision)


def download_sliced_model(hf_id: str, revision: str | None = None) -> Path:
    """A local folder holding the ``config.json`` and ``model.safetensors`` of a sliced model repository."""
    folder = _snapshot(hf_id, list(SLICED_FILES), revision)
    missing = [name for name in SLICED_FILES if not (folder / name).is_file()]
    if missing:
        raise HubError(f"{hf_id} does not hold a sliced model: no {', '.join(missing)}")
    return folder


def resolve_hub_artifact(hf_id: str, revision: str | None = None) -> tuple[Kind, Path]:
    """Whether ``hf_id`` holds a bundle or a sliced model, with its local path (bundle file or model folder).

    One snapshot of whichever snapvit files the repository has, so cached repositories of either kind also
    resolve offline.
    """
    folder = _snapshot(hf_id, [BUNDLE_FILENAME, *SLICED_FILES], revision)
    if (folder / BUNDLE_FILENAME).is_file():
        return "bundle", folder / BUNDLE_FILENAME
    if all((folder / name).is_file() for name in SLICED_FILES):
        return "sliced", folder
    raise HubError(f"{hf_id} holds neither {BUNDLE_FILENAME} nor {' + '.join(SLICED_FILES)}: not a snapvit repo")
