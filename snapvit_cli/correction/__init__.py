"""Least-squares weight correction of a sliced model: the solver and its application to bundle slices."""
