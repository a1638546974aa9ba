"""Reading what a TARGET names: model references, YAML specs, checkpoint formats (safetensors,
torch.save, DCP, sharded indexes), the provenance record, and writing outputs atomically.
"""
