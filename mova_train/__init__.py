"""Training, sampling and LoRA export for MOVA, the dual-tower video + audio diffusion model."""
