"""Open Inference Protocol v2 (KServe / Triton): routes, the wire format, and the model configuration."""
