"""A brain phantom with known parameter maps: nilearn's MNI152 tissue probabilities and literature values at 3 T.

:func:`mni_phantom` gives a series simulated from the MNI152 2009a template's grey- and white-matter probability
maps (shipped inside nilearn; no download), with cerebrospinal fluid taken as the rest of a smoothed brain region.
Each voxel's true parameters are the probability-weighted mean of the tissues' values (a simplification: real
partial volume mixes signals, not parameters), its signal the model's at those parameters with Rician noise of
``sigma = S0_tissue / snr`` per channel, where ``S0_tissue`` is white matter's signal at the first acquisition.

Values (3 T; T2 from Wansapura et al. 1999, T1 from Stanisz et al. 2005 and Wansapura et al. 1999, IVIM from
Federau 2017's review):

- ``t2``: T2 110 / 80 / 2000 ms (grey, white, CSF), S0 1000 / 800 / 2000;
- ``t1-ir``: T1 1400 / 850 / 4000 ms, A 1000 / 800 / 2000, B = 1.95 A (an imperfect inversion);
- ``ivim``: D 0.8 / 0.7 / 3.0 x 10^-3 mm^2/s, f 0.06 / 0.04 / 0.02, D* 10 / 10 / 20 x 10^-3 mm^2/s, S0 as for t2.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lossfit.registration.image import Image
from lossfit.registration.series import Series

TISSUES = ("gm", "wm", "csf")
VALUES: dict[str, dict[str, tuple[float, float, float]]] = {
    "t2": {"S0": (1000.0, 800.0, 2000.0), "T2": (110.0, 80.0, 2000.0)},
    "t1-ir": {"A": (1000.0, 800.0, 2000.0), "B": (1950.0, 1560.0, 3900.0), "T1": (1400.0, 850.0, 4000.0)},
    "ivim": {
        "S0": (1000.0, 800.0, 2000.0),
        "f": (0.06, 0.04, 0.02),
        "D": (0.8e-3, 0.7e-3, 3.0e-3),
        "Dstar": (10e-3, 10e-3, 20e-3),
    },
}
ACQUISITIONS = {
    "t2": (10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0),
    "t1-ir": (50.0, 150.0, 400.0, 800.0, 1600.0, 3200.0, 5000.0),
    "ivim": (0.0, 10.0, 20.0, 50.0, 100.0, 200.0, 400.0, 600.0, 800.0, 1000.0),
}


def _template(name: str) -> Image:
    import nilearn

    from lossfit.registration.io import load_image

    folder = Path(nilearn.__file__).parent / "datasets" / "data"
    return load_image(folder / f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz")


def tissues(resolution: int = 2) -> tuple[dict[str, torch.Tensor], Image]:
    """Tissue probabilities ``(nz, ny, nx)`` at ``resolution`` mm (1 mm averaged over cubes) and their grid; CSF
    is what grey and white matter leave of the brain region (their sum smoothed over 7 mm, above 0.3)."""
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"`resolution` must be a whole number of mm >= 1; got {resolution!r}")
    gm_image = _template("gm")
    probabilities = {"gm": gm_image.data, "wm": _template("wm").data}
    brain = probabilities["gm"] + probabilities["wm"]
    region = torch.nn.functional.avg_pool3d(brain[None, None], 7, stride=1, padding=3)[0, 0] > 0.3
    probabilities["csf"] = (1 - brain).clamp(0, 1) * region
    grid = gm_image
    if resolution > 1:
        pooled = {}
        for name, p in probabilities.items():
            pooled[name] = torch.nn.functional.avg_pool3d(p[None, None], resolution, stride=resolution)[0, 0]
        probabilities = pooled
        # The pooled voxel (i, j, k) covers fine voxels r*i .. r*i + r-1: its centre lies (r-1)/2 fine voxels in.
        shift = gm_image.index_to_world(torch.full((3,), (resolution - 1) / 2, dtype=torch.float64))
        grid = Image(
            probabilities["gm"],
            spacing=tuple(s * resolution for s in gm_image.spacing),
            origin=tuple(float(v) for v in shift),
            direction=gm_image.direction,
        )
    return probabilities, grid


def mni_phantom(
    model: str = "t2", *, snr: float = 50.0, resolution: int = 2, seed: int = 0, x: tuple[float, ...] | None = None
) -> tuple[Series, dict[str, Image], Image, float]:
    """A simulated series of ``model`` (``"t2"``, ``"t1-ir"`` or ``"ivim"``) on the MNI152 grid.

    Returns:
        The series (float32, one volume per acquisition ``x``; magnitude data), the true maps (name -> Image; NaN
        outside the brain), the tissue labels (0 outside, 1 grey, 2 white matter, 3 CSF: the most probable), and the
        noise ``sigma`` per channel.
    """
    from lossfit.maps.models import BUILT_IN

    if model not in VALUES:
        raise ValueError(f"`model` must be one of {', '.join(map(repr, VALUES))}; got {model!r}")
    if not snr > 0:
        raise ValueError(f"`snr` must be positive; got {snr!r}")
    probabilities, grid = tissues(resolution)
    stack = torch.stack([probabilities[t] for t in TISSUES]).double()
    total = stack.sum(0)
    inside = total > 0.1
    weights = stack / total.clamp_min(1e-12)
    truth: dict[str, torch.Tensor] = {}
    for name, values in VALUES[model].items():
        value = (weights * torch.tensor(values, dtype=torch.float64)[:, None, None, None]).sum(0)
        truth[name] = torch.where(inside, value, torch.nan)
    acquisitions = torch.tensor(x if x is not None else ACQUISITIONS[model], dtype=torch.float64)
    spec = BUILT_IN[model]
    params = torch.stack([truth[n][inside] for n in spec.parameters])  # (k, V)
    clean = spec.signal(acquisitions[:, None], params)
    if spec.polarity:
        clean = clean.abs()
    reference = VALUES[model][spec.parameters[0]][1]
    sigma = float(reference) / float(snr)
    generator = torch.Generator().manual_seed(seed)
    real = clean + sigma * torch.randn(clean.shape, generator=generator, dtype=torch.float64)
    imaginary = sigma * torch.randn(clean.shape, generator=generator, dtype=torch.float64)
    signal = torch.zeros((acquisitions.numel(), inside.numel()), dtype=torch.float64)
    background = (
        torch.randn(signal.shape, generator=generator, dtype=torch.float64),
        torch.randn(signal.shape, generator=generator, dtype=torch.float64),
    )
    signal = sigma * torch.sqrt(background[0] ** 2 + background[1] ** 2)  # Rayleigh noise outside the brain
    signal[:, inside.reshape(-1)] = torch.sqrt(real * real + imaginary * imaginary)
    data = signal.reshape(acquisitions.numel(), *inside.shape).to(torch.float32)
    labels = torch.where(inside, stack.argmax(0).to(torch.float32) + 1, 0.0)
    maps = {name: grid.with_data(value) for name, value in truth.items()}
    return Series(data, grid.to(torch.float32)), maps, grid.with_data(labels), sigma
