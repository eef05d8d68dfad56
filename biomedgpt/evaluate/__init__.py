"""Evaluation: MolT5-protocol text metrics, multiple-choice accuracy, baselines, the resumable harness, reports."""
