"""Benchmark modules run by ``scripts/benchmark.py``; see its docstring for the contract."""
