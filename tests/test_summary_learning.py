"""The plain "did each game learn?" lines of the `clrl run` summary (issue 18): R[j][j] against
the untrained network through their 95% intervals, on hand-made results."""

from __future__ import annotations

import io

from rich.console import Console

from clrl.results import new_results
from clrl.summary import learning_lines, learning_verdicts, print_summary


def _results():
    res = new_results("rl", "t", 0, {}, ["A", "B", "C"])
    nan = None
    res.R = [[900.0, nan, nan], [500.0, 40.0, nan], [450.0, 35.0, 7.0]]
    res.R_ci = [[[800.0, 1000.0], None, None], [None, [30.0, 50.0], None], [None, None, [5.0, 9.0]]]
    res.baseline = [300.0, 45.0, 20.0]
    res.baseline_ci = [[250.0, 350.0], [40.0, 50.0], [18.0, 22.0]]
    return res


def test_verdicts_by_hand() -> None:
    v = learning_verdicts(_results())
    # A: [800, 1000] lies above [250, 350]; B: [30, 50] overlaps [40, 50]; C: [5, 9] below [18, 22]
    assert [x["verdict"] for x in v] == ["above", "overlap", "below"]
    assert v[0]["trained"] == 900.0 and v[0]["untrained_ci"] == (250.0, 350.0)


def test_touching_intervals_are_not_separated() -> None:
    res = _results()
    res.R_ci[0][0] = [350.0, 1000.0]  # low end equals the untrained high end
    assert learning_verdicts(res)[0]["verdict"] == "overlap"


def test_missing_interval_gives_no_verdict_and_no_line() -> None:
    res = _results()
    res.R_ci[1][1] = None
    assert learning_verdicts(res)[1]["verdict"] is None
    assert [line.split(":")[0] for line in learning_lines(res)] == ["A", "C"]


def test_summary_prints_the_comparison() -> None:
    buf = io.StringIO()
    print_summary(_results(), Console(file=buf, width=200))
    text = buf.getvalue()
    assert "Did each task learn? R[j][j] vs the untrained network" in text  # not eaten as markup
    assert "A: right after training 900.0 [800.0, 1,000.0] vs untrained 300.0 [250.0, 350.0]: learned" in text
    assert "B:" in text and "not distinguishable" in text
