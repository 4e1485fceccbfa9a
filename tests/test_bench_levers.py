"""bench/bench_levers.py on a tiny preset: every variant's row, and Muon's stacked Newton-Schulz
timed against the same matrices one by one (the compiled variants are left out: compiling twice
would cost the suite a minute; tests/test_train.py covers compiled training)."""

import re
import textwrap

import torch

from bench import bench_levers


def test_lever_table_and_muon_line_from_a_tiny_preset(tmp_path, capsys, monkeypatch):
    preset = tmp_path / "tiny.toml"
    preset.write_text(textwrap.dedent("""\
        model = "modern"
        n_layer = 2
        n_head = 2
        n_embd = 32
        block_size = 32
        batch_size = 4
        dropout = 0.1
        optimizer = "muon"
        eval_interval = 1000
        sample_tokens = 0
        attention_png = false
        """), encoding="utf-8")
    variants = {k: v for k, v in bench_levers.VARIANTS.items() if k.startswith("eager")}
    monkeypatch.setattr(bench_levers, "VARIANTS", variants)
    threads = torch.get_num_threads()
    try:
        assert bench_levers.main([str(preset), "--steps=1", "--repeats=1", "--threads=1"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| eager")]
    assert [r.split("|")[1].strip() for r in rows] == list(variants)
    assert rows[0].split("|")[3].strip() == "1.00x"  # the first variant is the baseline
    # 2 layers x 4 matrices (c_attn, attn.c_proj, c_fc, mlp.c_proj), four shapes
    m = re.search(r"over (\d+) matrices in (\d+) shapes: each alone ([\d.]+) ms, stacked by shape ([\d.]+) ms", out)
    assert m and (m[1], m[2]) == ("8", "4") and float(m[3]) > 0 and float(m[4]) > 0
    assert "avx" in out.lower() or "cpu" in out.lower()  # the CPU line comes first
