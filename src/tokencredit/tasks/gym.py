"""`reasoning_gym:<name>`: any reasoning-gym dataset as a `Task`, scored by the dataset's own verifier.

reasoning-gym datasets are procedural and indexable: item `i` of `create_dataset(name, seed, size)` is a
pure function of `(seed, i)`, so an example keeps only its index and the verifier regenerates the item.
Training samples items `0 … size−1`; the held-out set is items `size … size+held_out−1` (never sampled).
"""

from __future__ import annotations

import random
import warnings
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
        held_out: int = 1000,
        **config: Any,
    ) -> None:
        import reasoning_gym

        if dataset not in reasoning_gym_names():
            known = ", ".join(reasoning_gym_names())
            raise ValueError(f"reasoning_gym: unknown dataset {dataset!r}; known: {known}")
        if isinstance(held_out, bool) or not isinstance(held_out, int) or held_out < 0:
            raise ValueError(f"reasoning_gym:{dataset}: held_out: expected a count of items >= 0, got {held_out!r}")
        try:
            self._dataset = reasoning_gym.create_dataset(dataset, seed=seed, size=size, **config)
        except (TypeError, ValueError, AssertionError) as err:
            raise ValueError(f"reasoning_gym:{dataset}: invalid options {config!r} ({err})") from err
        self._create = lambda n: reasoning_gym.create_dataset(dataset, seed=seed, size=n, **config)
        self._held_out_dataset = None  # items size … size+held_out−1, made when first needed
        self.size = len(self._dataset)
        self.held_out_size = held_out
        self.name = f"reasoning_gym:{dataset}"
        self.dataset = dataset
        self.instruction = instruction
        self.answer_demonstrations = answer_demonstrations

    def item(self, index: int) -> dict[str, Any]:
        """The raw reasoning-gym entry (question, answer, metadata) at `index` (a held-out one from `size` on)."""
        if index < self.size:
            return self._dataset[index]
        if self._held_out_dataset is None:
            self._held_out_dataset = self._create(self.size + self.held_out_size)
        return self._held_out_dataset[index]

    def held_out(self, n: int, seed: int) -> list[Example]:
        """Items `size … size+min(n, held_out)−1` of the dataset: never sampled for training (`seed` unused)."""
        if self.held_out_size == 0:
            warnings.warn(f"{self.name}: task_params.held_out=0, so there is no held-out set; evaluating on "
                          "training items", stacklevel=2)
            return super().held_out(n, seed)
        return [self._example(self.size + i) for i in range(min(n, self.held_out_size))]

    def sample(self, rng: random.Random) -> Example:
        return self._example(rng.randrange(self.size))

    def _example(self, index: int) -> Example:
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
