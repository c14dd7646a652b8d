"""When an image prompt is active: `start_at`/`end_at` as fractions of the denoising, turned into sigmas the way
ComfyUI's ControlNet does (`model_sampling.percent_to_sigma`; active while sigma_end <= sigma <= sigma_start)."""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SigmaRange:
    start: float  # the largest sigma at which the prompt acts (from start_at)
    end: float  # the smallest (from end_at)
    always: bool  # start_at = 0 and end_at = 1: no gate at all

    def gate(self, sigmas: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
        """1 inside the range, 0 outside, as a device scalar; None when the range covers every step."""
        if self.always:
            return None
        sigma = sigmas.reshape(-1)[0]
        return ((sigma <= self.start) & (sigma >= self.end)).to(dtype)


def sigma_range(percent_to_sigma, *, start_at: float, end_at: float) -> SigmaRange:
    return SigmaRange(
        start=float(percent_to_sigma(start_at)),
        end=float(percent_to_sigma(end_at)),
        always=start_at <= 0.0 and end_at >= 1.0,
    )
