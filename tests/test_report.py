"""gqsa.app.run_report: run logs -> Markdown table and PNG plots."""

from __future__ import annotations

import json
import struct

import pytest

from gqsa.app.run_report import load_run, make_report, render_table

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_run(root, name, **run):
    folder = root / name
    folder.mkdir()
    (folder / "run.json").write_text(json.dumps({"schema": "gqsa-run/1", **run}))
    return folder


@pytest.fixture
def runs(tmp_path):
    return [
        write_run(tmp_path, "fp16", method="fp16", label="FP16", bits_per_weight=16.0,
                  ppl={"boolq": 18.65, "squad": 15.1}, accuracy={"piqa": {"acc": 0.65, "acc_norm": 0.667, "n": 300}},
                  decode={"tokens_per_s": 100.0, "device": "H100"}),
        write_run(tmp_path, "gptq-w2", method="gptq", label="GPTQ W2 g64", bits_per_weight=2.28,
                  ppl={"boolq": 2345.6, "squad": 1500.0}, accuracy={"piqa": 0.52}),
        write_run(tmp_path, "gqsa-s50", method="gqsa", bits_per_weight=3.3, ppl={"boolq": 30.25},
                  decode={"tokens_per_s": 180.0, "device": "H100"}),
    ]


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_table_has_one_row_per_run_and_marks_missing_values(runs):
    table = render_table([load_run(r) for r in runs])
    lines = table.strip().splitlines()
    assert lines[0] == ("| run | method | bits/weight | ppl boolq | ppl squad | piqa acc_norm | decode tok/s |")
    assert lines[2] == "| FP16 | fp16 | 16.00 | 18.65 | 15.10 | 0.667 | 100.0 |"
    assert lines[3] == "| GPTQ W2 g64 | gptq | 2.28 | 2,346 | 1,500 | 0.520 | – |"
    assert lines[4] == "| gqsa-s50 | gqsa | 3.30 | 30.25 | – | – | 180.0 |"  # label defaults to the folder


def test_make_report_writes_markdown_and_valid_pngs(runs, tmp_path):
    md = make_report(runs, tmp_path / "out")
    text = md.read_text()
    assert "| GPTQ W2 g64 |" in text and "ppl_vs_bits.png" in text and "ppl_vs_speed.png" in text
    width, height = png_size(tmp_path / "out" / "ppl_vs_bits.png")
    assert width > 500 and height > 300
    assert png_size(tmp_path / "out" / "ppl_vs_speed.png")[0] > 500


def test_no_speed_plot_without_a_decode_benchmark(tmp_path):
    run = write_run(tmp_path, "rtn", method="rtn", bits_per_weight=4.16, ppl={"boolq": 20.0})
    md = make_report([run], tmp_path / "out")
    assert not (tmp_path / "out" / "ppl_vs_speed.png").exists()
    assert "ppl_vs_speed" not in md.read_text() and "decode" not in md.read_text()


def test_bad_logs_raise_naming_the_file_and_key(tmp_path):
    bad = write_run(tmp_path, "bad", method="rtn", ppl={})
    with pytest.raises(ValueError, match=r"bad/run.json: run log lacks \['bits_per_weight'\]"):
        load_run(bad)
    with pytest.raises(FileNotFoundError, match="run.json not found"):
        load_run(tmp_path)


def test_a_text_without_any_finite_perplexity_gets_no_panel(tmp_path):
    """A diverged run (perplexity null or inf on a text that no other run has) must not break the report."""
    a = write_run(tmp_path, "a", method="rtn", bits_per_weight=4.16, ppl={"boolq": 20.0, "drop": None},
                  decode={"tokens_per_s": 90.0, "device": "H100"})
    b = write_run(tmp_path, "b", method="gqsa", bits_per_weight=3.3, ppl={"boolq": 25.0, "drop": float("inf")})
    md = make_report([a, b], tmp_path / "out")
    assert "| a | rtn |" in md.read_text()
    assert png_size(tmp_path / "out" / "ppl_vs_bits.png")[0] > 300


def test_whole_model_columns_and_the_plot_axis(tmp_path):
    from gqsa.app.run_report import bits_axis
    a = write_run(tmp_path, "a", method="gptq", bits_per_weight=3.3, bits_per_weight_all_linears=3.9,
                  model_bytes=3 * 2**20, ppl={"boolq": 20.0})
    b = write_run(tmp_path, "b", method="fp16", bits_per_weight=16.0, ppl={"boolq": 18.0})
    runs = [load_run(a), load_run(b)]
    lines = render_table(runs).splitlines()
    assert lines[0] == "| run | method | bits/weight | bits/weight all linears | model MiB | ppl boolq |"
    assert lines[2] == "| a | gptq | 3.30 | 3.90 | 3.0 | 20.00 |"
    assert lines[3] == "| b | fp16 | 16.00 | – | – | 18.00 |"
    assert bits_axis(runs) == "bits_per_weight"  # b lacks the all-linears figure
    assert bits_axis(runs[:1]) == "bits_per_weight_all_linears"


def test_pareto_front_keeps_only_points_no_cheaper_run_beats():
    from gqsa.app.run_report import pareto_front
    pts = [(3.0, 100.0), (2.5, 150.0), (3.0, 90.0), (3.3, 95.0), (4.0, 40.0), (2.4, 200.0)]
    assert pareto_front(pts) == [(2.4, 200.0), (2.5, 150.0), (3.0, 90.0), (4.0, 40.0)]
