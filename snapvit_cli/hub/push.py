"""``snapvit push``: upload a sliced model folder or an elastic bundle, with a generated model card."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import CommitInfo, HfApi, constants, get_token

from snapvit_cli._version import __version__
from snapvit_cli.errors import BudgetError, BundleError, OutputExistsError
from snapvit_cli.fileio import atomic_dir, check_output
from snapvit_cli.hub.eval_results import matching_results
from snapvit_cli.hub.model_card import Record, check_license, model_source, render_model_card, weights_origin
from snapvit_cli.hub_client import (
    BUNDLE_FILENAME,
    CARD_FILENAME,
    HF_PREFIX,
    USER_AGENT,
    HubError,
    Kind,
    check_repo_id,
    hub_errors,
    require_hub,
)

if TYPE_CHECKING:
    from snapvit_cli.evaluation.report import EvalReport


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
    eval_results: EvalReport | None = None,
    allow_random: bool = False,
    base_model: str | None = None,
    license: str | None = None,
    license_name: str | None = None,
    license_link: str | None = None,
    follow_links: bool = False,
    export: tuple[str, ...] = (),
) -> PushResult:
    """Upload a sliced model folder or an elastic bundle to ``repo_id``, with a generated model card.

    The upload is staged in a temporary folder (hard links or copies), so the user's files are never changed.
    With ``dry_run_dir`` the staged folder is written there instead and nothing is sent. A ``README.md``
    already in a sliced model folder is uploaded as is (``eval_results`` then go unused). ``private=False``
    leaves visibility to the namespace default (public unless an organisation makes new repos private).

    Models scored from random weights are refused unless ``allow_random`` (their card then says so first);
    ``eval_results`` must describe this very model (:func:`~snapvit_cli.hub.eval_results.matching_results`).
    ``base_model`` and ``license`` state what snapvit cannot know about a ``--checkpoint``'s weights; ``license``
    must be a Hub licence identifier, and ``other`` comes with ``license_name`` and ``license_link``.
    ``export`` (``("onnx",)``, ``("onnx", "pt2")``) adds the sliced model as ``model.onnx`` / ``model.pt2``, each
    written from the validated staged weights by :func:`~snapvit_cli.export.export_model` (checked against PyTorch,
    carrying its metadata), and a card section that runs them with onnxruntime / ``torch.export.load`` alone.
    Nothing is sent unless the whole upload is known to be sound: a folder holding symbolic links is refused
    (``follow_links`` uploads the targets of those that point inside the folder, refusing the rest), and a
    folder's ``model.safetensors`` must load and match its ``config.json``.
    """
    path = Path(path)
    check_repo_id(repo_id)
    try:
        license = check_license(license, license_name, license_link)
    except ValueError as exc:
        raise HubError(str(exc), param="license") from None
    if create_pr and revision is not None:
        raise HubError(
            "create_pr opens a pull request against the default branch; do not also pass a revision", param="create_pr"
        )
    kind, sources = _collect(path, follow_links)
    exports = _export_names(path, kind, sources, export)
    card_generated = CARD_FILENAME not in sources
    files = tuple(sorted([*sources, *exports.values(), *([CARD_FILENAME] if card_generated else [])]))
    card_options = {
        "repo_id": repo_id,
        "revision": revision,
        "eval_results": eval_results,
        "base_model": base_model,
        "license": license,
        "license_name": license_name,
        "license_link": license_link,
        "allow_random": allow_random,
        "exports": exports,
    }

    if dry_run_dir is not None:
        out = _prepare_dry_run_dir(Path(dry_run_dir), force, path, files)
        with atomic_dir(out, force=True, owned=files) as staging:
            _stage(sources, staging, link=False)
            _validate_and_card(kind, staging, path, card_generated, **card_options)
        return PushResult(repo_id, kind, files, card_generated, revision=revision, dry_run_dir=out)

    token = token or get_token()
    if not token:
        raise _no_token_error()
    with tempfile.TemporaryDirectory(prefix="snapvit-push-") as tmp:
        staging = Path(tmp)
        _stage(sources, staging, link=True)
        stamps = _validate_and_card(kind, staging, path, card_generated, **card_options)
        _check_unchanged(staging, stamps, path)
        with hub_errors(repo_id, token):
            require_hub()
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


def _validate_and_card(
    kind: Kind,
    staging: Path,
    path: Path,
    card_generated: bool,
    *,
    repo_id: str,
    revision: str | None,
    eval_results: EvalReport | None,
    base_model: str | None,
    license: str | None,
    license_name: str | None,
    license_link: str | None,
    allow_random: bool,
    exports: dict[str, str],
) -> dict[str, tuple[int, int, int]]:
    """Validate the staged files (not the user's, which a concurrent ``slice --force`` may replace meanwhile) and
    write the card from what was validated; return the staged files' stamps, taken before validation, so that
    an in-place change of a hard-linked file is caught before anything is sent."""
    stamps = _stamps(staging)
    try:
        config, examples = _validate(kind, staging)
    except BundleError as exc:  # name the user's files, not their staged copies
        staged = str(staging / BUNDLE_FILENAME) if kind == "bundle" else str(staging)
        raise BundleError(str(exc).replace(staged, str(path))) from None
    _check_unchanged(staging, stamps, path)
    origin = weights_origin(model_source(config))
    if origin == "random" and not allow_random:
        raise HubError(
            f"{path} was scored from random weights (origin: random); pass --allow-random to push it anyway "
            "(its card then says so in its first line)"
        )
    if base_model is not None and origin != "checkpoint":
        raise HubError("--base-model states where --checkpoint weights come from; this model's source is known")
    if base_model is not None:
        check_repo_id(base_model)
    exported = _export(staging, exports)
    if not card_generated:  # a user's own README.md is uploaded as it is
        return stamps
    if eval_results is not None:
        weights = staging / (BUNDLE_FILENAME if kind == "bundle" else "model.safetensors")
        eval_results = matching_results(eval_results, weights, config)
    card = render_model_card(
        config,
        kind=kind,
        repo_id=repo_id,
        revision=revision,
        eval_results=eval_results,
        examples=examples,
        base_model=base_model,
        license=license,
        license_name=license_name,
        license_link=license_link,
        exports=exported,
    )
    (staging / CARD_FILENAME).write_text(card, encoding="utf-8")
    return stamps


def _export_names(path: Path, kind: Kind, sources: dict[str, Path], formats: tuple[str, ...]) -> dict[str, str]:
    """``{format: file name in the repository}`` for ``push --export``, checked before anything is staged."""
    from snapvit_cli.export import FORMATS

    if not formats:
        return {}
    if kind != "sliced":
        raise HubError("--export applies to a sliced model folder; slice the bundle first", param="export")
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise HubError(f"--export takes {' and/or '.join(FORMATS)}, not {', '.join(unknown)}", param="export")
    names = {fmt: f"model.{fmt}" for fmt in dict.fromkeys(formats)}
    clash = sorted(set(names.values()) & set(sources))
    if clash:
        raise HubError(f"{path} already holds {', '.join(clash)}; remove it or push without --export")
    return names


def _export(staging: Path, exports: dict[str, str]) -> dict[str, Any]:
    """Export the validated, staged sliced model into ``staging`` (``{format: file name}``); return
    ``{file name: ExportResult}`` for the card."""
    if not exports:
        return {}
    from snapvit_cli.elastic.sliced import load_sliced
    from snapvit_cli.export import export_model

    model = load_sliced(staging, device="cpu")
    return {name: export_model(model, staging / name, fmt) for fmt, name in exports.items()}


def _stamps(staging: Path) -> dict[str, tuple[int, int, int]]:
    """(inode, size, modification time) of every staged file."""
    stamps = {}
    for root, _, names in os.walk(staging):
        for name in names:
            info = os.stat(os.path.join(root, name))
            stamps[os.path.relpath(os.path.join(root, name), staging)] = (info.st_ino, info.st_size, info.st_mtime_ns)
    return stamps


def _check_unchanged(staging: Path, stamps: dict[str, tuple[int, int, int]], path: Path) -> None:
    now = {name: stamp for name, stamp in _stamps(staging).items() if name in stamps}
    if now != stamps:
        changed = sorted(name for name in stamps if now.get(name) != stamps[name])
        raise BundleError(f"{path} changed while the push was prepared ({', '.join(changed)}); not pushed, try again")


def _upload(
    staging: Path,
    repo_id: str,
    token: str,
    private: bool,
    revision: str | None,
    create_pr: bool,
    commit_message: str | None,
) -> CommitInfo:
    api = HfApi(token=token, **USER_AGENT)
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


def _collect(path: Path, follow_links: bool) -> tuple[Kind, dict[str, Path]]:
    """What to upload from ``path``: its kind and ``{name in repo: local file}``. Nothing is validated here: that
    is done on the staged copies (:func:`_validate`), so that what is sent is exactly what was validated."""
    from snapvit_cli.elastic.artifacts import CONFIG_NAME, WEIGHTS_NAME, resolve_artifact

    artifact = resolve_artifact(path)
    if artifact.kind == "bundle":
        return "bundle", {BUNDLE_FILENAME: artifact.path}
    folder = artifact.path
    sources = folder_files(folder, follow_links=follow_links)
    missing = [name for name in (CONFIG_NAME, WEIGHTS_NAME) if name not in sources]
    if missing:
        raise BundleError(f"{folder} is not a sliced model folder: missing {', '.join(missing)}")
    return "sliced", sources


def _validate(kind: Kind, staging: Path) -> tuple[Record, list[dict[str, Any]]]:
    """What the card needs (the sliced config or the bundle metadata record, plus example budgets for a bundle),
    read from the staged files with the same readers that load them, so nothing unloadable is pushed."""
    # Imported here: they pull in torch and timm, which the rest of this module does not need.
    from snapvit_cli.elastic.bundle import ElasticBundle
    from snapvit_cli.elastic.sliced import load_sliced

    if kind == "bundle":
        bundle = ElasticBundle.open(staging / BUNDLE_FILENAME)
        return bundle.metadata, _example_plans(bundle)
    model = load_sliced(staging, device="cpu")  # the weights must load and match config.json
    return model.snapvit_config, []


def _example_plans(bundle) -> list[dict[str, Any]]:
    """The dense model and a few FLOPs budgets of ``bundle`` (``SlicePlan.to_json``), skipping unreachable ones."""
    plans = [bundle.plan(mlp=0.0, heads=0.0).to_json()]
    for fraction in CARD_EXAMPLE_FLOPS:
        try:
            plans.append(bundle.plan(flops=fraction).to_json())
        except BudgetError:  # below what the bundle's min-keep ratios allow
            continue
    return plans


def folder_files(root: Path, *, follow_links: bool = False) -> dict[str, Path]:
    """Every file under ``root`` that a push uploads, ``{path in the repository: file to read}``.

    Hidden files and folders (``.git``, ``.cache``...) and anything that is not a regular file are left out. A
    symbolic link is refused with one line naming every link, since it could upload a file from anywhere; with
    ``follow_links`` a link is uploaded as its target when that lies inside ``root`` (and refused otherwise), and a
    link to a folder that contains it (a loop) is refused.
    """
    real_root = os.path.realpath(root)
    files: dict[str, Path] = {}
    links: list[str] = []
    outside: list[str] = []

    def walk(folder: str, rel: str, ancestors: tuple[tuple[int, int], ...]) -> None:
        info = os.stat(folder)
        if (info.st_dev, info.st_ino) in ancestors:
            raise BundleError(f"{root}: the symbolic link {rel} makes a loop; remove it to push")
        ancestors = (*ancestors, (info.st_dev, info.st_ino))
        with os.scandir(folder) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if entry.name.startswith("."):
                    continue
                name = f"{rel}/{entry.name}" if rel else entry.name
                target = entry.path
                if entry.is_symlink():
                    real = os.path.realpath(entry.path)
                    if not follow_links:
                        links.append(name)
                        continue
                    if real != real_root and not real.startswith(real_root + os.sep):
                        outside.append(name)
                        continue
                    target = real
                if entry.is_dir():
                    walk(target, name, ancestors)
                elif entry.is_file():
                    files[name] = Path(target)

    walk(str(root), "", ())
    if links:
        raise BundleError(
            f"{root} contains symbolic links ({', '.join(links)}); push uploads regular files only "
            "(--follow-links uploads the targets of links that point inside the folder)"
        )
    if outside:
        raise BundleError(f"{root}: symbolic links point outside the folder ({', '.join(outside)}); not pushed")
    return files


def _prepare_dry_run_dir(out: Path, force: bool, source: Path, files: tuple[str, ...]) -> Path:
    """An empty folder is replaced; with ``force`` so is a folder holding only files this push stages (an earlier
    dry run of it), never one with other files."""
    if out.is_dir() and not out.is_symlink() and any(out.iterdir()) and not force:
        raise OutputExistsError(f"{out} is not empty; pass --force to replace it")
    return check_output(out, True, directory=True, inputs=(source,), owned=files)


def _stage(sources: dict[str, Path], dest: Path, *, link: bool) -> None:
    """Lay out the repository in ``dest``: hard links (falling back to copies) or copies."""
    for name, src in sources.items():
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        linked = False
        if link:
            try:
                os.link(src, target, follow_symlinks=False)
                linked = True
            except OSError:
                pass
        if not linked:
            try:
                shutil.copy2(src, target, follow_symlinks=False)
            except OSError as exc:  # e.g. replaced by a FIFO after it was listed (copy2 refuses those)
                raise BundleError(f"{src} cannot be staged ({exc.strerror or exc}); not pushed") from None
        if not target.is_file() or target.is_symlink():  # src was replaced by a link or a FIFO after it was listed
            raise BundleError(f"{src} is no longer a regular file; not pushed")
