"""The toy verifiable task: sort the letters of a prompt.

Prompt `<bos>dbca=`, expected completion `abcd<eos>`. Lengths vary per prompt (3..7 letters), so
prompt and completion lengths change from step to step, as they must to expose recompiles.
Reward = correctness (fraction of positions right, in [0, 1]) + format (0.5 when the completion is
letters only, as many as the prompt has, and ends with <eos>: a short answer earns no format credit,
so GRPO cannot collapse onto one-letter answers).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from tokenizers import Regex

from titan_conformance.errors import ConformanceError
from titan_conformance.protocol.records import Reward

LETTERS = "abcdefghijkl"
SPECIALS = ("<pad>", "<bos>", "<eos>")
FORMAT_REWARD = 0.5
VOCAB_SIZE = len(SPECIALS) + 1 + len(LETTERS)


def build_tokenizer() -> Tokenizer:
    """Character-level tokenizer over the task's alphabet (deterministic ids)."""
    vocab = {tok: i for i, tok in enumerate([*SPECIALS, "=", *LETTERS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(list(SPECIALS))
    return tok


class TaskTokenizer:
    """The task's view of a `tokenizers` tokenizer (tokenizer.json)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tok = tokenizer
        ids = {s: tokenizer.token_to_id(s) for s in (*SPECIALS, "=")}
        missing = [s for s, i in ids.items() if i is None]
        if missing:
            raise ConformanceError(
                f"The tokenizer lacks the task's tokens {missing}; use the fixture's tokenizer.json "
                "(python -m titan_conformance.fixtures.make_tiny rebuilds it)."
            )
        self.pad_id, self.bos_id, self.eos_id = ids["<pad>"], ids["<bos>"], ids["<eos>"]
        self.letter_ids = {tokenizer.token_to_id(c) for c in LETTERS}

    @classmethod
    def from_file(cls, path: str | Path) -> "TaskTokenizer":
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as e:  # tokenizers raises a bare Exception on a bad file
            raise ConformanceError(f"{path} is not a readable tokenizer.json ({e}).") from None

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)


@dataclass(frozen=True)
class Problem:
    letters: str
    prompt_ids: list[int]

    @property
    def answer(self) -> str:
        return "".join(sorted(self.letters))


class SortLettersTask:
    def __init__(self, tokenizer: TaskTokenizer, min_len: int = 3, max_len: int = 7) -> None:
        self.tokenizer, self.min_len, self.max_len = tokenizer, min_len, max_len

    def problem(self, letters: str) -> Problem:
        return Problem(letters, [self.tokenizer.bos_id, *self.tokenizer.encode(letters + "=")])

    def sample(self, rng: random.Random, count: int) -> list[Problem]:
        return [
            self.problem("".join(rng.sample(LETTERS, rng.randint(self.min_len, self.max_len))))
            for _ in range(count)
        ]

    def validation_set(self, size: int, seed: int = 1234) -> list[Problem]:
        """A fixed set, disjoint in seed from training draws."""
        return self.sample(random.Random(f"validation-{seed}"), size)

    @property
    def demonstration_width(self) -> int:
        """The longest demonstration: <bos>, max_len letters, '=', them sorted, <eos>."""
        return 2 * self.max_len + 3

    def demonstration(self, problem: Problem) -> list[int]:
        """Prompt + the correct completion (for the fixture's supervised warm-up)."""
        return [*problem.prompt_ids, *self.tokenizer.encode(problem.answer), self.tokenizer.eos_id]

    def reward(self, problem: Problem, completion_ids: list[int]) -> Reward:
        ended = bool(completion_ids) and completion_ids[-1] == self.tokenizer.eos_id
        body = completion_ids[:-1] if ended else completion_ids
        text, target = self.tokenizer.decode(body), problem.answer
        well_formed = ended and len(body) == len(target) and all(t in self.tokenizer.letter_ids for t in body)
        hits = sum(a == b for a, b in zip(text, target))
        return Reward(hits / max(len(text), len(target)), FORMAT_REWARD if well_formed else 0.0)
