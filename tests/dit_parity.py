"""What the DiT parity tests (Flux, SD3) share: the tolerance check against diffusers, ComfyUI's sampler run for
one Euler step to σ = 0 under CFG, and another pack's dit block patch."""

import torch

RELATIVE_TOLERANCE = 2e-5  # fp32: |Δ| <= 2e-5 · max|IP term| (the change the adapter makes)
CFG = 2.0
START_SIGMA = 0.6


def check_parity(errors: list, case: str, ours, theirs, plain) -> None:
    """Record |Δ| / max|IP term| in `errors` (the test module's PARITY_ERRORS) and assert it is within tolerance."""
    error = (ours - theirs).abs().max().item()
    ip_term = (theirs - plain).abs().max().item()
    errors.append((case, error / ip_term))
    assert ip_term > 1e-3, "the image prompt must change the output"
    assert error <= RELATIVE_TOLERANCE * ip_term, f"{case}: |Δ| = {error}, IP term {ip_term}"


class OneStepSampling:
    """ComfyUI's sampler (sample_custom, one Euler step from σ = 0.6 to 0, which lands on the denoised prediction;
    cfg 2: the batch of cond and uncond rows that calc_cond_batch builds) from a non-empty latent (ComfyUI leaves
    an empty one unshifted). Text rows [0] positive, [1] negative; pooled likewise."""

    def __init__(self, model, x, text, pooled, generator, *, cfg: float = CFG):
        self.cfg = cfg  # at cfg 1 ComfyUI runs the cond rows only
        self.noise = x[:1]
        self.conditioning = [[text[:1], {"pooled_output": pooled[:1]}]]
        self.negative_conditioning = [[text[1:], {"pooled_output": pooled[1:]}]]
        self.latent_format = model.model.latent_format
        self.start = torch.randn(self.noise.shape, generator=generator)

    def denoised(self, patcher) -> torch.Tensor:
        import comfy.sample
        import comfy.samplers

        sampler = comfy.samplers.ksampler("euler")
        out = comfy.sample.sample_custom(
            patcher, self.noise, self.cfg, sampler, torch.tensor([START_SIGMA, 0.0]), self.conditioning,
            self.negative_conditioning, self.start, disable_pbar=True, seed=0,
        )  # fmt: skip
        return self.latent_format.process_in(out)  # back to the model's space: the denoised prediction

    def model_input(self) -> torch.Tensor:
        """The sampler's noised start at σ = 0.6, for the reference: `[2, C, H, W]` (cond row, uncond row)."""
        x_in = START_SIGMA * self.noise + (1 - START_SIGMA) * self.latent_format.process_in(self.start)
        return x_in.expand(2, -1, -1, -1)

    def guided(self, both: torch.Tensor) -> torch.Tensor:
        """uncond + cfg · (cond − uncond) of the reference's rows [cond, uncond]."""
        return both[1:] + self.cfg * (both[:1] - both[1:])


def halving_block_patch(calls: list):
    """Another pack's dit block patch: it calls the block it is given and halves the image stream."""

    def foreign(args, extra):
        calls.append(1)
        out = extra["original_block"](args)
        return {**out, "img": out["img"] * 0.5}

    return foreign
