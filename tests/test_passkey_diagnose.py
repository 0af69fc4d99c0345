"""examples/passkey/diagnose.py --boundary: the breakdown of answers that cross a segment boundary.

Run against fake models whose behaviour at the boundary is known by construction, so the counts can
be worked out without the code under test: an oracle (always right), and one that, at the new
segment's first position, answers the digit after the FIRST occurrence of its input digit in the
passkey (right when that occurrence is the one being read, wrong otherwise, and then wrong in
exactly the way the breakdown's last figure counts).
"""
from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: `examples.passkey`

torch = pytest.importorskip("torch")
from examples.passkey.diagnose import boundary_breakdown  # noqa: E402
from infini_attention.export.passkey import data  # noqa: E402

N, LENGTH, SAMPLES = 32, 256, 200


class _Fake:
    """Teacher-forced next-token oracle, optionally wrong at the first position of the answer's new segment."""

    def __init__(self, first_occurrence: bool):
        self.config = SimpleNamespace(attn=SimpleNamespace(segment_len=N))
        self.first_occurrence = first_occurrence

    def __call__(self, tokens):
        tokens = tokens.numpy()
        nxt = np.concatenate([tokens[:, 1:], tokens[:, -1:]], axis=1)  # the oracle: the next input token
        if self.first_occurrence:
            start = tokens.shape[1] - data.N_DIGITS  # the answer's first token
            at = -(-start // N) * N  # the first position of the segment after the question's
            keys = tokens[:, start:]
            for b in range(len(tokens)):
                first = int(np.flatnonzero(keys[b] == tokens[b, at])[0])  # its input digit, first occurrence
                nxt[b, at] = keys[b, first + 1]
        return torch.nn.functional.one_hot(torch.from_numpy(nxt), 64).float(), None


def _passkeys(offset):
    """The passkeys boundary_breakdown draws (same seed rule) and the index of the boundary digit's input."""
    rng = np.random.default_rng([5, offset])
    _, _, _, docs = data.training_batch(rng, SAMPLES, data.prompt_length(LENGTH, N, offset), np.full(SAMPLES, 0.5))
    return np.stack([d.answer for d in docs]), N - offset - 1


@pytest.mark.parametrize("offset", [28, 31])
def test_an_oracle_is_right_everywhere(offset):
    r = boundary_breakdown(_Fake(False), offset, LENGTH, SAMPLES)
    keys, i = _passkeys(offset)
    n_rep = sum(int(np.sum(k == k[i]) > 1) for k in keys)
    assert r["digit"] == i + 2 and r["all_digits"] == 1.0 and r["digit_acc"] == 1.0
    assert r["repeated"] == (n_rep, n_rep) and r["unique"] == (SAMPLES - n_rep, SAMPLES - n_rep)
    assert r["other_occurrence"] == (0, 0)
    assert 0 < n_rep < SAMPLES  # both kinds occur in the draw


@pytest.mark.parametrize("offset", [29, 30])  # at 31 the input digit is the first: no earlier occurrence
def test_reading_the_first_occurrence_is_counted_as_the_other_occurrence(offset):
    r = boundary_breakdown(_Fake(True), offset, LENGTH, SAMPLES)
    keys, i = _passkeys(offset)
    repeated = [int(np.sum(k == k[i]) > 1) for k in keys]
    # wrong exactly when the input digit occurred earlier in the passkey and its successor there differs
    wrong = [int(np.flatnonzero(k == k[i])[0] < i and k[np.flatnonzero(k == k[i])[0] + 1] != k[i + 1]) for k in keys]
    assert sum(wrong) > 0
    assert r["repeated"] == (sum(repeated) - sum(wrong), sum(repeated))
    assert r["unique"] == (SAMPLES - sum(repeated), SAMPLES - sum(repeated))
    assert r["other_occurrence"] == (sum(wrong), sum(wrong))
    assert r["digit_acc"] == pytest.approx(1 - sum(wrong) / SAMPLES)
