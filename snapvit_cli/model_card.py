"""Model cards (the Hub's ``README.md``) for sliced models and elastic bundles.

The YAML metadata is built with :class:`huggingface_hub.ModelCardData` so that it uses the Hub's field names.
``library_name`` is ``snapvit`` rather than ``timm``: for ``timm`` repos the Hub shows a "use this model"
snippet (``timm.create_model("hf-hub:...", pretrained=True)``) that builds the *dense* architecture and fails
on the sliced weights, and without a ``library_name`` it would guess ``transformers`` from ``config.json``.
``library_name`` is free text on the Hub, so ``snapvit`` is accepted; ``timm`` stays visible as a tag.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from huggingface_hub import ModelCard, ModelCardData

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


def render_model_card(
    config: dict[str, Any], *, kind: Kind, repo_id: str, eval_results: dict[str, Any] | None = None
) -> str:
    """The ``README.md`` for a sliced model (given its ``config.json``) or a bundle (its ``snapvit`` JSON)."""
    if kind not in ("sliced", "bundle"):
        raise ValueError(f"kind must be 'sliced' or 'bundle', not {kind!r}")
    sections = [
        _intro(config, kind, repo_id),
        _about_snapvit(),
        _sliced_details(config) if kind == "sliced" else _bundle_details(config),
        _eval_section(eval_results),
        _usage(kind, repo_id),
        f"## Citation\n\n```bibtex\n{CITATION}\n```",
    ]
    body = "\n\n".join(s for s in sections if s)
    card = ModelCard(f"---\n{card_metadata(config, kind).to_yaml()}\n---\n\n{body}\n")
    return str(card)


def card_metadata(config: dict[str, Any], kind: Kind) -> ModelCardData:
    """The card's YAML metadata: base model, license, library, task and tags."""
    source = _source(config, kind)
    base = _base_hub_id(source)
    return ModelCardData(
        base_model=base,
        library_name=LIBRARY_NAME,
        pipeline_tag="image-classification" if _num_classes(config) > 0 else "image-feature-extraction",
        tags=list(TAGS),
        **_license_fields(source.get("license"), base),
    )


def _source(config: dict[str, Any], kind: Kind) -> dict[str, Any]:
    """The base-model description: ``base_model`` in a sliced config, ``source`` in bundle metadata."""
    return config.get("base_model" if kind == "sliced" else "source") or {}


def _base_hub_id(source: dict[str, Any]) -> str | None:
    hub_id = source.get("hf_hub_id")
    return hub_id.removeprefix("hf-hub:") if hub_id else None


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


def _num_classes(config: dict[str, Any]) -> int:
    """Classifier width: ``model_args`` overrides ``pretrained_cfg``; unknown means a feature extractor."""
    for key in ("model_args", "pretrained_cfg"):
        value = (config.get(key) or {}).get("num_classes")
        if value is not None:
            return int(value)
    return 0


def _intro(config: dict[str, Any], kind: Kind, repo_id: str) -> str:
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


def _sliced_details(config: dict[str, Any]) -> str:
    parts = ["## Model details"]
    budget = config.get("budget") or {}
    if budget:
        parts.append(_budget_line(budget))
    cost = config.get("cost") or {}
    if cost:
        parts.append(_cost_table(cost))
    widths = config.get("widths") or {}
    if widths.get("mlp_hidden") and widths.get("num_heads"):
        parts.append(_widths_table(widths, config.get("head_dim")))
    pre = config.get("pretrained_cfg") or {}
    if pre:
        parts.append(_preprocessing_line(pre))
    return "\n\n".join(parts) if len(parts) > 1 else ""


def _budget_line(budget: dict[str, Any]) -> str:
    kind, target = budget.get("kind"), budget.get("target")
    measure = {"flops": "FLOPs", "params": "parameters"}.get(kind, kind)
    line = f"- **Budget:** {_pct(target)} of the dense model's {measure}" if target is not None else "- **Budget:** —"
    ratios = []
    if budget.get("mlp_ratio") is not None:
        ratios.append(f"MLP pruning ratio r_m = {budget['mlp_ratio']:.4g}")
    if budget.get("head_ratio") is not None:
        ratios.append(f"head pruning ratio r_h = {budget['head_ratio']:.4g}")
    return line + (f" ({', '.join(ratios)})" if ratios else "")


def _cost_table(cost: dict[str, Any]) -> str:
    rows = ["| | This model | Dense model | Fraction |", "|---|---|---|---|"]
    for label, key, scale, unit in (("GMACs", "gmacs", 1.0, ""), ("Parameters", "params", 1e-6, " M")):
        value, dense = cost.get(key), cost.get(f"dense_{key}")
        if value is None:
            continue
        this = f"{value * scale:.2f}{unit}"
        other = f"{dense * scale:.2f}{unit}" if dense else "—"
        fraction = _pct(value / dense) if dense else "—"
        rows.append(f"| {label} | {this} | {other} | {fraction} |")
    resolution = cost.get("resolution")
    note = f"\n\nCosts are measured at {resolution}×{resolution} input." if resolution else ""
    return "\n".join(rows) + note


def _widths_table(widths: dict[str, list[int]], head_dim: int | None) -> str:
    mlp, heads = widths["mlp_hidden"], widths["num_heads"]
    rows = ["| Block | MLP hidden | Attention heads |", "|---|---|---|"]
    rows += [f"| {i} | {m} | {h} |" for i, (m, h) in enumerate(zip(mlp, heads, strict=True))]
    rows.append(f"| **Total** | **{sum(mlp)}** | **{sum(heads)}** |")
    dim = f" (head dimension {head_dim})" if head_dim else ""
    return f"Kept units per block{dim}:\n\n" + "\n".join(rows)


def _preprocessing_line(pre: dict[str, Any]) -> str:
    fields = [f"{k} = {pre[k]}" for k in ("input_size", "interpolation", "crop_pct", "mean", "std") if k in pre]
    return "- **Preprocessing** (as the base model): " + ", ".join(fields)


def _bundle_details(config: dict[str, Any]) -> str:
    structure = config.get("structure") or {}
    parts = ["## Bundle details"]
    if structure:
        mlp = structure.get("mlp_hidden")
        mlp_text = mlp if isinstance(mlp, int) else (f"{mlp[0]} per block" if mlp and len(set(mlp)) == 1 else mlp)
        parts.append(
            f"- **Dense structure:** {structure.get('num_blocks')} blocks, embedding dimension "
            f"{structure.get('embed_dim')}, {structure.get('num_heads')} heads of dimension "
            f"{structure.get('head_dim')}, MLP hidden {mlp_text}"
        )
    scoring = config.get("scoring") or {}
    if scoring:
        scalars = ", ".join(f"{k} = {v}" for k, v in scoring.items() if isinstance(v, (str, int, float, bool)))
        parts.append(f"- **Scoring:** {scalars}")
    return "\n\n".join(parts) if len(parts) > 1 else ""


def _eval_section(eval_results: dict[str, Any] | None) -> str:
    """A table from ``snapvit eval --json`` output; missing fields are shown as a dash."""
    results = (eval_results or {}).get("results") or []
    if not results:
        return ""
    rows = [
        "| Model | Budget | kNN acc. | Linear probe acc. | GMACs | Params (M) | Throughput (img/s) | Latency (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    setups = set()
    for r in results:
        acc = r.get("accuracy") or {}
        tp = r.get("throughput") or {}
        params = r.get("params")
        rows.append(
            "| "
            + " | ".join(
                [
                    str(r.get("name", "—")),
                    _fmt_budget(r.get("budget")),
                    _num(acc.get("knn")),
                    _num(acc.get("probe")),
                    _num(r.get("gmacs")),
                    _num(params / 1e6 if isinstance(params, (int, float)) else None),
                    _num(tp.get("images_per_s"), ".1f"),
                    _num(r.get("latency_ms")),
                ]
            )
            + " |"
        )
        setup = [f"{k} {tp[k]}" for k in ("batch_size", "device", "dtype") if tp.get(k) is not None]
        if setup:
            setups.add(", ".join(setup))
    note = f"\n\nThroughput measured with {'; '.join(sorted(setups))}." if setups else ""
    return "## Evaluation\n\nResults from `snapvit eval`:\n\n" + "\n".join(rows) + note


def _usage(kind: Kind, repo_id: str) -> str:
    hf_id = f"hf-hub:{repo_id}"
    if kind == "sliced":
        code = f'import snapvit_cli\n\nmodel = snapvit_cli.load("{hf_id}")'
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


def _fmt_budget(budget: Any) -> str:
    """Budgets appear as a number, a string, or a dict like ``{"kind": "flops", "target": 0.5}``."""
    if isinstance(budget, dict):
        return f"{budget.get('kind', '')} {_num(budget.get('target'))}".strip()
    if budget is None:
        return "—"
    return _num(budget) if isinstance(budget, (int, float)) else str(budget)
