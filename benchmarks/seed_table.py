"""The accuracy table the seed benchmarks print: mean, standard deviation and every seed."""

from __future__ import annotations

import statistics


def print_seed_table(top1: dict[str, list[float]], first_column: str = "student") -> None:
    print(f"  {first_column:<9}{'mean':>8}{'std':>7}  per seed")
    for name, values in top1.items():
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"  {name:<9}{statistics.mean(values):>8.2f}{std:>7.2f}  "
              + " ".join(f"{v:.2f}" for v in values))
