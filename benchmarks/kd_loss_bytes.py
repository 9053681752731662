"""Memory traffic of the KD loss per row of logits, fused Triton kernel vs eager torch
(analytic, forward + backward); on a GPU also their measured time side by side.

    python benchmarks/kd_loss_bytes.py
"""

from __future__ import annotations

import torch

from scalekd.kernels.kd_loss import bytes_per_row, kd_loss, kd_loss_reference, triton_enabled


def gpu_times(rows: int, classes: int, repeats: int = 50) -> tuple[float, float]:
    """Milliseconds per forward + backward, fused vs eager, bf16 logits on the GPU."""
    s = torch.randn(rows, classes, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    t = torch.randn(rows, classes, device="cuda", dtype=torch.bfloat16)
    out = []
    for fn in (kd_loss, kd_loss_reference):
        for _ in range(3):
            fn(s, t, 4.0).backward()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            fn(s, t, 4.0).backward()
        end.record()
        torch.cuda.synchronize()
        out.append(start.elapsed_time(end) / repeats)
    return out[0], out[1]


def main() -> None:
    gpu = torch.cuda.is_available() and triton_enabled(torch.empty(1, device="cuda"))
    print("KD loss, bf16 logits, forward + backward, bytes moved per row (analytic)")
    print(f"  {'classes':>8}{'fused':>12}{'eager':>12}{'eager/fused':>13}"
          + (f"{'fused ms':>10}{'eager ms':>10}" if gpu else ""))
    for classes in (10, 100, 1000, 21841):
        moved = bytes_per_row(classes)
        line = (f"  {classes:>8}{moved['fused']:>12,}{moved['eager']:>12,}"
                f"{moved['eager'] / moved['fused']:>12.1f}x")
        if gpu:
            fused_ms, eager_ms = gpu_times(256, classes)
            line += f"{fused_ms:>10.3f}{eager_ms:>10.3f}"
        print(line)
    if not gpu:
        print("(no CUDA device: timings skipped; the kernel is tested on CPU under "
              "TRITON_INTERPRET=1)")


if __name__ == "__main__":
    main()
