"""Datasets: JSONL rows, tokenisation, batching, difficulty measures, the synthetic task."""
