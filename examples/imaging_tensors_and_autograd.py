"""Tensors, modules, autograd and minibatches for computational imaging.

Each block of the tutorial this follows is redone on a real CT slice (pydicom's CT_small.dcm, shipped with
pydicom), and each claim is checked, not just printed:

1. a CT image as a tensor: shape (batch, channel, H, W), dtype, intensity range;
2. autograd: the tutorial's d loss / d w = 30, by hand and by torch;
3. Conv2d with padding: a 3x3 kernel derived from a loss (a known blur recovered from blurred CT patches), and why
   the padding convention is part of the model: fitting with the wrong padding biases the kernel;
4. minibatches: the same fit through a DataLoader. The minibatch gradient is a noisy estimate of the full one: the
   method changes (it converges only as its step shrinks, and slowly), even though the loss is the same;
5. one SGD step of torch.optim, reproduced by lossfit's `gd` solver;
6. dtype: float32 against float64 for the same fit.

Run: ``python examples/imaging_tensors_and_autograd.py``.
"""

from __future__ import annotations

import pydicom
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lossfit


def check(condition: bool, what: str) -> None:
    if not condition:
        raise SystemExit(f"check failed: {what}")
    print(f"  ok: {what}")


def main() -> None:
    torch.manual_seed(0)
    print("1. a CT slice as a tensor")
    ct = lossfit.load_image(str(pydicom.data.get_testdata_file("CT_small.dcm")))
    hu = ct.data
    scaled = ((hu - hu.min()) / (hu.max() - hu.min())).reshape(1, 1, *hu.shape)
    print(f"  {ct}; tensor {tuple(scaled.shape)} {scaled.dtype}, range {float(scaled.min())}..{float(scaled.max())}")
    check(scaled.shape == (1, 1, 128, 128) and scaled.dtype == torch.float32, "shape (1, 1, 128, 128), float32")
    batch = scaled.repeat(3, 1, 1, 1)
    check(batch.shape == (3, 1, 128, 128) and torch.equal(batch[2], scaled[0]), "a minibatch of 3 repeats it")

    print("2. autograd: loss = (w x - t)^2 with w = 2, x = 3, t = 1")
    w = torch.tensor([2.0], requires_grad=True)
    loss = torch.mean((w * torch.tensor([3.0]) - torch.tensor([1.0])) ** 2)
    loss.backward()
    by_hand = 2 * (2.0 * 3.0 - 1.0) * 3.0  # d/dw (w x - t)^2 = 2 (w x - t) x
    assert w.grad is not None
    check(
        float(loss.detach()) == 25.0 and float(w.grad) == by_hand == 30.0, "loss 25 and d loss / d w = 30, by hand too"
    )

    print("3. a 3x3 blur kernel derived from a loss (Conv2d, zero padding)")
    true_kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
    patches = scaled[0, 0].unfold(0, 32, 32).unfold(1, 32, 32).reshape(-1, 1, 32, 32).double()  # 16 patches
    target = torch.nn.functional.conv2d(patches, true_kernel.double().reshape(1, 1, 3, 3), padding=1)
    target = target + 1e-3 * torch.randn(target.shape, dtype=torch.float64)
    results = {}
    for mode in ("zeros", "reflect"):
        conv = nn.Conv2d(1, 1, 3, padding=1, padding_mode=mode, bias=False).double()
        fit = lossfit.fit(conv, patches, target, loss="mse")
        kernel = fit.params["weight"].reshape(3, 3)
        results[mode] = float((kernel - true_kernel.double()).abs().max())
        print(f"  padding={mode!r}: {fit.status.name.lower()}, largest kernel error {results[mode]:.2e}")
    check(results["zeros"] < 2e-3, "with the padding the data were made with, the kernel is recovered")
    check(results["reflect"] > 3 * results["zeros"], "the wrong padding biases it: padding is part of the model")

    print("4. the same fit over minibatches (DataLoader, Adam, one step per minibatch)")
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False).double()
    loader = DataLoader(
        TensorDataset(patches, target), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(1)
    )
    mini = lossfit.fit(conv, loader, lr=0.01, epochs=150)
    assert mini.history is not None
    mini_error = float((mini.params["weight"].reshape(3, 3) - true_kernel.double()).abs().max())
    fell = float(mini.history.loss[0] / mini.history.loss[-1])
    print(
        f"  {mini.status.name.lower()} after {mini.extras['epochs']} epochs ({mini.num_steps} steps, "
        f"{mini.extras['lr_halvings']} halvings of the step): loss fell {fell:.0f}x, kernel error {mini_error:.2e}"
    )
    check(fell > 100, "minibatch Adam makes progress (the loss falls by over 100x)")
    check(
        mini_error > 3 * results["zeros"],
        "but the full-batch least-squares fit, in a handful of steps, is far closer than 600 noisy steps",
    )

    print("5. one SGD step of torch.optim, and the same step by lossfit's gd solver")
    model = nn.Linear(2, 1)
    x = torch.tensor([[1.0, -1.0], [0.5, 0.5]])
    y = torch.tensor([[2.0], [0.0]])
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer.zero_grad()
    torch.mean((model(x) - y) ** 2).backward()
    optimizer.step()

    def mse(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.mean((torch.func.functional_call(model, p, (x,)) - y) ** 2)

    ours = lossfit.minimize(mse, start, solver="gd", lr=0.1, max_steps=1, ftol=0, gtol=0, xtol=0)
    check(torch.allclose(ours.params["weight"], model.weight, atol=1e-7), "the two updated weights agree")

    print("6. dtype: the kernel fit in float32 and in float64")
    errors = {}
    for dtype in (torch.float32, torch.float64):
        conv = nn.Conv2d(1, 1, 3, padding=1, bias=False).to(dtype)
        fit = lossfit.fit(conv, patches.to(dtype), target.to(dtype), loss="mse")
        gradient = fit.extras.get("gradient_inf_norm")
        errors[str(dtype)] = float((fit.params["weight"].reshape(3, 3).double() - true_kernel.double()).abs().max())
        print(f"  {dtype}: kernel error {errors[str(dtype)]:.2e} ({fit.status.name.lower()}{gradient or ''})")
    check(abs(errors["torch.float32"] - errors["torch.float64"]) < 1e-4, "float32 is enough at this noise level")
    print("imaging example done")


if __name__ == "__main__":
    main()
