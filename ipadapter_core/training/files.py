"""The trained adapter on disk: the official format, and the training state beside it.

- `<name>.safetensors`: exactly the official flat format (`image_proj.*`, `ip_adapter.N.to_{k,v}_ip.weight`), no
  extra keys or metadata, in the dtype of the adapter training started from (fp16, as official files, for a new
  one). Every reader (Load IPAdapter, the Unified Loader, diffusers' `load_ip_adapter`) reads it unchanged, and a
  fine-tune of 0 steps writes back the tensors it started from, bit for bit.
- `<name>.safetensors.training` (a suffix no model folder lists): what resuming needs and the official format has no
  place for: the fp32 weights the optimiser updates (`weights.*`), AdamW's moments and step per weight
  (`optimizer.exp_avg.*`, `optimizer.exp_avg_sq.*`, `optimizer.step.*`), and in its metadata the steps done.
  Training again from the saved file continues from this state when the state still matches the file (its
  weights, rounded to the file's dtype, are the file's); otherwise it starts a new optimiser from the file.
"""

import os

import torch

STATE_SUFFIX = ".training"
STEPS_KEY = "steps"


def state_path(adapter_path: str) -> str:
    return adapter_path + STATE_SUFFIX


def official_tensors(adapter: torch.nn.Module, *, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The adapter's weights under their official keys, in `dtype`, contiguous on the CPU."""
    return {key: value.detach().to(device="cpu", dtype=dtype).contiguous() for key, value in adapter.state_dict().items()}


def write_safetensors(tensors: dict[str, torch.Tensor], path: str, *, metadata: dict[str, str] | None = None) -> None:
    """Write through a temporary file and rename, so a reader never sees half a file."""
    from safetensors.torch import save_file

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    temporary = f"{path}.partial"
    save_file(tensors, temporary, metadata=metadata)
    os.replace(temporary, path)


def training_state(adapter: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The fp32 weights and the AdamW state of each weight, keyed by the weight's official name."""
    tensors = {f"weights.{key}": value.detach().float().cpu().contiguous() for key, value in adapter.named_parameters()}
    for key, parameter in adapter.named_parameters():
        for name, value in optimizer.state.get(parameter, {}).items():
            tensors[f"optimizer.{name}.{key}"] = value.detach().cpu().reshape(value.shape).contiguous()
    return tensors


def write_training_state(adapter_path: str, adapter, optimizer, *, steps: int) -> None:
    write_safetensors(training_state(adapter, optimizer), state_path(adapter_path), metadata={STEPS_KEY: str(steps)})


def read_matching_state(adapter_path: str, file_tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int] | None:
    """The training state saved beside `adapter_path` and its step count, if it continues the file whose tensors are
    `file_tensors` (its weights, rounded to the file's dtype, equal them); None otherwise."""
    from safetensors import safe_open

    path = state_path(adapter_path)
    if not os.path.exists(path):
        return None
    with safe_open(path, framework="pt") as state_file:
        state = {key: state_file.get_tensor(key) for key in state_file.keys()}
        steps = int((state_file.metadata() or {}).get(STEPS_KEY, "0"))
    for key, tensor in file_tensors.items():
        weights = state.get(f"weights.{key}")
        if weights is None or not torch.equal(weights.to(tensor.dtype), tensor.cpu()):
            return None
    return state, steps


def restore_training_state(adapter: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, torch.Tensor]) -> None:
    """Put the saved fp32 weights into `adapter` and the saved AdamW moments into `optimizer` (built over its
    parameters)."""
    with torch.no_grad():
        for key, parameter in adapter.named_parameters():
            parameter.copy_(state[f"weights.{key}"])
            moments = {  # AdamW keeps its step count on the CPU
                name.split(".", 2)[1]: value if value.ndim == 0 else value.to(parameter.device)
                for name, value in state.items()
                if name.startswith("optimizer.") and name.split(".", 2)[2] == key
            }
            if moments:
                optimizer.state[parameter] = moments
