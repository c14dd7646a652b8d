"""When an image prompt is active: `start_at`/`end_at` as fractions of the denoising, turned into sigmas the way
ComfyUI's ControlNet does (`model_sampling.percent_to_sigma`; active while sigma_end <= sigma <= sigma_start).

The decision is taken on a Python float, once per model call (see `guider_sides.py`), so a step outside the range
costs no work and no device sync in the attention layers.
"""

from dataclasses import dataclass

from .errors import IPAdapterError


@dataclass(frozen=True)
class SigmaRange:
    start: float  # the largest sigma at which the prompt acts (from start_at)
    end: float  # the smallest (from end_at)
    always: bool  # start_at = 0 and end_at = 1: every step

    def contains(self, sigma: float | None) -> bool:
        """Whether the prompt acts at `sigma`; None (a call without a sigma) counts as inside."""
        return self.always or sigma is None or self.end <= sigma <= self.start


def model_sigma_range(model, *, start_at: float, end_at: float) -> SigmaRange:
    """`sigma_range` with the sigmas of the ModelPatcher `model`'s sampling."""
    return sigma_range(model.get_model_object("model_sampling").percent_to_sigma, start_at=start_at, end_at=end_at)


def check_step_range(*, start_at: float, end_at: float) -> None:
    if not 0.0 <= start_at <= end_at <= 1.0:
        raise IPAdapterError(f"start_at ({start_at}) and end_at ({end_at}) must satisfy 0 <= start_at <= end_at <= 1.")


def sigma_range(percent_to_sigma, *, start_at: float, end_at: float) -> SigmaRange:
    """The range of `start_at`..`end_at` (fractions of the denoising, 0 <= start_at <= end_at <= 1) in sigmas."""
    check_step_range(start_at=start_at, end_at=end_at)
    return SigmaRange(
        start=float(percent_to_sigma(start_at)),
        end=float(percent_to_sigma(end_at)),
        always=start_at <= 0.0 and end_at >= 1.0,
    )
