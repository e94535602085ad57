"""Importance scoring methods (one score per MLP neuron and per attention head of every block)."""
