"""benchmarks/campaign_plan.py: argument checks and the pure helpers (no worker, no Redis)."""
from __future__ import annotations

import csv

import pytest

from benchmarks import campaign_plan as cp


def test_defaults_are_the_issue_s_campaign():
    args = cp.parse_args([])
    assert (args.rounds, args.warmup_rows, args.rows, args.styles, args.steps, args.scale_rows) == (3, 8, 32, 2, 4, 10_000)
    assert args.rows * args.styles == 64 and args.warmup_rows * args.styles == 16
    assert not args.skip_accuracy and not args.skip_scale and args.redis_url is None


@pytest.mark.parametrize("argv", [["--styles", "0"], ["--styles", "7"], ["--renditions", "5"], ["--rows", "0"],
                                  ["--rounds", "-1"], ["--max-batch", "0"], ["--time-limit", "0"], ["--steps", "0"]])
def test_bad_arguments_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cp.parse_args(argv)
    assert e.value.code == 2
    assert "error" in capsys.readouterr().err


def test_error_is_relative_to_the_measured_figure():
    assert cp.error_pct(12.5, 10.0) == pytest.approx(25.0)
    assert cp.error_pct(7.5, 10.0) == pytest.approx(-25.0)
    assert cp.error_pct(None, 10.0) is None and cp.error_pct(1.0, 0.0) is None


def test_median_skips_unknown_values():
    assert cp.median([3.0, None, 1.0, 2.0]) == 2.0
    assert cp.median([None]) is None


def test_summary_says_whether_every_round_is_within_25_percent():
    rounds = [{"planned_gpu_s": 11.0, "measured_busy_s": 10.0, "error_pct": 10.0},
              {"planned_gpu_s": 7.0, "measured_busy_s": 10.0, "error_pct": -30.0},
              {"planned_gpu_s": 10.5, "measured_busy_s": 10.0, "error_pct": 5.0}]
    s = cp.summarise_accuracy(rounds)
    assert s["error_pct"] == 5.0 and s["abs_error_pct"] == 10.0 and s["worst_abs_error_pct"] == 30.0
    assert s["within_25_pct"] is False
    assert cp.summarise_accuracy(rounds[::2])["within_25_pct"] is True
    assert cp.summarise_accuracy([])["within_25_pct"] is False


def test_disturbed_rounds_are_left_out_of_each_mode_s_summary():
    rounds = [{"mode": "fresh", "planned_gpu_s": 40.0, "measured_busy_s": 10.0, "error_pct": 300.0, "disturbed": True},
              {"mode": "fresh", "planned_gpu_s": 11.0, "measured_busy_s": 10.0, "error_pct": 10.0, "disturbed": False},
              {"mode": "prewarmed", "planned_gpu_s": 9.0, "measured_busy_s": 10.0, "error_pct": -10.0, "disturbed": False}]
    s = cp.summarise_modes(rounds)
    assert s["fresh"]["rounds"] == 1 and s["fresh"]["error_pct"] == 10.0
    assert s["prewarmed"]["error_pct"] == -10.0


def test_modes_are_checked():
    assert cp.parse_args(["--modes", "prewarmed"]).mode_list == ["prewarmed"]
    assert cp.parse_args(["--rounds", "2"]).max_tries == 4
    for bad in (["--modes", "cold"], ["--rounds", "3", "--max-tries", "2"]):
        with pytest.raises(SystemExit):
            cp.parse_args(bad)
    assert cp.prewarm_steps(4) == 2 and cp.prewarm_steps(2) == 3


def test_vm_rss_is_read_from_proc_status_text():
    text = "Name:\tpython\nVmPeak:\t  999 kB\nVmRSS:\t  102400 kB\nThreads:\t4\n"
    assert cp.vm_rss_mb(text) == pytest.approx(104.8576)
    assert cp.vm_rss_mb("Name:\tx\n") is None


def test_cpu_accounting_parsers():
    stat = "cpu  100 5 50 1000 20 3 2 10 0 0\ncpu0 50 2 25 500 10 1 1 5 0 0\n"
    assert cp.proc_stat_busy_s(stat, 100) == pytest.approx((100 + 5 + 50 + 3 + 2 + 10) / 100)
    # comm may hold spaces and parentheses; the session id is the 6th field, utime/stime the 14th/15th
    pid = "4242 (celery (w) x) S 1 4242 4240 0 -1 4194560 100 0 0 0 700 300 0 0 20 0 3 0 99 0 0"
    assert cp.pid_stat(pid) == (4240, 1000.0)
    a = {"t": 0.0, "total": 10.0, "children": 2.0, "self": 1.0}
    b = {"t": 2.0, "total": 13.0, "children": 3.0, "self": 1.5}
    got = cp.CpuMeter.between(a, b)
    assert got["busy_cores"] == 1.5 and got["our_cores"] == 0.75 and got["other_cores"] == 0.75


def test_catalogs_of_two_series_share_no_prompt(tmp_path):
    a, b = cp.catalog_rows(50, "a"), cp.catalog_rows(50, "b")
    assert len({r["sku"] for r in a}) == 50 and not {r["name"] for r in a} & {r["name"] for r in b}
    path = cp.write_csv(tmp_path / "c.csv", a)
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert rows == a


def test_documents_expand_to_the_planned_cells():
    from jobs.campaign import CampaignSpec, expand_row

    rows = cp.catalog_rows(3, "t")
    spec = CampaignSpec.parse(cp.campaign_doc("t", {"rows": rows, "key": "sku"}, steps=4, styles=2, renditions=2))
    cells = [c for i, r in enumerate(rows, 1) for c in expand_row(spec, i, r, "sku")]
    assert len(cells) == 6 and all(c.request["steps"] == 4 and len(c.request["renditions"]) == 2 for c in cells)
    assert len({c.request["prompt"] for c in cells}) == 6
    flat = CampaignSpec.parse(cp.campaign_doc("f", {"rows": rows, "key": "sku"}, steps=4, styles=0, renditions=0))
    assert flat.sweeps is None and flat.renditions is None and flat.cells_per_row == 1
