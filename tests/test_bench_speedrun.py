"""bench/speedrun.py's long race: the whole train.py command per seed, scored on fixed val batches,
and a stand-in nanoGPT stopped at the wall budget with its last printed val loss kept."""

import sys
import textwrap
import time
from pathlib import Path

from conftest import shared_file

from bench import speedrun


def test_long_race_table_from_a_real_tiny_run(tmp_path, capsys):
    text = shared_file("data/tinyshakespeare.txt")
    preset = tmp_path / "tiny.toml"
    preset.write_text(textwrap.dedent("""\
        dataset = "tinyshakespeare"
        tokenizer = "char"
        model = "modern"
        n_layer = 1
        n_head = 2
        n_embd = 32
        block_size = 32
        batch_size = 8
        max_iters = 20
        eval_interval = 10
        eval_iters = 2
        sample_tokens = 0
        attention_png = false
        device = "cpu"
        compile = "false"
        """), encoding="utf-8")
    rc = speedrun.main([f"--input={text}", "--target=1.47", f"--fast={preset}", "--seeds=7", "--threads=1",
                        "--final_eval_batches=3", "--a100_budget=1000", f"--work_dir={tmp_path / 'work'}"])
    out = capsys.readouterr().out
    assert rc == 0
    row = next(line for line in out.splitlines() if line.startswith("| ours"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "0 of 1"  # 20 steps of a 1-layer model cannot reach 1.47
    final = speedrun.final_val_loss(tmp_path / "work" / "long-7", tmp_path / "work" / "data-7" / "tinyshakespeare" /
                                    "char", 3)
    assert float(cells[3]) == round(final, 4)  # the table shows the fixed-batch score of the run's weights
    assert cells[5] == "20"
    assert float(cells[4]) > 1.47  # val at the last eval within the (generous) A100 budget: the iter-20 eval
    assert "0 of 1 seeds reach val <= 1.47" in out


def test_nanogpt_budget_stops_the_run_and_keeps_its_last_val(tmp_path):
    fake = tmp_path / "nanoGPT"
    fake.mkdir()
    (fake / "train.py").write_text(textwrap.dedent("""\
        import sys, time
        print("step 0: train loss 4.2000, val loss 4.2100", flush=True)
        for it in range(1, 10_000):
            print(f"iter {it}: loss 2.5000, time 100.00ms, mfu -100.00%", flush=True)
            if it % 5 == 0:
                print(f"step {it}: train loss 2.0000, val loss {3 - it / 1000:.4f}", flush=True)
            time.sleep(0.1)
        """), encoding="utf-8")
    t0 = time.perf_counter()
    r = speedrun.run_nanogpt_budget(fake, budget=2.0)
    assert time.perf_counter() - t0 < 20  # stopped at the budget, not at its 10,000 iterations
    assert 5 <= r["iters"] < 100
    last_eval = r["iters"] // 5 * 5  # the budget may fall between an iteration line and its eval line
    assert r["final"] in (round(3 - last_eval / 1000, 4), round(3 - (last_eval - 5) / 1000, 4))
    assert abs(r["tok_s"] - 64 * 256 / 0.1) < 1e-6 * r["tok_s"]
