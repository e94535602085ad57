"""Model cards (the Hub's ``README.md``) for sliced models and elastic bundles.

The YAML metadata is built with :class:`huggingface_hub.ModelCardData` so that it uses the Hub's field names.
``library_name`` is ``snapvit`` rather than ``timm``: for ``timm`` repos the Hub shows a "use this model"
snippet (``timm.create_model("hf-hub:...", pretrained=True)``) that builds the *dense* architecture and fails
on the sliced weights, and without a ``library_name`` it would guess ``transformers`` from ``config.json``.
``library_name`` is free text on the Hub, so ``snapvit`` is accepted; ``timm`` stays visible as a tag.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from huggingface_hub import ModelCard, ModelCardData

from snapvit_cli.elastic.records import Budget, BundleMetadata, Cost, Scoring, SlicedConfig
from snapvit_cli.evaluation.report import EvalReport

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
) -> str:
    """The ``README.md`` for a sliced model or an elastic bundle.

    ``config`` is the sliced model's :class:`~snapvit_cli.elastic.records.SlicedConfig` or the bundle's
    :class:`~snapvit_cli.elastic.records.BundleMetadata`. ``examples`` are ``SlicePlan.to_json()`` dicts listed in a
    bundle's card; ``eval_results`` is the report of ``snapvit eval``; ``revision`` is the branch pushed to, so
    the usage snippet loads what this card describes.
    """
    if kind not in ("sliced", "bundle") or isinstance(config, SlicedConfig) != (kind == "sliced"):
        raise ValueError(f"kind must be 'sliced' for a SlicedConfig or 'bundle' for BundleMetadata, not {kind!r}")
    hf_id = f"hf-hub:{repo_id}" + (f"@{revision}" if revision and revision != "main" else "")
    sections = [
        _intro(config, kind, repo_id),
        _about_snapvit(),
        _sliced_details(config) if kind == "sliced" else _bundle_details(config, examples or []),
        _eval_section(eval_results),
        _usage(kind, hf_id),
        f"## Citation\n\n```bibtex\n{CITATION}\n```",
    ]
    body = "\n\n".join(s for s in sections if s)
    card = ModelCard(f"---\n{card_metadata(config, kind).to_yaml()}\n---\n\n{body}\n")
    return str(card)


def card_metadata(config: Record, kind: Kind) -> ModelCardData:
    """The card's YAML metadata: base model, license, library, task and tags."""
    source = _source(config, kind)
    base = _base_hub_id(source)
    num_classes = config.structure["num_classes"]
    return ModelCardData(
        base_model=base,
        library_name=LIBRARY_NAME,
        pipeline_tag="image-classification" if num_classes > 0 else "image-feature-extraction",
        tags=list(TAGS),
        **_license_fields(source.get("license"), base),
    )


def _source(config: Record, kind: Kind) -> dict[str, Any]:
    """The base-model description: ``base_model`` in a sliced config, ``source`` in bundle metadata."""
    return dict(config.base_model) if isinstance(config, SlicedConfig) else config.source.to_json()


def _base_hub_id(source: dict[str, Any]) -> str | None:
    """The base model's Hub repository (``hf_hub_id`` may carry ``hf-hub:`` or ``@revision``)."""
    hub_id = source.get("hf_hub_id")
    return hub_id.removeprefix("hf-hub:").split("@")[0] if hub_id else None


def _license_fields(license_id: str | None, base: str | None) -> dict[str, str]:
    """The base model's license in the Hub's fields: ``other`` + a name for identifiers it does not list."""
    link = {"license_link": f"https://huggingface.co/{base}"} if base else {}
    if not license_id:
        return {"license": "other", **link}
    normalized = license_id.strip().lower()
    if normalized in HUB_LICENSES:
        return {"license": normalized}
    slug = re.sub(r"[^a-z0-9.]+", "-", normalized).strip("-") or "unknown"
    return {"license": "other", "license_name": slug, **link}


def _intro(config: Record, kind: Kind, repo_id: str) -> str:
    source = _source(config, kind)
    base = _base_hub_id(source)
    name = source.get("timm_name") or source.get("model_id") or "a pretrained ViT"
    base_ref = f"[`{name}`](https://huggingface.co/{base})" if base else f"`{name}`"
    if kind == "sliced":
        what = f"a SnapViT-pruned {base_ref}, cut to a smaller dense ViT without retraining."
    else:
        what = (
            f"a SnapViT elastic bundle for {base_ref}: the pretrained weights plus one importance score "
            "per MLP neuron and attention head, from which a model of any compute budget can be sliced."
        )
    return f"# {repo_id.split('/')[-1]}\n\nThis repository holds {what}"


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
    parts = ["\n".join(lines), *tables]
    body = "\n\n".join(p for p in parts if p)
    return f"## Model details\n\n{body}" if body else ""


def _budget_line(budget: Budget, mlp_ratio: float, head_ratio: float) -> str:
    """The budget as asked (:meth:`Budget.label`) and the fractions of units it removed."""
    asked = f"`{budget.label()}`"
    if budget.head_offset is not None:
        asked += f" (head offset {budget.head_offset:g})"
    removed = f"{_pct(mlp_ratio)} of the MLP neurons and {_pct(head_ratio)} of the attention heads"
    return f"- **Budget:** {asked}; removed {removed}"


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
        )
        if line
    ]
    parts = ["\n".join(lines), _examples_table(examples)]
    body = "\n\n".join(p for p in parts if p)
    return f"## Bundle details\n\n{body}" if body else ""


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
    shown = ", ".join(f"{k} = {_setting(v)}" for k, v in scoring.settings.items())
    return f"- **Importance scores:** method `{scoring.method}`" + (f" ({shown})" if shown else "")


def _setting(value: Any) -> str:
    return str(value) if isinstance(value, (str, int, float, bool)) else json.dumps(value, separators=(",", ":"))


def _min_keep_line(min_keep: dict[str, float]) -> str:
    return (
        f"- **Minimum kept per block:** {_pct(min_keep['mlp'])} of the MLP neurons and "
        f"{_pct(min_keep['heads'])} of the attention heads (at least one of each)"
    )


def _eval_section(report: EvalReport | None) -> str:
    """A table of the rows of a ``snapvit eval`` report; what was not measured is shown as a dash."""
    if report is None or not report.results:
        return ""
    rows = [
        "| Model | Budget | kNN acc. | Linear probe acc. | GMACs | Params (M) | Throughput (img/s) | Latency (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    setups = set()
    for r in report.results:
        tp = r.throughput
        cells = [
            r.name,
            r.label(),
            _num(r.knn),
            _num(r.probe),
            _num(r.gmacs),
            _num(r.params / 1e6),
            _num(None if tp is None else tp.images_per_s, ".1f"),
            _num(r.latency_ms),
        ]
        rows.append("| " + " | ".join(cells) + " |")
        if tp is not None:
            setups.add(f"batch_size {tp.batch_size}, device {tp.device}, dtype {tp.dtype}")
    note = f"\n\nThroughput measured with {'; '.join(sorted(setups))}." if setups else ""
    return "## Evaluation\n\nResults from `snapvit eval`:\n\n" + "\n".join(rows) + note


def _usage(kind: Kind, hf_id: str) -> str:
    if kind == "sliced":
        code = f'import snapvit_cli\n\nmodel = snapvit_cli.load("{hf_id}")  # a torch.nn.Module in eval mode'
        return f"## Usage\n\n```bash\npip install snapvit-cli\n```\n\n```python\n{code}\n```"
    code = f'import snapvit_cli\n\nbundle = snapvit_cli.load_bundle("{hf_id}")\nmodel = bundle.slice(flops=0.5)'
    cli = f"snapvit slice {hf_id} --flops 0.5 -o out"
    return (
        "## Usage\n\n```bash\npip install snapvit-cli\n```\n\n"
        "Slice a model at half the FLOPs of the dense one:\n\n"
        f"```python\n{code}\n```\n\nor from the command line:\n\n```bash\n{cli}\n```"
    )


def _pct(fraction: float | None) -> str:
    return "—" if fraction is None else f"{100 * fraction:.1f}%"


def _num(value: Any, spec: str = ".4g") -> str:
    return format(value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else "—"
