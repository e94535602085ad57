"""``snapvit eval``: kNN and linear-probe accuracy, cost and measured speed of dense and sliced models."""
