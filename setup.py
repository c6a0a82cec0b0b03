"""Build script: the one place that decides which packages, package data, compiled
extensions and core requirements exist.

Metadata and the optional extras are in pyproject.toml; MANIFEST.in adds to the source
distribution what a build elsewhere needs beyond the sources compiled here (every header,
the CUDA sources), the tests and the docs.  ``make dist`` writes the sdist and a manylinux
wheel.  Install with

    pip install torch==2.13.0            # or any torch >= 2.4 you already have
    pip install --no-build-isolation -e '.[dev]'

``--no-build-isolation`` makes the build use the installed torch (an isolated build
would download a multi-GB CUDA torch just to compile against it).  A build with the
extension requires exactly that torch release (``torch==X.Y.Z``): the compiled
``svf_kernels._C`` loads in no other.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent

# import name -> directory (relative to the repo root)
PACKAGE_DIRS = {
    "svf_kernels": "svf_kernels",
    "svf": "python/svf",
}

# The shipped datasets (a folder of data files, not a package), found through svf.data.
# Listed here alone (include_package_data=False): setuptools would otherwise take their
# folders for undeclared namespace packages and warn about each.
PACKAGE_DATA = {"svf": ["datasets/**/*"]}

# Core requirements besides torch; the optional ones are extras in pyproject.toml.
REQUIRES = ["transformers>=4.56,<6", "safetensors", "accelerate", "gguf", "tqdm", "numpy"]


def _torch():
    """The installed torch, or None (then only the pure-Python packages are built)."""
    try:
        import torch
        import torch.utils.cpp_extension
    except (ImportError, OSError):  # not installed, or a broken install
        return None
    return torch


def _cuda_available(torch) -> bool:
    """torch was built with CUDA and nvcc exists (no GPU is needed to compile)."""
    if torch is None or torch.version.cuda is None:
        return False
    if os.environ.get("SVF_NO_CUDA", "") not in ("", "0"):
        return False
    from torch.utils.cpp_extension import CUDA_HOME

    nvcc = shutil.which("nvcc") or (CUDA_HOME and shutil.which("nvcc", path=f"{CUDA_HOME}/bin"))
    return bool(nvcc)


def _sources(folder: str, suffixes: tuple[str, ...]) -> list[str]:
    base = ROOT / folder
    if not base.is_dir():
        return []
    return sorted(
        str(p.relative_to(ROOT)) for p in base.rglob("*") if p.is_file() and p.suffix in suffixes
    )


def extension_modules() -> list:
    """The compiled extensions to build: ``svf_kernels._C`` (the ``cpu`` and ``cuda`` backends).

    * without torch: none (pure-Python install; the ``torch`` reference backend still works);
    * with torch: a ``CppExtension`` from ``csrc/bindings.cpp`` (pybind functions),
      ``csrc/registration.cpp`` (the op's CPU/CUDA dispatch-key kernels) + ``csrc/cpu/*.cpp``, built with
      ``-O3 -fopenmp -fno-trapping-math`` (no ``-march``: the vectorised loops target the
      baseline ISA, so the build runs on any x86-64 / aarch64 CPU; no trapping math, since
      nothing reads floating-point exception flags, lets loops with comparisons vectorise,
      NaN and Inf semantics unchanged);
    * when torch has CUDA and ``nvcc`` exists (``_cuda_available``): the same module as a
      ``CUDAExtension`` that adds ``csrc/cuda/*.cu`` and ``csrc/cuda/*.cpp`` and defines
      ``SVF_WITH_CUDA`` (``SVF_NO_CUDA=1`` forces the CPU-only build).
    """
    torch = _torch()
    if torch is None:
        return []
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    sources = ["csrc/bindings.cpp", "csrc/registration.cpp", *_sources("csrc/cpu", (".cpp",))]
    include_dirs = [str(ROOT / "csrc")]
    cxx_flags = ["-O3", "-fopenmp", "-fno-trapping-math"]
    if _cuda_available(torch):
        return [
            CUDAExtension(
                "svf_kernels._C",
                sources + _sources("csrc/cuda", (".cu", ".cpp")),
                include_dirs=include_dirs,
                define_macros=[("SVF_WITH_CUDA", "1")],
                extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]},
                extra_link_args=["-fopenmp"],
            )
        ]
    return [
        CppExtension(
            "svf_kernels._C",
            sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"],
        )
    ]


def _packages() -> list[str]:
    packages = []
    for name, folder in PACKAGE_DIRS.items():
        packages.append(name)  # even before its __init__.py exists
        packages += [f"{name}.{sub}" for sub in find_packages(str(ROOT / folder))]
    return packages


def _cmdclass() -> dict:
    """torch's BuildExtension (ninja, nvcc flags) when torch is importable."""
    if _torch() is None:
        return {}
    from torch.utils.cpp_extension import BuildExtension

    return {"build_ext": BuildExtension}


def torch_requirement(torch, with_extension: bool) -> str:
    """``torch==X.Y.Z`` of the torch the extension is compiled against, or ``torch>=2.4``
    for a pure-Python build.

    A compiled extension loads only in the torch release it was built with.  The local
    label (``+cpu``, ``+cu128``) is left out, as a requirement cannot name it portably:
    install the torch variant first (``pip install torch==X.Y.Z`` from the CPU or a CUDA
    index; an extension with CUDA kernels needs a CUDA build of torch).
    """
    if torch is None or not with_extension:
        return "torch>=2.4"
    public = str(torch.__version__).split("+", 1)[0]  # PEP 440: the local label follows "+"
    return f"torch=={public}"


def _readme() -> str:
    readme = ROOT / "README.md"
    if readme.is_file():
        return readme.read_text(encoding="utf-8")
    return "Steering Vector Fields for Hugging Face language models, with fused kernels."


EXT_MODULES = extension_modules()

setup(
    packages=_packages(),
    package_dir=PACKAGE_DIRS,
    package_data=PACKAGE_DATA,
    include_package_data=False,
    install_requires=[torch_requirement(_torch(), bool(EXT_MODULES)), *REQUIRES],
    ext_modules=EXT_MODULES,
    cmdclass=_cmdclass(),
    long_description=_readme(),
    long_description_content_type="text/markdown",
    zip_safe=False,
)
