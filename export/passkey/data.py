"""Synthetic passkey-retrieval task (the paper's §4.2 / Mohtashami & Jaggi 2023), as token ids.

A document is

    <s> filler ... filler  KEY d1 d2 d3 d4 d5 . KEY d1 d2 d3 d4 d5 .  filler ... QUESTION | d1 d2 d3 d4 d5

- the filler is the paper's text ("the grass is green . the sky is blue . the sun is yellow .
  here we go . there and back again .") repeated, starting at a random phase (or, with
  ``filler="random"``, i.i.d. filler words);
- ``KEY`` stands for "the pass key is", ``QUESTION`` for "what is the pass key ? the pass key
  is"; the passkey is 5 random digits, said twice like the paper's "The pass key is 71432.
  Remember it. 71432 is the pass key." (so one copy always lies whole inside one segment of
  N >= 14 tokens);
- ``depth`` in [0, 1] places the needle: 0 right after ``<s>``, 1 right before the question;
- the *context length* ``length`` counts every prompt token, ``<s>`` and ``QUESTION`` included;
  the 5 answer digits come after it (the model is asked to produce them).

Everything is integer token ids over a 31-word vocabulary; nothing is downloaded. A document
of any length is produced lazily, chunk by chunk (:meth:`PasskeyDoc.chunk`), so a 1M-token
prompt never exists in memory at once.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DIGITS = [str(d) for d in range(10)]
SPECIAL = ["<s>", "KEY", "QUESTION"]
FILLER_TEXT = ("the grass is green . the sky is blue . the sun is yellow . "
               "here we go . there and back again .").split()
FILLER_WORDS = list(dict.fromkeys(FILLER_TEXT))  # unique, in order of first appearance
VOCAB: list[str] = DIGITS + SPECIAL + FILLER_WORDS
TOKEN: dict[str, int] = {w: i for i, w in enumerate(VOCAB)}
VOCAB_SIZE = len(VOCAB)

BOS, KEY, QUESTION, DOT = TOKEN["<s>"], TOKEN["KEY"], TOKEN["QUESTION"], TOKEN["."]
DIGIT_IDS = np.arange(10)
FILLER_IDS = np.array([TOKEN[w] for w in FILLER_WORDS])
FILLER_CYCLE = np.array([TOKEN[w] for w in FILLER_TEXT])  # the repeated sentence, 24 tokens
N_DIGITS = 5
NEEDLE_COPIES = 2
NEEDLE_LEN = NEEDLE_COPIES * (N_DIGITS + 2)  # (KEY d1..d5 .) x 2
MIN_LENGTH = NEEDLE_LEN + 2  # <s> needle QUESTION


def prompt_length(length: int, segment_len: int, question_offset: int | None = 0) -> int:
    """Prompt length for a document of ``length`` tokens whose question sits at ``question_offset``
    of its segment: the document is padded with filler up to a segment boundary, so that with
    offset 0 the question OPENS a segment (the evaluation's layout; the answer then never crosses a
    segment boundary). ``question_offset=None``: no padding, the question is token ``length``."""
    if question_offset is None:
        return length + 1
    if not 0 <= question_offset < segment_len:
        raise ValueError(f"question_offset: expected None or 0 <= offset < {segment_len}, got {question_offset}")
    return -(-length // segment_len) * segment_len + question_offset + 1


def needle_tokens(passkey: np.ndarray) -> np.ndarray:
    """KEY d1 .. d5 . KEY d1 .. d5 ."""
    return np.tile(np.concatenate([[KEY], passkey, [DOT]]), NEEDLE_COPIES).astype(np.int64)


def needle_start(length: int, depth: float) -> int:
    """Position of the KEY token in a prompt of ``length`` tokens (0 is ``<s>``)."""
    if length < MIN_LENGTH:
        raise ValueError(f"length: expected >= {MIN_LENGTH}, got {length}")
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth: expected a number in [0, 1], got {depth}")
    room = length - MIN_LENGTH  # filler tokens
    return 1 + int(round(depth * room))


@dataclass(frozen=True)
class PasskeyDoc:
    """One prompt, generated lazily. ``tokens[0:length]`` is the prompt; ``answer`` the 5 digits.

    ``phase`` is the offset into the filler cycle (repeat mode) or the seed of the filler
    stream (random mode): filler token j (j-th filler token of the document) is
    ``FILLER_CYCLE[(phase + j) % 24]`` or a hash-seeded random filler word.
    """

    length: int
    depth: float
    passkey: tuple[int, ...]
    phase: int = 0
    filler: str = "repeat"

    def __post_init__(self):
        if self.filler not in ("repeat", "random"):
            raise ValueError(f"filler: expected 'repeat' or 'random', got {self.filler!r}")
        if len(self.passkey) != N_DIGITS or not all(0 <= int(d) <= 9 for d in self.passkey):
            raise ValueError(f"passkey: expected {N_DIGITS} digits, got {self.passkey!r}")
        needle_start(self.length, self.depth)  # validates

    @property
    def key_pos(self) -> int:
        """Index of the first KEY token; its digits are at key_pos+1 .. key_pos+5."""
        return needle_start(self.length, self.depth)

    @property
    def question_pos(self) -> int:
        return self.length - 1

    @property
    def distance(self) -> int:
        """Tokens from the needle's last token to the question (how long it must be remembered)."""
        return self.question_pos - (self.key_pos + NEEDLE_LEN - 1)

    @property
    def answer(self) -> np.ndarray:
        return np.asarray(self.passkey, dtype=np.int64)

    def _filler(self, j0: int, j1: int) -> np.ndarray:
        j = np.arange(j0, j1, dtype=np.int64)
        if self.filler == "repeat":
            return FILLER_CYCLE[(self.phase + j) % len(FILLER_CYCLE)]
        # a counter-based hash (splitmix64): the same word for filler index j however it is chunked
        with np.errstate(over="ignore"):
            h = j.astype(np.uint64) + np.uint64(self.phase) * np.uint64(0x9E3779B97F4A7C15)
            h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            h = h ^ (h >> np.uint64(31))
        return FILLER_IDS[(h % np.uint64(len(FILLER_IDS))).astype(np.int64)]

    def chunk(self, start: int, stop: int) -> np.ndarray:
        """Prompt tokens ``start .. stop-1`` (int64); ``stop`` is clipped to ``length``."""
        stop = min(stop, self.length)
        if start >= stop:
            return np.zeros(0, dtype=np.int64)
        out = np.empty(stop - start, dtype=np.int64)
        kp = self.key_pos
        pos = np.arange(start, stop)
        # filler index of a prompt position: positions before the needle are 1.., after it shift
        fill = (pos >= 1) & (pos < self.question_pos) & ((pos < kp) | (pos >= kp + NEEDLE_LEN))
        if fill.any():
            fidx = np.where(pos < kp, pos - 1, pos - 1 - NEEDLE_LEN)[fill]
            out[fill] = self._filler(int(fidx.min()), int(fidx.max()) + 1)[fidx - fidx.min()]
        needle = needle_tokens(self.answer)
        for i, p in enumerate(range(kp, kp + NEEDLE_LEN)):
            if start <= p < stop:
                out[p - start] = needle[i]
        if start == 0:
            out[0] = BOS
        if start <= self.question_pos < stop:
            out[self.question_pos - start] = QUESTION
        return out

    def prompt(self) -> np.ndarray:
        """The whole prompt (only for short documents)."""
        return self.chunk(0, self.length)


def random_passkey(rng: np.random.Generator) -> tuple[int, ...]:
    return tuple(int(d) for d in rng.integers(0, 10, size=N_DIGITS))


def make_docs(rng: np.random.Generator, n: int, length: int, depth: float, filler: str = "repeat"):
    """``n`` documents of one length and depth with random passkeys and filler phases."""
    return [PasskeyDoc(length, float(depth), random_passkey(rng), int(rng.integers(0, 2**31 - 1)), filler)
            for _ in range(n)]


def training_batch(rng: np.random.Generator, batch: int, length: int, depths: np.ndarray | None = None,
                   filler: str = "repeat"):
    """Teacher-forced batch: ``tokens (B, length + 5)`` = prompt + answer; the targets of
    positions ``length-1 .. length+3`` are the 5 answer digits (``answer_mask`` marks them).

    Returns (tokens, targets, answer_mask, docs); ``targets[:, t]`` is ``tokens[:, t+1]``
    (next-token), with the last column unused.
    """
    if depths is None:
        depths = rng.random(batch)
    docs = [PasskeyDoc(length, float(d), random_passkey(rng), int(rng.integers(0, 2**31 - 1)), filler)
            for d in depths]
    tokens = np.stack([np.concatenate([d.prompt(), d.answer]) for d in docs])  # (B, length + 5)
    targets = np.concatenate([tokens[:, 1:], np.zeros((batch, 1), dtype=np.int64)], axis=1)
    mask = np.zeros_like(tokens, dtype=bool)
    mask[:, length - 1:length - 1 + N_DIGITS] = True
    return tokens, targets, mask, docs


def lm_mask(docs, answer_mask: np.ndarray) -> np.ndarray:
    """Positions whose next token is predictable: everything but the answer, the last column and
    the first copy of the passkey (random digits); the second copy is predictable from the first."""
    mask = ~answer_mask.copy()
    mask[:, -1] = False
    for row, d in enumerate(docs):
        mask[row, d.key_pos:d.key_pos + N_DIGITS] = False  # targets key_pos+1 .. key_pos+5
    return mask


def decode(ids) -> str:
    """Token ids -> readable text (digits of a run are joined)."""
    out, prev_digit = [], False
    for i in np.asarray(ids).tolist():
        w = VOCAB[i]
        is_digit = w.isdigit()
        if is_digit and prev_digit:
            out[-1] += w
        else:
            out.append(w)
        prev_digit = is_digit
    return " ".join(out)
