import contextlib
import math
import signal
import threading
import time

import pytest
import torch

from tokencredit.rewards import FAILURE_REASONS, VerifierTimeout, math_match, safe_score, timeouts_available
from tokencredit.rewards.verifiers import warm_up_math_verify
from tokencredit.tasks import Example, Task, examples, make_task

EX = Example("p", "1")


class ScriptedTask(Task):
    """`score` does what the response says: a number, raise, sleep, nan, swallow-everything sleep."""

    name = "scripted"

    def sample(self, rng):
        return EX

    def score(self, response, example):
        if response == "raise":
            raise RuntimeError("verifier bug")
        if response == "sleep":
            time.sleep(5)
        if response == "busy":  # pure-Python loop that catches Exception, like many verifiers do
            while True:
                with contextlib.suppress(Exception):
                    sum(range(1000))
        if response == "nan":
            return math.nan
        if response == "text":
            return "not a number"
        if response == "math_then_sleep":  # math-verify's own alarm must not disarm ours
            assert math_match("0.5", "1/2") == 1.0
            time.sleep(5)
        return float(response)


def test_rewards_and_failure_counts():
    responses = ["1", "0", "raise", "0.5", "nan", "text", "sleep", "busy"]
    start = time.monotonic()
    rewards, failures = safe_score(ScriptedTask(), responses, [EX] * len(responses), timeout_s=0.2)
    assert time.monotonic() - start < 2.0
    assert rewards.dtype == torch.float32 and rewards.shape == (8,)
    assert rewards.tolist() == [1.0, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0]
    assert failures == {"exception": 3, "timeout": 2}
    assert set(failures) == set(FAILURE_REASONS)


def test_timeout_after_math_verify_call():
    warm_up_math_verify()  # as a task's constructor would
    rewards, failures = safe_score(ScriptedTask(), ["math_then_sleep"], [EX], timeout_s=0.3)
    assert failures["timeout"] == 1 and rewards.tolist() == [0.0]


def test_previous_handler_and_timer_restored():
    fired = []
    previous = signal.signal(signal.SIGALRM, lambda *_: fired.append(1))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.6)
        safe_score(ScriptedTask(), ["1", "sleep"], [EX, EX], timeout_s=0.1)
        assert signal.getsignal(signal.SIGALRM) is not previous  # ours is the lambda, still installed
        assert 0 < signal.getitimer(signal.ITIMER_REAL)[0] <= 0.6  # the outer timer keeps running
        time.sleep(0.8)
        assert fired == [1]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_no_timer_left_behind():
    safe_score(ScriptedTask(), ["1", "raise"], [EX, EX], timeout_s=1.0)
    assert signal.getitimer(signal.ITIMER_REAL)[0] == 0
    assert signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, signal.SIG_IGN, None) or callable(
        signal.getsignal(signal.SIGALRM)
    )


def test_worker_thread_scores_without_timeout():
    out = {}

    def work():
        out["available"] = timeouts_available()
        out["result"] = safe_score(ScriptedTask(), ["1", "raise"], [EX, EX], timeout_s=0.1)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert out["available"] is False
    rewards, failures = out["result"]
    assert rewards.tolist() == [1.0, 0.0] and failures == {"exception": 1, "timeout": 0}


def test_timeout_disabled():
    rewards, failures = safe_score(ScriptedTask(), ["1"], [EX], timeout_s=0)
    assert rewards.tolist() == [1.0] and failures == {"exception": 0, "timeout": 0}


def test_length_mismatch_and_empty():
    with pytest.raises(ValueError, match="responses"):
        safe_score(ScriptedTask(), ["1"], [EX, EX])
    rewards, failures = safe_score(ScriptedTask(), [], [])
    assert rewards.shape == (0,) and failures == {"exception": 0, "timeout": 0}


def test_timeout_is_not_an_exception():
    assert not issubclass(VerifierTimeout, Exception)


def test_real_tasks(tmp_path):
    task = make_task("chain_sum", mistake_rate=0.0)
    batch = examples(task, 8, seed=0)
    rewards, failures = safe_score(task, [e.demonstration for e in batch], batch)
    assert rewards.tolist() == [1.0] * 8 and failures == {"exception": 0, "timeout": 0}
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "half?", "answer": "1/2"}\n')
    jsonl = make_task(f"jsonl:{path}")
    ex = jsonl.records[0]
    rewards, _ = safe_score(jsonl, ["answer: 0.5", "answer: \\frac{1}{3}", "((("], [ex] * 3)
    assert rewards.tolist() == [1.0, 0.0, 0.0]
