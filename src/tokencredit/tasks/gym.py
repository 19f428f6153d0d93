"""`reasoning_gym:<name>`: any reasoning-gym dataset as a `Task`, scored by the dataset's own verifier.

reasoning-gym datasets are procedural and indexable: item `i` of `create_dataset(name, seed, size)` is a
pure function of `(seed, i)`, so an example keeps only its index and the verifier regenerates the item.
"""

from __future__ import annotations

import random
from typing import Any

from tokencredit.tasks.base import Example, Task, extract_answer, format_answer

DEFAULT_INSTRUCTION = "End with a final line: answer: <your answer>"


def reasoning_gym_names() -> list[str]:
    """Names of the datasets the installed reasoning-gym registers."""
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


class ReasoningGymTask(Task):
    """Examples from `reasoning_gym.create_dataset(dataset, seed=seed, size=size, **config)`.

    The prompt is the item's question, a newline and `instruction`. There are no demonstrations unless
    `answer_demonstrations=True`, which gives the bare final line `answer: <answer>` (cheap, no working).
    """

    def __init__(
        self,
        dataset: str,
        *,
        seed: int = 0,
        size: int = 100_000,
        instruction: str = DEFAULT_INSTRUCTION,
        answer_demonstrations: bool = False,
        **config: Any,
    ) -> None:
        import reasoning_gym

        if dataset not in reasoning_gym_names():
            known = ", ".join(reasoning_gym_names())
            raise ValueError(f"reasoning_gym: unknown dataset {dataset!r}; known: {known}")
        try:
            self._dataset = reasoning_gym.create_dataset(dataset, seed=seed, size=size, **config)
        except (TypeError, ValueError, AssertionError) as err:
            raise ValueError(f"reasoning_gym:{dataset}: invalid options {config!r} ({err})") from err
        self.name = f"reasoning_gym:{dataset}"
        self.dataset = dataset
        self.instruction = instruction
        self.answer_demonstrations = answer_demonstrations

    def item(self, index: int) -> dict[str, Any]:
        """The raw reasoning-gym entry (question, answer, metadata) at `index`."""
        return self._dataset[index]

    def sample(self, rng: random.Random) -> Example:
        index = rng.randrange(len(self._dataset))
        entry = self.item(index)
        answer = str(entry["answer"])
        prompt = entry["question"] + ("\n" + self.instruction if self.instruction else "")
        demonstration = format_answer(answer) if self.answer_demonstrations else None
        return Example(prompt=prompt, answer=answer, demonstration=demonstration, source_index=index)

    def score(self, response: str, example: Example) -> float:
        """The dataset's `score_answer` on the extracted final answer (may give partial credit)."""
        if example.source_index is not None:
            entry = self.item(example.source_index)
        else:  # an Example built by hand: the dataset's verifier gets what we know
            entry = {"question": example.prompt, "answer": example.answer, "metadata": {}}
        return float(self._dataset.score_answer(answer=extract_answer(response), entry=entry))
