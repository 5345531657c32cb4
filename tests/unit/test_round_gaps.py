"""Where a round's time goes besides the steps: RoundClock's parts, the round-end hand-off kept out of
round_seconds, and the bench's round_gaps and its table."""
import time

import pytest

from fedbiobert.bench.report import gaps_table
from fedbiobert.bench.results import merge_repeats, round_gaps
from fedbiobert.roles.base import RoundClock
from fedbiobert.roles.round_end import RoundPiece, time_breakdown, training_end


def _piece(rank, role, trained_at, **seconds):
    return RoundPiece(rank=rank, role=role, events=[], trained_at=trained_at,
                      seconds={"compute": 1.0, "wait": 0.5, "comm": 0.1, "elapsed": 1.6, **seconds})


def test_training_ends_at_the_last_process_end_of_fedavg_not_at_the_gather():
    pieces = [_piece(0, "server", 100.0), _piece(1, "client", 100.3), _piece(2, "client", 100.2)]
    assert training_end(pieces, gathered_at=100.4) == pytest.approx((100.3, 0.1))  # 0.1 s hand-off


def test_training_end_stays_between_rank_0s_end_and_the_gather_whatever_other_clocks_say():
    ahead = [_piece(0, "server", 100.0), _piece(1, "client", 105.0)]  # a host whose clock runs ahead
    assert training_end(ahead, gathered_at=100.4) == (100.4, 0.0)
    behind = [_piece(0, "server", 100.0), _piece(1, "client", 90.0)]
    assert training_end(behind, gathered_at=100.4) == pytest.approx((100.0, 0.4))
    assert training_end([_piece(0, "server", 0.0)], gathered_at=7.0) == (7.0, 0.0)  # no times: as before


def test_round_clock_parts():
    clock = RoundClock()
    clock.first_step()  # the first silo: the round's start
    clock.silo_ended = time.perf_counter()
    clock.first_step()  # the next: a silo switch
    assert set(clock.parts) == {"start", "switch"}
    assert "fedavg" not in clock.parts and clock.end() >= clock.started  # no barrier met: no FedAvg part
    clock.barrier_left = clock.add("barrier", time.perf_counter() - 0.01)
    clock.end()
    assert clock.parts["barrier"] >= 0.01 and "fedavg" in clock.parts
    assert set(clock.parts) <= set(RoundClock.PARTS)


def test_time_breakdown_means_the_parts_over_a_roles_processes():
    pieces = [_piece(1, "client", 0.0, barrier=0.2, switch=0.1), _piece(2, "client", 0.0, barrier=0.4),
              _piece(0, "server", 0.0, start=0.05)]
    result = time_breakdown(pieces)
    assert result["client"]["barrier"] == pytest.approx(0.3) and result["client"]["switch"] == pytest.approx(0.05)
    assert result["server"]["start"] == 0.05 and result["client"]["max_compute"] == 1.0


def _round(seconds, barrier, handoff):
    return {"round_seconds": seconds, "handoff_seconds": handoff,
            "time_breakdown": {"client": {"compute": 1.0, "wait": barrier, "comm": 0.1, "barrier": barrier,
                                          "max_compute": 1.0},
                               "server": {"compute": 0.5, "wait": 0.6, "comm": 0.0, "start": 0.03,
                                          "max_compute": 0.5}}}


def test_round_gaps_are_steady_medians_and_merge_over_passes():
    rounds = [_round(9.0, 5.0, 1.0), _round(1.2, 0.1, 0.05), _round(1.3, 0.3, 0.07), _round(1.1, 0.2, 0.06)]
    gaps = round_gaps(rounds)  # round 1 (warm-up) left out
    assert gaps["client"]["barrier"] == 0.2 and gaps["client"]["drain"] == 0.0 and gaps["handoff"] == 0.06
    assert gaps["server"]["start"] == 0.03
    assert round_gaps([]) is None
    passes = [{"name": "x", "status": "ok", "seconds_per_round": s, "round_gaps": round_gaps(r)}
              for s, r in ((1.0, rounds), (2.0, rounds[:2]), (3.0, rounds[:3]))]
    merged = merge_repeats(passes)
    assert merged["round_gaps"]["client"]["barrier"] == 0.2  # the median of 0.2, 0.1, 0.2


def test_gaps_table_shows_the_busiest_stage_beside_the_gaps():
    rounds = [_round(9.0, 5.0, 1.0), _round(1.2, 0.1, 0.05)]
    row = {"name": "fedbiobert-2-2", "seconds_per_round": 1.2, "bound_fraction": 1.0 / 1.2,
           "stage_compute": {"busiest": 1.0}, "round_gaps": round_gaps(rounds)}
    lines = gaps_table([row, {"name": "no-gaps"}]).splitlines()
    assert len(lines) == 3 and lines[0].startswith("| run | s/round | busiest compute | of stage bound | client start")
    assert lines[2].startswith("| fedbiobert-2-2 | 1.200 | 1.000 | 83% |") and lines[2].endswith("| 0.050 |")
    assert gaps_table([{"name": "no-gaps"}]) is None
