"""The torch runtime: one backend for every device family (backend), model loading and
placement (models), the device layer behind torch.accelerator / the device module
(device), and the thin Ascend layer (npu: an import and its own switches)."""
