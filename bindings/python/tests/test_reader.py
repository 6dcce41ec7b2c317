"""memdb.Reader against a live leader: counts while it ingests and compacts, read
from two processes at once; refresh by hand; every documented exception."""

import multiprocessing
import threading

import pytest

import memdb

WAIT = 20.0


def follow_and_check(data_dir, final_seq_q, result_q):
    """In a child process: follows the leader during the ingest (its counts of
    "common" and its seq never go back), then checks every word against /sync."""
    try:
        reader = memdb.Reader(data_dir)
        result_q.put(("ready", 0, 0))
        last_common, last_seq, looks = 0, 0, 0
        while final_seq_q.empty():
            seq, common = reader.seq, reader.count("common")
            assert seq >= last_seq and common >= last_common, (seq, last_seq, common)
            last_seq, last_common, looks = seq, common, looks + 1
        final_seq, table = final_seq_q.get()
        assert reader.wait_for(final_seq, WAIT) >= final_seq
        words = sorted(table)
        assert reader.counts(words) == [table[w] for w in words]
        result_q.put(("ok", looks, reader.seq))
    except BaseException as e:  # reported to the parent, which fails the test
        result_q.put(("failed", repr(e), 0))


def test_two_processes_read_exact_counts_while_the_leader_ingests_and_compacts(leader):
    leader.post("common start")
    ctx = multiprocessing.get_context("spawn")
    children = []
    for _ in range(2):
        final_q, result_q = ctx.Queue(), ctx.Queue()
        p = ctx.Process(target=follow_and_check, args=(str(leader.data_dir), final_q, result_q))
        p.start()
        children.append((p, final_q, result_q))
    for _, _, result_q in children:
        assert result_q.get(timeout=60)[0] == "ready"
    for i in range(200):
        leader.post(" ".join(f"w{i}x{j}" for j in range(40)) + " common")
    final = (leader.seq(), leader.get("/sync"))
    assert len(final[1]) > 8000
    for _, final_q, _ in children:
        final_q.put(final)
    for p, _, result_q in children:
        status, detail, seq = result_q.get(timeout=60)
        p.join(timeout=60)
        assert status == "ok", detail
        assert seq >= final[0]
        assert detail > 0
    health = leader.get("/health")
    assert health["snapshot"]["base_seq"] > 1, "the leader compacted during the run"


def test_lookups_top_and_identity_match_the_leader(leader):
    leader.post("Hello hello world")
    with memdb.Reader(leader.data_dir) as r:
        assert r.wait_for(leader.seq(), WAIT) >= 1
        assert r.count("Hello") == 2
        assert r.count_raw("Hello") == 0
        assert r.counts(["world", "absent"]) == [1, 0]
        assert r.top(2) == [("hello", 2), ("world", 1)]
        assert r.top(5, prefix="W") == [("world", 1)]
        assert r.incarnation == leader.get("/health")["incarnation"]
        assert "memdb.Reader(" in repr(r)


def test_a_reader_by_hand_moves_only_on_refresh(leader):
    leader.post("one")
    seq = leader.seq()
    follower = memdb.Reader(leader.data_dir)
    follower.wait_for(seq, WAIT)
    r = memdb.Reader(leader.data_dir, follow=False)
    assert r.count("one") == 1
    leader.post("one")
    follower.wait_for(leader.seq(), WAIT)
    assert r.count("one") == 1, "no thread: nothing moves"
    assert r.refresh() is True
    assert r.count("one") == 2
    assert r.refresh() is False


def test_wait_for_lets_other_threads_run_and_times_out_clearly(leader):
    leader.post("x")
    r = memdb.Reader(leader.data_dir)
    r.wait_for(leader.seq(), WAIT)
    ticks = []
    t = threading.Thread(target=lambda: [ticks.append(1) for _ in range(1000)])
    t.start()
    with pytest.raises(memdb.WaitTimeoutError, match="was not mapped within"):
        r.wait_for(10**9, 0.2)
    t.join()
    assert len(ticks) == 1000
    with pytest.raises(ValueError):
        r.wait_for(1, -1.0)
    with pytest.raises(ValueError):
        r.wait_for(1, float("nan"))


def test_every_error_is_a_clear_exception(tmp_path, leader):
    with pytest.raises(memdb.NotFoundError, match="no such directory"):
        memdb.Reader(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(memdb.NotMemdbError, match="not a memdb data directory"):
        memdb.Reader(tmp_path / "empty")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "snapshot.memdb").write_bytes(b"not a snapshot at all" * 10)
    with pytest.raises(memdb.CorruptError):
        memdb.Reader(corrupt)
    early = tmp_path / "early"
    early.mkdir()
    (early / "history.json").write_text("{}")
    r = memdb.Reader(early, follow=False)
    with pytest.raises(memdb.NotReadyError):
        r.count("a")
    assert r.seq == 0 and r.incarnation is None
    leader.post("fine")
    r = memdb.Reader(leader.data_dir)
    for bad in ["", "two words", "!!!"]:
        with pytest.raises(memdb.WordError):
            r.count(bad)
    with pytest.raises(TypeError):
        r.count(7)
    assert issubclass(memdb.WordError, memdb.MemdbError)
    assert issubclass(memdb.MemdbError, Exception)
