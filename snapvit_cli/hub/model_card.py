"""Model cards (the Hub's ``README.md``) for sliced models and elastic bundles.

The YAML metadata is built with :class:`huggingface_hub.ModelCardData` so that it uses the Hub's field names.
``library_name`` is ``snapvit`` rather than ``timm``: for ``timm`` repos the Hub shows a "use this model"
snippet (``timm.create_model("hf-hub:...", pretrained=True)``) that builds the *dense* architecture and fails
on the sliced weights, and without a ``library_name`` it would guess ``transformers`` from ``config.json``.
``library_name`` is free text on the Hub, so ``snapvit`` is accepted; ``timm`` stays visible as a tag.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Literal

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from snapvit_cli.elastic.records import Budget, BundleMetadata, Cost, Scoring, SlicedConfig
from snapvit_cli.evaluation.report import EvalReport
from snapvit_cli.models.source import ModelSource

LIBRARY_NAME = "snapvit"
TAGS = ["vision", "pruning", "snapvit", "timm", "elastic"]
ARXIV_ID = "2510.17700"
CITATION = """\
@inproceedings{simoncini2025elastic,
  title         = {Elastic ViTs from Pretrained Models without Retraining},
  author        = {Simoncini, Walter and Dorkenwald, Michael and Blankevoort, Tijmen and
                   Snoek, Cees G. M. and Asano, Yuki M.},
  booktitle     = {Advances in Neural Information Processing Systems (NeurIPS)},
  year          = {2025},
  eprint        = {2510.17700},
  archivePrefix = {arXiv},
}"""

# License identifiers the Hub accepts in `license:` (hub-docs, docs/hub/repositories-licenses.md). Anything
# else must be written as `license: other` plus a `license_name`, which is what `_license_fields` does.
# fmt: off
HUB_LICENSES = frozenset([
    "apache-2.0", "mit", "openrail", "bigscience-openrail-m", "creativeml-openrail-m",
    "bigscience-bloom-rail-1.0", "bigcode-openrail-m", "afl-3.0", "artistic-2.0", "bsl-1.0", "bsd",
    "bsd-2-clause", "bsd-3-clause", "bsd-3-clause-clear", "c-uda", "cc", "cc0-1.0", "cc-by-2.0",
    "cc-by-2.5", "cc-by-3.0", "cc-by-4.0", "cc-by-sa-3.0", "cc-by-sa-4.0", "cc-by-nc-2.0", "cc-by-nc-3.0",
    "cc-by-nc-4.0", "cc-by-nd-4.0", "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0",
    "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0", "cdla-sharing-1.0", "cdla-permissive-1.0", "cdla-permissive-2.0",
    "wtfpl", "ecl-2.0", "epl-1.0", "epl-2.0", "etalab-2.0", "eupl-1.1", "agpl-3.0", "gfdl", "gpl",
    "gpl-2.0", "gpl-3.0", "lgpl", "lgpl-2.1", "lgpl-3.0", "isc", "lppl-1.3c", "ms-pl", "mpl-2.0", "odc-by",
    "odbl", "openrail++", "osl-3.0", "postgresql", "ofl-1.1", "ncsa", "unlicense", "zlib", "pddl",
    "lgpl-lr", "deepfloyd-if-license", "llama2", "gemma", "unknown", "other",
])
# fmt: on
HUB_LICENSES_URL = "https://huggingface.co/docs/hub/repositories-licenses"

Kind = Literal["sliced", "bundle"]
Record = SlicedConfig | BundleMetadata


def render_model_card(
    config: Record,
    *,
    kind: Kind,
    repo_id: str,
    revision: str | None = None,
    eval_results: EvalReport | None = None,
    examples: list[dict[str, Any]] | None = None,
    base_model: str | None = None,
    license: str | None = None,
    license_name: str | None = None,
    license_link: str | None = None,
    exports: dict[str, Any] | None = None,
) -> str:
    """The ``README.md`` for a sliced model or an elastic bundle.

    ``config`` is the sliced model's :class:`~snapvit_cli.elastic.records.SlicedConfig` or the bundle's
    :class:`~snapvit_cli.elastic.records.BundleMetadata`. ``examples`` are ``SlicePlan.to_json()`` dicts listed in a
    bundle's card; ``eval_results`` is the report of ``snapvit eval`` (already checked to belong to this model,
    :mod:`snapvit_cli.hub.eval_results`); ``revision`` is the branch pushed to, so the usage snippet loads what this
    card describes. ``base_model`` and ``license`` are what the uploader states about weights snapvit cannot trace
    to the Hub (a ``--checkpoint``); an explicit ``license`` always wins. ``exports`` maps the exported files
    uploaded beside the weights (``model.onnx``...) to their :class:`~snapvit_cli.export.ExportResult`.
    """
    if kind not in ("sliced", "bundle") or isinstance(config, SlicedConfig) != (kind == "sliced"):
        raise ValueError(f"kind must be 'sliced' for a SlicedConfig or 'bundle' for BundleMetadata, not {kind!r}")
    hf_id = f"hf-hub:{repo_id}" + (f"@{revision}" if revision and revision != "main" else "")
    source = model_source(config)
    sections = [
        _random_warning(source),
        _intro(source, kind, repo_id),
        _about_snapvit(),
        _sliced_details(config) if isinstance(config, SlicedConfig) else _bundle_details(config, examples or []),
        _weights_section(source, base_model),
        _eval_section(eval_results),
        _usage(kind, hf_id, config, eval_results.transform if eval_results is not None else None),
        _exports_section(exports or {}, hf_id),
        f"## Citation\n\n```bibtex\n{CITATION}\n```",
    ]
    body = "\n\n".join(s for s in sections if s)
    metadata = card_metadata(
        config,
        kind,
        base_model=base_model,
        license=license,
        license_name=license_name,
        license_link=license_link,
        eval_results=eval_results,
        model_name=repo_id,
    )
    card = ModelCard(f"---\n{metadata.to_yaml()}\n---\n\n{body}\n")
    return str(card)


def card_metadata(
    config: Record,
    kind: Kind,
    *,
    base_model: str | None = None,
    license: str | None = None,
    license_name: str | None = None,
    license_link: str | None = None,
    eval_results: EvalReport | None = None,
    model_name: str | None = None,
) -> ModelCardData:
    """The card's YAML metadata: base model, license, library, task, tags and ``model-index`` of the eval results.

    ``base_model`` names the Hub weights only when those are the weights that were scored; for a checkpoint it is
    whatever the uploader states (``base_model``), and for random weights nothing. The licence follows the same
    rule: inherited from Hub weights, otherwise ``license`` or ``other``.
    """
    source = model_source(config)
    origin = weights_origin(source)
    base = _base_hub_id(source) if origin == "hub" else (base_model if origin == "checkpoint" else None)
    num_classes = config.structure["num_classes"]
    inherited = source.license if origin == "hub" else None
    results = model_index(eval_results)
    return ModelCardData(
        base_model=base,
        library_name=LIBRARY_NAME,
        pipeline_tag="image-classification" if num_classes > 0 else "image-feature-extraction",
        tags=list(TAGS),
        eval_results=results or None,
        model_name=(model_name or "snapvit-model") if results else None,  # the Hub expects the repo id
        **_license_fields(license or inherited, base if origin == "hub" else None, license_name, license_link),
    )


def model_source(config: Record) -> ModelSource:
    """The dense model a record was made from: a bundle's ``source``, a sliced config's ``base_model``."""
    return config.source


def weights_origin(source: ModelSource) -> str:
    """Where the scored weights came from (:class:`~snapvit_cli.models.source.Provenance`): ``hub``,
    ``checkpoint``, ``random`` or ``unknown``."""
    return source.origin


def model_index(report: EvalReport | None) -> list[EvalResult]:
    """``model-index`` entries for a ``snapvit eval`` report: kNN top-1 (with its k) and linear-probe top-1 on the
    test split for every pruned row, rounded to 4 digits, each naming its dense reference and the share retained.

    The data set is its ``hf:`` id when it came from the Hub, else a type that says it is custom (``custom:NAME``).
    """
    if report is None:
        return []
    test = report.dataset.get("test") or {}
    if not (test.get("name") or test.get("source")):
        return []
    dataset_type, dataset_name, dataset_config = _dataset_fields(test)
    k = report.settings.get("k")
    dense = dense_reference(report)
    entries = []
    for row in report.results:
        if row.dense and dense is not None and len(report.results) > 1:
            continue  # the reference itself: named beside each pruned number instead
        for metric in ("knn", "probe"):
            value = getattr(row, metric)
            if value is None:
                continue
            name = (f"kNN top-1 (k={k})" if k else "kNN top-1") if metric == "knn" else "linear-probe top-1"
            name += f", {row.label()}"  # the Hub groups results by task and data set: each metric names its model
            reference = None if dense is None or row.dense else getattr(dense, metric)
            if reference is not None:
                name += f"; dense reference {reference:.4f}, {_retained(value, reference)} retained"
            entries.append(
                EvalResult(
                    task_type="image-classification",
                    dataset_type=dataset_type,
                    dataset_name=dataset_name,
                    dataset_config=dataset_config,
                    dataset_split=str(test.get("split") or "test"),
                    metric_type="accuracy",
                    metric_name=name,
                    metric_value=round(float(value), 4),
                    task_name=f"image classification on frozen features ({row.label()})",
                )
            )
    return entries


def _dataset_fields(test: dict[str, Any]) -> tuple[str, str, str | None]:
    """(type, name, config) of an evaluated data set: the Hub id of an ``hf:`` source, else ``custom:NAME``."""
    source = test.get("source")
    if isinstance(source, str) and source.startswith("hf:"):
        name, _, config = source.removeprefix("hf:").partition(":")
        return name, name, config or None
    name = str(test.get("name") or source)
    kind = test.get("kind")
    return f"custom:{name}", f"{name} (local {kind} data, not on the Hub)" if kind else f"{name} (custom)", None


def dense_reference(report: EvalReport) -> Any:
    """The report's dense row (the unpruned model: ``eval SLICED --reference BUNDLE``, or a bundle's), or None."""
    return next((row for row in report.results if row.dense), None)


def _retained(value: float, reference: float) -> str:
    return f"{100 * value / reference:.1f}%" if reference else "—"


def _base_hub_id(source: ModelSource) -> str | None:
    """The base model's Hub repository (``hf_hub_id`` may carry ``hf-hub:`` or ``@revision``)."""
    hub_id = source.hf_hub_id
    return hub_id.removeprefix("hf-hub:").split("@")[0] if hub_id else None


def check_license(license_id: str | None, name: str | None = None, link: str | None = None) -> str | None:
    """``license_id`` as the Hub spells it, refused (``ValueError``, one line) unless it is one of the Hub's licence
    identifiers (:data:`HUB_LICENSES`); ``other`` needs a ``name`` (lowercase slug) and an https ``link``, which
    are refused with any other licence."""
    if license_id is None:
        if name is not None or link is not None:
            raise ValueError("--license-name and --license-link go with --license other")
        return None
    normalized = license_id.strip().lower()
    if normalized not in HUB_LICENSES:
        close = difflib.get_close_matches(normalized, sorted(HUB_LICENSES), n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(
            f"--license {license_id!r} is not a Hub licence identifier{hint}; see {HUB_LICENSES_URL}, or use "
            "--license other with --license-name and --license-link"
        )
    if normalized == "other":
        if not name or not re.fullmatch(r"[a-z0-9][a-z0-9.-]*", name):
            raise ValueError("--license other needs --license-name NAME (lowercase letters, digits, '.' and '-')")
        if not link or not re.fullmatch(r"https://\S+", link):
            raise ValueError("--license other needs --license-link https://... (where the licence text is)")
    elif name is not None or link is not None:
        raise ValueError("--license-name and --license-link go with --license other only")
    return normalized


def _license_fields(
    license_id: str | None, base: str | None, name: str | None = None, link: str | None = None
) -> dict[str, str]:
    """The licence in the Hub's fields: a Hub identifier as is; ``other`` with the uploader's name and link, or for an
    inherited identifier the Hub does not list, with a slug of it and a link to the base model."""
    base_link = {"license_link": f"https://huggingface.co/{base}"} if base else {}
    if not license_id:
        return {"license": "other", **base_link}
    normalized = license_id.strip().lower()
    if normalized == "other" and name and link:
        return {"license": "other", "license_name": name, "license_link": link}
    if normalized in HUB_LICENSES:
        return {"license": normalized}
    slug = re.sub(r"[^a-z0-9.]+", "-", normalized).strip("-") or "unknown"
    return {"license": "other", "license_name": slug, **base_link}


def _random_warning(source: ModelSource) -> str:
    """The card's first line when the scored weights were random: such a model only demonstrates the pipeline."""
    if weights_origin(source) != "random":
        return ""
    return (
        "> **Random weights:** this model was built from randomly initialised weights (`origin: random`), not "
        "from a trained model; its outputs and scores are meaningless. It demonstrates the snapvit pipeline only."
    )


def _intro(source: ModelSource, kind: Kind, repo_id: str) -> str:
    origin = weights_origin(source)
    name = source.timm_name or source.model_id or "a pretrained ViT"
    if origin == "hub":
        base = _base_hub_id(source)
        base_ref = f"[`{name}`](https://huggingface.co/{base})"
    elif origin == "checkpoint":
        base_ref = f"a `{source.architecture or name}` with the uploader's weights (`{source.checkpoint}`)"
    elif origin == "random":
        base_ref = f"a randomly initialised `{source.architecture or name}`"
    else:
        base_ref = f"`{name}`"
    if kind == "sliced":
        what = f"a version of {base_ref} pruned with SnapViT: cut to a smaller dense ViT without retraining."
    else:
        what = (
            f"a SnapViT elastic bundle for {base_ref}: the dense weights plus one importance score "
            "per MLP neuron and attention head, from which a model of any compute budget can be sliced."
        )
    return f"# {repo_id.split('/')[-1]}\n\nThis repository holds {what}{_made_with()}"


def _made_with() -> str:
    """A link to the project's source, from the package's own metadata (``[project.urls]`` in pyproject.toml)."""
    url = project_url()
    return f" Made with [snapvit]({url})." if url else ""


def _weights_section(source: ModelSource, base_model: str | None) -> str:
    """Where the scored weights came from, as far as snapvit knows it."""
    origin = weights_origin(source)
    sha = source.weights_sha256
    content = f" (content sha256 of the state dict `{sha}`)" if sha else ""
    if origin == "hub":
        revision = f" at revision `{source.revision}`" if source.revision else ""
        text = f"timm's pretrained weights [`{_base_hub_id(source)}`](https://huggingface.co/{_base_hub_id(source)})"
        return f"## Source weights\n\nScored from {text}{revision}{content}."
    if origin == "checkpoint":
        file_sha = source.checkpoint_sha256
        file_line = f"`{source.checkpoint}`" + (f", file sha256 `{file_sha}`" if file_sha else "")
        stated = (
            f" The uploader states that they derive from [`{base_model}`](https://huggingface.co/{base_model})."
            if base_model
            else ""
        )
        return (
            f"## Source weights\n\nScored from a local checkpoint, {file_line}{content}. Its provenance and licence "
            f"are the uploader's to state: snapvit cannot trace these weights to a published model.{stated}"
        )
    if origin == "random":
        return f"## Source weights\n\nRandom initialisation of `{source.architecture}`{content}."
    return ""


def _about_snapvit() -> str:
    return (
        "## About SnapViT\n\n"
        f"SnapViT ([Simoncini et al., NeurIPS 2025](https://arxiv.org/abs/{ARXIV_ID})) is a retraining-free "
        "structured pruning method for Vision Transformers. Every MLP hidden neuron and attention head "
        "gets an importance score once, from the gradients of a label-free self-distillation loss "
        "re-weighted by a small evolutionary search; neurons and heads are then ranked globally and the "
        "lowest-ranked ones are removed to meet any compute budget, yielding an ordinary dense model with "
        "narrower layers. No labels and no fine-tuning are needed."
    )


# -- sliced model ----------------------------------------------------------------------------------------


def _sliced_details(config: SlicedConfig) -> str:
    lines = [
        line
        for line in (
            _budget_line(config.budget, config.mlp_ratio, config.head_ratio),
            _scoring_line(config.scoring),
            _min_keep_line(config.min_keep),
            _preprocessing_line(config.pretrained_cfg),
            _provenance_line(config),
        )
        if line
    ]
    tables = [_cost_table(config.cost), _widths_table(config.widths, config.structure)]
    parts = ["\n".join(lines), _scoring_details(config.scoring), *tables]
    body = "\n\n".join(p for p in parts if p)
    return f"## Model details\n\n{body}" if body else ""


def _budget_line(budget: Budget, mlp_ratio: float, head_ratio: float) -> str:
    """The budget as asked (:meth:`Budget.label`) and the fractions of units it removed."""
    asked = f"`{budget.label()}`"
    if budget.head_offset is not None:
        asked += f" (head offset {budget.head_offset:g})"
    removed = f"{_pct(mlp_ratio)} of the MLP neurons and {_pct(head_ratio)} of the attention heads"
    line = f"- **Budget:** {asked}; removed {removed}"
    if budget.latency is not None:  # a budget in measured time: say on what, and that it is a prediction
        basis = budget.latency
        line += (
            f"\n- **Latency profile:** measured on {basis.describe()} (profile sha256 `{basis.profile_sha256[:12]}`); "
            f"it predicts {basis.predicted_ms:.4g} ms per batch against {basis.dense_ms:.4g} ms dense "
            f"({basis.speedup:.2f}× faster). Other devices, batch sizes or dtypes run at other speeds."
        )
    return line


def _cost_table(cost: Cost) -> str:
    rows = [
        "| | This model | Dense model | Fraction |",
        "|---|---|---|---|",
        f"| GMACs | {cost.gmacs:.4g} | {cost.dense_gmacs:.4g} | {_pct(cost.flops_fraction)} |",
        f"| Parameters | {cost.params / 1e6:.4g} M | {cost.dense_params / 1e6:.4g} M | {_pct(cost.params_fraction)} |",
    ]
    return "\n".join(rows) + f"\n\nGMACs at {cost.resolution}×{cost.resolution} input."


def _widths_table(widths: dict[str, list[int]], structure: dict[str, Any]) -> str:
    mlp, heads = widths.get("mlp_hidden"), widths.get("num_heads")
    if not mlp or not heads:
        return ""
    rows = ["| Block | MLP hidden | Attention heads |", "|---|---|---|"]
    rows += [f"| {i} | {m} | {h} |" for i, (m, h) in enumerate(zip(mlp, heads, strict=True))]
    rows.append(f"| **Total** | **{sum(mlp)}** | **{sum(heads)}** |")
    dense = ""
    if all(structure.get(k) is not None for k in ("mlp_hidden", "num_heads", "head_dim")):
        dense = (
            f" (the dense model has {structure['mlp_hidden']} MLP hidden units and {structure['num_heads']} "
            f"heads of dimension {structure['head_dim']} in each block)"
        )
    return f"Kept units per block{dense}:\n\n" + "\n".join(rows)


def _preprocessing_line(pre: dict[str, Any]) -> str:
    fields = [f"{k} = {pre[k]}" for k in ("input_size", "interpolation", "crop_pct", "mean", "std") if k in pre]
    return "- **Preprocessing** (as the base model): " + ", ".join(fields) if fields else ""


def _provenance_line(config: SlicedConfig) -> str:
    parts = []
    if config.bundle_sha256:
        parts.append(f"cut from an elastic bundle with sha256 `{config.bundle_sha256}`")
    parts.append(f"by snapvit {config.snapvit_version}")
    return "- **Provenance:** " + " ".join(parts)


# -- bundle ----------------------------------------------------------------------------------------------


def _bundle_details(config: BundleMetadata, examples: list[dict[str, Any]]) -> str:
    structure = config.structure
    dense = ""
    if all(structure.get(k) is not None for k in ("num_blocks", "embed_dim", "num_heads", "head_dim", "mlp_hidden")):
        dense = (
            f"- **Dense model:** {structure['num_blocks']} blocks, embedding dimension {structure['embed_dim']}, "
            f"{structure['num_heads']} heads of dimension {structure['head_dim']} and {structure['mlp_hidden']} "
            "MLP hidden units per block"
        )
    lines = [
        line
        for line in (
            dense,
            _scoring_line(config.scoring),
            _min_keep_line(config.min_keep),
            _preprocessing_line(config.source.pretrained_cfg),
            _correction_stats_line(config),
        )
        if line
    ]
    parts = ["\n".join(lines), _scoring_details(config.scoring), _examples_table(examples)]
    body = "\n\n".join(p for p in parts if p)
    return f"## Bundle details\n\n{body}" if body else ""


def _correction_stats_line(config: BundleMetadata) -> str:
    stats = config.correction_stats
    if stats is None:
        return ""
    data = stats.data or {}
    named = data.get("source") or data.get("name")
    source = f" of `{named}`" if isinstance(named, str) else ""
    return (
        f"- **Correction statistics:** stored ({stats.images} images{source}, {stats.heldout_images} more held "
        "back), so `snapvit slice BUNDLE --correct` re-fits the kept weights at any budget without images"
    )


def _examples_table(examples: list[dict[str, Any]]) -> str:
    """Example budgets from ``SlicePlan.to_json()``: what the bundle slices to, without building anything."""
    if not examples:
        return ""
    rows = [
        "| Budget | GMACs | Params (M) | MLP neurons removed | Heads removed |",
        "|---|---|---|---|---|",
    ]
    for plan in examples:
        budget = Budget.from_json(plan["budget"])
        dense = budget.kind == "ratios" and plan["mlp_ratio"] == 0 and plan["head_ratio"] == 0
        label = "dense" if dense else budget.label()
        rows.append(
            f"| {label} | {plan['gmacs']:.4g} | {plan['params'] / 1e6:.4g} | {_pct(plan['mlp_ratio'])} "
            f"| {_pct(plan['head_ratio'])} |"
        )
    resolution = examples[0]["resolution"]
    return (
        "### Example budgets\n\n" + "\n".join(rows) + f"\n\nGMACs at {resolution}×{resolution} input. "
        "`bundle.plan(flops=F)` gives these numbers for any budget without building a model."
    )


# -- shared ----------------------------------------------------------------------------------------------


def _scoring_line(scoring: Scoring) -> str:
    return f"- **Importance scores:** method `{scoring.method}`" + (" (settings below)" if scoring.settings else "")


def _scoring_details(scoring: Scoring) -> str:
    """Every scoring setting in a collapsed table: complete, but out of the reader's way."""
    if not scoring.settings:
        return ""
    rows = "\n".join(f"| `{k}` | {_setting(v)} |" for k, v in scoring.settings.items())
    return (
        f"<details>\n<summary>Scoring settings ({len(scoring.settings)})</summary>\n\n| setting | value |\n"
        f"|---|---|\n{rows}\n\n</details>"
    )


def _setting(value: Any) -> str:
    """A setting for people, whole: numbers to 6 significant digits, objects as ``key: value`` lists."""
    return _readable(value).replace("|", "\\|").replace("\n", " ")


def _readable(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_readable(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_readable(v)}" for k, v in value.items()) + "}"
    return str(value)


def _min_keep_line(min_keep: dict[str, float]) -> str:
    return (
        f"- **Minimum kept per block:** {_pct(min_keep['mlp'])} of the MLP neurons and "
        f"{_pct(min_keep['heads'])} of the attention heads (at least one of each)"
    )


def _eval_section(report: EvalReport | None) -> str:
    """A table of the rows of a ``snapvit eval`` report, each accuracy beside the dense model's and the share of it
    retained, and the protocol they were measured with; what was not measured is shown as a dash."""
    if report is None or not report.results:
        return ""
    dense = dense_reference(report)
    rows = [
        "| Model | Budget | kNN top-1 | Linear probe top-1 | GMACs | Params (M) | Throughput (img/s) | Latency (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    setups = set()
    for r in report.results:
        tp = r.throughput
        cells = [
            f"{r.name} (dense reference)" if r.dense else r.name,
            "dense" if r.dense else r.label(),
            _accuracy(r.knn, None if dense is None or r.dense else dense.knn),
            _accuracy(r.probe, None if dense is None or r.dense else dense.probe),
            _num(r.gmacs),
            _num(r.params / 1e6),
            _num(None if tp is None else tp.images_per_s, ".1f"),
            _num(r.latency_ms),
        ]
        rows.append("| " + " | ".join(cells) + " |")
        if tp is not None:
            setups.add(f"batch_size {tp.batch_size}, device {tp.device}, dtype {tp.dtype}")
    if dense is not None:
        note = "\n\nEach accuracy of a pruned model is followed by the dense model's and the share of it retained."
    else:
        note = (
            "\n\nNo dense reference was evaluated with these numbers "
            "(`snapvit eval SLICED --reference BUNDLE` adds it)."
        )
    if setups:
        note += f" Throughput measured with {'; '.join(sorted(setups))}."
    protocol = _eval_protocol(report)
    return "## Evaluation\n\nResults from `snapvit eval`:\n\n" + "\n".join(rows) + note + protocol


def _accuracy(value: float | None, reference: float | None) -> str:
    """``79.01% (dense 81.20%, 97.3% retained)``; a dash when not measured."""
    if value is None:
        return "—"
    text = f"{100 * value:.2f}%"
    if reference is not None:
        text += f" (dense {100 * reference:.2f}%, {_retained(value, reference)} retained)"
    return text


def _eval_protocol(report: EvalReport) -> str:
    """Data, sample counts, k and preprocessing of an eval report, so a reader can reproduce the numbers."""
    dataset, settings = report.dataset, report.settings
    train, test = dataset.get("train") or {}, dataset.get("test") or {}
    lines = []
    if train or test:
        name = test.get("source") or test.get("name") or train.get("name") or "—"
        subset = (
            f", seeded subsets (seed {settings['seed']})"
            if "seed" in settings and (train.get("samples") or test.get("samples"))
            else ""
        )
        lines.append(
            f"| Data | `{name}`: {train.get('n', '—')} train images (kNN memory, probe training) and "
            f"{test.get('n', '—')} {test.get('split', 'test')} images scored{subset} |"
        )
    if settings.get("k") is not None:
        vote = settings.get("vote", "majority")
        lines.append(f"| kNN | k = {settings['k']}, {vote} vote on L2-normalised features |")
    if settings.get("probe"):
        lines.append(
            f"| Linear probe | {settings.get('probe_epochs')} epochs, lr {settings.get('probe_lr')}, epoch chosen on "
            f"a validation split of train |"
        )
    # Reports written before the transform was recorded all used the whole-image resize.
    what = report.transform["description"] if report.transform else "whole image resized to the input size, no crop"
    fields = ", ".join(f"{k} {v}" for k, v in report.preprocessing.items() if v is not None)
    lines.append(f"| Preprocessing | {report.resolution} px, {what}" + (f"; {fields}" if fields else "") + " |")
    return "\n\n| Protocol | |\n|---|---|\n" + "\n".join(lines)


# The card's plain loader: timm + safetensors, no snapvit. A test runs it (taken from a rendered card) in a process
# where snapvit_cli cannot be imported and checks that it reproduces snapvit_cli.load exactly, gives every layer the
# sizes of its weights, and refuses the hostile config.json files that snapvit_cli.load refuses.
PLAIN_TIMM_LOADER = """\
import json

import timm
import torch
from safetensors.torch import load_file

# The only timm arguments config.json may set: booleans, strings and bounded numbers (never a file, a URL or a device).
MODEL_ARGS = {
    "img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio", "num_classes", "global_pool",
    "class_token", "qkv_bias", "init_values", "dynamic_img_size", "reg_tokens", "no_embed_class", "qk_norm",
    "pre_norm", "final_norm", "fc_norm", "dynamic_img_pad",
}
LIMITS = {"depth": 128, "num_classes": 1_000_000}  # every other number: at most 16384
VIT_MODULES = ("timm.models.vision_transformer", "timm.models.deit")


def model_args(config: dict) -> dict:
    \"\"\"config.json's timm arguments, refused unless allow-listed and bounded.\"\"\"
    args = config["model_args"]
    if not isinstance(args, dict) or set(args) - MODEL_ARGS:
        raise ValueError(f"config.json may not set {sorted(set(args) - MODEL_ARGS)}")
    for key, value in args.items():
        for v in value if isinstance(value, list) and len(value) <= 2 else [value]:
            number = isinstance(v, (int, float)) and not isinstance(v, bool)
            if not isinstance(v, (bool, str, type(None))) and not (number and 0 <= v <= LIMITS.get(key, 16384)):
                raise ValueError(f"config.json: {key} = {value!r} is not allowed")
    return args


def load_sliced(folder: str) -> torch.nn.Module:
    \"\"\"A snapvit sliced model from timm + safetensors alone, refusing what config.json may not ask.\"\"\"
    # The architecture is built on the meta device (no memory), every linear layer is resized to the weight the file
    # holds, and the file's tensors become the parameters: config.json can name only a timm ViT, and cannot make
    # this allocate what the file does not hold.
    config = json.load(open(f"{folder}/config.json"))
    arch = config["architecture"]
    if not timm.is_model(arch) or timm.models.model_entrypoint(arch).__module__ not in VIT_MODULES:
        raise ValueError(f"{arch!r} is not a timm VisionTransformer")
    weights = load_file(f"{folder}/model.safetensors")
    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False, **model_args(config))
        for name, module in list(model.named_modules()):
            weight = weights.get(f"{name}.weight")
            if isinstance(module, torch.nn.Linear) and weight is not None and weight.shape != module.weight.shape:
                resized = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=module.bias is not None)
                parent, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent), child, resized)
    model.load_state_dict(weights, strict=True, assign=True)  # every name and shape as in the file, or an error
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise ValueError("model.safetensors does not hold every tensor of the model")
    for block, heads in zip(model.blocks, config["widths"]["num_heads"], strict=True):
        if heads * block.attn.head_dim != block.attn.proj.in_features:
            raise ValueError("config.json's head counts do not match the weights")
        block.attn.num_heads, block.attn.attn_dim = heads, heads * block.attn.head_dim
    return model.eval()
"""


def plain_timm_loadable(config: SlicedConfig) -> bool:
    """Whether :data:`PLAIN_TIMM_LOADER` rebuilds this sliced model: any timm VisionTransformer. Not Eva (DINOv3):
    its attention reshapes to the full embedding width, and its rotary buffers are not in the weights file."""
    return config.structure["family"] == "vit"


def project_url() -> str:
    """The project's source URL as ``pyproject.toml`` declares it (``Source``/``Repository``/``Homepage``), or ""."""
    from importlib import metadata

    try:
        urls = metadata.metadata("snapvit-cli").get_all("Project-URL") or []
    except metadata.PackageNotFoundError:
        urls = []
    for entry in urls:
        label, _, url = entry.partition(",")
        if label.strip().lower() in ("source", "repository", "homepage") and url.strip().startswith("https://"):
            return url.strip()
    return ""


def install_hint() -> str:
    """How to install snapvit, from the package's own metadata: a project URL when ``pyproject.toml`` declares one.
    snapvit is not published on a package index, so ``pip install snapvit-cli`` is never suggested."""
    url = project_url()
    return f'pip install "snapvit-cli @ git+{url}"' if url else ""


def preprocessing_snippet(config: Record, transform: dict[str, Any] | None) -> str:
    """Python that builds the preprocessing behind the card's numbers: ``transform`` as the eval report recorded it
    (timm's crop transform or snapvit's whole-image resize), else the resize every snapvit number uses by default."""
    pre = config.pretrained_cfg if isinstance(config, SlicedConfig) else config.source.pretrained_cfg
    if transform is not None and transform.get("name") == "timm":
        keys = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
        args = ", ".join(f"{k}={tuple(v) if isinstance(v, list) else v!r}" for k in keys if (v := transform.get(k)))
        return (
            "# The preprocessing behind the numbers above: timm's eval transform (resize, centre crop)\n"
            "import timm\n\n"
            f"transform = timm.data.create_transform({args})"
        )
    source = transform or pre
    size = tuple(source["input_size"][-2:])
    mode = str(source.get("interpolation", "bicubic")).upper()
    return (
        f"# The preprocessing behind snapvit's numbers: the whole image resized to {size[0]}x{size[1]} (no crop)\n"
        "import torch\nfrom torchvision.transforms import v2 as T\n\n"
        "transform = T.Compose([\n"
        "    T.ToImage(),\n"
        "    T.ToDtype(torch.float32, scale=True),\n"
        f"    T.Resize({size}, interpolation=T.InterpolationMode.{mode}, antialias=True),\n"
        f"    T.Normalize(mean={list(source['mean'])}, std={list(source['std'])}),\n"
        "])  # transform(pil_image.convert('RGB')) -> float tensor [3, H, W]"
    )


def _usage(kind: Kind, hf_id: str, config: Record, transform: dict[str, Any] | None = None) -> str:
    install = install_hint()
    setup = (
        f"Install snapvit:\n\n```bash\n{install}\n```\n\n"
        if install
        else "With snapvit installed from its source repository (`pip install -e .` in a clone):\n\n"
    )
    repo = hf_id.removeprefix("hf-hub:").split("@")[0]
    revision = hf_id.partition("@")[2]
    download = f'snapshot_download("{repo}"' + (f', revision="{revision}"' if revision else "") + ")"
    preprocessing = preprocessing_snippet(config, transform)
    if kind == "sliced":
        code = f'import snapvit_cli\n\nmodel = snapvit_cli.load("{hf_id}")  # a torch.nn.Module in eval mode'
        if isinstance(config, SlicedConfig) and plain_timm_loadable(config):
            plain = (
                "## Use without snapvit\n\nWith `timm` and `safetensors` only (`pip install timm safetensors`); the "
                "loader checks `config.json` before timm sees it and gives every layer the size of its weights:\n\n"
                f"```python\n{PLAIN_TIMM_LOADER}\n\nfrom huggingface_hub import snapshot_download\n\n"
                f"folder = {download}\n"
                "model = load_sliced(folder)\n\n"
                f"{preprocessing}\n```\n\n"
            )
        else:
            plain = (
                "## Use without snapvit\n\nThis is a timm Eva model (DINOv3), which the plain-timm loader does not "
                "rebuild (its attention reshapes to the full width, its rotary buffers are not in the weights file); "
                "plain timm cannot rebuild this model: load it with snapvit, or deploy the file `snapvit export` "
                "writes (ONNX or torch.export `.pt2`, which need neither snapvit nor timm).\n\n"
            )
        return f"{plain}## Use with snapvit\n\n{setup}```python\n{code}\n\n{preprocessing}\n```"
    code = f'import snapvit_cli\n\nbundle = snapvit_cli.load_bundle("{hf_id}")\nmodel = bundle.slice(flops=0.5)'
    cli = f"snapvit slice {hf_id} --flops 0.5 -o out"
    return (
        f"## Usage\n\nA bundle is read by snapvit. {setup}"
        "Slice a model at half the FLOPs of the dense one:\n\n"
        f"```python\n{code}\n\n{preprocessing}\n```\n\nor from the command line:\n\n```bash\n{cli}\n```"
    )


def _exports_section(exports: dict[str, Any], hf_id: str) -> str:
    """How to run the exported files uploaded beside the weights, with onnxruntime or torch alone."""
    if not exports:
        return ""
    repo = hf_id.removeprefix("hf-hub:").split("@")[0]
    revision = hf_id.partition("@")[2]
    at = f', revision="{revision}"' if revision else ""
    checks = "; ".join(
        f"`{name}`: max |difference| {r.max_abs_diff:.1e} at batch sizes {' and '.join(map(str, r.checked_batches))}"
        for name, r in exports.items()
    )
    output = next(iter(exports.values())).output_name
    parts = [
        "## Run the exported files (no snapvit, no timm)\n\n"
        f"Exported with `snapvit export` and checked against the PyTorch model ({checks}). Each file records its "
        "preprocessing, budget, widths and provenance in its metadata (`snapvit` in the ONNX metadata, "
        f"`snapvit.json` in the `.pt2` archive). The input is `pixel_values` (float32, NCHW), the output `{output}`."
    ]
    image = (
        "pre = meta[\"preprocessing\"]\n"
        "size = tuple(pre[\"input_size\"][:0:-1])  # (width, height)\n"
        "# PIL's bicubic resize approximates the antialiased torchvision resize that snapvit measured with\n"
        "image = Image.open(\"image.jpg\").convert(\"RGB\").resize(size, Image.BICUBIC)\n"
        "x = (np.asarray(image, dtype=np.float32) / 255 - pre[\"mean\"]) / pre[\"std\"]\n"
        "x = x.transpose(2, 0, 1)[None].astype(np.float32)\n"
    )
    if "model.onnx" in exports:
        parts.append(
            "With onnxruntime (`pip install onnxruntime numpy pillow huggingface_hub`):\n\n```python\n"
            "import json\n\nimport numpy as np\nimport onnxruntime as ort\n"
            "from huggingface_hub import hf_hub_download\nfrom PIL import Image\n\n"
            f'session = ort.InferenceSession(hf_hub_download("{repo}", "model.onnx"{at}))\n'
            'meta = json.loads(session.get_modelmeta().custom_metadata_map["snapvit"])\n'
            f"{image}"
            f'({output},) = session.run(None, {{"pixel_values": x}})\n```'
        )
    if "model.pt2" in exports:
        parts.append(
            "With `torch.export` (`pip install torch numpy pillow huggingface_hub`):\n\n```python\n"
            "import json\n\nimport numpy as np\nimport torch\n"
            "from huggingface_hub import hf_hub_download\nfrom PIL import Image\n\n"
            'extra = {"snapvit.json": ""}\n'
            f'model = torch.export.load(hf_hub_download("{repo}", "model.pt2"{at}), extra_files=extra).module()\n'
            'meta = json.loads(extra["snapvit.json"])\n'
            f"{image}"
            f"with torch.no_grad():\n    {output} = model(torch.from_numpy(x))\n```"
        )
    return "\n\n".join(parts)


def _pct(fraction: float | None) -> str:
    return "—" if fraction is None else f"{100 * fraction:.1f}%"


def _num(value: Any, spec: str = ".4g") -> str:
    return format(value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else "—"
