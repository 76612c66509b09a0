"""A blog post's experiment with lossfit: a 4x4 matrix inverse derived by gradient descent, then by better solvers.

The post minimises mean((X @ M - I)**2) with SGD (learning rate 0.9, momentum 0.9) for 10,000 steps. Here the same
loss is one call, the post's solver is one option among several, and every answer is checked against torch.linalg.

Run: python examples/inverse_by_optimisation.py [--plot inverse.png]
"""

from __future__ import annotations

import argparse

import torch

import lossfit
from lossfit.experiments import compare_inverse_solvers, inverse_matrices, plot_inverse_solvers


def main() -> None:
    parser = argparse.ArgumentParser(description="A matrix inverse by optimisation")
    parser.add_argument("--plot", help="save the convergence plot here (.png)")
    parser.add_argument("--steps", type=int, default=10_000)
    args = parser.parse_args()

    # The post's own run, as published: SGD with lr 0.9 and momentum 0.9 from its random start (float32).
    m1 = inverse_matrices()["random 4x4"]
    seed_way = lossfit.matrices.inverse(
        m1, solver="gd", lr=0.9, momentum=0.9, init="random", seed=314, max_steps=args.steps, ftol=0.0, gtol=0.0
    )
    print("the post's method:", seed_way.num_steps, "steps;", seed_way.reference)
    print((seed_way.params @ m1).round(decimals=4))

    # lossfit's default on the same loss: Newton-Schulz, a handful of steps to torch.linalg's accuracy.
    default = lossfit.matrices.inverse(m1.to(torch.float64))
    print("lossfit default:", default.solver.name, default.num_steps, "steps;", default.reference)

    # Both matrices, several solvers, one figure.
    runs = compare_inverse_solvers(("gd", "adam", "lbfgs", "lm", "auto"), args.steps, torch.float64, targets=(1e-6,))
    for run in runs:
        print(f"{run.matrix:14s} {run.result.solver.name:14s} steps to 1e-6: {run.steps_to[1e-6]}")
    if args.plot:
        from lossfit.plotting import save_figure

        save_figure(plot_inverse_solvers(runs), args.plot)
        print("wrote", args.plot)


if __name__ == "__main__":
    main()
