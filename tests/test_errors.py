"""Bad inputs stop the job before training with one clear message that names the problem."""
import shutil

import pytest

from conftest import SMALL, launch
from jobs.train import main as train_main


def run_job(capsys, *overrides, tmp_path):
    code = train_main(["--run-dir", str(tmp_path / "run"), "--set", *overrides])
    return code, capsys.readouterr().err


@pytest.fixture
def shard_copy(tmp_path, small_shards):
    copy = tmp_path / "shards"
    shutil.copytree(small_shards, copy)
    return copy


def test_missing_shard_directory(capsys, tmp_path):
    code, err = run_job(capsys, f"data.shards={tmp_path / 'nope'}", tmp_path=tmp_path)
    assert code == 2 and "nope: shard directory not found" in err
    assert not (tmp_path / "run").exists()


def test_truncated_and_corrupted_shards(capsys, tmp_path, shard_copy):
    shard = shard_copy / "train-000002.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[:-5000])
    code, err = run_job(capsys, f"data.shards={shard_copy}", tmp_path=tmp_path)
    assert code == 2 and "train-000002.tar" in err and "truncated" in err
    corrupted = bytearray(data)
    corrupted[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(corrupted))
    code, err = run_job(capsys, f"data.shards={shard_copy}", tmp_path=tmp_path)
    assert code == 2 and "train-000002.tar: sha256 does not match" in err
    assert not (tmp_path / "run").exists()


def test_dims_that_do_not_match_the_model(capsys, tmp_path, small_shards):
    code, err = run_job(capsys, f"data.shards={SMALL}", "model.clip_dim=768", "model.frames=4", tmp_path=tmp_path)
    assert code == 2
    assert "model.frames=4 but the shards have 3 (--set model.frames=3)" in err
    assert "model.clip_dim=768 but the shards have 512" in err


def test_unknown_key_and_wrong_type_through_the_cli(tmp_path):
    result = launch("local", "train_mlp", "--set", "train.epochz=3", cwd=tmp_path)
    assert result.returncode == 2 and "train.epochz: unknown config key (did you mean epochs" in result.stderr
    result = launch("local", "train_mlp", "--set", "optim.lr=fast", cwd=tmp_path)
    assert result.returncode == 2 and "optim.lr: Input should be a valid number" in result.stderr
    assert not any((tmp_path / "runs").glob("*/run.json"))


def test_unknown_accelerate_config(tmp_path):
    result = launch("local", "train_mlp", "--accelerate-config", "tpu_pod", cwd=tmp_path)
    assert result.returncode == 2 and "tpu_pod" in result.stderr and "cpu_ddp2" in result.stderr
