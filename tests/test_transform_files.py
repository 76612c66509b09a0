"""Transform files of ITK, SimpleITK, ANTs and 3D Slicer: every linear ITK type checked point by point against
SimpleITK (and ANTs), composites and chains in the order the tools apply them, round trips both ways, bad input."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lossfit.errors import GeometryWarning, InputFileError
from lossfit.registration.transform_files import (
    MAX_CONDITION,
    invert_transform,
    read_transform,
    read_transforms,
    write_transform,
)

RTOL = 1e-12  # float64 arithmetic: the error of a mapped point relative to the size of the numbers involved
RTOL_FLOAT = 1e-5  # float32 storage or arithmetic (ANTs computes and returns points in float32)


@pytest.fixture
def sitk() -> Any:
    return pytest.importorskip("SimpleITK")


@pytest.fixture
def ants() -> Any:
    return pytest.importorskip("ants")


def _points(rng: np.random.Generator, d: int, n: int = 6) -> np.ndarray:
    return rng.uniform(-120.0, 120.0, size=(n, d))


def _map(matrix: torch.Tensor, points: np.ndarray) -> np.ndarray:
    m = matrix.numpy()
    d = m.shape[0] - 1
    return points @ m[:d, :d].T + m[:d, d]


def _assert_maps_like(
    matrix: torch.Tensor, points: np.ndarray, transform_point: Callable[..., Any], rtol: float
) -> None:
    """``matrix`` maps each point where ``transform_point`` does, to ``rtol`` of the size of the numbers."""
    assert matrix.dtype == torch.float64 and matrix.shape == (points.shape[1] + 1,) * 2
    ours = _map(matrix, points)
    theirs = np.array([transform_point(tuple(float(v) for v in p)) for p in points])
    scale = 1.0 + np.abs(points).max() + np.abs(theirs).max()
    assert np.abs(ours - theirs).max() <= rtol * scale, np.abs(ours - theirs).max()


def _write_text(path: Path, *transforms: tuple[str, list[float], list[float]], header: bool = True) -> Path:
    lines = ["#Insight Transform File V1.0"] if header else []
    for i, (name, parameters, fixed) in enumerate(transforms):
        lines += [
            f"#Transform {i}",
            f"Transform: {name}",
            "Parameters: " + " ".join(repr(float(v)) for v in parameters),
        ]
        lines += ["FixedParameters: " + " ".join(repr(float(v)) for v in fixed)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _mat_variable(
    name: str, values: list[float], order: str = "<", letter: str = "d", code: int | None = None
) -> bytes:
    """One MATLAB level-4 column vector: header (type, rows, columns, imaginary, name length), name, data."""
    if code is None:
        code = (1000 if order == ">" else 0) + (10 if letter == "f" else 0)
    encoded = name.encode() + b"\0"
    header = struct.pack(order + "5i", code, len(values), 1, 0, len(encoded))
    return header + encoded + struct.pack(f"{order}{len(values)}{letter}", *values)


def _write_mat(path: Path, name: str, parameters: list[float], fixed: list[float], order: str = "<", letter: str = "d"):
    path.write_bytes(_mat_variable(name, parameters, order, letter) + _mat_variable("fixed", fixed, order, letter))
    return path


# ---------------------------------------------------------------------------------------------------------------
# Every ITK type SimpleITK can build: written by SimpleITK as .tfm and .mat, read back, compared on points


def _versor(rng: np.random.Generator) -> list[float]:
    v = rng.normal(size=3)
    return list(v / np.linalg.norm(v) * rng.uniform(0.05, 0.6))


def _near_identity(rng: np.random.Generator, d: int) -> list[float]:
    return list((np.eye(d) + rng.uniform(-0.3, 0.3, size=(d, d))).reshape(-1))


def _sitk_cases() -> dict[str, Callable[[Any, np.random.Generator], Any]]:
    def with_centre(t: Any, rng: np.random.Generator, d: int) -> Any:
        t.SetFixedParameters(list(rng.uniform(-40, 40, d)) + list(t.GetFixedParameters())[d:])
        return t

    def affine(sitk: Any, rng: np.random.Generator, d: int) -> Any:
        t = sitk.AffineTransform(d)
        t.SetMatrix(_near_identity(rng, d))
        t.SetTranslation(list(rng.uniform(-20, 20, d)))
        return with_centre(t, rng, d)

    def scale(sitk: Any, rng: np.random.Generator, d: int) -> Any:
        return with_centre(sitk.ScaleTransform(d, list(rng.uniform(0.5, 2.0, d))), rng, d)

    def euler3d(sitk: Any, rng: np.random.Generator, zyx: bool) -> Any:
        t = sitk.Euler3DTransform()
        t.SetParameters([*rng.uniform(-0.8, 0.8, 3), *rng.uniform(-20, 20, 3)])
        t = with_centre(t, rng, 3)
        t.SetComputeZYX(zyx)
        return t

    def versor_family(cls_name: str, extra: Callable[[np.random.Generator], list[float]]) -> Any:
        def build(sitk: Any, rng: np.random.Generator) -> Any:
            t = getattr(sitk, cls_name)()
            t.SetParameters([*_versor(rng), *rng.uniform(-20, 20, 3), *extra(rng)])
            return with_centre(t, rng, 3)

        return build

    def versor(sitk: Any, rng: np.random.Generator) -> Any:
        t = sitk.VersorTransform()
        t.SetParameters(_versor(rng))
        return with_centre(t, rng, 3)

    def euler2d(sitk: Any, rng: np.random.Generator) -> Any:
        t = sitk.Euler2DTransform()
        t.SetParameters([rng.uniform(-3, 3), *rng.uniform(-20, 20, 2)])
        return with_centre(t, rng, 2)

    def similarity2d(sitk: Any, rng: np.random.Generator) -> Any:
        t = sitk.Similarity2DTransform()
        t.SetParameters([rng.uniform(0.5, 2), rng.uniform(-3, 3), *rng.uniform(-20, 20, 2)])
        return with_centre(t, rng, 2)

    return {
        "AffineTransform-2": lambda sitk, rng: affine(sitk, rng, 2),
        "AffineTransform-3": lambda sitk, rng: affine(sitk, rng, 3),
        "TranslationTransform-2": lambda sitk, rng: sitk.TranslationTransform(2, list(rng.uniform(-20, 20, 2))),
        "TranslationTransform-3": lambda sitk, rng: sitk.TranslationTransform(3, list(rng.uniform(-20, 20, 3))),
        "IdentityTransform-2": lambda sitk, rng: sitk.Transform(2, sitk.sitkIdentity),
        "IdentityTransform-3": lambda sitk, rng: sitk.Transform(3, sitk.sitkIdentity),
        "ScaleTransform-2": lambda sitk, rng: scale(sitk, rng, 2),
        "ScaleTransform-3": lambda sitk, rng: scale(sitk, rng, 3),
        "Euler2DTransform": euler2d,
        "Similarity2DTransform": similarity2d,
        "Euler3DTransform-ZXY": lambda sitk, rng: euler3d(sitk, rng, False),
        "Euler3DTransform-ZYX": lambda sitk, rng: euler3d(sitk, rng, True),
        "VersorTransform": versor,
        "VersorRigid3DTransform": versor_family("VersorRigid3DTransform", lambda rng: []),
        "Similarity3DTransform": versor_family("Similarity3DTransform", lambda rng: [rng.uniform(0.5, 2)]),
        "ScaleVersor3DTransform": versor_family("ScaleVersor3DTransform", lambda rng: list(rng.uniform(0.5, 2, 3))),
        "ScaleSkewVersor3DTransform": versor_family(
            "ScaleSkewVersor3DTransform", lambda rng: [*rng.uniform(0.5, 2, 3), *rng.uniform(-0.3, 0.3, 6)]
        ),
        "ComposeScaleSkewVersor3DTransform": versor_family(
            "ComposeScaleSkewVersor3DTransform", lambda rng: [*rng.uniform(0.5, 2, 3), *rng.uniform(-0.3, 0.3, 3)]
        ),
    }


SITK_CASES = _sitk_cases()


@pytest.mark.parametrize("case", sorted(SITK_CASES))
def test_each_itk_type_written_by_simpleitk_maps_points_as_simpleitk_does(sitk: Any, tmp_path: Path, case: str) -> None:
    rng = np.random.default_rng(sorted(SITK_CASES).index(case))
    transform = SITK_CASES[case](sitk, rng)
    d = transform.GetDimension()
    points = _points(rng, d)
    written = sitk.WriteTransform
    for suffix in (".tfm", ".txt", ".mat"):
        path = tmp_path / f"t{suffix}"
        written(transform, str(path))
        _assert_maps_like(read_transform(path), points, transform.TransformPoint, RTOL)
    # The float variant of the text format (ITK reads its numbers in double precision all the same).
    text = (tmp_path / "t.tfm").read_text()
    assert "_double_" in text and "Transform: " in text
    floated = tmp_path / "float.tfm"
    floated.write_text(text.replace("_double_", "_float_"))
    _assert_maps_like(read_transform(floated), points, transform.TransformPoint, RTOL)
    # SimpleITK writes Euler3D's ComputeZYX as a 4th fixed parameter; without it (older files) ZXY is meant.
    if case.startswith("Euler3D"):
        assert len(transform.GetFixedParameters()) == 4


def test_types_simpleitk_cannot_build_but_reads(sitk: Any, tmp_path: Path) -> None:
    """Rigid2D, MatrixOffsetTransformBase and QuaternionRigid (a non-unit quaternion: ITK scales by |q|^2) written by
    hand, as text and as .mat: SimpleITK's reading of the same file is the reference."""
    rng = np.random.default_rng(101)
    cases = [
        ("Rigid2DTransform_double_2_2", [rng.uniform(-3, 3), *rng.uniform(-20, 20, 2)], list(rng.uniform(-40, 40, 2))),
        ("MatrixOffsetTransformBase_double_2_2", [*_near_identity(rng, 2), *rng.uniform(-20, 20, 2)], [3.0, -4.0]),
        ("MatrixOffsetTransformBase_double_3_3", [*_near_identity(rng, 3), *rng.uniform(-20, 20, 3)], [1.0, 2, 3]),
        ("QuaternionRigidTransform_double_3_3", [*rng.uniform(-0.7, 0.7, 4), *rng.uniform(-20, 20, 3)], [5.0, 6, -7]),
        ("Euler3DTransform_double_3_3", [*rng.uniform(-0.8, 0.8, 3), *rng.uniform(-20, 20, 3)], [4.0, -5, 6]),
    ]
    for i, (name, parameters, fixed) in enumerate(cases):
        d = int(name[-1])
        points = _points(rng, d)
        for path in (
            _write_text(tmp_path / f"{i}.tfm", (name, parameters, fixed)),
            _write_mat(tmp_path / f"{i}.mat", name, parameters, fixed),
        ):
            reference = sitk.ReadTransform(str(path))
            _assert_maps_like(read_transform(path), points, reference.TransformPoint, RTOL)


def test_centered_affine_and_rigid3d_against_ants(ants: Any, tmp_path: Path) -> None:
    """SimpleITK cannot read CenteredAffineTransform or Rigid3DTransform; ANTs (ITK underneath) can. In a
    CenteredAffine the centre among the Parameters wins over the FixedParameters: ITK sets the fixed ones first."""
    rng = np.random.default_rng(102)
    angle = rng.uniform(-1, 1)
    rotation = [[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]]
    cases: list[tuple[str, list[float], list[float]]] = [
        (
            "CenteredAffineTransform_double_3_3",
            [*_near_identity(rng, 3), 7.0, 8, 9, *rng.uniform(-20, 20, 3)],
            [1.0, 2, 3],
        ),
        ("CenteredAffineTransform_double_2_2", [*_near_identity(rng, 2), -7.0, 8, *rng.uniform(-20, 20, 2)], [1.0, 2]),
        ("Rigid3DTransform_double_3_3", [*np.reshape(rotation, -1), *rng.uniform(-20, 20, 3)], [10.0, -20, 30]),
    ]
    for i, (name, parameters, fixed) in enumerate(cases):
        d = int(name[-1])
        points = _points(rng, d)
        path = _write_text(tmp_path / f"{i}.tfm", (name, parameters, fixed))
        reference = ants.read_transform(str(path))
        _assert_maps_like(read_transform(path), points, reference.apply_to_point, RTOL_FLOAT)
    # ANTs computes in float32: the same transform as an AffineTransform with the Parameters' centre, exactly.
    name, parameters, _ = cases[0]
    same = torch.eye(4, dtype=torch.float64)
    a = torch.tensor(parameters[:9], dtype=torch.float64).reshape(3, 3)
    c, t = torch.tensor(parameters[9:12], dtype=torch.float64), torch.tensor(parameters[12:], dtype=torch.float64)
    same[:3, :3], same[:3, 3] = a, t + c - a @ c
    torch.testing.assert_close(read_transform(tmp_path / "0.tfm"), same, rtol=0, atol=1e-12)


def test_a_versor_of_norm_one_or_more_is_rescaled_as_itk_does(sitk: Any, tmp_path: Path) -> None:
    rng = np.random.default_rng(103)
    points = _points(rng, 3)
    for norm in (1.0, 1.4):
        v = np.array([0.6, -0.5, 0.3])
        v = v / np.linalg.norm(v) * norm
        for name in ("VersorRigid3DTransform_double_3_3", "ScaleSkewVersor3DTransform_double_3_3"):
            extra = [1.1, 0.9, 1.2, *rng.uniform(-0.2, 0.2, 6)] if name.startswith("ScaleSkew") else []
            path = _write_text(tmp_path / f"v{norm}.tfm", (name, [*v, 1.0, 2.0, 3.0, *extra], [4.0, 5.0, 6.0]))
            _assert_maps_like(read_transform(path), points, sitk.ReadTransform(str(path)).TransformPoint, 1e-9)
    # A VersorTransform does not rescale: ITK (and lossfit) refuse a versor longer than 1.
    path = _write_text(tmp_path / "bad.tfm", ("VersorTransform_double_3_3", [0.9, 0.8, 0.3], [0.0, 0.0, 0.0]))
    with pytest.raises(RuntimeError):
        sitk.ReadTransform(str(path))
    with pytest.raises(InputFileError, match=r"bad\.tfm: line 3: VersorTransform_double_3_3: its versor has norm"):
        read_transform(path)


# ---------------------------------------------------------------------------------------------------------------
# Composites, lists and chains


@pytest.mark.parametrize("count", [2, 3])
def test_a_composite_file_composes_as_simpleitk_applies_it(sitk: Any, tmp_path: Path, count: int) -> None:
    rng = np.random.default_rng(200 + count)
    names = ["Euler3DTransform-ZXY", "AffineTransform-3", "Similarity3DTransform"][:count]
    parts = [SITK_CASES[name](sitk, rng) for name in names]
    composite = sitk.CompositeTransform(parts)
    path = tmp_path / "composite.tfm"
    sitk.WriteTransform(composite, str(path))
    assert path.read_text().count("Transform:") == count + 1
    points = _points(rng, 3)
    matrix = read_transform(path)
    _assert_maps_like(matrix, points, composite.TransformPoint, RTOL)
    # ITK applies the LAST component first: the matrix is T1 @ T2 (@ T3).
    product = torch.eye(4, dtype=torch.float64)
    for i, part in enumerate(parts):
        sitk.WriteTransform(part, str(tmp_path / f"{i}.tfm"))
        product = product @ read_transform(tmp_path / f"{i}.tfm")
    torch.testing.assert_close(matrix, product, rtol=0, atol=1e-12)
    _assert_maps_like(read_transform(path), points, sitk.ReadTransform(str(path)).TransformPoint, RTOL)


def test_a_2d_composite(sitk: Any, tmp_path: Path) -> None:
    rng = np.random.default_rng(204)
    composite = sitk.CompositeTransform(
        [SITK_CASES[name](sitk, rng) for name in ("Similarity2DTransform", "ScaleTransform-2", "Euler2DTransform")]
    )
    sitk.WriteTransform(composite, str(tmp_path / "c.txt"))
    _assert_maps_like(read_transform(tmp_path / "c.txt"), _points(rng, 2), composite.TransformPoint, RTOL)


def test_a_composite_cannot_go_to_mat(sitk: Any, tmp_path: Path) -> None:
    """SimpleITK writes a composite to .mat as the parameters of its last component only (and cannot read it)."""
    rng = np.random.default_rng(205)
    composite = sitk.CompositeTransform([SITK_CASES[n](sitk, rng) for n in ("AffineTransform-3", "VersorTransform")])
    path = tmp_path / "c.mat"
    sitk.WriteTransform(composite, str(path))
    with pytest.raises(RuntimeError):
        sitk.ReadTransform(str(path))
    with pytest.raises(InputFileError, match=r"c\.mat: holds a CompositeTransform, which ITK's \.mat format cannot"):
        read_transform(path)


def test_a_list_without_composite_header_uses_the_first_as_simpleitk_does(sitk: Any, tmp_path: Path) -> None:
    rng = np.random.default_rng(206)
    first, second = SITK_CASES["AffineTransform-3"](sitk, rng), SITK_CASES["Euler3DTransform-ZYX"](sitk, rng)
    sitk.WriteTransform(sitk.CompositeTransform([first, second]), str(tmp_path / "c.tfm"))
    lines = (tmp_path / "c.tfm").read_text().splitlines()
    assert lines[2] == "Transform: CompositeTransform_double_3_3"
    listed = tmp_path / "list.tfm"
    listed.write_text("\n".join(lines[:1] + lines[3:]) + "\n")
    with pytest.warns(GeometryWarning, match=r"list\.tfm: lists 2 transforms without a CompositeTransform header"):
        matrix = read_transform(listed)
    points = _points(rng, 3)
    _assert_maps_like(matrix, points, first.TransformPoint, RTOL)
    _assert_maps_like(matrix, points, sitk.ReadTransform(str(listed)).TransformPoint, RTOL)
    # The same in a .mat file holding two transforms one after the other.
    sitk.WriteTransform(first, str(tmp_path / "1.mat"))
    sitk.WriteTransform(second, str(tmp_path / "2.mat"))
    both = tmp_path / "both.mat"
    both.write_bytes((tmp_path / "1.mat").read_bytes() + (tmp_path / "2.mat").read_bytes())
    with pytest.warns(GeometryWarning, match="using the first"):
        _assert_maps_like(read_transform(both), points, first.TransformPoint, RTOL)


def test_a_chain_of_files_composes_as_ants_applies_a_transform_list(sitk: Any, ants: Any, tmp_path: Path) -> None:
    """``read_transforms([f0, f1, f2])`` is ``antsApplyTransforms -t f0 -t f1 -t f2``: f0 acts on the point FIRST
    (the matrix is M2 @ M1 @ M0), which is SimpleITK's CompositeTransform([t2, t1, t0])."""
    rng = np.random.default_rng(207)
    parts = [SITK_CASES[n](sitk, rng) for n in ("AffineTransform-3", "Euler3DTransform-ZXY", "Similarity3DTransform")]
    files = [tmp_path / "0.tfm", tmp_path / "1.mat", tmp_path / "2.txt"]
    for part, path in zip(parts, files, strict=True):
        sitk.WriteTransform(part, str(path))
    matrix = read_transforms(files)
    points = _points(rng, 3)
    _assert_maps_like(matrix, points, sitk.CompositeTransform(parts[::-1]).TransformPoint, RTOL)
    # ANTs on points: the same list, the same answer (ANTs returns float32 coordinates).
    pandas = pytest.importorskip("pandas")
    table = pandas.DataFrame({"x": points[:, 0], "y": points[:, 1], "z": points[:, 2]})
    mapped = ants.apply_transforms_to_points(3, table, [str(f) for f in files]).to_numpy()
    assert np.abs(mapped - _map(matrix, points)).max() <= RTOL_FLOAT * (1 + np.abs(points).max())
    # And json in the chain, read the same way.
    write_transform(tmp_path / "2.json", read_transform(files[2]))
    torch.testing.assert_close(read_transforms([*files[:2], tmp_path / "2.json"]), matrix, rtol=0, atol=1e-12)


def test_ants_resamples_an_image_with_the_first_listed_transform_acting_first(ants: Any, tmp_path: Path) -> None:
    """The definitive check of the order: ANTs resamples a moving image whose value is its world x at
    ``T(p)`` for each fixed point p; with [scale 2, shift 1] T(p).x is 2 p.x + 1, not 2 (p.x + 1)."""
    scale, shift = tmp_path / "scale.tfm", tmp_path / "shift.tfm"
    write_transform(scale, torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0], dtype=torch.float64)))
    move = torch.eye(4, dtype=torch.float64)
    move[0, 3] = 1.0
    write_transform(shift, move)
    xs = np.arange(-30.0, 30.0)
    moving = ants.from_numpy(np.broadcast_to(xs[:, None, None], (60, 60, 60)).astype("float32"), origin=(-30.0,) * 3)
    fixed = ants.from_numpy(np.zeros((2, 2, 2), dtype="float32"), origin=(3.0, 0.0, 0.0))
    warped = ants.apply_transforms(fixed, moving, [str(scale), str(shift)], interpolator="linear")
    matrix = read_transforms([scale, shift])
    assert float(warped.numpy()[0, 0, 0]) == pytest.approx(7.0, abs=1e-4)
    assert float(matrix[0, 0] * 3.0 + matrix[0, 3]) == pytest.approx(7.0, abs=1e-12)


def test_read_transforms_rejects_mixed_dimensions_and_bad_arguments(tmp_path: Path) -> None:
    write_transform(tmp_path / "two.tfm", torch.eye(3, dtype=torch.float64))
    write_transform(tmp_path / "three.tfm", torch.eye(4, dtype=torch.float64))
    with pytest.raises(InputFileError, match=r"two\.tfm: a 2-D transform after 3-D ones"):
        read_transforms([tmp_path / "three.tfm", tmp_path / "two.tfm"])
    with pytest.raises(TypeError, match="`paths` must be a list"):
        read_transforms(str(tmp_path / "two.tfm"))
    with pytest.raises(ValueError, match="`paths` must name at least one"):
        read_transforms([])


# ---------------------------------------------------------------------------------------------------------------
# ANTs-written files and the binary format's variants


@pytest.mark.parametrize(("precision", "d"), [("float", 2), ("float", 3), ("double", 2), ("double", 3)])
def test_ants_written_mat_files(sitk: Any, ants: Any, tmp_path: Path, precision: str, d: int) -> None:
    rng = np.random.default_rng(300 + d + (10 if precision == "float" else 0))
    tx = ants.create_ants_transform(
        transform_type="AffineTransform",
        precision=precision,
        dimension=d,
        matrix=np.reshape(_near_identity(rng, d), (d, d)),
        translation=tuple(rng.uniform(-20, 20, d)),
        center=tuple(rng.uniform(-40, 40, d)),
    )
    path = tmp_path / "ants.mat"
    ants.write_transform(tx, str(path))
    assert f"AffineTransform_double_{d}_{d}".encode() in path.read_bytes()  # ANTs writes double, whatever it holds
    points = _points(rng, d)
    matrix = read_transform(path)
    _assert_maps_like(matrix, points, tx.apply_to_point, RTOL_FLOAT)
    _assert_maps_like(matrix, points, ants.read_transform(str(path)).apply_to_point, RTOL_FLOAT)
    _assert_maps_like(matrix, points, sitk.ReadTransform(str(path)).TransformPoint, RTOL)


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("letter", ["d", "f"])
@pytest.mark.parametrize("name", ["AffineTransform_double_3_3", "AffineTransform_float_3_3"])
def test_mat_byte_orders_and_storage(sitk: Any, tmp_path: Path, order: str, letter: str, name: str) -> None:
    """Big and little endian, double and single storage (the MOPT type code says which), as ITK reads them."""
    rng = np.random.default_rng(310)
    parameters, centre = [*_near_identity(rng, 3), *rng.uniform(-20, 20, 3)], list(rng.uniform(-40, 40, 3))
    path = _write_mat(tmp_path / "t.mat", name, parameters, centre, order, letter)
    points = _points(rng, 3)
    matrix = read_transform(path)
    _assert_maps_like(matrix, points, sitk.ReadTransform(str(path)).TransformPoint, RTOL)
    exact = _write_text(tmp_path / "exact.tfm", ("AffineTransform_double_3_3", parameters, centre))
    rtol = RTOL if letter == "d" else RTOL_FLOAT
    torch.testing.assert_close(matrix, read_transform(exact), rtol=rtol, atol=rtol * 100)


# ---------------------------------------------------------------------------------------------------------------
# Writing, round trips, the inverse


def _random_affine(rng: np.random.Generator, d: int) -> torch.Tensor:
    m = torch.eye(d + 1, dtype=torch.float64)
    m[:d, :d] = torch.tensor(_near_identity(rng, d), dtype=torch.float64).reshape(d, d)
    m[:d, d] = torch.tensor(rng.uniform(-50, 50, d))
    return m


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("suffix", [".tfm", ".txt", ".mat", ".json"])
def test_write_then_read_is_exact(tmp_path: Path, d: int, suffix: str) -> None:
    m = _random_affine(np.random.default_rng(400 + d), d)
    write_transform(tmp_path / f"t{suffix}", m)
    torch.testing.assert_close(read_transform(tmp_path / f"t{suffix}"), m, rtol=0, atol=1e-12)
    assert [p.name for p in tmp_path.iterdir()] == [f"t{suffix}"]  # no temporary left behind


@pytest.mark.parametrize("d", [2, 3])
def test_written_files_read_the_same_in_simpleitk_and_ants(sitk: Any, ants: Any, tmp_path: Path, d: int) -> None:
    rng = np.random.default_rng(410 + d)
    m = _random_affine(rng, d)
    points = _points(rng, d)
    for suffix in (".tfm", ".mat"):
        path = tmp_path / f"t{suffix}"
        write_transform(path, m)
        _assert_maps_like(m, points, sitk.ReadTransform(str(path)).TransformPoint, RTOL)
        _assert_maps_like(m, points, ants.read_transform(str(path)).apply_to_point, RTOL_FLOAT)


def test_json_holds_projective_matrices_and_reads_registration_dicts(tmp_path: Path) -> None:
    m = _random_affine(np.random.default_rng(420), 3)
    m[3, :3] = torch.tensor([1e-3, -2e-3, 5e-4], dtype=torch.float64)
    write_transform(tmp_path / "p.json", m)
    content = json.loads((tmp_path / "p.json").read_text())
    assert content["dimension"] == 3 and content["projective"] is True and "fixed" in content["convention"]
    torch.testing.assert_close(read_transform(tmp_path / "p.json"), m, rtol=0, atol=0)
    # What Registration.to_dict() writes: a matrix among other keys.
    (tmp_path / "result.json").write_text(json.dumps({"matrix": m.tolist(), "success": True, "checks": {}}))
    torch.testing.assert_close(read_transform(tmp_path / "result.json"), m, rtol=0, atol=0)


@pytest.mark.parametrize("d", [2, 3])
def test_invert_transform_and_its_file_against_simpleitk(sitk: Any, tmp_path: Path, d: int) -> None:
    rng = np.random.default_rng(430 + d)
    transform = SITK_CASES[f"AffineTransform-{d}"](sitk, rng)
    sitk.WriteTransform(transform, str(tmp_path / "t.tfm"))
    m = read_transform(tmp_path / "t.tfm")
    inverse = invert_transform(m)
    torch.testing.assert_close(inverse @ m, torch.eye(d + 1, dtype=torch.float64), rtol=0, atol=1e-12)
    assert inverse[d].tolist() == [0.0] * d + [1.0]
    write_transform(tmp_path / "inverse.mat", inverse)
    points = _points(rng, d)
    theirs = transform.GetInverse()
    _assert_maps_like(read_transform(tmp_path / "inverse.mat"), points, theirs.TransformPoint, RTOL)
    _assert_maps_like(inverse, points, sitk.ReadTransform(str(tmp_path / "inverse.mat")).TransformPoint, RTOL)


def test_invert_transform_projective_dtype_and_refusals() -> None:
    m = _random_affine(np.random.default_rng(440), 2)
    m[2, :2] = torch.tensor([2e-3, -1e-3], dtype=torch.float64)
    inverse = invert_transform(m)
    assert float(inverse[2, 2]) == 1.0
    product = inverse @ m
    torch.testing.assert_close(product / product[2, 2], torch.eye(3, dtype=torch.float64), rtol=0, atol=1e-12)
    assert invert_transform(m.float()).dtype == torch.float32
    assert invert_transform([[2, 0, 0], [0, 2, 0], [0, 0, 1]]).dtype == torch.float64
    # Condition numbers: 1e6 is inverted, beyond MAX_CONDITION (~6.7e7) and exact singularity are refused.
    invert_transform(torch.diag(torch.tensor([1.0, 1e-6, 1.0], dtype=torch.float64)))
    assert 1e7 < MAX_CONDITION < 1e8
    for small in (1e-9, 0.0):
        with pytest.raises(ValueError, match="`matrix` is singular or ill-conditioned: condition number"):
            invert_transform(torch.diag(torch.tensor([1.0, small, 1.0], dtype=torch.float64)))
    # The translation's size does not make an affine matrix ill-conditioned.
    far = torch.eye(4, dtype=torch.float64)
    far[:3, 3] = 1e9
    torch.testing.assert_close(invert_transform(far)[:3, 3], torch.full((3,), -1e9, dtype=torch.float64))


@pytest.mark.parametrize(
    ("matrix", "error", "words"),
    [
        (torch.eye(5, dtype=torch.float64), ValueError, "`matrix` must be 3x3 (2-D) or 4x4 (3-D); got shape (5, 5)"),
        (torch.ones(3, 4, dtype=torch.float64), ValueError, "got shape (3, 4)"),
        (torch.full((3, 3), float("nan")), ValueError, "`matrix` must be finite"),
        ("eye", TypeError, "`matrix` must hold real numbers"),
        (torch.eye(3, dtype=torch.complex128), TypeError, "`matrix` must hold real numbers"),
    ],
)
def test_bad_matrices_are_refused_naming_the_argument(tmp_path: Path, matrix: Any, error: type, words: str) -> None:
    for call in (lambda: write_transform(tmp_path / "t.tfm", matrix), lambda: invert_transform(matrix)):
        with pytest.raises(error) as caught:
            call()
        assert words in str(caught.value)
    assert not (tmp_path / "t.tfm").exists()


def test_bad_write_paths_and_projective_itk_files(tmp_path: Path) -> None:
    projective = torch.eye(4, dtype=torch.float64)
    projective[3, 0] = 1e-3
    for suffix in (".tfm", ".mat"):
        with pytest.raises(ValueError, match=rf"`matrix` is projective and `path` is \{suffix}: .*save it as \.json"):
            write_transform(tmp_path / f"p{suffix}", projective)
    with pytest.raises(ValueError, match=r"`path` must end in \.tfm, \.txt, \.mat, \.json; got '.*t\.h5'"):
        write_transform(tmp_path / "t.h5", torch.eye(4))
    with pytest.raises(InputFileError, match="does not exist"):
        write_transform(tmp_path / "missing" / "t.tfm", torch.eye(4))
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------------
# Files that cannot be read: one line naming the path and what is wrong

AFFINE_3 = [1.0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0]


def _text(body: str) -> bytes:
    return ("#Insight Transform File V1.0\n#Transform 0\n" + body).encode()


BAD_FILES: list[tuple[str, bytes, str]] = [
    ("t.h5", b"", "HDF5 transform files are not supported yet"),
    ("t.hdf5", b"", "HDF5 transform files are not supported yet"),
    ("warp.nii.gz", b"", "displacement fields (non-linear transforms) are not supported yet"),
    ("t.xfm", b"", "unsupported transform file type '.xfm'; lossfit reads .tfm, .txt, .mat, .json"),
    ("t.tfm", b"#Insight Transform File V1.0\n\xff\xfe\n", "not UTF-8 text (byte 0xff at offset 29)"),
    ("t.tfm", _text("Transform: BSplineTransform_double_3_3\nParameters: 1\nFixedParameters: 1\n"), "non-linear"),
    ("t.tfm", _text("Transform: DisplacementFieldTransform_double_3_3\nParameters:\nFixedParameters:\n"), "non-linear"),
    ("t.tfm", _text("Transform: AffineTransform_double_3_3\nParameters: 1 0 0 1\nFixedParameters: 0 0 0\n"),
     "line 3: AffineTransform_double_3_3 needs 12 Parameters (matrix (row by row), translation); got 4"),
    ("t.tfm", _text("Transform: AffineTransform_double_3_3\nParameters: 1 0 0 0 1 0 0 0 1 0 0 0\nFixedParameters: 0\n"),
     "needs 3 FixedParameters (the centre); got 1"),
    ("t.tfm", _text("Transform: Euler3DTransform_double_3_3\nParameters: 0 0 0 0 0 0\nFixedParameters: 0 0\n"),
     "needs 3 or 4 FixedParameters"),
    ("t.tfm", _text("Transform: Euler3DTransform_double_2_2\nParameters: 0 0 0\nFixedParameters: 0 0\n"),
     "Euler3DTransform must be 3-D"),
    ("t.tfm", _text("Transform: AffineTransform_double_3_2\nParameters: 1\nFixedParameters: 0\n"), "maps 3-D to 2-D"),
    ("t.tfm", _text("Transform: Rigid3DPerspectiveTransform_double_3_3\nParameters: 1\nFixedParameters: 0\n"),
     "unsupported ITK transform type Rigid3DPerspectiveTransform"),
    ("t.tfm", _text("Transform: Affine\nParameters: 1\nFixedParameters: 0\n"), "'Affine' is not an ITK transform type"),
    ("t.tfm", _text("Transform: TranslationTransform_double_2_2\nParameters: 1 x\nFixedParameters:\n"),
     "line 4: 'x' is not a number"),
    ("t.tfm", _text("Transform: TranslationTransform_double_2_2\nParameters: 1 nan\nFixedParameters:\n"),
     "'nan' is not a finite number"),
    ("t.tfm", _text("Transform: TranslationTransform_double_2_2\nParameters: 1 2\n"), "has no FixedParameters line"),
    ("t.tfm", _text("Parameters: 1 2\n"), "line 3: Parameters before any 'Transform:' line"),
    ("t.tfm", _text("Transform: TranslationTransform_double_2_2\nParameters: 1 2\nParameters: 1 2\nFixedParameters:\n"),
     "a second Parameters line"),
    ("t.txt", b"1 0 0\n0 1 0\n0 0 1\n", "line 1: expected 'Name: value' as in ITK transform files"),
    ("t.txt", b"# nothing\n", "holds no 'Transform:' line; not an ITK transform file"),
    ("t.tfm", _text("Transform: CompositeTransform_double_3_3\n#Transform 1\n"
                    "Transform: TranslationTransform_double_2_2\nParameters: 1 2\nFixedParameters:\n"),
     "line 5: a 2-D component in a 3-D CompositeTransform"),
    ("t.tfm", _text("Transform: TranslationTransform_double_2_2\nParameters: 1 2\nFixedParameters:\n"
                    "Transform: CompositeTransform_double_2_2\n"), "a CompositeTransform can only be the first"),
    ("t.tfm", _text("Transform: CompositeTransform_double_2_2\nComponentTransformFile: a.tfm\n"),
     "ComponentTransformFile) are not supported"),
    ("t.mat", b"MATLAB 5.0 MAT-file" + bytes(200), "a MATLAB 5 MAT-file; ITK and ANTs write level-4 .mat files"),
    ("t.mat", b"\x89HDF\r\n" + bytes(20), "an HDF5 (MATLAB 7.3) file"),
    ("t.mat", b"", "is empty"),
    ("t.mat", _mat_variable("AffineTransform_double_3_3", AFFINE_3)[:60], "truncated"),
    ("t.mat", bytes(range(40)), "not a MATLAB level-4 header"),
    ("t.mat", _mat_variable("AffineTransform_double_3_3", AFFINE_3),
     "must be followed by one named 'fixed'; got nothing"),
    ("t.mat", _mat_variable("AffineTransform_double_3_3", AFFINE_3, code=20) + _mat_variable("fixed", [0.0] * 3),
     "stores int32; ITK transforms are stored as double or single"),
    ("t.mat", _mat_variable("AffineTransform_double_3_3", AFFINE_3) + _mat_variable("center", [0.0] * 3),
     "got 'center'"),
    ("t.mat", _mat_variable("AffineTransform_double_3_3", AFFINE_3[:6]) + _mat_variable("fixed", [0.0] * 3),
     "variable 1 (AffineTransform_double_3_3): AffineTransform_double_3_3 needs 12 Parameters"),
    ("t.json", b"{", "not JSON"),
    ("t.json", b'{"transform": []}', "a JSON object with a 'matrix' key"),
    ("t.json", b'{"matrix": [[1, 0], [0, 1]]}', "'matrix' must be 3x3 (2-D) or 4x4 (3-D); got shape (2, 2)"),
    ("t.json", b'{"matrix": [[1, 0, 0], [0, 1]]}', "'matrix' must be a square nested list of numbers"),
    ("t.json", json.dumps({"matrix": [np.eye(3).tolist()] * 2}).encode(), "'matrix' holds 2 matrices (a batch)"),
    ("t.json", json.dumps({"matrix": np.eye(4).tolist(), "dimension": 2}).encode(), "'dimension' is 2 but"),
    ("t.json", b'{"matrix": [[1, 0, NaN], [0, 1, 0], [0, 0, 1]]}', "'matrix' holds NaN or infinity"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "content", "words"), BAD_FILES, ids=[w[:40] for _, _, w in BAD_FILES])
def test_unreadable_files_raise_one_line_naming_the_path(tmp_path: Path, name: str, content: bytes, words: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputFileError) as caught:
        read_transform(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and words in message and "\n" not in message, message


def test_windows_line_ends_and_a_byte_order_mark_are_read(tmp_path: Path) -> None:
    path = tmp_path / "t.tfm"
    text = "#Insight Transform File V1.0\n#Transform 0\nTransform: TranslationTransform_double_2_2\n"
    path.write_bytes(b"\xef\xbb\xbf" + (text + "Parameters: 1 2\nFixedParameters: \n").replace("\n", "\r\n").encode())
    expected = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 2.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(read_transform(path), expected, rtol=0, atol=0)


def test_missing_files_folders_and_non_paths(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match=r"nothing\.tfm: no such file$"):
        read_transform(tmp_path / "nothing.tfm")
    (tmp_path / "folder.tfm").mkdir()
    with pytest.raises(InputFileError, match=r"folder\.tfm: not a file$"):
        read_transform(tmp_path / "folder.tfm")
    with pytest.raises(TypeError, match=r"`path` must be a str or os\.PathLike; got int"):
        read_transform(3)  # type: ignore[arg-type]
