"""The GPU probe: which devices a torch build can run, and a clear error before training when not."""
import pytest
import torch

from jobs import hardware
from jobs.hardware import HardwareError, arch_supports
from jobs.train import main as train_main

TORCH_211_CU130 = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"]


@pytest.mark.parametrize("capability, supported", [
    ((6, 0), False),  # Kaggle P100
    ((7, 5), True),   # Kaggle T4
    ((8, 0), True),   # A100
    ((8, 9), True),   # L4: sm_86 cubins run on 8.9
    ((9, 0), True),   # H100
    ((7, 0), False),  # V100: no sm_70 cubin, PTX only for 12.0
])
def test_arch_supports(capability, supported):
    assert arch_supports(capability, TORCH_211_CU130) is supported


def test_ptx_covers_newer_devices_only():
    assert arch_supports((9, 0), ["sm_80", "compute_80"]) and not arch_supports((7, 5), ["compute_80"])


def fake_gpus(monkeypatch, name, capability):
    monkeypatch.setattr(hardware, "gpu_devices_present", lambda: True)  # a machine with GPUs: their device nodes exist
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: name)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i: capability)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: TORCH_211_CU130)


def test_p100_with_a_torch_without_sm60_fails_before_training(monkeypatch, capsys, tmp_path, small_shards):
    from conftest import SMALL

    fake_gpus(monkeypatch, "Tesla P100-PCIE-16GB", (6, 0))
    code = train_main(["--check", "--run-dir", str(tmp_path / "run"), "--set", f"data.shards={SMALL}"])
    err = capsys.readouterr().err
    assert code == 2 and "GPU 0 (Tesla P100-PCIE-16GB) has compute capability 6.0 (sm_60)" in err and "T4" in err


def test_t4_pair_passes(monkeypatch):
    fake_gpus(monkeypatch, "Tesla T4", (7, 5))
    assert [g["capability"] for g in hardware.check_gpus()] == ["7.5", "7.5"]
    with pytest.raises(HardwareError):
        fake_gpus(monkeypatch, "Tesla P100", (6, 0))
        hardware.check_gpus()


def test_the_remote_probe_reports_torchs_build_and_on_a_machine_without_gpu_nodes_does_not_import_torch():
    """What a Kaggle kernel or an ssh node runs first: on this machine (no GPU device node) it says so without the
    torch import, and reads the same version and CUDA build torch itself reports."""
    import json
    import subprocess
    import sys

    assert not hardware.gpu_devices_present()
    probe = subprocess.run([sys.executable, "-X", "importtime", "-m", "jobs.hardware"], capture_output=True, text=True, check=True)
    imported = {line.rsplit("|", 1)[1].strip() for line in probe.stderr.splitlines() if line.startswith("import time:")}
    assert "jobs" in imported and not any(name == "torch" or name.startswith("torch.") for name in imported)
    assert json.loads(probe.stdout) == {"torch": torch.__version__, "cuda": torch.version.cuda, "gpus": []}
