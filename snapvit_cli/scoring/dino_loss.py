"""Label-free DINO-style self-distillation loss used for gradient importance scores (method §3.3).

The teacher is a frozen copy of the unpruned model and the student the model itself; both output the embedding
(no projection head). Embeddings are L2-normalised before the softmax, with temperature 1 and no centering.
The supervised alternative (§3.4) is plain ``torch.nn.functional.cross_entropy``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dino_self_distillation_loss(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """Cross-entropy from each teacher global view to every *other* student view, summed, batch-averaged.

    Args:
        teacher: teacher embeddings of the G global views, [B, G, E]; treated as a fixed target (detached).
        student: student embeddings of all V views, [B, V, E], global views first (student view a is the same
            image as teacher view a, so the pair (a, a) is skipped).

    Returns:
        Scalar ``mean_B sum_{a<G} sum_{b<V, b!=a} -<softmax(t_a/|t_a|), log_softmax(s_b/|s_b|)>``:
        G·(V−1) terms per image, summed rather than averaged (22 for the reference 2 + 10 crops), in float32.
    """
    if teacher.ndim != 3 or student.ndim != 3:
        raise ValueError(f"expected [B, G, E] and [B, V, E], got {tuple(teacher.shape)} and {tuple(student.shape)}")
    batch, n_global, dim = teacher.shape
    if student.shape[0] != batch or student.shape[2] != dim or student.shape[1] < n_global:
        raise ValueError(f"student {tuple(student.shape)} does not match teacher {tuple(teacher.shape)}")
    targets = F.softmax(F.normalize(teacher.detach().float(), dim=-1), dim=-1)
    log_probs = F.log_softmax(F.normalize(student.float(), dim=-1), dim=-1)
    cross = -torch.einsum("bae,bve->bav", targets, log_probs)  # [B, G, V]
    same_view = torch.eye(n_global, student.shape[1], dtype=torch.bool, device=cross.device)
    return cross.masked_fill(same_view, 0.0).sum(dim=(1, 2)).mean()
