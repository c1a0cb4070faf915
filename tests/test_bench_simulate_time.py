"""bench.simulate_time's reuse of kept seeds: only the inputs of a run count, not the bench's own JSON."""
import subprocess

from bench.simulate_time import kept_run_is_current, run_commit, run_inputs_clean


def git(repo, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                          capture_output=True, text=True).stdout.strip()


def test_a_run_is_reused_while_its_inputs_are_its_commits_whatever_else_changed(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "bench").mkdir()
    (tmp_path / "src" / "model.py").write_text("width = 1\n")
    (tmp_path / "bench" / "simulate_time.json").write_text("{}\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "first")
    commit = git(tmp_path, "rev-parse", "HEAD")
    assert run_inputs_clean(tmp_path)

    # an earlier call of the series rewrote the tracked bench JSON: the tree is dirty, the inputs are not
    (tmp_path / "bench" / "simulate_time.json").write_text('{"median": {}}\n')
    assert run_inputs_clean(tmp_path)
    kept = {"run": {"commit": f"{commit}-dirty"}, "run_inputs_clean": True}
    assert run_commit(kept) == commit and kept_run_is_current(kept, tmp_path)
    # a run whose own inputs were dirty (or that did not record them) is never reused
    assert not kept_run_is_current({"run": {"commit": f"{commit}-dirty"}, "run_inputs_clean": False}, tmp_path)
    assert not kept_run_is_current({"run": {"commit": f"{commit}-dirty"}}, tmp_path)
    assert kept_run_is_current({"run": {"commit": commit}}, tmp_path)

    (tmp_path / "src" / "new_module.py").write_text("")  # untracked, but an input
    assert not run_inputs_clean(tmp_path)
    (tmp_path / "src" / "new_module.py").unlink()
    (tmp_path / "src" / "model.py").write_text("width = 2\n")
    assert not run_inputs_clean(tmp_path) and not kept_run_is_current(kept, tmp_path)
