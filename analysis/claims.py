"""One row of the claims report: a claim of the paper, checked against our numbers."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Claim:
    claim: str          # what the paper says, short
    paper: str          # the paper's number or statement ("81.39%", "roughly equal", "-")
    measured: str       # our number, formatted
    null: str           # the null model's number where one applies, else "-"
    verdict: str        # e.g. "reproduced", "not reproduced", "reproduced, but mostly explained by the null model"
