"""A fused KD loss: T^2 * KL(softmax(t/T) || softmax(s/T)) per row and its gradient with respect
to the student logits, in one kernel that reads each row's logits twice (a pass for the two
softmax normalisers, online, and a pass for the KL and the gradient) and writes the gradient
once. Eager torch materialises both softmaxes, their logs and the KL terms as (rows, classes)
tensors in forward and again in backward; with 21,841 classes (ImageNet-21k teachers) that is
most of a KD step's memory traffic outside the networks.

No library ships this fusion with the temperature inside the softmax (liger-kernel's KL takes
probabilities already softened, and fails under TRITON_INTERPRET), hence our own kernel.
Inputs may be fp32, bf16 or fp16; all arithmetic is fp32.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:  # triton comes with torch's CUDA wheels; elsewhere the reference runs
    triton = None


def kd_loss_reference(student: torch.Tensor, teacher: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), summed over classes, averaged over rows."""
    log_p_s = F.log_softmax(student.float() / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher.float() / temperature, dim=-1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature**2


def triton_enabled(tensor: torch.Tensor) -> bool:
    """The Triton kernel runs on CUDA tensors, and on CPU ones under TRITON_INTERPRET=1."""
    return triton is not None and (tensor.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """The KD loss through the fused kernel where it can run, else the torch reference; also
    inside torch.compile (`student.compile`): inductor fuses the reference into kernels of its
    own, in the student's graph."""
    if triton_enabled(student) and student.ndim == 2 and not torch.compiler.is_compiling():
        return FusedKDLoss.apply(student, teacher.detach(), float(temperature))
    return kd_loss_reference(student, teacher, temperature)


def _kd_rows(student_ptr, teacher_ptr, grad_ptr, loss_ptr, rows, cols, stride, inv_t,
             grad_scale, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """BLOCK_R rows per program; columns in chunks of BLOCK_C."""
    pid = tl.program_id(0)
    r = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = r < rows
    base = r[:, None].to(tl.int64) * stride
    neg_inf = float("-inf")
    # pass 1: running max and sum of exp for s/T and t/T (online softmax)
    m_s = tl.full((BLOCK_R,), neg_inf, tl.float32)
    m_t = tl.full((BLOCK_R,), neg_inf, tl.float32)
    z_s = tl.zeros((BLOCK_R,), tl.float32)
    z_t = tl.zeros((BLOCK_R,), tl.float32)
    for start in range(0, cols, BLOCK_C):
        c = start + tl.arange(0, BLOCK_C)
        ok = row_ok[:, None] & (c[None, :] < cols)
        s = tl.load(student_ptr + base + c[None, :], mask=ok, other=neg_inf).to(tl.float32) * inv_t
        t = tl.load(teacher_ptr + base + c[None, :], mask=ok, other=neg_inf).to(tl.float32) * inv_t
        new_s = tl.maximum(m_s, tl.max(s, axis=1))
        new_t = tl.maximum(m_t, tl.max(t, axis=1))
        # rows past the end stay at -inf: keep their arithmetic finite
        new_s = tl.where(row_ok, new_s, 0.0)
        new_t = tl.where(row_ok, new_t, 0.0)
        z_s = z_s * tl.exp(m_s - new_s) + tl.sum(tl.exp(s - new_s[:, None]), axis=1)
        z_t = z_t * tl.exp(m_t - new_t) + tl.sum(tl.exp(t - new_t[:, None]), axis=1)
        m_s, m_t = new_s, new_t
    lse_s = m_s + tl.log(tl.where(row_ok, z_s, 1.0))
    lse_t = m_t + tl.log(tl.where(row_ok, z_t, 1.0))
    # pass 2: KL terms and the gradient T * (p_s - p_t) / rows (the T^2 of the loss, over T)
    kl = tl.zeros((BLOCK_R,), tl.float32)
    for start in range(0, cols, BLOCK_C):
        c = start + tl.arange(0, BLOCK_C)
        ok = row_ok[:, None] & (c[None, :] < cols)
        s = tl.load(student_ptr + base + c[None, :], mask=ok, other=0.0).to(tl.float32) * inv_t
        t = tl.load(teacher_ptr + base + c[None, :], mask=ok, other=0.0).to(tl.float32) * inv_t
        log_p_s = s - lse_s[:, None]
        log_p_t = t - lse_t[:, None]
        p_t = tl.exp(log_p_t)
        kl += tl.sum(tl.where(ok, p_t * (log_p_t - log_p_s), 0.0), axis=1)
        grad = (tl.exp(log_p_s) - p_t) * grad_scale
        tl.store(grad_ptr + base + c[None, :], grad, mask=ok)
    tl.store(loss_ptr + r, kl, mask=row_ok)


@functools.cache
def _kernel(interpret: bool):
    """The jitted kernel; Triton picks the interpreter when the decorator runs, so it is built
    per mode (tests switch TRITON_INTERPRET on for their calls only)."""
    del interpret  # the cache key
    return triton.jit(_kd_rows)


class FusedKDLoss(torch.autograd.Function):
    """Forward computes the loss and stores the gradient; backward scales it."""

    @staticmethod
    def forward(ctx, student: torch.Tensor, teacher: torch.Tensor,
                temperature: float) -> torch.Tensor:
        student, teacher = student.contiguous(), teacher.contiguous()
        rows, cols = student.shape
        grad = torch.empty(rows, cols, dtype=torch.float32, device=student.device)
        per_row = torch.empty(rows, dtype=torch.float32, device=student.device)
        interpret = not student.is_cuda
        # interpret mode runs programs one by one in Python: many rows per program keeps the
        # grid small; on a GPU a few rows per program keep every multiprocessor busy
        block_r = 64 if interpret else 4
        block_c = min(1024, triton.next_power_of_2(cols))
        _kernel(interpret)[(triton.cdiv(rows, block_r),)](
            student, teacher, grad, per_row, rows, cols, cols, 1.0 / temperature,
            temperature / rows, BLOCK_R=block_r, BLOCK_C=block_c)
        ctx.save_for_backward(grad)
        ctx.input_dtype = student.dtype
        return per_row.sum() * (temperature**2 / rows)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return (grad * grad_output).to(ctx.input_dtype), None, None


def bytes_per_row(classes: int, dtype_bytes: int = 2) -> dict[str, int]:
    """Analytic memory traffic of one row, forward + backward (logits in `dtype_bytes`, fp32
    intermediates): what the micro-benchmark reports."""
    logits = classes * dtype_bytes
    f32 = classes * 4
    # fused: read s and t twice, write the fp32 gradient; backward reads and writes it once
    fused = 4 * logits + f32 + 2 * f32
    # eager: upcast s, t (read + write fp32), scale by 1/T, log_softmax x2 (read, write), KL
    # terms (read 2, write 1), sum; backward: the same chain in reverse, about as much again
    forward = 2 * (logits + f32) + 2 * 2 * f32 + 2 * 2 * f32 + 3 * f32 + f32
    eager = 2 * forward
    return {"fused": fused, "eager": eager}
