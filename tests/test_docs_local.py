"""The commands of README.md and the local pages of docs/, run exactly as written (the convention and the world they
run in: tests/docs_commands.py); and the harness's own checks, which must be able to fail."""
from __future__ import annotations

from pathlib import Path

import pytest
from docs_commands import FILES, PAGES, REPO, Parser, check_page, page_commands, pages_of, parse_check, unmatched, world_fixture

docs_world = pytest.fixture(scope="module")(world_fixture)


@pytest.mark.timeout(1500)
@pytest.mark.parametrize("page", pages_of(__file__))
def test_every_command_of_the_page_does_what_the_page_says(page, docs_world, tmp_path):
    check_page(page, docs_world, tmp_path)


def test_every_page_with_commands_is_run_by_a_docs_test():
    with_commands = {page for page in PAGES if page_commands(page)}
    assigned = [page for pages in FILES.values() for page in pages]
    assert sorted(assigned) == sorted(set(assigned)) and with_commands <= set(assigned), with_commands - set(assigned)
    for name in FILES:
        assert (REPO / "tests" / name).is_file(), name


def test_a_command_that_cannot_run_here_still_fails_when_an_option_is_renamed(tmp_path):
    env = {"PATH": f"{REPO / '.venv' / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    (tmp_path / ".venv").symlink_to(REPO / ".venv")
    (tmp_path / "bench").symlink_to(REPO / "bench")
    good = ".venv/bin/launch local train_mlp --accelerate-config multi_gpu --num-processes 4 --set model.hidden=[512]"
    assert parse_check(good, tmp_path, env) is None
    parser = Parser()  # as a page's commands are parsed: one process, one command after another
    try:
        for bad in (good.replace("--num-processes", "--num-procs"),  # the backend's option
                    good.replace("model.hidden", "model.hiden"),  # a config key, through the job's typed config
                    ".venv/bin/python -m jobs.extract --videos v.csv --out feats --shard-count 8",  # the job's own option
                    ".venv/bin/launch report runs/x --batch-size 1",  # a program launch hands over
                    ".venv/bin/python bench/sync.py --file-count 24"):  # a benchmark: every option shown is in its --help
            assert parse_check(bad, tmp_path, env, parser) is not None, bad
        assert parse_check(good, tmp_path, env, parser) is None  # what failed before leaves nothing behind
        assert "invalid choice: 'sweeep'" in parse_check(".venv/bin/launch local sweeep", tmp_path, env, parser)
    finally:
        parser.stop()


def test_output_is_checked_by_its_shape():
    shown = ["launch local: detached with 1 unit(s) running; follow with: launch logs runs/train_mlp-20261127-141243-4f0c --follow | ...",
             "...", "test (200 videos): student->teacher R@1 7.50  R@5 33.00  R@10 52.50  MedR 10.0 | teacher->student R@1 6.50   # 36 s"]
    printed = ("launch local: detached with 1 unit(s) running; follow with: launch logs runs/train_mlp-20261206-050112-2b6e --follow | "
               "launch status runs/x\nepoch 0\nepoch 1\ntest (200 videos): student->teacher R@1 27.60  R@5 72.40  R@10 90.90  MedR 3.0 | "
               "teacher->student R@1 27.40\n")
    assert unmatched(shown, printed) == []
    assert unmatched(shown, printed.replace("teacher->student", "teacher-to-student")) == [shown[2]]
    assert unmatched(list(reversed(shown)), printed) == [shown[0]]  # in order


def test_the_convention_reads_commands_continuations_comments_and_transcripts(tmp_path, monkeypatch):
    import docs_commands

    page = tmp_path / "page.md"
    page.write_text("```bash\n# a comment\n.venv/bin/launch local train_mlp \\\n    --set train.epochs=2   # exit 3: incomplete\n"
                    "curl 'http://x/#frag'  # needs a GPU\n```\n\n```console\n$ .venv/bin/launch local train_mlp --set train.epochs=2\n"
                    "status: incomplete\n...\n$ .venv/bin/launch quota\nweek\n```\n\n```text\nnot a command\n```\n")
    monkeypatch.setattr(docs_commands, "REPO", tmp_path)
    first, second, shown, quota = page_commands("page.md")
    assert (first.text, first.code, first.line) == (".venv/bin/launch local train_mlp --set train.epochs=2", 3, 3)
    assert (second.text, second.parse_only) == ("curl 'http://x/#frag'", "needs a GPU")
    assert shown.run_once_with is first and shown.shown == ["status: incomplete", "..."]
    assert quota.run_once_with is None and quota.shown == ["week"]
    page.write_text("```\n$ launch quota\n```\n")
    with pytest.raises(AssertionError, match="mark the transcript"):
        page_commands("page.md")
    assert Path(docs_commands.__file__).is_file()
