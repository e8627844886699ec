"""Bytes -> decoded pixels -> model input tensor, the input-domain check and the heatmap overlay.

Pure image code: imports neither fastapi nor onnxruntime (tests/test_architecture.py enforces it).
"""
