"""How the loss (MSE, MAE, BCE, cross-entropy) shapes the fitted parameters.

Run: python examples/losses_shape_the_fit.py
"""

from __future__ import annotations

import torch

import lossfit

F64 = torch.float64


def main() -> None:
    g = torch.Generator().manual_seed(0)

    # Example 1: linear regression with MSE: y = 2x + 1 + noise. Least squares has a closed form to check against.
    x = torch.randn(100, 1, generator=g, dtype=F64)
    y = 2 * x[:, 0] + 1 + torch.randn(100, generator=g, dtype=F64)
    mse = lossfit.fit("linear", x, y, loss="mse")
    x1 = torch.cat([x, torch.ones(100, 1, dtype=F64)], dim=1)
    closed = torch.linalg.lstsq(x1, y).solution
    print("MSE line:", mse.summary().splitlines()[-1])
    assert torch.allclose(torch.cat([mse.params["weight"], mse.params["bias"].reshape(1)]), closed, atol=1e-10)

    # The lesson: with outliers, MAE and Huber recover the line that MSE misses.
    # (Outliers scattered over x; outliers concentrated at extreme x are leverage points, which no such loss resists.)
    dirty = y.clone()
    dirty[::5] += 8.0
    slopes = {}
    for loss in ("mse", "mae", "huber"):
        fitted = lossfit.fit("linear", x, dirty, loss=loss)
        slopes[loss] = float(fitted.params["weight"][0])
        bias = float(fitted.params["bias"])
        print(f"{loss:5s} with 20% outliers: slope {slopes[loss]:.3f}, bias {bias:.3f} (truth 2, 1)")
    assert abs(slopes["mae"] - 2) < abs(slopes["mse"] - 2) and abs(slopes["huber"] - 2) < abs(slopes["mse"] - 2)

    # Example 2: binary classification with binary cross-entropy (a logistic model: a linear layer and a sigmoid).
    features = torch.randn(200, 10, generator=g, dtype=F64)
    truth = torch.randn(10, generator=g, dtype=F64)
    labels = (torch.rand(200, generator=g, dtype=F64) < torch.sigmoid(features @ truth)).to(F64)
    logistic = lossfit.fit("logistic", features, labels, loss="bce")
    accuracy = float(
        ((features @ logistic.params["weight"] + logistic.params["bias"] > 0) == (labels > 0.5)).double().mean()
    )
    print("logistic regression:", logistic.status.name.lower(), f"training accuracy {accuracy:.2f}")
    assert logistic.success

    # Example 3: five classes with cross-entropy (softmax regression).
    classes = torch.argmax(features @ torch.randn(10, 5, generator=g, dtype=F64), dim=1)
    softmax = lossfit.fit("softmax", features, classes, loss="cross_entropy")
    predicted = torch.argmax(features @ softmax.params["weight"] + softmax.params["bias"], dim=1)
    print(
        "softmax regression:",
        softmax.status.name.lower(),
        f"training accuracy {float((predicted == classes).double().mean()):.2f}",
    )
    assert softmax.success


if __name__ == "__main__":
    main()
