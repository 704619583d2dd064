#!/usr/bin/env python3
"""PyTorch baselines on the GPU machine (run by scripts/gpu-check.sh): SDPA
decode attention and torch.topk on the shapes of the kvsqueeze benchmarks,
timed with CUDA events, median of many, L2 flushed between launches.
Prints lines starting with TORCH."""
import statistics
import torch

dev = torch.device("cuda")
flush = torch.empty(100 * 2**20, dtype=torch.uint8, device=dev)


def timed(fn, reps=50):
    times = []
    for _ in range(reps):
        flush.zero_()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def copy_bw():
    x = torch.empty(2 * 2**30 // 2, dtype=torch.bfloat16, device=dev)
    y = torch.empty_like(x)
    ms = timed(lambda: y.copy_(x), 20)
    return 2 * x.numel() * 2 / ms / 1e6  # GB/s, read + write


bw = copy_bw()
print(f"TORCH copy_bandwidth {bw:.0f} GB/s")

# Decode attention: bf16, Hq 32, Hkv 8, D 128, 32K context.
for batch in (1, 4):
    Hq, Hkv, D, L = 32, 8, 128, 32768
    q = torch.randn(batch, Hq, 1, D, dtype=torch.bfloat16, device=dev)
    k = torch.randn(batch, Hkv, L, D, dtype=torch.bfloat16, device=dev)
    v = torch.randn(batch, Hkv, L, D, dtype=torch.bfloat16, device=dev)
    fn = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    ms = timed(fn)
    gbs = 2 * batch * Hkv * L * D * 2 / ms / 1e6
    print(f"TORCH sdpa_decode batch={batch} L={L} {ms:.3f} ms {gbs:.0f} GB/s {100 * gbs / bw:.0f}% of copy")

# top-k: 256 rows x 128K, k 2048.
s = torch.randn(256, 131072, device=dev)
ms = timed(lambda: torch.topk(s, 2048, dim=1, sorted=False))
print(f"TORCH topk 256x131072 k=2048 {ms:.3f} ms {s.numel() * 4 / ms / 1e6:.0f} GB/s")
