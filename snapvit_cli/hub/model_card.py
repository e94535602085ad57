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
    config: dict[str, Any],
    *,
    kind: Kind,
    repo_id: str,
    revision: str | None = None,
    eval_results: dict[str, Any] | None = None,
    examples: list[dict[str, Any]] | None = None,
) -> str:
    """The ``README.md`` for a sliced model or an elastic bundle.

    ``config`` is the sliced model's ``config.json`` (:func:`snapvit_cli.elastic.sliced.sliced_config`) or the bundle's
    ``snapvit`` metadata (:func:`snapvit_cli.elastic.bundle.write_bundle`). ``examples`` are ``SlicePlan.to_json()``
    dicts listed in a bundle's card; ``eval_results`` is ``snapvit eval --json`` output; ``revision`` is the
    branch pushed to, so the usage snippet loads what this card describes.
    """
    if kind not in ("sliced", "bundle"):
        raise ValueError(f"kind must be 'sliced' or 'bundle', not {kind!r}")
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


def card_metadata(config: dict[str, Any], kind: Kind) -> ModelCardData:
    """The card's YAML metadata: base model, license, library, task and tags."""
    source = _source(config, kind)
    base = _base_hub_id(source)
    num_classes = (config.get("structure") or {}).get("num_classes") or 0
    return ModelCardData(
        base_model=base,
        library_name=LIBRARY_NAME,
        pipeline_tag="image-classification" if num_classes > 0 else "image-feature-extraction",
        tags=list(TAGS),
        **_license_fields(source.get("license"), base),
    )


def _source(config: dict[str, Any], kind: Kind) -> dict[str, Any]:
    """The base-model description: ``base_model`` in a sliced config, ``source`` in bundle metadata."""
    return config.get("base_model" if kind == "sliced" else "source") or {}


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


# -- sliced model ----------------------------------------------------------------------------------------


def _sliced_details(config: dict[str, Any]) -> str:
    lines = [
        line
        for line in (
            _budget_line(config.get("budget") or {}),
            _scoring_line(config.get("scoring") or {}),
            _min_keep_line(config.get("min_keep") or {}),
            _preprocessing_line(config.get("pretrained_cfg") or {}),
            _provenance_line(config),
        )
        if line
    ]
    tables = [
        _cost_table(config.get("cost") or {}),
        _widths_table(config.get("widths") or {}, config.get("structure") or {}),
    ]
    parts = ["\n".join(lines), *tables]
    body = "\n\n".join(p for p in parts if p)
    return f"## Model details\n\n{body}" if body else ""


def _budget_line(budget: dict[str, Any]) -> str:
    """The budget as asked (``--flops``/``--params`` keep a fraction; ``--mlp``/``--heads`` remove one) and
    the fractions of units it removed (``mlp_ratio``/``head_ratio`` are fractions *removed*)."""
    kind = budget.get("kind")
    if kind in ("flops", "params") and budget.get("target") is not None:
        measure = "FLOPs" if kind == "flops" else "parameters"
        asked = f"keep {_pct(budget['target'])} of the dense model's {measure}"
        if budget.get("head_offset") is not None:
            asked += f" (head offset {budget['head_offset']:g})"
    elif kind == "ratios":
        asked = f"`--mlp {_num(budget.get('mlp'))} --heads {_num(budget.get('heads'))}`"
    else:
        return ""
    removed = [
        f"{_pct(budget[key])} of the {units}"
        for key, units in (("mlp_ratio", "MLP neurons"), ("head_ratio", "attention heads"))
        if budget.get(key) is not None
    ]
    return f"- **Budget:** {asked}" + (f"; removed {' and '.join(removed)}" if removed else "")


def _cost_table(cost: dict[str, Any]) -> str:
    rows = ["| | This model | Dense model | Fraction |", "|---|---|---|---|"]
    for label, key, fraction_key, scale, unit in (
        ("GMACs", "gmacs", "flops_fraction", 1.0, ""),
        ("Parameters", "params", "params_fraction", 1e-6, " M"),
    ):
        value, dense = cost.get(key), cost.get(f"dense_{key}")
        if value is None:
            continue
        fraction = cost.get(fraction_key, value / dense if dense else None)
        other = f"{dense * scale:.4g}{unit}" if dense else "—"
        rows.append(f"| {label} | {value * scale:.4g}{unit} | {other} | {_pct(fraction)} |")
    if len(rows) == 2:
        return ""
    resolution = cost.get("resolution")
    note = f"\n\nGMACs at {resolution}×{resolution} input." if resolution else ""
    return "\n".join(rows) + note


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


def _provenance_line(config: dict[str, Any]) -> str:
    parts = []
    if config.get("bundle_sha256"):
        parts.append(f"cut from an elastic bundle with sha256 `{config['bundle_sha256']}`")
    if config.get("snapvit_version"):
        parts.append(f"by snapvit {config['snapvit_version']}")
    return "- **Provenance:** " + " ".join(parts) if parts else ""


# -- bundle ----------------------------------------------------------------------------------------------


def _bundle_details(config: dict[str, Any], examples: list[dict[str, Any]]) -> str:
    structure = config.get("structure") or {}
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
            _scoring_line(config.get("scoring") or {}),
            _min_keep_line(config.get("min_keep") or {}),
            _preprocessing_line((_source(config, "bundle").get("pretrained_cfg")) or {}),
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
        budget = plan["budget"]
        if budget.get("kind") in ("flops", "params"):
            label = f"{'FLOPs' if budget['kind'] == 'flops' else 'params'} {_pct(budget['target'])}"
        elif plan["mlp_ratio"] == 0 and plan["head_ratio"] == 0:
            label = "dense"
        else:
            label = f"`--mlp {budget['mlp']:g} --heads {budget['heads']:g}`"
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


def _scoring_line(scoring: dict[str, Any]) -> str:
    method = scoring.get("method")
    if not method:
        return ""
    settings = scoring.get("settings") or {}
    shown = ", ".join(f"{k} = {_setting(v)}" for k, v in settings.items())
    return f"- **Importance scores:** method `{method}`" + (f" ({shown})" if shown else "")


def _setting(value: Any) -> str:
    return str(value) if isinstance(value, (str, int, float, bool)) else json.dumps(value, separators=(",", ":"))


def _min_keep_line(min_keep: dict[str, Any]) -> str:
    if min_keep.get("mlp") is None or min_keep.get("heads") is None:
        return ""
    return (
        f"- **Minimum kept per block:** {_pct(min_keep['mlp'])} of the MLP neurons and "
        f"{_pct(min_keep['heads'])} of the attention heads (at least one of each)"
    )


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


def _fmt_budget(budget: Any) -> str:
    """Budgets appear as a number, a string, or a dict like ``{"kind": "flops", "target": 0.5}``."""
    if isinstance(budget, dict):
        return f"{budget.get('kind', '')} {_num(budget.get('target'))}".strip()
    if budget is None:
        return "—"
    return _num(budget) if isinstance(budget, (int, float)) else str(budget)
