"""The code bundle remote backends will carry: git-tracked files only, a content hash that changes
exactly when content does, and guards against size and credentials -- all before any upload."""
import subprocess

import pytest

from launch.bundle import BundleError, collect


def git(root, *args):
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "repo"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "code.py").write_text("print('hi')\n")
    (root / "README.md").write_text("# x\n")
    (root / ".gitignore").write_text("runs/\n")
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    (root / "runs").mkdir()
    (root / "runs" / "big.pt").write_bytes(b"0" * 1000)  # ignored
    (root / "scratch.txt").write_text("untracked\n")  # untracked
    return root


def test_tracked_files_only_and_hash_follows_content(repo, tmp_path):
    bundle = collect(repo)
    assert sorted(bundle.files) == [".gitignore", "README.md", "pkg/code.py"]
    assert bundle.commit and not bundle.dirty
    assert collect(repo).digest == bundle.digest
    (repo / "pkg" / "code.py").write_text("print('changed')\n")
    changed = collect(repo)
    assert changed.digest != bundle.digest and changed.dirty  # working-tree content, not the last commit
    out = changed.write(tmp_path / "out")
    assert (out / "pkg" / "code.py").read_text() == "print('changed')\n" and (out / "BUNDLE.json").is_file()
    assert not (out / "runs").exists() and not (out / "scratch.txt").exists()


def test_size_guard_names_the_largest_files(repo):
    (repo / "data.bin").write_bytes(b"x" * 2_000_000)
    git(repo, "add", "data.bin")
    with pytest.raises(BundleError, match=r"over the 1 MB guard.*data\.bin \(2\.0 MB\)"):
        collect(repo, max_mb=1)


def test_secret_guards(repo, monkeypatch):
    (repo / "kaggle.json").write_text('{"username": "u", "key": "k"}')
    git(repo, "add", "kaggle.json")
    with pytest.raises(BundleError, match=r"kaggle\.json: looks like a credential file.*git rm --cached kaggle\.json"):
        collect(repo)
    git(repo, "rm", "-q", "--cached", "kaggle.json")
    monkeypatch.setenv("KAGGLE_KEY", "0123456789abcdef-not-a-real-key")
    (repo / "pkg" / "config.py").write_text("KEY = '0123456789abcdef-not-a-real-key'\n")
    git(repo, "add", "pkg/config.py")
    with pytest.raises(BundleError, match=r"pkg/config\.py: contains the value of \$KAGGLE_KEY") as error:
        collect(repo)
    assert "0123456789abcdef" not in str(error.value)  # the error names the variable, never the value


def test_not_a_git_checkout(tmp_path):
    with pytest.raises(BundleError, match="not a git checkout"):
        collect(tmp_path)


def test_this_project_bundles_within_the_guard():
    bundle = collect(__import__("pathlib").Path(__file__).resolve().parent.parent)
    assert "launch/cli.py" in bundle.files and "jobs/train.py" in bundle.files and bundle.size < 50e6
    assert not any(rel.startswith(("runs/", ".venv/")) for rel in bundle.files)


def test_launch_bundle_command(tmp_path):
    from conftest import launch

    result = launch("bundle", "--out", str(tmp_path / "b"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("code bundle ") and (tmp_path / "b" / "BUNDLE.json").is_file()
    assert (tmp_path / "b" / "jobs" / "train.py").is_file()
