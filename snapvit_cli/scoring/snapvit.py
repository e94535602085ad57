"""Method ``snapvit`` (the default): label-free gradient scores re-weighted by xNES (docs/method.md §3 and §5).

The bundle keeps, besides the final scores |α_l|·raw_mlp and |β_{l,h}|·raw_heads, the raw scores, the multipliers
and the fitness trace (§5.5), so a bundle can be re-weighted or diagnosed without scoring again.
"""

from __future__ import annotations

import time

from torch import nn

from snapvit_cli.adapters import HEADS, MLP, ModelAdapter
from snapvit_cli.data import describe
from snapvit_cli.devices import resolve_device
from snapvit_cli.scoreset import ScoreSet
from snapvit_cli.scoring.calibration import calibration_images, preprocessed, scoring_mode
from snapvit_cli.scoring.gradient import gradient_pass, gradient_settings, score_record, unit_scores
from snapvit_cli.scoring.heap import release_freed_memory
from snapvit_cli.scoring.search import (
    FeatureFitness,
    check_evaluations,
    check_pairs,
    resolve_pairs,
    search_multipliers,
)
from snapvit_cli.scoring.settings import ScoreSettings

SEARCH_SETTINGS = (
    "ga_sample_fraction",
    "ga_batch_size",
    "ga_evals",
    "ga_sigma",
    "ga_bounds",
    "ga_pairs",
    "ga_flops",
    "ga_init",
    "ga_evaluation",
    "ga_fitness",
    "ga_heads",
    "ga_result",
    "pca_components",
    "cka_init",
    "min_keep",
    "preset",
)


def snapvit_scores(model: nn.Module, adapter: ModelAdapter, settings: ScoreSettings) -> ScoreSet:
    """Gradient pass, then the xNES search for per-block / per-head multipliers on a second seeded image draw.

    ``ga_evals=0`` skips the search: the bundle holds the gradient scores and records ``xnes: None``.
    """
    settings = resolve_pairs(adapter, settings)
    check_pairs(adapter, settings)
    check_evaluations(adapter, settings)
    device = resolve_device(settings.device)
    timings: dict[str, float] = {}
    with scoring_mode(model, device):
        run = gradient_pass(model, adapter, settings, device)
        release_freed_memory()
        timings["gradients_s"] = run.seconds
        raw = unit_scores(run.grads, settings.score, settings.snip_alpha)
        if settings.ga_evals == 0:
            return _without_search(raw, settings, run, device, timings)

        start = time.perf_counter()
        ga_images = calibration_images(settings, settings.ga_sample_count, settings.seed + 1)
        fitness = FeatureFitness(model, adapter, preprocessed(ga_images, run.config), raw, settings, device)
        timings["dense_features_s"] = time.perf_counter() - start

        covariance = None
        if settings.cka_init:
            from snapvit_cli.scoring.cka import cka_covariance

            start = time.perf_counter()
            covariance = cka_covariance(model, adapter, fitness.calibration, settings.ga_batch_size, device)
            timings["cka_s"] = time.perf_counter() - start

        start = time.perf_counter()
        result = search_multipliers(fitness, settings, covariance)
        timings["xnes_s"] = time.perf_counter() - start

    mlp = raw[MLP] * result.mlp_weight[:, None]
    heads = raw[HEADS] * result.head_weight
    return ScoreSet(
        mlp=mlp,
        heads=heads,
        method="snapvit",
        settings={
            **gradient_settings(settings, run, device),
            **score_record(settings),
            **settings.record(SEARCH_SETTINGS),
            "ga_samples": len(ga_images),
            "ga_data": describe(ga_images),
            "ga_population": result.population,
            "pca_components_used": fitness.pca_components,
            "xnes": {
                "evaluations": result.evaluations,
                "updates": result.updates,
                "initial_fitness": result.initial_fitness,
                "best_fitness": result.best_fitness,
                "learning_rate": "0.6 (3 + ln d) / (d sqrt d)",
            },
        },
        extras={
            "raw.mlp": raw[MLP],
            "raw.heads": raw[HEADS],
            "ga.mlp_weight": result.mlp_weight,
            "ga.head_weight": result.head_weight,
            "ga.fitness_trace": result.trace,
        },
        timings=timings,
    )


def _without_search(raw: dict, settings: ScoreSettings, run, device, timings: dict[str, float]) -> ScoreSet:
    """Method ``snapvit`` with ``ga_evals=0``: the gradient scores as they are, and a record saying no search ran."""
    return ScoreSet(
        mlp=raw[MLP],
        heads=raw[HEADS],
        method="snapvit",
        settings={
            **gradient_settings(settings, run, device),
            **score_record(settings),
            **settings.record(SEARCH_SETTINGS),
            "xnes": None,
        },
        extras={"raw.mlp": raw[MLP].clone(), "raw.heads": raw[HEADS].clone()},
        timings=timings,
    )
