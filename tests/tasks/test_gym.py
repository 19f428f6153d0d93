import random

import pytest

from tokencredit.tasks import Example, examples, make_task
from tokencredit.tasks.gym import reasoning_gym_names


@pytest.fixture(scope="module")
def task():
    return make_task("reasoning_gym:basic_arithmetic", seed=1, size=1000)


def test_names_available_offline():
    assert {"basic_arithmetic", "chain_sum"} <= set(reasoning_gym_names())


def test_sample_and_score(task):
    ex = task.sample(random.Random(0))
    assert task.name == "reasoning_gym:basic_arithmetic"
    assert ex.prompt.endswith("answer: <your answer>") and ex.demonstration is None
    assert ex.source_index is not None and task.item(ex.source_index)["answer"] == ex.answer
    assert task.score(f"working\nanswer: {ex.answer}", ex) == 1.0
    assert task.score("answer: not a number", ex) == 0.0
    assert task.score("", ex) == 0.0


def test_deterministic(task):
    assert examples(task, 10, seed=5) == examples(task, 10, seed=5)
    again = make_task("reasoning_gym:basic_arithmetic", seed=1, size=1000)
    assert examples(again, 10, seed=5) == examples(task, 10, seed=5)


def test_hand_built_example_is_scored_without_index(task):
    ex = Example("What is 2+2?", "4")
    assert task.score("answer: 4", ex) == 1.0


def test_answer_demonstrations_and_config():
    task = make_task("reasoning_gym:chain_sum", size=50, answer_demonstrations=True, min_terms=2, max_terms=2)
    ex = task.sample(random.Random(0))
    assert ex.demonstration == f"answer: {ex.answer}"
    assert task.score(ex.demonstration, ex) == 1.0


def test_unknown_dataset_and_bad_option():
    with pytest.raises(ValueError, match=r"unknown dataset 'nope'.*basic_arithmetic"):
        make_task("reasoning_gym:nope")
    with pytest.raises(ValueError, match="invalid options"):
        make_task("reasoning_gym:chain_sum", bogus=1)
