"""The benchmark tables (gqsa.bench.report) from hand-made JSON records."""

from __future__ import annotations

from gqsa.bench.report import print_decode_table, print_kernel_table, shape_rows


def _kernel_result(with_floor: bool = True) -> dict:
    recs = []
    for n, k in [(4096, 4096), (11008, 4096), (4096, 11008)]:
        for m in (1, 8, 16):
            recs.append(dict(model="llama2-7b", n=n, k=k, m=m, method="fp16", us=20.0 * m ** 0.1))
            recs.append(dict(model="llama2-7b", n=n, k=k, m=m, method="int4_tinygemm", us=8.0))
            g = dict(model="llama2-7b", n=n, k=k, m=m, method="gqsa_S50", us=5.0, bytes=6_000_000)
            if with_floor:
                g["floor_us"] = 4.0
            recs.append(g)
    return dict(device="test", copy_bw=3e12, records=recs)


def test_kernel_table_speedups_floor_and_ceiling(capsys):
    result = _kernel_result()
    rows = shape_rows(result, "llama2-7b", 1)
    assert len(rows) == 3 and rows[0]["x_fp16"] == 4.0 and rows[0]["floor"] == 4.0
    print_kernel_table(result)
    out = capsys.readouterr().out
    assert "   80%" in out  # floor 4.0 us / gqsa 5.0 us
    assert "target batch  1 gqsa S50 vs fp16           >= 4.00x: 4.00x MET" in out
    assert "ceiling: FP16 time / read floor of gqsa's bytes = 5.00x" in out


def test_kernel_table_reads_records_without_a_floor(capsys):
    print_kernel_table(_kernel_result(with_floor=False))
    out = capsys.readouterr().out
    assert "ceiling" in out and "nan" in out


def test_decode_table_names_the_best_mode(capsys):
    base = dict(ttft_ms=20.0, peak_gb=16.0, weights_gb=13.0)
    result = dict(device="test", config=dict(prompt=512, tokens=64), records=[
        dict(variant="fp16", tok_s_b1=100.0, best_b1="compile", **base),
        dict(variant="gqsa_S50", tok_s_b1=250.0, best_b1="graph", **dict(base, ttft_ms=30.0), best_ttft="graph")])
    print_decode_table(result)
    out = capsys.readouterr().out
    assert "2.50x,   graph" in out and "1.00x, compile" in out
    assert "30.0 (1.50x, graph)" in out and "20.0 (1.00x, eager)" in out


def test_formats_table_and_parser(capsys):
    from gqsa.bench.kernels import parse_formats
    from gqsa.bench.report import print_formats
    assert parse_formats(["2:16", "4:128"]) == ((2, 16), (4, 128))
    for bad in ("5:16", "4:12", "4-16"):
        try:
            parse_formats([bad])
        except SystemExit as e:
            assert "BITS:G" in str(e)
        else:
            raise AssertionError(f"{bad} accepted")
    result = _kernel_result()
    result["records"].append(dict(model="llama2-7b", n=4096, k=4096, m=1, method="gqsa_S50_b2g16", us=4.0,
                                  bytes=4_000_000, floor_us=3.0))
    print_formats(result)
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if "gqsa_S50_b2g16" in ln)
    assert line.split() == ["4096x4096", "gqsa_S50_b2g16", "4.00", "3.0", "|", "4.0", "(5.00x)", "|", "-"]


def test_decode_table_without_fp16(capsys):
    """FP16 out of memory (70B shape): the error is printed and the ratios are against gqsa."""
    rec = dict(variant="gqsa_S50", ttft_ms=30.0, tok_s_b1=50.0, best_b1="graph", peak_gb=40.0, weights_gb=30.0)
    result = dict(device="test", config=dict(prompt=512, tokens=64, shape="70b"),
                  records=[dict(variant="fp16", error="out of GPU memory"), rec])
    print_decode_table(result)
    out = capsys.readouterr().out
    assert "fp16: out of GPU memory" in out and "ratios against gqsa_S50" in out and "70b shape" in out
