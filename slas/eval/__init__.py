"""Evaluation: GenEval rule engine and loaders, sample generation, UniGenBench++."""
