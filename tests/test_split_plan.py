"""Planning the cut: the planner's choice on synthetic profiles with optima worked out by hand,
re-planning decisions, profiles of real runs, and the plan-split / split / bench-split commands."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from agent.cli import main
from agent.errors import SplitError
from agent.split.bench import bench_split, candidate_cuts, render_markdown
from agent.split.plan import best, keep_or_switch, predict, render_table, should_replan
from agent.split.profile import CutProfile, Profile, profile_model
from tests.test_split_partition import skip_model


def _cut(
    cut: str, head: float, tail: float, coded: int, enc: float = 0.0, dec: float = 0.0
) -> CutProfile:
    tensors = [{"name": f"t_{cut}", "shape": [coded], "dtype": "uint8"}]
    return CutProfile(
        cut=cut,
        index={"input": 0, "output": 4}.get(cut, int(cut[1:]) if cut[1:].isdigit() else 0),
        tensors=tensors * (2 if cut == "c3" else 1),
        bytes=coded * 4,
        head_ms=head,
        tail_ms=tail,
        coded_bytes={"int8": coded},
        encode_ms={"int8": enc},
        decode_ms={"int8": dec},
    )


@pytest.fixture
def synthetic() -> Profile:
    """A 100 ms model; sending the input costs 1 MB, the cuts after it 100 kB, 10 kB and 50 kB.
    c3 sends more than c2 after more work here: it is never the best."""
    return Profile(
        model="synthetic.onnx",
        device="test",
        threads=1,
        runs=1,
        total_ms=100.0,
        cuts=[
            _cut("input", 0, 100, 1_000_000),
            _cut("c1", 10, 90, 100_000),
            _cut("c2", 50, 50, 10_000),
            _cut("c3", 80, 20, 50_000),
            _cut("output", 100, 0, 0),
        ],
    )


# Peer twice as fast, 1 ms round trip. By hand, total = head + bytes*8/bw + 1 + tail/2:
#   1 Mbit/s:    input 8051, c1 856, c2 156, c3 491, output 100      -> output
#   10 Mbit/s:   input 851, c1 136, c2 84, c3 131, output 100        -> c2
#   1000 Mbit/s: input 59, c1 56.8, c2 76.08, c3 90.4, output 100    -> c1
#   10 Gbit/s:   input 51.8, c1 56.08, c2 76.008, ...                -> input
@pytest.mark.parametrize(
    ("bandwidth", "cut", "total"),
    [(1, "output", 100.0), (10, "c2", 84.0), (1000, "c1", 56.8), (10_000, "input", 51.8)],
)
def test_planner_picks_the_known_optimum(
    synthetic: Profile, bandwidth: float, cut: str, total: float
) -> None:
    rows = predict(synthetic, bandwidth, rtt_ms=1.0, peer_speedup=2.0)
    assert [r.cut for r in rows] == ["input", "c1", "c2", "c3", "output"]
    pick = best(rows)
    assert pick.cut == cut
    assert pick.total_ms == pytest.approx(total)
    local = rows[-1]
    assert (local.transfer_ms, local.tail_ms, local.total_ms) == (0.0, 0.0, 100.0)


def test_rows_add_up_and_coding_time_counts_on_each_side(synthetic: Profile) -> None:
    slow_codec = Profile(**{**synthetic.__dict__, "cuts": [
        _cut("input", 0, 100, 1_000_000, enc=5, dec=4),
        _cut("c1", 10, 90, 100_000, enc=30, dec=8),
        _cut("output", 100, 0, 0),
    ]})  # fmt: skip
    rows = {r.cut: r for r in predict(slow_codec, 1000, rtt_ms=1.0, peer_speedup=2.0)}
    c1 = rows["c1"]
    assert c1.transfer_ms == pytest.approx(100_000 * 8 / 1e6 + 1)
    assert (c1.encode_ms, c1.decode_ms, c1.tail_ms) == (30, 4, 45)  # the peer decodes 2x faster
    assert c1.total_ms == pytest.approx(c1.head_ms + 30 + c1.transfer_ms + 4 + 45)
    # Coding cost turns the 1 Gbit/s choice from c1 (56.8 ms) to input (61 ms < 89.8 ms).
    assert best(list(rows.values())).cut == "input"


def test_a_peers_own_profile_replaces_the_speedup(synthetic: Profile) -> None:
    peer = synthetic.scaled(0.1, device="fast peer")
    rows = {r.cut: r for r in predict(synthetic, 10, 1.0, peer_speedup=1.0, peer_profile=peer)}
    assert rows["c1"].tail_ms == pytest.approx(9.0)
    assert rows["input"].tail_ms == pytest.approx(10.0)
    assert peer.device == "fast peer"


def test_max_tensors_drops_inner_cuts_only(synthetic: Profile) -> None:
    rows = predict(synthetic, 10, 1.0, 2.0, max_tensors=1)
    assert [r.cut for r in rows] == ["input", "c1", "c2", "output"]


def test_bad_links_and_missing_codecs_are_refused(synthetic: Profile) -> None:
    with pytest.raises(SplitError, match="bandwidth"):
        predict(synthetic, 0)
    with pytest.raises(SplitError, match="speed-up"):
        predict(synthetic, 10, peer_speedup=0)
    with pytest.raises(SplitError, match="no fp16 sizes"):
        predict(synthetic, 10, codec="fp16")
    with pytest.raises(SplitError, match="no cut"):
        best([])


@pytest.mark.parametrize(
    ("measured_bw", "measured_speedup", "replan"),
    [(11.9, 2.0, False), (8.1, 2.0, False), (12.1, 2.0, True), (7.9, 2.0, True), (10, 2.5, True)],
)
def test_replan_only_when_the_link_or_peer_moves_beyond_the_margin(
    measured_bw: float, measured_speedup: float, replan: bool
) -> None:
    assert should_replan(10.0, 2.0, measured_bw, measured_speedup, margin=0.2) is replan


def test_current_cut_is_kept_while_it_is_within_the_margin(synthetic: Profile) -> None:
    rows = predict(synthetic, 10, rtt_ms=1.0, peer_speedup=2.0)  # c2 84 ms, output 100, c3 131
    assert keep_or_switch(rows, "output", margin=0.2).cut == "output"
    assert keep_or_switch(rows, "c3", margin=0.2).cut == "c2"
    assert keep_or_switch(rows, "gone", margin=0.2).cut == "c2"


def test_table_marks_the_best_row(synthetic: Profile) -> None:
    rows = predict(synthetic, 10, 1.0, 2.0)
    lines = render_table(rows, "c2").splitlines()
    assert lines[0].split()[0] == "cut"
    assert [line for line in lines if line.endswith("*")] == [lines[3]]


def test_profile_round_trips_through_json(synthetic: Profile) -> None:
    again = Profile.from_json(synthetic.to_json())
    assert again == synthetic
    with pytest.raises(SplitError, match="not a split profile"):
        Profile.from_json("[1, 2]")
    with pytest.raises(SplitError, match="version"):
        Profile.from_json(json.dumps({**synthetic.to_dict(), "version": 99}))
    with pytest.raises(SplitError, match="no cut 'c9'"):
        synthetic.tail_ms("c9")


def test_candidates_cover_the_frontier_and_both_ends(synthetic: Profile) -> None:
    rows = predict(synthetic, 10, 1.0, 2.0)
    assert candidate_cuts(rows, count=1) == ["input", "c1", "c2", "output"]  # c3 is dominated
    assert candidate_cuts(rows, count=5) == ["input", "c1", "c2", "c3", "output"]


# ----------------------------------------------------------------------- measured profiles


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("split") / "tiny.onnx"
    onnx.save(skip_model(), str(path))
    return path


def test_profile_of_a_small_model_adds_up(tiny: Path) -> None:
    profile = profile_model(tiny, runs=2, threads=1)
    assert [c.cut for c in profile.cuts] == ["input", "c1", "c2", "c3", "output"]
    heads = [c.head_ms for c in profile.cuts]
    assert heads == sorted(heads)
    assert heads[0] == 0
    for c in profile.cuts:
        assert c.head_ms + c.tail_ms == pytest.approx(profile.total_ms, abs=0.01)
        assert set(c.coded_bytes) == {"int8", "fp16", "raw"}
    c2 = profile.cut("c2")
    assert c2.bytes == 2 * 4 * 8 * 8 * 4
    assert c2.coded_bytes["int8"] < c2.coded_bytes["raw"]


def test_person_model_profile_covers_its_cuts(assets: Path) -> None:
    profile = profile_model(
        assets / "person-yolov8s.onnx", runs=1, methods=("int8",), max_tensors=1
    )
    cuts = {c.cut: c for c in profile.cuts}
    assert {"input", "c24", "c216", "output"} <= set(cuts)
    assert all(len(c.tensors) == 1 for c in profile.cuts)
    assert 0 < cuts["c24"].head_ms < cuts["c216"].head_ms < cuts["output"].head_ms
    assert cuts["output"].head_ms == pytest.approx(profile.total_ms, rel=1e-3)
    for c in profile.cuts:
        assert c.coded_bytes["int8"] < c.bytes / 3  # int8 is 1/4, zstd takes more off
    rows = predict(profile, 1e6, 0.0, peer_speedup=1.0)
    assert best(rows).cut == "output"  # an equally fast peer never helps


# ------------------------------------------------------------------------------ commands


def test_plan_split_json_lists_cuts_then_the_best(
    tiny: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["model", "plan-split", str(tiny), "--json", "--bandwidth-mbps", "50",
                 "--peer-speedup", "3", "--profile-runs", "1", "--threads", "1"])  # fmt: skip
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["cut"] for row in lines[:-1]] == ["input", "c1", "c2", "c3", "output"]
    for row in lines[:-1]:
        assert {"cut", "tensors", "bytes", "coded_bytes", "head_ms", "tail_ms", "transfer_ms",
                "total_ms"} <= set(row)  # fmt: skip
    assert lines[2]["tensors"] == [
        {"name": "a", "shape": [1, 4, 8, 8], "dtype": "float32"},
        {"name": "b", "shape": [1, 4, 8, 8], "dtype": "float32"},
    ]
    assert lines[-1]["best"]["total_ms"] == min(row["total_ms"] for row in lines[:-1])


def test_plan_split_lists_cuts_without_profiling(
    assets: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["model", "plan-split", str(assets / "person-yolov8s.onnx"), "--no-profile",
                 "--json", "--max-tensors", "1"])  # fmt: skip
    assert code == 0
    cuts = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert cuts[0]["cut"] == "input"
    assert cuts[0]["tensors"] == [{"name": "images", "shape": [1, 3, 640, 640], "dtype": "float32"}]
    assert cuts[-1]["cut"] == "output"
    assert {c["cut"] for c in cuts} >= {"c24", "c216"}


def test_split_command_writes_the_parts(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["model", "split", str(tiny), "--at", "c2", "-o", str(tmp_path / "parts")]) == 0
    out = capsys.readouterr().out
    assert "cut c2 after node sigmoid: 2 tensor(s)" in out
    assert f"wrote {tmp_path / 'parts' / 'tail.onnx'}" in out
    info = json.loads((tmp_path / "parts" / "split.json").read_text())
    assert [t["name"] for t in info["tail"]["inputs"]] == ["a", "b"]
    assert info["tail"]["card"] is None  # the tiny model has no card
    assert main(["model", "split", str(tiny), "--at", "output", "-o", str(tmp_path / "x")]) == 1
    assert "nothing to split" in capsys.readouterr().err


def test_bench_split_measures_every_candidate_under_every_link(tiny: Path) -> None:
    result, profile = bench_split(
        tiny, (1.0, 1000.0), head_slowdown=2.0, rtt_ms=0.5, frames=1, threads=1
    )
    cuts = [c.cut for c in profile.cuts]
    assert [(t.bandwidth_mbps, t.cut) for t in result.trials] == [
        (bw, c) for c in cuts for bw in (1.0, 1000.0)
    ]
    for t in result.trials:
        # 1 Mbit/s: every payload waits its bytes / rate at least; nothing runs at all local.
        if t.cut != "output" and t.bandwidth_mbps == 1.0:
            assert t.measured_ms >= t.coded_bytes * 8 / 1e3
            assert t.coded_bytes > 0
    table = render_markdown(result)
    rows = table.split("\n\n")[0].splitlines()[2:]
    assert [row.split(" | ")[0] for row in rows] == [f"| {c}" for c in cuts]
    assert set(result.per_bandwidth()) == {1.0, 1000.0}
