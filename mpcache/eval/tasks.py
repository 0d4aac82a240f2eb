"""RULER-style synthetic long-context tasks over the Paul Graham essays.

Every sample is a pure function of ``(seed, task, context, index)``: an essay window chosen
by a seeded RNG, needles inserted at sentence boundaries at a swept depth, the question in
the user turn of the SmolLM2 chat template, and an answer PREFIX opening the assistant turn
("The special magic number for X mentioned in the provided text is") -- SmolLM2-135M is tiny
and RULER's own harness does the same to keep the format out of the measurement.

Tasks (RULER names in brackets):

* ``niah_single_number`` / ``niah_single_word`` [niah_single_2]: one needle, 7-digit number
  or a word as the value.
* ``niah_multikey`` [niah_multikey_1]: the asked needle among ``multikey`` - 1 distractor
  needles with other keys.
* ``niah_multivalue`` [niah_multivalue]: ``multivalue`` needles share the key; recall of all.
* ``vt`` [variable tracking]: a chain of ``vt_hops`` assignments ``VAR B = VAR A`` from a
  number; recall of all variable names holding it.
* ``cwe`` [common words extraction]: a numbered word list (no essay) where ``cwe_words``
  words appear far more often than the rest; recall of those words.

Depth: sample ``i`` puts the asked needle (or the first assignment) at ``DEPTHS[i % 5]`` of
the haystack; the heat map in ``mpcache eval plot`` uses it.  Scoring is RULER's
string-match-all: the fraction of expected strings found (case-insensitive) in the answer.
``context`` is the target prompt length in tokens (template included); samples come out at
or slightly under it (whole sentences).
"""
from __future__ import annotations

import re
import zlib
from dataclasses import asdict, dataclass, field

import numpy as np

from .words import ADJECTIVES, NOUNS

__all__ = ["TASKS", "DEPTHS", "TaskConfig", "Sample", "TaskGenerator", "score"]

TASKS = ("niah_single_number", "niah_single_word", "niah_multikey", "niah_multivalue", "vt",
         "cwe")
DEPTHS = (0.1, 0.3, 0.5, 0.7, 0.9)


@dataclass(frozen=True)
class TaskConfig:
    """Difficulty knobs (defaults sized for SmolLM2-135M; RULER's are 4 / 4 / 4 / 10)."""

    multikey: int = 4          # needles in niah_multikey (1 asked + distractors)
    multivalue: int = 2        # values in niah_multivalue
    vt_hops: int = 1           # assignments after the first in vt
    cwe_words: int = 3         # common words to extract
    cwe_share: float = 0.4     # share of list entries that are common words


@dataclass
class Sample:
    id: str
    task: str
    context: int
    index: int
    depth: float | None
    prompt: str
    answers: list
    max_new_tokens: int
    n_tokens: int = 0
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def score(prediction: str, answers) -> float:
    """String-match-all: fraction of ``answers`` contained in ``prediction`` (no case)."""
    pred = prediction.lower()
    return float(np.mean([a.lower() in pred for a in answers])) if answers else 0.0


def _sentences(text: str) -> list:
    parts = re.split(r"(?<=[.!?])\s+", text.strip())
    return [p for p in parts if p]


class TaskGenerator:
    """Builds :class:`Sample` objects.  ``lm`` needs ``encode(str) -> ids``,
    ``decode(ids) -> str`` and ``chat_prompt(messages) -> str`` (the SmolLM2 bundle)."""

    def __init__(self, lm, seed: int = 0, config: TaskConfig | None = None, essays=None):
        self.lm, self.seed = lm, int(seed)
        self.config = config or TaskConfig()
        self._essays = essays
        self._ids = None
        self._tok_cache: dict = {}

    # ---------------------------------------------------------------- corpus
    def haystack_ids(self) -> np.ndarray:
        """All essays (sorted by name) joined by spaces, tokenised once."""
        if self._ids is None:
            if self._essays is None:
                from ..nn.reference import paul_graham_essays

                self._essays = [p.read_text() for p in paul_graham_essays()]
            text = " ".join(" ".join(e.split()) for e in self._essays)
            self._ids = np.asarray(self.lm.encode(text), dtype=np.int64)
        return self._ids

    def _ntok(self, s: str) -> int:
        n = self._tok_cache.get(s)
        if n is None:
            n = self._tok_cache[s] = len(self.lm.encode(s))
        return n

    def _rng(self, task, context, index):
        return np.random.default_rng([self.seed, zlib.crc32(task.encode()), context, index])

    def _window(self, rng, n_tokens: int) -> list:
        """Whole sentences from a random essay window holding about ``n_tokens`` tokens."""
        ids = self.haystack_ids()
        take = n_tokens + 64
        start = int(rng.integers(0, max(1, ids.size - take)))
        sents = _sentences(self.lm.decode(ids[start:start + take]))[1:]   # drop the cut one
        out, total = [], 0
        for s in sents:
            t = self._ntok(" " + s)
            if total + t > n_tokens:
                break
            out.append(s)
            total += t
        return out

    # ---------------------------------------------------------------- values
    @staticmethod
    def _key(rng):
        return f"{ADJECTIVES[rng.integers(len(ADJECTIVES))]}-{NOUNS[rng.integers(len(NOUNS))]}"

    @staticmethod
    def _number(rng):
        return str(int(rng.integers(1_000_000, 10_000_000)))

    @staticmethod
    def _var(rng):
        return "".join(chr(65 + int(c)) for c in rng.integers(0, 26, size=5))

    # ---------------------------------------------------------------- building
    def _fit(self, context, make_prompt, rng, needles):
        """Fill the haystack so the whole prompt is <= ``context`` tokens.

        ``needles``: list of (depth, sentence).  Returns (prompt, n_tokens)."""
        empty = make_prompt(" ".join(s for _, s in needles))
        budget = context - self._ntok(empty) - 4
        hay = self._window(rng, max(0, budget))
        while True:
            sents = list(hay)
            for depth, s in sorted(needles, key=lambda x: -x[0]):
                sents.insert(int(round(depth * len(sents))), s)
            prompt = make_prompt(" ".join(sents))
            n = len(self.lm.encode(prompt))
            if n <= context or not hay:
                return prompt, n
            hay = hay[:-1]

    def _chat(self, body: str, prefix: str) -> str:
        return self.lm.chat_prompt([{"role": "user", "content": body}]) + prefix

    def sample(self, task: str, context: int, index: int) -> Sample:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose from {TASKS}")
        rng = self._rng(task, context, index)
        depth = DEPTHS[index % len(DEPTHS)]
        c = self.config
        if task == "cwe":
            return self._cwe(rng, task, context, index)
        if task == "vt":
            value = str(int(rng.integers(10_000, 100_000)))
            names = []
            while len(names) < c.vt_hops + 1:
                v = self._var(rng)
                if v not in names:
                    names.append(v)
            lines = [f"VAR {names[0]} = {value}."] + [
                f"VAR {names[i]} = VAR {names[i - 1]}." for i in range(1, len(names))]
            depths = [depth] + sorted(rng.uniform(depth, 1.0, size=len(lines) - 1).tolist())
            needles = [(d + 1e-6 * j, s) for j, (d, s) in enumerate(zip(depths, lines))]
            body = ("Memorize and track the chain(s) of variable assignment hidden in the "
                    "following text.\n\n{hay}\nQuestion: Find all variables that are assigned "
                    f"the value {value} in the text above.")
            prefix = (f"According to the chain(s) of variable assignment in the text above, "
                      f"{len(names)} variables are assigned the value {value}, they are: VAR")
            answers, max_new = names, 8 * len(names)
        else:
            key = self._key(rng)
            kind = "word" if task == "niah_single_word" else "number"
            value = NOUNS[rng.integers(len(NOUNS))] if kind == "word" else self._number(rng)
            needle = f"One of the special magic {kind}s for {key} is: {{}}."
            needles, answers = [(depth, needle.format(value))], [value]
            q = f"What is the special magic {kind} for {key} mentioned in the provided text?"
            prefix = f"The special magic {kind} for {key} mentioned in the provided text is"
            max_new = 12 if kind == "number" else 8
            if task == "niah_multikey":
                keys = {key}
                while len(keys) < c.multikey:
                    keys.add(self._key(rng))
                for k in sorted(keys - {key}):
                    needles.append((float(rng.uniform(0, 1)),
                                    f"One of the special magic numbers for {k} is: "
                                    f"{self._number(rng)}."))
            elif task == "niah_multivalue":
                while len(answers) < c.multivalue:
                    v = self._number(rng)
                    if v not in answers:
                        answers.append(v)
                        needles.append((float(rng.uniform(0, 1)), needle.format(v)))
                q = f"What are all the special magic numbers for {key} mentioned in the provided text?"
                prefix = f"The special magic numbers for {key} mentioned in the provided text are"
                max_new = 10 * len(answers) + 2
            body = (f"Some special magic {kind}s are hidden within the following text. Make "
                    f"sure to memorize it. I will quiz you about the {kind}s afterwards.\n"
                    "{hay}\n" + q)
        prompt, n = self._fit(context, lambda h: self._chat(body.replace("{hay}", h), prefix),
                              rng, needles)
        return Sample(f"{task}-{context}-{index}", task, context, index, depth, prompt, answers,
                      max_new, n)

    def _cwe(self, rng, task, context, index) -> Sample:
        c = self.config
        pool = list(ADJECTIVES) + list(NOUNS)
        order = rng.permutation(len(pool))
        common = [pool[i] for i in order[:c.cwe_words]]
        rare = [pool[i] for i in order[c.cwe_words:]]
        body = ("Below is a numbered list of words. In these words, some appear more often than "
                "others. Memorize the ones that appear most often.\n{hay}\nQuestion: What are "
                f"the {c.cwe_words} most common words in the above list?")
        prefix = f"The top {c.cwe_words} words that appear most often in the list are:"
        def build(words):
            hay = " ".join(f"{i + 1}. {w}" for i, w in enumerate(words))
            return self._chat(body.replace("{hay}", hay), prefix)

        base = self._ntok(build([]))
        probe = [pool[i % len(pool)] for i in range(200)]
        per_entry = (self._ntok(build(probe)) - base) / len(probe)   # measured, not guessed
        entries = max(2 * c.cwe_words, int((context - base) / per_entry) + 8)
        freq_c = max(3, int(c.cwe_share * entries / c.cwe_words))
        n_rare = min(len(rare), max(1, (entries - freq_c * c.cwe_words) // 2))
        words = common * freq_c + rare[:n_rare] * 2
        words = [words[i] for i in rng.permutation(len(words))]
        lo, hi = 2 * c.cwe_words, len(words)             # longest prefix that fits
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if len(self.lm.encode(build(words[:mid]))) <= context:
                lo = mid
            else:
                hi = mid - 1
        prompt = build(words[:lo])
        n = len(self.lm.encode(prompt))
        return Sample(f"{task}-{context}-{index}", task, context, index, None, prompt, common,
                      4 * c.cwe_words + 4, n, {"freq_common": freq_c})
