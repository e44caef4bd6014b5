"""The pure parts of benchmarks/fairness.py: percentiles, the weighted share, the checks."""
from __future__ import annotations

import pytest

from benchmarks.fairness import checks, p95, paired_checks, paired_throughput, parse_args, share_while_both_busy


def test_p95_is_nearest_rank():
    assert p95(list(range(1, 21))) == 19
    assert p95([3.0]) == 3.0 and p95([]) is None


def test_share_counts_only_while_both_tenants_have_work():
    started = [(0.5, "D")] + [(1 + i, t) for i, t in enumerate(["D", "D", "E"] * 10)] + [(100 + i, "D") for i in range(5)]
    got = share_while_both_busy(started, "D", "E", since=1.0)
    assert got["rows"] == {"D": 20, "E": 10} and got["ratio"] == 2.0


def _result(wait, bound, tput, rpi):
    return {"singles": {"B": {"within_bound": wait <= bound}}, "flood": {"throughput_images_per_s": tput,
                                                                      "rows_per_image": rpi}}


def test_checks_compare_fair_with_fifo():
    ok = checks({"fifo": _result(90, 5, 10.0, 1.0), "fair": _result(3, 5, 9.6, 1.0)})
    assert ok["throughput_at_least_95pct"] and ok["rows_per_image_unchanged"] and ok["singles_p95_within_bound"]
    bad = checks({"fifo": _result(90, 5, 10.0, 1.0), "fair": _result(6, 5, 9.4, 1.1)})
    assert not (bad["throughput_at_least_95pct"] or bad["rows_per_image_unchanged"] or bad["singles_p95_within_bound"])


def test_checks_over_rounds_take_the_median_ratio_and_need_the_bound_in_every_round():
    rounds = [{"fifo": _result(90, 5, 10.0, 1.0), "fair": _result(3, 5, f, 1.0)} for f in (9.0, 9.8, 9.6)]
    got = checks(rounds[0], rounds)
    assert got["throughput_fair_over_fifo_per_round"] == [0.9, 0.98, 0.96]
    assert got["throughput_fair_over_fifo"] == 0.96 and got["throughput_at_least_95pct"]  # not round 1's 0.90
    assert got["singles_p95_within_bound"]
    rounds[2]["fair"] = _result(6, 5, 9.6, 1.0)  # one round over its bound
    assert not checks(rounds[0], rounds)["singles_p95_within_bound"]
    assert checks(rounds[0], rounds[:1]) == checks(rounds[0])  # one round: as before


def test_paired_throughput_counts_only_while_both_ran():
    # FIFO finishes its last job at 10 s; fair's tail after that (alone on the cores) is not counted.
    results = {"fifo": {"_finished_after_s": [1.0 * i for i in range(1, 11)]},
               "fair": {"_finished_after_s": [0.5 * i for i in range(1, 19)] + [30.0, 31.0]}}
    got = paired_throughput(results)
    assert got["common_window_s"] == 10.0
    assert got["fifo"] == {"images": 10, "images_per_s": 1.0} and got["fair"] == {"images": 18, "images_per_s": 1.8}
    assert got["fair_over_fifo"] == 1.8
    assert all("_finished_after_s" not in v for v in results.values())  # not written to the JSON


def test_paired_checks_take_the_median_of_the_rounds_paired_ratios():
    rounds = [{"fifo": _result(90, 5, 10.0, 1.0), "fair": _result(30, 5, 5.0, 1.0)} for _ in range(3)]
    got = paired_checks(rounds[0], rounds, [{"fair_over_fifo": r} for r in (0.93, 0.97, 0.99)])
    assert got["throughput_fair_over_fifo_paired_per_round"] == [0.93, 0.97, 0.99]
    assert got["throughput_fair_over_fifo"] == 0.97 and got["throughput_at_least_95pct"]
    assert got["rows_per_image_unchanged"] and "singles_p95_within_bound" not in got
    assert not paired_checks(rounds[0], rounds, [{"fair_over_fifo": r} for r in (0.9, 0.94, 0.99)])[
        "throughput_at_least_95pct"]


def test_paired_refuses_a_shared_redis():
    with pytest.raises(SystemExit):
        parse_args(["--paired", "--redis-url", "redis://127.0.0.1:6379/0"])
