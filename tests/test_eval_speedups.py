"""``eval`` speed against the dense model and the ideal: measured speed-up, ideal (FLOPs) speed-up, their ratio,
at batch 1 and the throughput batch, with the spread over repeats; slices slower than dense are said plainly."""

from __future__ import annotations

import json

import pytest
import torch

from snapvit_cli.cli.eval import _print_eval
from snapvit_cli.elastic.records import Budget
from snapvit_cli.evaluation import evaluate as ev
from snapvit_cli.evaluation.report import EvalReport, EvalRow, Throughput, speed_ups


def row(name: str, gmacs: float, per_s: float, latency: float, dense: bool = False, quartiles=None) -> EvalRow:
    batch_q, one_q = quartiles or (None, None)
    speed = Throughput(per_s, 4, "cpu", "float32", 1, 1, 3, batch_q, one_q)
    budget = None if dense else Budget("flops", target=gmacs / 2.0, head_offset=0.15)
    return EvalRow(name, budget, dense, 0.5, None, None, gmacs, 10, 2.0, 20, 32, {"mlp_hidden": [1], "num_heads": [1]},
                   speed, latency)  # fmt: skip


def report(*rows: EvalRow) -> EvalReport:
    dataset = {"train": {"source": "demo", "n": 8}, "test": {"source": "demo", "n": 4, "num_classes": 2}}
    return EvalReport("0", "t", "bundle", dataset, 32, {}, {"vote": "majority", "k": 3}, rows, {"total": 1.0})


def test_speed_ups_against_dense_and_ideal_with_their_spread():
    rows = (
        row("dense", 2.0, 100.0, 10.0, dense=True, quartiles=((38.0, 40.0, 42.0), (9.0, 10.0, 11.0))),
        row("half", 1.0, 150.0, 8.0, quartiles=((25.0, 26.7, 28.0), (7.5, 8.0, 8.5))),
        row("slow", 1.0, 90.0, 12.0),
    )
    ups = speed_ups(rows)
    assert ups[0].at_batch == 1.0 and ups[0].ideal == 1.0 and not ups[0].slower
    half = ups[1]
    assert (half.ideal, half.at_batch, half.at_one) == (2.0, 1.5, 1.25) and not half.slower
    assert half.at_batch_range == pytest.approx((38 / 28, 42 / 25))
    assert half.at_one_range == pytest.approx((9 / 8.5, 11 / 7.5))
    assert ups[2].slower and ups[2].at_batch_range is None
    data = json.loads(json.dumps(report(*rows).to_json()))
    assert data["speed_ups"][1]["of_ideal"] == 0.75 and data["speed_ups"][2]["slower_than_dense"] is True
    assert EvalReport.from_json(data).results == rows  # quartiles round-trip; speed_ups are derived
    assert speed_ups(rows[1:]) == [None, None]  # no timed dense row: nothing to compare with


def test_eval_table_says_plainly_when_a_slice_is_slower(capsys):
    rows = (row("dense", 2.0, 100.0, 10.0, dense=True), row("half", 1.0, 150.0, 8.0), row("slow", 1.0, 90.0, 12.0))
    _print_eval(report(*rows))
    out = capsys.readouterr().out
    assert "speed-up b4\tspeed-up b1\tideal\tof ideal b4 / b1" in out
    assert "1.50×\t1.25×\t2.00×\t75% / 62%" in out
    assert "SLOWER THAN DENSE: slow (flops 0.5) measures 0.90× at batch 4 and 0.83× at batch 1" in out
    assert "SLOWER THAN DENSE: half" not in out


def test_measure_speed_records_the_spread_over_repeats():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4)).eval()
    speed = ev.measure_speed(model, 8, batch_size=3, warmup=1, repeats=4)
    q1, median, q3 = speed.batch_ms_quartiles
    assert q1 <= median <= q3 and speed.images_per_s == pytest.approx(3 / (median / 1000))
    assert speed.single_ms_quartiles[1] == pytest.approx(speed.latency_ms)
