import pytest

from tokencredit.tasks import BUILTIN_TASKS, ChainSum, make_task, task_names


def test_default_is_chain_sum():
    assert isinstance(make_task(), ChainSum)


@pytest.mark.parametrize("name", ["chain_sum", "digit_sort", "base_convert"])
def test_builtin_names(name):
    task = make_task(name)
    assert task.name == name and name in BUILTIN_TASKS


def test_options_are_passed():
    assert make_task("chain_sum", mistake_rate=0.0).mistake_rate == 0.0


def test_unknown_name_lists_known_ones():
    with pytest.raises(ValueError, match=r"chain_sum.*digit_sort.*base_convert.*reasoning_gym:.*jsonl:"):
        make_task("nope")
    assert "jsonl:<path>" in task_names()


def test_unknown_option_is_a_value_error():
    with pytest.raises(ValueError, match="chain_sum: invalid options"):
        make_task("chain_sum", bogus=1)
