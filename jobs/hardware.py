"""Fail fast on a GPU the installed torch cannot run (e.g. a Kaggle P100, sm_60, under a torch built
for sm_75 and newer), instead of dying later with 'no kernel image is available'."""
from __future__ import annotations

import glob
import importlib.util
import json
import runpy
import sys
from pathlib import Path


class HardwareError(RuntimeError):
    """The visible hardware cannot run this job; the message says what to change."""


def arch_supports(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """Can a device of this compute capability run a torch built for ``arch_list``?
    A cubin ``sm_XY`` runs on the same major with minor >= Y; PTX ``compute_XY`` JIT-compiles
    for any capability >= X.Y."""
    for arch in arch_list:
        kind, _, number = arch.partition("_")
        digits = "".join(ch for ch in number if ch.isdigit())
        if len(digits) < 2:
            continue
        built = (int(digits[:-1]), int(digits[-1]))
        if kind == "sm" and built[0] == capability[0] and built[1] <= capability[1]:
            return True
        if kind == "compute" and built <= capability:
            return True
    return False


GPU_DEVICE_NODES = ("/dev/nvidia[0-9]*", "/dev/kfd", "/dev/dxg")  # NVIDIA's per-GPU nodes, ROCm's, WSL2's


def gpu_devices_present() -> bool:
    """A GPU torch can drive shows up as a device node first; without one torch.cuda finds none, and asking it costs a
    torch import (about 1 s: every job's --check on a CPU machine)."""
    return any(glob.glob(pattern) for pattern in GPU_DEVICE_NODES)


def check_gpus() -> list[dict]:
    """Describe the visible GPUs; raise if torch has no kernels for one of them. Where no GPU device node exists there
    is nothing to ask torch about."""
    return gpus_torch_sees() if gpu_devices_present() else []


def gpus_torch_sees() -> list[dict]:
    """The GPUs as the installed torch sees them; raise if it has no kernels for one of them."""
    import torch

    if not torch.cuda.is_available():
        return []
    arch_list = torch.cuda.get_arch_list()
    gpus = []
    for index in range(torch.cuda.device_count()):
        name, capability = torch.cuda.get_device_name(index), torch.cuda.get_device_capability(index)
        if not arch_supports(capability, arch_list):
            raise HardwareError(
                f"GPU {index} ({name}) has compute capability {capability[0]}.{capability[1]} (sm_{capability[0]}{capability[1]}), "
                f"but torch {torch.__version__} is built for {', '.join(arch_list)}. Choose another accelerator "
                "(e.g. Kaggle's T4 x2 instead of P100) or install a torch build with kernels for this GPU."
            )
        gpus.append({"index": index, "name": name, "capability": f"{capability[0]}.{capability[1]}"})
    return gpus


def torch_build() -> dict:
    """The installed torch's version and CUDA build, from the ``torch/version.py`` its build generates: read without
    importing torch (about 1.7 s of CPU on each remote that turns out to have no GPU)."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"no torch in {sys.executable}")
    version = runpy.run_path(str(Path(spec.submodule_search_locations[0]) / "version.py"))
    return {"torch": version["__version__"], "cuda": version.get("cuda")}


def main() -> int:
    """``python -m jobs.hardware``: the probe remote entry scripts run before installing anything.
    Prints torch's build and the visible GPUs as JSON; exits 3 with the reason when torch cannot use one of them."""
    try:
        gpus = check_gpus()
    except HardwareError as exc:
        print(f"hardware probe: {exc}", file=sys.stderr)
        return 3
    print(json.dumps({**torch_build(), "gpus": gpus}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
