"""Experiments: experiment files, the comparison runner and its report."""
