"""Inference on ONNX Runtime: numpy + onnxruntime + the tokenizer, never torch.

A deployed chatbot needs only these three; tests/test_runtime.py proves that importing this
package does not import torch.
"""

from bardlet.runtime.sampling import Sampling, sample
from bardlet.runtime.session import OnnxLM

__all__ = ["OnnxLM", "Sampling", "sample"]
