"""benchmarks/default_env.py without timing anything: the environment it starts
children in, its argument checks, its table."""

from __future__ import annotations

import pytest

from benchmarks import default_env as D


def test_clean_env_drops_every_thread_variable(monkeypatch):
    for var in D.THREAD_VARS:
        monkeypatch.setenv(var, "3")
    env = D.clean_env({"OPENBLAS_NUM_THREADS": "1"})
    assert not any(var in env for var in D.THREAD_VARS if var != "OPENBLAS_NUM_THREADS")
    assert env["OPENBLAS_NUM_THREADS"] == "1" and env["FASTCONV_OFFLINE"] == "1"
    assert str(D.ROOT) in env["PYTHONPATH"]


@pytest.mark.parametrize("argv, msg", [
    (["--cases", "mnist,nope"], "--cases takes"),
    (["--variants", "fast"], "--variants takes"),
    (["--repeats", "0"], "--repeats"),
])
def test_bad_arguments_exit_with_a_message(argv, msg, capsys):
    with pytest.raises(SystemExit) as e:
        D.parse_args(argv)
    assert e.value.code == 2 and msg in capsys.readouterr().err


def test_markdown_table_has_ratios_to_tuned():
    rows = [{"case": "loop", "variant": v, "metric": m, "median_s": t, "samples_s": [t], "info": {"iters": 5}}
            for v, f in (("tuned", 1.0), ("default", 1.5)) for m, t in
            (("conv_s", 0.001 * f), ("matmul_s", 0.002 * f), ("loop_s", 0.5 * f), ("loop_cpu_s", 0.6 * f))]
    for r in rows:
        r["vs_tuned"] = 1.5 if r["variant"] == "default" else 1.0
    meta = {"machine": {"cpu_model": "Test CPU", "usable_cpus": 2}, "date": "today", "command": "cmd",
            "load_start": [0], "load_end": [0], "repeats": 1, "variants": ["tuned", "default"],
            "cases": ["loop"], "notes": ["shared machine"]}
    text = D.format_markdown(rows, meta)
    assert "| loop | conv | 1.00 ms | 1.50 ms (1.50×) |" in text
    assert "- shared machine" in text and "Test CPU" in text
