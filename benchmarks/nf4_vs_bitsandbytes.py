"""How torchao's NF4 (what t5peft uses) and bitsandbytes' NF4 (what transformers + peft use) differ on one tensor.

Both quantize in blocks of 64 with the same 16 NormalFloat code values and double-quantize the block scales, but not
identically, so the dequantized weights differ by one code step where a weight sits near the midpoint of two codes,
and by a scale's rounding everywhere else. Prints the maximum difference in units of the block absmax, and the share
of weights that differ. Needs ``pip install bitsandbytes==0.50.2`` (not a t5peft dependency: a comparison only).

    python benchmarks/nf4_vs_bitsandbytes.py
"""

from __future__ import annotations

import json

import bitsandbytes.functional as bnb
import torch
from torchao.quantization import to_nf4

from t5peft import T5Config, T5ForConditionalGeneration


def main() -> int:
    torch.manual_seed(0)
    config = T5Config(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8)
    weight = T5ForConditionalGeneration(config).encoder.block[0].layer[1].DenseReluDense.wi.weight.detach()
    ours = to_nf4(weight, 64, 256).to(torch.float32)
    packed, state = bnb.quantize_4bit(weight, blocksize=64, quant_type="nf4", compress_statistics=True)
    theirs = bnb.dequantize_4bit(packed, state).to(torch.float32)
    absmax = weight.reshape(-1, 64).abs().max(dim=1, keepdim=True).values
    relative = ((ours - theirs).abs().reshape(-1, 64) / absmax).flatten()
    result = {
        "tensor": "t5-small shape encoder.block.0.layer.1.DenseReluDense.wi.weight (random init, seed 0)",
        "weights": weight.numel(),
        "bit_identical": bool(torch.equal(ours, theirs)),
        "max_difference_over_block_absmax": relative.max().item(),
        "share_of_weights_that_differ": (relative > 0).float().mean().item(),
        "share_differing_by_more_than_1e-3_absmax": (relative > 1e-3).float().mean().item(),
        # the smallest gap between two NF4 codes is 0.0796: above 0.04 the two chose different codes
        "share_with_another_code": (relative > 0.04).float().mean().item(),
        "torchao_error_max_over_absmax": ((ours - weight).abs().reshape(-1, 64) / absmax).max().item(),
        "bitsandbytes_error_max_over_absmax": ((theirs - weight).abs().reshape(-1, 64) / absmax).max().item(),
        "bitsandbytes": __import__("bitsandbytes").__version__,
        "torchao": __import__("torchao").__version__,
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
