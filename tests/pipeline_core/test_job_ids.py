"""Job ids: only the exact spelling the API issued passes the signature check; every forged variant fails."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline_core.jobs import JOB_ID_LENGTH, is_issued_job_id, new_job_id

SECRET = b"tests-job-id-secret"
IN_CI = bool(os.environ.get("CI"))
# Ids that hold `-` and `_`, the two characters another base64 alphabet spells `+` and `/`.
REAL_IDS = [i for i in (new_job_id(SECRET) for _ in range(400)) if "-" in i and "_" in i][:20]


def test_issued_ids_pass_and_other_secrets_fail() -> None:
    for job_id in REAL_IDS:
        assert len(job_id) == JOB_ID_LENGTH
        assert is_issued_job_id(job_id, SECRET)
        assert not is_issued_job_id(job_id, b"another secret")


def test_the_standard_base64_alphabet_is_refused() -> None:
    for job_id in REAL_IDS:
        assert not is_issued_job_id(job_id.replace("-", "+"), SECRET), job_id
        assert not is_issued_job_id(job_id.replace("_", "/"), SECRET), job_id


LOOKALIKES = {"A": "\uff21", "0": "\u0660", "a": "\u0430", "-": "\u2010", "_": "\uff3f", "1": "\U0001d7cf"}


@st.composite
def forged(draw: st.DrawFn) -> tuple[str, str]:
    """A real id, and a variant of it: a case flip, another alphabet, padding, whitespace, a look-alike."""
    job_id = draw(st.sampled_from(REAL_IDS))
    at = draw(st.integers(0, JOB_ID_LENGTH - 1))
    kind = draw(
        st.sampled_from(["case", "alphabet", "padding", "whitespace", "lookalike", "cut", "extend", "inner"])
    )
    if kind == "case":
        letters = [i for i, c in enumerate(job_id) if c.isalpha()]
        at = letters[at % len(letters)]
        variant = job_id[:at] + job_id[at].swapcase() + job_id[at + 1 :]
    elif kind == "alphabet":
        variant = job_id.replace(draw(st.sampled_from(["-", "_"])), draw(st.sampled_from(["+", "/"])))
    elif kind == "padding":
        variant = job_id + draw(st.sampled_from(["=", "==", "===", "%3D"]))
    elif kind == "whitespace":
        space = draw(st.sampled_from([" ", "\t", "\n", "\r\n", "\x00", "\u00a0", "\u200b", "\ufeff"]))
        variant = draw(st.sampled_from([space + job_id, job_id + space, job_id[:-1] + space]))
    elif kind == "lookalike":
        candidates = [i for i, c in enumerate(job_id) if c in LOOKALIKES] or [0]
        at = candidates[at % len(candidates)]
        variant = job_id[:at] + LOOKALIKES.get(job_id[at], "\uff21") + job_id[at + 1 :]
    elif kind == "cut":
        variant = job_id[: draw(st.integers(0, JOB_ID_LENGTH - 1))]
    elif kind == "extend":
        variant = job_id + draw(st.text(min_size=1, max_size=8))
    else:
        variant = job_id[:at] + draw(st.characters()) + job_id[at + 1 :]
    return job_id, variant


@settings(max_examples=400, derandomize=IN_CI, deadline=None)
@given(pair=forged())
def test_no_forged_variant_of_a_real_id_passes(pair: tuple[str, str]) -> None:
    job_id, variant = pair
    assert is_issued_job_id(variant, SECRET) == (variant == job_id), (job_id, variant)


@settings(max_examples=300, derandomize=IN_CI, deadline=None)
@given(text=st.text(max_size=64) | st.from_regex(r"[A-Za-z0-9_+/=-]{30,34}", fullmatch=True))
def test_made_up_ids_never_pass(text: str) -> None:
    assert not is_issued_job_id(text, SECRET)
