"""Schedules as pure functions of the global training step."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Ramp:
    """``start`` until step ``begin``, then linear to ``end`` over ``length`` steps, then ``end``. Steps may be
    fractional (epochs), so every ε/κ ramp of the library is one of these.

    Unlike some published IBP code (whose last ramp epoch trains at E/(E+1)·ε), the ramp reaches ``end``
    exactly at step ``begin + length``.
    """

    start: float
    end: float
    begin: float = 0
    length: float = 0

    def __call__(self, step: float) -> float:
        if step < self.begin:
            return self.start
        if self.length <= 0 or step >= self.begin + self.length:
            return self.end
        t = (step - self.begin) / self.length
        return self.start + t * (self.end - self.start)
