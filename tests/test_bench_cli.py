"""The benchmark entry points parse their options before importing Triton: ``--help`` works on a
machine without it, and a run there stops with a one-line message naming the missing package.

Each case runs in a fresh interpreter whose import system hides Triton (every meta-path
finder answers "not found" for it, as on a machine where it is not installed).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

HIDE_TRITON = """
import importlib.util, runpy, sys

class Hide:
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "triton":
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, attr):
        return getattr(self.finder, attr)

sys.meta_path[:] = [Hide(f) for f in sys.meta_path]
assert importlib.util.find_spec("triton") is None, "triton is still importable"
"""
ENTRY_POINTS = ("kernels", "decode", "tune", "report")


def _run(entry: str, args: list[str], via_cli: bool = False) -> subprocess.CompletedProcess:
    if via_cli:
        tail = f"from gqsa.app.cli import main; sys.exit(main(['bench', {entry!r}, *{args!r}]))"
    else:
        tail = (f"sys.argv = ['gqsa.bench.{entry}', *{args!r}]; "
                f"runpy.run_module('gqsa.bench.{entry}', run_name='__main__')")
    return subprocess.run([sys.executable, "-c", HIDE_TRITON + tail], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_help_without_triton(entry):
    run = _run(entry, ["--help"])
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith(f"usage: gqsa bench {entry}"), run.stdout[:500]
    assert "--out" in run.stdout or entry == "report"


@pytest.mark.parametrize("entry", ("kernels", "decode", "report"))
def test_cli_bench_help_without_triton(entry):
    run = _run(entry, ["--help"], via_cli=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith(f"usage: gqsa bench {entry}"), run.stdout[:500]


@pytest.mark.parametrize("entry", ("kernels", "decode", "tune"))
def test_run_without_triton_names_the_package(entry, tmp_path):
    run = _run(entry, ["--out", str(tmp_path)])
    assert run.returncode != 0
    assert "Traceback" not in run.stderr, run.stderr[-2000:]
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"gqsa bench {entry} needs Triton"), run.stderr[-2000:]
    assert 'pip install "gqsa[triton]"' in lines[0]
    assert not any(tmp_path.iterdir())  # stopped before writing anything


def test_report_runs_without_triton(tmp_path):
    (tmp_path / "kernels.json").write_text('{"device": "test", "copy_bw": 3e12, "records": []}')
    run = _run("report", [str(tmp_path)])
    assert run.returncode == 0, run.stderr[-2000:]
    assert "device test" in run.stdout
