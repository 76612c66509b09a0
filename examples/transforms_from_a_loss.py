"""A transformation's parameter matrix (linear, affine, a small network) derived from a loss, with lossfit.

The write-up this follows takes one SGD or Adam step (or 100 Adam epochs) and prints the parameters. Here each
problem is solved to convergence, checked, and compared with the closed form where one exists.

Run: python examples/transforms_from_a_loss.py
"""

from __future__ import annotations

import torch

import lossfit

F64 = torch.float64


def main() -> None:
    # Example 1: a 2x2 matrix mapping one point onto a target. One point gives 2 equations for 4 unknowns, so the
    # answer is not unique; Gauss-Newton from zero moves only in the row space and returns the minimum-norm matrix,
    # which is t p^T / |p|^2 in closed form.
    point = torch.tensor([1.0, 2.0], dtype=F64)
    target = torch.tensor([3.0, 4.0], dtype=F64)
    one = lossfit.least_squares(
        lambda a: a @ point - target, torch.zeros(2, 2, dtype=F64), solver="gauss-newton", rank_check=False
    )
    closed = torch.outer(target, point) / (point @ point)
    print("linear map from one point:\n", one.params, "\nclosed form (minimum norm):\n", closed)
    assert one.success and torch.allclose(one.params, closed, atol=1e-12)

    # Example 2: an affine map from three point pairs (exactly determined in 2-D).
    data = torch.tensor([[1.0, 2.0], [3.0, 1.0], [2.0, 4.0]], dtype=F64)
    targets = torch.tensor([[4.0, 5.0], [6.0, 3.0], [5.0, 7.0]], dtype=F64)
    affine = lossfit.align(data, targets, model="affine")
    print("affine map (homogeneous matrix):\n", affine.matrix)
    assert affine.success and torch.allclose(lossfit.transforms.apply(affine.matrix, data), targets, atol=1e-12)

    # Example 3: a small network as the transformation (2 -> 5 -> 2 with ReLU in the write-up; Tanh here, which is
    # smooth and so lets a second-order solver converge). The module is not modified; its fitted values come back in
    # params.
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)).double()
    network = lossfit.fit(net, data, targets)
    print("network fit:", network.status.name.lower(), "loss", float(network.loss))
    assert network.success and float(network.loss) < 1e-12
    for name, value in network.params.items():
        print(f"{name}: {tuple(value.shape)}")


if __name__ == "__main__":
    main()
