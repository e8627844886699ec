"""ONNX Runtime sessions, the decision rule, the batcher and its policy, CPU allotment.

No HTTP here: imports neither fastapi nor starlette, nor service.api (tests/test_architecture.py).
"""
